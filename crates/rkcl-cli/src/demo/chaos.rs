//! `rkcl demo --chaos`: the workers are `rkcl consume` processes, children
//! of the demo, pointed at its embedded services through the standard AWS
//! environment; each writes JSON lines to a pipe the demo reads. One is
//! killed with SIGKILL every `--kill-every` and restarted under a new
//! worker id, a shard is split and two are merged while records flow, a
//! worker joins and one leaves with SIGTERM, at times drawn from the seed.
//! What the pipes carried is checked against what was produced.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::Rng;
use rand::seq::IndexedRandom;
use rkcl::ExtendedSequenceNumber;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::Settings;
use super::produce::millis;
use super::report::{ChaosReport, Report};
use super::session::{APP, EventKind, Session, WorkerEnd};
use super::tally::{NameId, Tally};

/// How many workers start together.
const FIRST_WORKERS: usize = 3;
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
struct Processes {
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
    /// Starts `rkcl consume` as worker `id` in `slot`.
    fn spawn(&mut self, session: &mut Session, slot: usize, id: &str) -> anyhow::Result<()> {
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
    fn running(&self) -> Vec<String> {
        self.workers
            .iter()
            .filter(|w| w.state == State::Running)
            .map(|w| w.id.clone())
            .collect()
    }

    /// SIGKILLs worker `id` and starts its replacement at once.
    fn kill_and_restart(&mut self, session: &mut Session, id: &str) -> anyhow::Result<String> {
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
    fn reap(&mut self, session: &mut Session) {
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
    async fn stop_all(&mut self, session: &mut Session) -> anyhow::Result<()> {
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

/// When the chaos events happen, in milliseconds of the run.
#[derive(Clone, Debug)]
struct Plan {
    /// (time, event), in time order.
    events: VecDeque<(u32, EventKind)>,
}

impl Plan {
    /// The split, join, merge and leave at seeded times within production
    /// (the kills follow `--kill-every` on their own).
    fn new(settings: &Settings, rng: &mut impl Rng) -> Self {
        let production_ms = settings.records as f64 * 1000.0 / settings.rate as f64;
        let mut at = |from: f64| {
            millis(Duration::from_secs_f64(
                production_ms * (from + rng.random_range(0.0..0.1)) / 1000.0,
            ))
        };
        let mut events: Vec<(u32, EventKind)> = vec![
            (at(0.2), EventKind::Split),
            (at(0.35), EventKind::Join),
            (at(0.5), EventKind::Merge),
            (at(0.65), EventKind::Leave),
        ];
        events.sort_by_key(|(ms, _)| *ms);
        Self {
            events: events.into(),
        }
    }
}

/// Runs the chaos scenario on `local`; SIGTERM or Ctrl-C stops it (the
/// worker processes are killed with it).
pub(super) async fn run(local: &rkcl_local::Local, settings: Settings) -> anyhow::Result<Report> {
    tokio::select! {
        report = chaos(local, settings) => report,
        () = rkcl::scheduler::wait_for_signal() => bail!("interrupted"),
    }
}

/// The chaos run itself: its future owns the worker processes, so dropping
/// it kills them.
async fn chaos(local: &rkcl_local::Local, settings: Settings) -> anyhow::Result<Report> {
    let mut session = Session::open(local, settings.clone()).await?;
    let mut fleet = Processes {
        exe: std::env::current_exe().context("could not find the rkcl binary")?,
        kinesis_endpoint: local.kinesis_endpoint().to_owned(),
        dynamodb_endpoint: local.dynamodb_endpoint().to_owned(),
        lease_duration: settings.lease_duration,
        workers: Vec::new(),
        readers: Vec::new(),
        restarts: vec![0; FIRST_WORKERS + 1],
        unparsed: Arc::new(AtomicUsize::new(0)),
    };
    let mut plan = Plan::new(&settings, &mut session.rng);
    session.start_production();
    for slot in 0..FIRST_WORKERS {
        fleet.spawn(&mut session, slot, &format!("worker-{}", slot + 1))?;
    }
    session.progress(&format!(
        "{FIRST_WORKERS} rkcl consume processes started; producing {} records at {}/s; \
         a SIGKILL every {} s",
        settings.records,
        settings.rate,
        settings.kill_every.as_secs_f64()
    ));
    let kill_every = millis(settings.kill_every);
    let mut next_kill = kill_every;
    let mut recovering: Vec<usize> = Vec::new();
    let mut settling: Vec<usize> = Vec::new();
    let mut drained_since: Option<Instant> = None;
    loop {
        session.tick().await?;
        fleet.reap(&mut session);
        note_recoveries(&mut session, &mut recovering, &mut settling);
        let now = session.now_ms();
        if now >= next_kill && !session.production_done() {
            next_kill = next_kill.saturating_add(kill_every);
            let running = fleet.running();
            if let Some(victim) = running.choose(&mut session.rng).cloned() {
                let replacement = fleet.kill_and_restart(&mut session, &victim)?;
                let event = session.event(
                    EventKind::Kill,
                    Some(&victim),
                    format!("SIGKILL {victim}; restarted as {replacement}"),
                );
                recovering.push(event);
                settling.push(event);
            }
        }
        if plan.events.front().is_some_and(|(at, _)| now >= *at)
            && let Some((at, kind)) = plan.events.pop_front()
        {
            match chaos_event(&mut session, &mut fleet, kind).await? {
                Done::Happened(event) => settling.push(event),
                Done::Postponed if now.saturating_sub(at) < millis(settings.settle_timeout()) => {
                    plan.events.push_front((at, kind));
                }
                Done::Postponed => {
                    session.progress(&format!("no worker to {}; skipped", kind.name()));
                }
                Done::Skipped => {}
            }
        }
        let finished = session.production_done() && plan.events.is_empty();
        if finished && session.all_delivered() && session.status.settled() {
            break;
        }
        if finished {
            let since = *drained_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= settings.settle_timeout() {
                session.progress("the group did not settle; stopping anyway");
                break;
            }
        }
    }
    let balanced = session.status.settled();
    let leases_at_end = session.status.held.clone();
    session.progress("stopping every worker with SIGTERM");
    session.freeze_timeline();
    fleet.stop_all(&mut session).await?;
    let mut report = Report::build(&session, balanced, leases_at_end);
    report.chaos = Some(ChaosReport {
        kill_every_seconds: settings.kill_every.as_secs_f64(),
        restarts: fleet.restarts.iter().sum(),
        unparsed_lines: fleet.unparsed.load(Ordering::Relaxed),
        released_at_end: session
            .watch
            .history()
            .values()
            .all(|h| h.last().is_none_or(|o| o.owner.is_none())),
    });
    Ok(report)
}

/// What became of a planned event.
enum Done {
    /// It happened: the index of the event.
    Happened(usize),
    /// Not now: no worker to do it to yet.
    Postponed,
    /// Nothing to do (kills follow their own clock, not the plan).
    Skipped,
}

/// Performs one planned event.
async fn chaos_event(
    session: &mut Session,
    fleet: &mut Processes,
    kind: EventKind,
) -> anyhow::Result<Done> {
    Ok(match kind {
        EventKind::Split => {
            let detail = session.split().await?;
            Done::Happened(session.event(kind, None, detail))
        }
        EventKind::Merge => {
            let detail = session.merge().await?;
            Done::Happened(session.event(kind, None, detail))
        }
        EventKind::Join => {
            let slot = FIRST_WORKERS;
            let id = format!("worker-{}", slot + 1);
            fleet.spawn(session, slot, &id)?;
            Done::Happened(session.event(kind, Some(&id), format!("{id} joined")))
        }
        EventKind::Leave => {
            // A worker that holds leases has started (and handles SIGTERM),
            // and its leaving moves leases.
            let holding: Vec<String> = fleet
                .running()
                .into_iter()
                .filter(|id| session.status.held.get(id).is_some_and(|n| *n > 0))
                .collect();
            match holding.choose(&mut session.rng).cloned() {
                Some(id) => {
                    fleet.terminate(&id, State::Leaving).await?;
                    Done::Happened(session.event(
                        kind,
                        Some(&id),
                        format!("SIGTERM {id}: it leaves gracefully"),
                    ))
                }
                None => Done::Postponed,
            }
        }
        EventKind::Kill => Done::Skipped,
    })
}

/// Marks the kills after which every shard is held and caught up again,
/// and the events after which the group is settled again (the first
/// sample after the event that says so).
fn note_recoveries(session: &mut Session, recovering: &mut Vec<usize>, settling: &mut Vec<usize>) {
    let at_ms = session.status.at_ms;
    let after =
        |session: &Session, index: usize| session.events.get(index).is_none_or(|e| e.at_ms < at_ms);
    if session.status.recovered() {
        let (done, waiting): (Vec<usize>, Vec<usize>) =
            recovering.iter().copied().partition(|&i| after(session, i));
        *recovering = waiting;
        for index in done {
            if let Some(event) = session.events.get_mut(index) {
                event.recovered_ms = Some(at_ms);
                let seconds = f64::from(at_ms.saturating_sub(event.at_ms)) / 1000.0;
                let detail = event.detail.clone();
                session.progress(&format!("recovered {seconds:.1} s after: {detail}"));
            }
        }
    }
    if session.status.settled() {
        let (done, waiting): (Vec<usize>, Vec<usize>) =
            settling.iter().copied().partition(|&i| after(session, i));
        *settling = waiting;
        for index in done {
            if let Some(event) = session.events.get_mut(index) {
                event.settled_ms = Some(at_ms);
            }
        }
    }
}
