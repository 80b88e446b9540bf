//! The demo's story: three workers in this process start together, and a
//! kill, a split, a merge, a join and a graceful leave follow one another,
//! each once the group has visibly settled after the one before. The run
//! ends once production is over, every record was delivered and the group
//! is settled.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};
use rkcl::leases::LeaseCoordinatorConfig;
use rkcl::retrieval::PollingConfig;
use rkcl::{
    Checkpointer, DynamoDbLeaseStore, Kinesis, ProcessRecordsInput, ProcessorError,
    RecordProcessor, Scheduler, SchedulerConfig, ShardInfo, ShutdownReport,
};
use tokio::task::{JoinHandle, JoinSet};

use super::Settings;
use super::produce::millis;
use super::report::Report;
use super::session::{APP, EventKind, Session, WorkerEnd};
use super::tally::{NameId, Tally};

/// The workers that start together.
const FIRST_WORKERS: [&str; 3] = ["worker-1", "worker-2", "worker-3"];
/// The worker killed without a shutdown.
const KILLED: &str = "worker-1";
/// The worker that joins.
const JOINING: &str = "worker-4";
/// The worker that leaves gracefully.
const LEAVING: &str = "worker-2";
/// How long a worker leaving or stopping may take to finish its shards.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a processor checkpoints (and always when it stops or its
/// shard ends), as the chaos run's `rkcl consume --checkpoint-every 1s`.
/// The lease coordinator learns of a handoff asked of it only when it
/// renews a lease, and a checkpoint within half a renew interval stands in
/// for the renewal; a processor checkpointing after every batch of a busy
/// shard would hold on to the shard until the handoff times out.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// One step of the story.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// [`KILLED`] is dropped without a shutdown.
    Kill,
    /// A shard is split.
    Split,
    /// Two adjacent shards are merged.
    Merge,
    /// [`JOINING`] starts.
    Join,
    /// [`LEAVING`] shuts down gracefully.
    Leave,
}

/// The story, in order.
const STEPS: [Step; 5] = [
    Step::Kill,
    Step::Split,
    Step::Merge,
    Step::Join,
    Step::Leave,
];

/// Counts what it is given and checkpoints every [`CHECKPOINT_EVERY`].
struct Counting {
    /// The worker, in the tally.
    worker: NameId,
    /// The shard.
    shard: String,
    /// Where deliveries are counted.
    tally: Arc<Mutex<Tally>>,
    /// The run's clock.
    clock: Instant,
    /// When it last checkpointed.
    last_checkpoint: Instant,
}

impl RecordProcessor for Counting {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        let at_ms = millis(self.clock.elapsed());
        if let Ok(mut tally) = self.tally.lock() {
            for record in &input.records {
                tally.deliver(
                    self.worker,
                    &self.shard,
                    &record.extended_sequence_number(),
                    &record.data,
                    at_ms,
                );
            }
        }
        if self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            checkpointer.checkpoint().await?;
            self.last_checkpoint = Instant::now();
        }
        Ok(())
    }
}

/// The workers of the story, in this process.
struct Fleet {
    /// The workers' Kinesis client.
    kinesis: Kinesis,
    /// The workers' lease table.
    store: DynamoDbLeaseStore,
    /// The run's settings.
    settings: Settings,
    /// The workers running, by id.
    running: BTreeMap<String, Scheduler>,
    /// The workers shutting down during the run, and their shutdowns.
    leaving: Vec<(String, JoinHandle<ShutdownReport>)>,
}

