//! The chaos run's workers: `rkcl consume` processes, children of the
//! demo, pointed at its embedded services through the standard AWS
//! environment (the way the command's tests start them). Each writes JSON
//! lines to a pipe that a task of the demo reads into the tally; its stderr
//! is kept to explain an exit. Dropping [`Processes`] kills every process.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rkcl::ExtendedSequenceNumber;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::produce::millis;
use super::session::{APP, Session, WorkerEnd};
use super::tally::{NameId, Tally};

/// How often each worker checkpoints what it has written.
const CHECKPOINT_EVERY: &str = "1s";
/// How long a worker may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lines of a worker's stderr are kept to explain its exit.
const STDERR_LINES: usize = 20;
/// How long a worker is left to start before it is sent SIGTERM at the end:
/// `rkcl consume` handles SIGTERM only once its scheduler has started.
const STARTUP_GRACE: Duration = Duration::from_secs(2);

/// The line `rkcl consume` writes per record (the fields the demo reads).
#[derive(Debug, Deserialize)]
struct ConsumedLine {
    /// The shard the record came from.
    shard_id: String,
    /// The Kinesis record's sequence number.
    sequence_number: String,
    /// Its place in an aggregate, for an aggregated record.
    sub_sequence_number: Option<u64>,
    /// The record's data (demo records are UTF-8).
    data: String,
}

/// What the demo is doing with a worker process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Running; it may be killed or asked to leave.
    Running,
    /// Sent SIGKILL.
    Killed,
    /// Sent SIGTERM during the run.
    Leaving,
    /// Sent SIGTERM at the end of the run.
    Stopping,
}

/// One `rkcl consume` process.
#[derive(Debug)]
struct Worker {
    /// Its worker id.
    id: String,
    /// The place it fills: `worker-{slot + 1}`, and its restarts.
    slot: usize,
    /// When it was started.
    started: Instant,
    /// The process.
    process: Child,
    /// What the demo is doing with it.
    state: State,
    /// The last lines of its stderr.
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// The worker processes and the tasks reading their output.
#[derive(Debug)]
pub(super) struct Processes {
    /// The `rkcl` binary (this one).
    exe: PathBuf,
    /// The embedded Kinesis.
    kinesis_endpoint: String,
    /// The embedded DynamoDB.
    dynamodb_endpoint: String,
    /// The workers' lease duration.
    lease_duration: Duration,
    /// The processes not yet exited.
    workers: Vec<Worker>,
    /// The tasks reading their output.
    readers: Vec<JoinHandle<()>>,
    /// Restarts per slot.
    restarts: Vec<usize>,
    /// Output lines that were not records (a line cut by a kill).
    unparsed: Arc<AtomicUsize>,
}

impl Processes {
    /// No processes yet: they will run this binary against `local`, with
    /// `slots` places to fill (restarts keep their slot).
    pub(super) fn new(
        local: &rkcl_local::Local,
        lease_duration: Duration,
        slots: usize,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe().context("could not find the rkcl binary")?,
            kinesis_endpoint: local.kinesis_endpoint().to_owned(),
            dynamodb_endpoint: local.dynamodb_endpoint().to_owned(),
            lease_duration,
            workers: Vec::new(),
            readers: Vec::new(),
            restarts: vec![0; slots],
            unparsed: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// How many killed workers were restarted.
    pub(super) fn restarts(&self) -> usize {
        self.restarts.iter().sum()
    }

    /// Output lines that were not records.
    pub(super) fn unparsed_lines(&self) -> usize {
        self.unparsed.load(Ordering::Relaxed)
    }

    /// Sends SIGTERM to worker `id` during the run: it leaves the group.
    pub(super) async fn leave(&mut self, id: &str) -> anyhow::Result<()> {
        self.terminate(id, State::Leaving).await
    }

    /// Starts `rkcl consume` as worker `id` in `slot`.
    pub(super) fn spawn(
        &mut self,
        session: &mut Session,
        slot: usize,
        id: &str,
    ) -> anyhow::Result<()> {
        let mut process = Command::new(&self.exe)
            .args(["consume", "--app", APP, "--stream", APP, "--worker-id", id])
            .args(["--checkpoint-every", CHECKPOINT_EVERY])
            .arg("--lease-duration")
            .arg(format!("{}ms", self.lease_duration.as_millis()))
            .args(["--idle-interval-ms", "200"])
            .env("AWS_ENDPOINT_URL_KINESIS", &self.kinesis_endpoint)
            .env("AWS_ENDPOINT_URL_DYNAMODB", &self.dynamodb_endpoint)
            .env("AWS_REGION", rkcl_local::REGION)
            .env("AWS_ACCESS_KEY_ID", rkcl_local::ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", rkcl_local::SECRET_ACCESS_KEY)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {} consume", self.exe.display()))?;
        let stdout = process.stdout.take().context("no pipe from the worker")?;
        let stderr = process.stderr.take().context("no pipe from the worker")?;
        let worker = session
            .tally
            .lock()
            .map_err(|_| anyhow::anyhow!("the tally is poisoned"))?
            .name_id(id);
        self.readers.push(tokio::spawn(read_records(
            stdout,
            worker,
            session.tally.clone(),
            session.clock,
            self.unparsed.clone(),
        )));
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        tokio::spawn(keep_tail(stderr, tail.clone()));
        self.workers.push(Worker {
            id: id.to_owned(),
            slot,
            started: Instant::now(),
            process,
            state: State::Running,
            stderr: tail,
        });
        session.add_worker(id);
        Ok(())
    }

