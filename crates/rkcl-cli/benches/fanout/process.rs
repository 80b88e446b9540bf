//! Contenders as child processes: their environment, their progress on
//! stdout, their CPU time and memory from `/proc`, and stopping them.

use crate::proc::{cpu_seconds, status_kb};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rkcl_local::Local;

use crate::RUN_TIMEOUT;
use crate::latency::latency_ms;

/// Every AWS endpoint of a child but the local Kinesis and DynamoDB: a
/// closed port on this machine (the discard port), so calls fail at once.
const CLOSED_ENDPOINT: &str = "http://127.0.0.1:9";
/// How long a child may take to stop once told to.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The target directory: this binary is `<target>/<profile>/deps/fanout-*`.
pub(crate) fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_owned()
}

fn logs_dir() -> PathBuf {
    let dir = target_dir().join("peers").join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The last lines of a child's log, for an error message.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    format!("log {}: {tail}", path.display())
}

/// Points a child at the local services, and every other AWS endpoint at a
/// closed local port: nothing it does leaves this machine.
pub(crate) fn local_env(command: &mut Command, endpoints: &Endpoints) {
    command
        .env("AWS_ENDPOINT_URL_KINESIS", &endpoints.kinesis)
        .env("AWS_ENDPOINT_URL_DYNAMODB", &endpoints.dynamodb)
        .env("AWS_ENDPOINT_URL", CLOSED_ENDPOINT)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", rkcl_local::REGION)
        .env("AWS_ACCESS_KEY_ID", rkcl_local::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", rkcl_local::SECRET_ACCESS_KEY)
        .env("NO_COLOR", "1")
        .env_remove("AWS_PROFILE")
        .env_remove("RUST_LOG")
        .env_remove("RKCL_LOG");
}

/// The local services' endpoints, for child processes.
#[derive(Clone, Debug)]
pub(crate) struct Endpoints {
    pub(crate) kinesis: String,
    pub(crate) dynamodb: String,
}

impl Endpoints {
    pub(crate) fn of(local: &Local) -> Self {
        Self {
            kinesis: local.kinesis_endpoint().to_owned(),
            dynamodb: local.dynamodb_endpoint().to_owned(),
        }
    }
}

/// What a child's stdout told, with when the bench read it.
#[derive(Debug)]
pub(crate) enum Seen {
    First(Instant),
    Done(Instant, u64),
    Latency(f64),
    Ended,
}

/// How a child tells its progress on stdout.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Progress {
    /// One line per user record (`rkcl consume`): the bench counts lines,
    /// and is done at this many.
    Lines(u64),
    /// `first SECONDS` and `done COUNT SECONDS` lines (the kcl-rs script and
    /// the SDK loop's child).
    Report,
    /// One JSON line per record put by the latency run: its latency.
    Latency,
}

impl Progress {
    pub(crate) fn handler(self) -> impl FnMut(&[u8], Instant) -> Option<Seen> + Send + 'static {
        let mut lines = 0;
        move |line, at| match self {
            Self::Lines(expected) => {
                lines += 1;
                if lines == expected {
                    Some(Seen::Done(at, lines))
                } else {
                    (lines == 1).then_some(Seen::First(at))
                }
            }
            Self::Report => {
                let mut fields = std::str::from_utf8(line).ok()?.split_whitespace();
                match fields.next()? {
                    "first" => Some(Seen::First(at)),
                    "done" => Some(Seen::Done(at, fields.next()?.parse().ok()?)),
                    _ => None,
                }
            }
            Self::Latency => {
                let value: serde_json::Value = serde_json::from_slice(line).ok()?;
                latency_ms(value.get("data")?.as_str()?.as_bytes()).map(Seen::Latency)
            }
        }
    }
}