impl Fleet {
    /// Starts the workers `ids` at once.
    async fn start(&mut self, session: &mut Session, ids: &[&str]) -> anyhow::Result<()> {
        let mut starting = JoinSet::new();
        for id in ids {
            let config = SchedulerConfig::builder(APP, APP)
                .leases(
                    LeaseCoordinatorConfig::builder(*id)
                        .lease_duration(self.settings.lease_duration)
                        .rng_seed(Some(session.rng.next_u64()))
                        .build()?,
                )
                .shard_sync_interval(Duration::from_secs(2))
                .parent_poll_interval(Duration::from_millis(200))
                .polling(
                    PollingConfig::builder()
                        .idle_interval(Duration::from_millis(200))
                        .build()?,
                )
                .build()?;
            let worker = session
                .tally
                .lock()
                .map_err(|_| anyhow::anyhow!("the tally is poisoned"))?
                .name_id(id);
            let (tally, clock) = (session.tally.clone(), session.clock);
            let (kinesis, store, id) = (self.kinesis.clone(), self.store.clone(), (*id).to_owned());
            starting.spawn(async move {
                let scheduler =
                    Scheduler::start(config, kinesis, store, move |shard: &ShardInfo| Counting {
                        worker,
                        shard: shard.shard_id.as_str().to_owned(),
                        tally: tally.clone(),
                        clock,
                        last_checkpoint: Instant::now(),
                    })
                    .await;
                (id, scheduler)
            });
        }
        let mut started = Vec::new();
        while let Some(result) = starting.join_next().await {
            let (id, scheduler) = result?;
            started.push((id, scheduler?));
        }
        started.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, scheduler) in started {
            session.add_worker(&id);
            self.running.insert(id, scheduler);
        }
        Ok(())
    }

    /// Drops a worker without a shutdown: its tasks stop at once, nothing is
    /// released, its leases expire.
    fn kill(&mut self, session: &mut Session, id: &str) {
        drop(self.running.remove(id));
        session.end_worker(id, WorkerEnd::Killed);
    }

    /// Starts a graceful shutdown of a worker; it is gone once done.
    fn leave(&mut self, id: &str) {
        if let Some(scheduler) = self.running.remove(id) {
            let shutdown = tokio::spawn(scheduler.shutdown(SHUTDOWN_TIMEOUT));
            self.leaving.push((id.to_owned(), shutdown));
        }
    }

    /// Marks the workers whose shutdown is done as gone.
    async fn reap(&mut self, session: &mut Session) {
        let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.leaving)
            .into_iter()
            .partition(|(_, handle)| handle.is_finished());
        self.leaving = still;
        for (id, handle) in done {
            let end = match handle.await {
                Ok(report) if report.unfinished_leases.is_empty() => WorkerEnd::Left,
                Ok(report) => WorkerEnd::Failed(format!(
                    "{} leases did not finish in time",
                    report.unfinished_leases.len()
                )),
                Err(err) => WorkerEnd::Failed(err.to_string()),
            };
            session.end_worker(&id, end);
        }
    }

    /// Shuts every worker down gracefully, together.
    async fn stop_all(&mut self, session: &mut Session) {
        let running = std::mem::take(&mut self.running);
        let mut stopping = JoinSet::new();
        for (id, scheduler) in running {
            stopping.spawn(async move { (id, scheduler.shutdown(SHUTDOWN_TIMEOUT).await) });
        }
        while let Some(Ok((id, report))) = stopping.join_next().await {
            let end = if report.unfinished_leases.is_empty() {
                WorkerEnd::Stopped
            } else {
                WorkerEnd::Failed(format!(
                    "{} leases did not finish in time",
                    report.unfinished_leases.len()
                ))
            };
            session.end_worker(&id, end);
        }
        for (id, handle) in std::mem::take(&mut self.leaving) {
            let _ = handle.await;
            session.end_worker(&id, WorkerEnd::Left);
        }
    }
}