    /// The ids of the workers running and not asked to stop.
    pub(super) fn running(&self) -> Vec<String> {
        self.workers
            .iter()
            .filter(|w| w.state == State::Running)
            .map(|w| w.id.clone())
            .collect()
    }

    /// SIGKILLs worker `id` and starts its replacement at once.
    pub(super) fn kill_and_restart(
        &mut self,
        session: &mut Session,
        id: &str,
    ) -> anyhow::Result<String> {
        let Some(worker) = self.workers.iter_mut().find(|w| w.id == id) else {
            bail!("no worker {id}");
        };
        worker
            .process
            .start_kill()
            .with_context(|| format!("could not kill {id}"))?;
        worker.state = State::Killed;
        let slot = worker.slot;
        session.end_worker(id, WorkerEnd::Killed);
        let restarts = self.restarts.get_mut(slot).context("no such slot")?;
        *restarts += 1;
        let replacement = format!("worker-{}-r{restarts}", slot + 1);
        self.spawn(session, slot, &replacement)?;
        Ok(replacement)
    }

    /// Sends SIGTERM to worker `id` (it checkpoints, releases its leases
    /// and exits).
    async fn terminate(&mut self, id: &str, state: State) -> anyhow::Result<()> {
        let Some(worker) = self.workers.iter_mut().find(|w| w.id == id) else {
            bail!("no worker {id}");
        };
        let pid = worker.process.id().context("the worker has exited")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .context("could not run kill")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed: {status}");
        }
        worker.state = state;
        Ok(())
    }

    /// Notes the workers that exited, and how.
    pub(super) fn reap(&mut self, session: &mut Session) {
        let mut index = 0;
        while let Some(worker) = self.workers.get_mut(index) {
            let Ok(Some(status)) = worker.process.try_wait() else {
                index += 1;
                continue;
            };
            let last_words = || {
                worker
                    .stderr
                    .lock()
                    .ok()
                    .and_then(|lines| lines.back().cloned())
                    .unwrap_or_default()
            };
            let end = match worker.state {
                State::Killed => None,
                State::Leaving if status.success() => Some(WorkerEnd::Left),
                State::Stopping if status.success() => Some(WorkerEnd::Stopped),
                State::Running => Some(WorkerEnd::Failed(format!(
                    "exited on its own ({status}): {}",
                    last_words()
                ))),
                State::Leaving | State::Stopping => Some(WorkerEnd::Failed(format!(
                    "stopped with {status}: {}",
                    last_words()
                ))),
            };
            if let Some(end) = end {
                if let WorkerEnd::Failed(why) = &end {
                    session.progress(&format!("{} {why}", worker.id));
                }
                let id = worker.id.clone();
                session.end_worker(&id, end);
            }
            self.workers.remove(index);
        }
    }

    /// Sends SIGTERM to every worker and waits for them to exit, sampling
    /// the lease table meanwhile; kills those still running after
    /// [`STOP_TIMEOUT`].
    pub(super) async fn stop_all(&mut self, session: &mut Session) -> anyhow::Result<()> {
        while self
            .workers
            .iter()
            .any(|w| w.state == State::Running && w.started.elapsed() < STARTUP_GRACE)
        {
            session.tick().await?;
            self.reap(session);
        }
        for id in self.running() {
            self.terminate(&id, State::Stopping).await?;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !self.workers.is_empty() && Instant::now() < deadline {
            session.tick().await?;
            self.reap(session);
        }
        for worker in &mut self.workers {
            let _ = worker.process.start_kill();
            session.end_worker(
                &worker.id,
                WorkerEnd::Failed("did not stop after SIGTERM".into()),
            );
        }
        for reader in std::mem::take(&mut self.readers) {
            if tokio::time::timeout(Duration::from_secs(10), reader)
                .await
                .is_err()
            {
                session.progress("a worker's output did not end");
            }
        }
        // One more look at the table, with every worker gone.
        session.tick().await
    }
}

/// Reads a worker's JSON lines into the tally until its pipe closes.
async fn read_records(
    stdout: ChildStdout,
    worker: NameId,
    tally: Arc<Mutex<Tally>>,
    clock: Instant,
    unparsed: Arc<AtomicUsize>,
) {
    let mut lines = BufReader::new(stdout).lines();
    let mut last_sequence: Option<(String, rkcl::SequenceNumber)> = None;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(_) => {
                unparsed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let at_ms = millis(clock.elapsed());
        let Ok(record) = serde_json::from_str::<ConsumedLine>(&line) else {
            unparsed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        // Records of one aggregate share a sequence number: parse it once.
        let sequence = match &last_sequence {
            Some((text, parsed)) if *text == record.sequence_number => parsed.clone(),
            _ => match record.sequence_number.parse::<rkcl::SequenceNumber>() {
                Ok(parsed) => {
                    last_sequence = Some((record.sequence_number.clone(), parsed.clone()));
                    parsed
                }
                Err(_) => {
                    unparsed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        let position =
            ExtendedSequenceNumber::new(sequence, record.sub_sequence_number.unwrap_or(0));
        if let Ok(mut tally) = tally.lock() {
            tally.deliver(
                worker,
                &record.shard_id,
                &position,
                record.data.as_bytes(),
                at_ms,
            );
        }
    }
}

/// Keeps the last lines of a worker's stderr.
async fn keep_tail(stderr: ChildStderr, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut tail) = tail.lock() {
            if tail.len() >= STDERR_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}