/// Reads a child's stdout to its end on a thread of its own, reporting what
/// `handle` makes of each line.
pub(crate) fn read_lines(
    stdout: ChildStdout,
    mut handle: impl FnMut(&[u8], Instant) -> Option<Seen> + Send + 'static,
) -> (mpsc::Receiver<Seen>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 16, stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(seen) = handle(&line, Instant::now()) {
                        // The bench may have stopped listening.
                        let _ = tx.send(seen);
                    }
                }
            }
        }
        let _ = tx.send(Seen::Ended);
    });
    (rx, thread)
}

/// How a child is told to stop once it is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGTERM: `rkcl consume` shuts down gracefully.
    Terminate,
    /// A line on stdin (the kcl-rs script, the SDK loop's child).
    Stdin,
    /// SIGKILL, after a failure.
    Kill,
}

/// Stops a child and waits for it, killing it after [`STOP_TIMEOUT`].
pub(crate) fn stop_child(child: &mut Child, stop: Stop) {
    match stop {
        Stop::Terminate => {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
        // Dropping stdin after the line closes it, which also does.
        Stop::Stdin => {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(b"\n");
            }
        }
        Stop::Kill => {
            let _ = child.kill();
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
}

/// Starts `command` with stdout piped and stderr to `<logs>/<name>.log`.
pub(crate) fn spawn(
    name: &str,
    mut command: Command,
    stop: Stop,
) -> Result<(Child, PathBuf), String> {
    let log_path = logs_dir().join(format!("{name}.log"));
    let log = File::create(&log_path).map_err(|err| format!("{}: {err}", log_path.display()))?;
    let stdin = if stop == Stop::Stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    command.stdin(stdin).stdout(Stdio::piped()).stderr(log);
    let child = command
        .spawn()
        .map_err(|err| format!("could not start {command:?}: {err}"))?;
    Ok((child, log_path))
}

/// One contender's run, read from outside its process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    /// From the spawn to the first record.
    pub(crate) first: Duration,
    /// From the spawn to the last record.
    pub(crate) last: Duration,
    /// What the contender counted (Kinesis records for the SDK loop).
    pub(crate) count: u64,
    /// CPU seconds from the spawn to the last record.
    pub(crate) cpu_total: f64,
    /// CPU seconds from the first record to the last.
    pub(crate) cpu_reading: f64,
    /// VmHWM at the last record.
    pub(crate) peak_kib: u64,
}

/// Runs one contender's process to its last record, then stops it.
pub(crate) fn measure(
    name: &str,
    command: Command,
    progress: Progress,
    stop: Stop,
) -> Result<Run, String> {
    let started = Instant::now();
    let (mut child, log_path) = spawn(name, command, stop)?;
    let pid = child.id();
    let (seen, reader) = read_lines(child.stdout.take().unwrap(), progress.handler());
    let mut first = None;
    let outcome = loop {
        let left = RUN_TIMEOUT.saturating_sub(started.elapsed());
        match seen.recv_timeout(left) {
            Ok(Seen::First(at)) => first = Some((at, cpu_seconds(pid))),
            Ok(Seen::Done(at, count)) => {
                let figures = cpu_seconds(pid).zip(status_kb(pid, "VmHWM:"));
                break figures
                    .map(|(cpu, peak)| (at, count, cpu, peak))
                    .ok_or_else(|| "it was gone at its last record".to_owned());
            }
            Ok(Seen::Latency(_)) => {}
            Ok(Seen::Ended) => break Err("it exited before the last record".to_owned()),
            Err(_) => break Err(format!("no last record within {RUN_TIMEOUT:?}")),
        }
    };
    stop_child(&mut child, if outcome.is_ok() { stop } else { Stop::Kill });
    let _ = reader.join();
    let (last, count, cpu, peak_kib) =
        outcome.map_err(|why| format!("{why}; {}", log_tail(&log_path)))?;
    let (first, cpu_at_first) = first.ok_or("no first record")?;
    Ok(Run {
        first: first - started,
        last: last - started,
        count,
        cpu_total: cpu,
        cpu_reading: cpu - cpu_at_first.unwrap_or(0.0),
        peak_kib,
    })
}