/// Runs the story on `local`.
pub(super) async fn run(local: &rkcl_local::Local, settings: Settings) -> anyhow::Result<Report> {
    let mut session = Session::open(local, settings.clone()).await?;
    let mut fleet = Fleet {
        kinesis: session.kinesis.clone(),
        store: DynamoDbLeaseStore::new(local.dynamodb_client(), APP),
        settings: settings.clone(),
        running: BTreeMap::new(),
        leaving: Vec::new(),
    };
    session.start_production();
    fleet.start(&mut session, &FIRST_WORKERS).await?;
    session.progress(&format!(
        "{} started together; producing {} records at {}/s",
        FIRST_WORKERS.join(", "),
        settings.records,
        settings.rate
    ));
    let mut last = None;
    for step in STEPS {
        wait_settled(&mut session, &mut fleet, last, Until::Settled).await?;
        last = Some(match step {
            Step::Kill => {
                fleet.kill(&mut session, KILLED);
                session.event(
                    EventKind::Kill,
                    Some(KILLED),
                    format!("killed {KILLED} without a shutdown"),
                )
            }
            Step::Split => {
                let detail = session.split().await?;
                session.event(EventKind::Split, None, detail)
            }
            Step::Merge => {
                let detail = session.merge().await?;
                session.event(EventKind::Merge, None, detail)
            }
            Step::Join => {
                fleet.start(&mut session, &[JOINING]).await?;
                session.event(EventKind::Join, Some(JOINING), format!("{JOINING} joined"))
            }
            Step::Leave => {
                fleet.leave(LEAVING);
                session.event(
                    EventKind::Leave,
                    Some(LEAVING),
                    format!("{LEAVING} is leaving gracefully"),
                )
            }
        });
    }
    let balanced = wait_settled(&mut session, &mut fleet, last, Until::End).await?;
    let leases_at_end = session.status.held.clone();
    session.stop_production();
    session.freeze_timeline();
    fleet.stop_all(&mut session).await;
    Ok(Report::build(&session, balanced, leases_at_end))
}

/// Notes that event `after` settled at `at_ms`, and shows it.
fn mark_settled(session: &mut Session, after: Option<usize>, at_ms: u32) {
    if let Some(event) = after.and_then(|i| session.events.get_mut(i)) {
        event.settled_ms = Some(at_ms);
    }
    if let Some(event) = after.and_then(|i| session.events.get(i)) {
        session.progress(&format!(
            "settled {:.1} s after: {}",
            f64::from(at_ms.saturating_sub(event.at_ms)) / 1000.0,
            event.detail
        ));
    }
}

/// What [`wait_settled`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Until {
    /// The group settled, before the next event.
    Settled,
    /// The group settled with every record produced and delivered: the end.
    End,
}

/// Waits until the group has been settled for the dwell time (and, for the
/// end, every record was produced and delivered), marking when event
/// `after` settled. `false` when it did not within the settle timeout.
async fn wait_settled(
    session: &mut Session,
    fleet: &mut Fleet,
    after: Option<usize>,
    until: Until,
) -> anyhow::Result<bool> {
    let end = until == Until::End;
    // A seeded fraction of a second more, so that an event does not fall
    // in step with the workers' checkpoints (every second from their start).
    let dwell =
        session.settings.dwell() + Duration::from_millis(session.rng.random_range(0..1_000));
    let mut started = Instant::now();
    let mut since: Option<(Instant, u32)> = None;
    let mut marked = false;
    loop {
        session.tick().await?;
        fleet.reap(session).await;
        if session.status.settled() {
            let (at, at_ms) = *since.get_or_insert((Instant::now(), session.status.at_ms));
            if at.elapsed() >= dwell {
                // The event settled when this stretch of settled samples
                // began (the end may still wait for the last records).
                if !marked {
                    marked = true;
                    mark_settled(session, after, at_ms);
                }
                if !end || session.all_delivered() {
                    return Ok(true);
                }
            }
        } else {
            since = None;
        }
        // Production may outlast the events: the end waits for it, and
        // its timeout starts when production is over.
        if end && !session.production_done() {
            started = Instant::now();
        }
        let timeout = session.settings.settle_timeout();
        if started.elapsed() >= timeout {
            session.progress(&format!(
                "did not settle within {} s; going on",
                timeout.as_secs()
            ));
            return Ok(false);
        }
    }
}
