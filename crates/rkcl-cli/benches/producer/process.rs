//! Contenders as child processes: their environment, their report on
//! stdout, their CPU time from `/proc`, and the Python virtual environment
//! of the Python contenders.

use crate::proc::{cpu_seconds, run_command};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::RUN_TIMEOUT;

/// Every AWS endpoint of a child but the local Kinesis: a closed port on
/// this machine (the discard port), so calls fail at once.
const CLOSED_ENDPOINT: &str = "http://127.0.0.1:9";
/// The pinned versions installed in the virtual environment: aiokpl, the
/// aiobotocore it runs on, and boto3 with the botocore both share.
pub(crate) const AIOKPL_VERSION: &str = "0.2.0";
pub(crate) const BOTO3_VERSION: &str = "1.43.117";
const PINS: [&str; 4] = [
    "aiokpl==0.2.0",
    "aiobotocore==3.10.0",
    "boto3==1.43.117",
    "botocore==1.43.117",
];

/// The target directory: this binary is `<target>/<profile>/deps/producer-*`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_owned()
}

fn logs_dir() -> PathBuf {
    let dir = target_dir().join("peers").join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The last lines of a child's log, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    format!("log {}: {tail}", path.display())
}

/// Points a child at the local Kinesis, and every other AWS endpoint at a
/// closed local port: nothing it does leaves this machine.
pub(crate) fn local_env(command: &mut Command, kinesis: &str) {
    command
        .env("AWS_ENDPOINT_URL_KINESIS", kinesis)
        .env("AWS_ENDPOINT_URL", CLOSED_ENDPOINT)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", rkcl_local::REGION)
        .env("AWS_DEFAULT_REGION", rkcl_local::REGION)
        .env("AWS_ACCESS_KEY_ID", rkcl_local::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", rkcl_local::SECRET_ACCESS_KEY)
        .env("NO_COLOR", "1")
        .env_remove("AWS_PROFILE")
        .env_remove("RUST_LOG")
        .env_remove("RKCL_LOG");
}

/// The Python of a virtual environment with aiokpl and boto3 installed at
/// [`PINS`]: made under the target directory and installed from PyPI the
/// first time.
pub(crate) fn python() -> Result<PathBuf, String> {
    let venv = target_dir().join("peers").join("producer-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        run_command(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let versions = "import importlib.metadata as m; \
        print(*(f'{p}=={m.version(p)}' for p in ('aiokpl', 'aiobotocore', 'boto3', 'botocore')))";
    let installed = run_command(Command::new(&python).args(["-c", versions]));
    if installed.as_deref().map(str::trim) != Ok(PINS.join(" ").as_str()) {
        run_command(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(PINS),
        )?;
    }
    run_command(Command::new(&python).args(["-c", "import aiokpl, boto3"]))?;
    Ok(python)
}

/// What a child's stdout told, with when the bench read it.
#[derive(Debug)]
enum Seen {
    First,
    Done(Report),
    Ended,
}

/// A child's `done COUNT SECONDS P50 P99` line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Report {
    /// Records written.
    pub(crate) count: u64,
    /// From the first send to the last receipt, as the child timed it.
    pub(crate) seconds: f64,
    /// Put-to-receipt latency percentiles in milliseconds, if measured.
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
}

fn parse_line(line: &str) -> Option<Seen> {
    let mut fields = line.split_whitespace();
    match fields.next()? {
        "first" => Some(Seen::First),
        "done" => {
            let count = fields.next()?.parse().ok()?;
            let seconds = fields.next()?.parse().ok()?;
            let p50_ms = fields.next().and_then(|f| f.parse().ok());
            let p99_ms = fields.next().and_then(|f| f.parse().ok());
            Some(Seen::Done(Report {
                count,
                seconds,
                p50_ms,
                p99_ms,
            }))
        }
        _ => None,
    }
}

/// One contender's run: its report, and its CPU seconds from `first` to
/// `done` read from `/proc`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    pub(crate) report: Report,
    pub(crate) cpu: f64,
}

/// Kills a child that did not finish, or lets one that did go (a line on
/// stdin), and waits for it.
fn stop_child(child: &mut Child, done: bool) {
    if done && let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"\n");
    } else {
        let _ = child.kill();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
}

/// Runs one contender's process until its `done` line, then lets it go.
/// Its stderr goes to `<target>/peers/logs/<name>.log`.
pub(crate) fn measure(name: &str, mut command: Command) -> Result<Run, String> {
    let started = Instant::now();
    let log_path = logs_dir().join(format!("{name}.log"));
    let log = File::create(&log_path).map_err(|err| format!("{}: {err}", log_path.display()))?;
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = command
        .spawn()
        .map_err(|err| format!("could not start {command:?}: {err}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, seen) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(event) = parse_line(&line) {
                let _ = tx.send(event);
            }
        }
        let _ = tx.send(Seen::Ended);
    });
    let mut cpu_at_first = None;
    let outcome = loop {
        let left = RUN_TIMEOUT.saturating_sub(started.elapsed());
        match seen.recv_timeout(left) {
            Ok(Seen::First) => cpu_at_first = cpu_seconds(pid),
            Ok(Seen::Done(report)) => {
                break cpu_seconds(pid)
                    .zip(cpu_at_first)
                    .map(|(cpu, first)| Run {
                        report,
                        cpu: cpu - first,
                    })
                    .ok_or_else(|| "no CPU time for its first or last record".to_owned());
            }
            Ok(Seen::Ended) => break Err("it exited before its last record".to_owned()),
            Err(_) => break Err(format!("not done within {RUN_TIMEOUT:?}")),
        }
    };
    stop_child(&mut child, outcome.is_ok());
    let _ = reader.join();
    outcome.map_err(|why| format!("{why}; {}", log_tail(&log_path)))
}
