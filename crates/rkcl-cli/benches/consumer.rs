//! A whole consumer on the local Kinesis and DynamoDB: throughput, failover,
//! handoff and the memory of one worker holding many leases.
//!
//! (1) Throughput: 400,000 records of 100 bytes on 4 shards, half of them
//!     KPL-aggregated, read (a) by a plain loop of SDK GetRecords calls that
//!     does not de-aggregate, and (b) by a full rkcl worker: `Scheduler` with a
//!     `DynamoDbLeaseStore`, default settings, a processor that counts
//!     records and checkpoints every second. Both rates are user records
//!     over the time from the first call (for the worker: from
//!     `Scheduler::start`, so lease taking counts) to the last record;
//!     the worker's rate from its first delivery is shown too. Goal: the
//!     worker at 0.9x the plain loop or better. Median of 3 interleaved runs.
//!     Both readers keep Kinesis' read limits per shard, as any reader of a
//!     real stream must: five calls per second and 2 MiB/s (a token bucket
//!     holding one second's worth). The local Kinesis enforces neither, so
//!     the plain loop that paces calls only is shown for reference. A run
//!     lasts 1.5 s (six calls per shard); at a quarter of the data a run was
//!     two calls and fit the 2 MiB burst, and the figure mostly measured
//!     noise.
//! (2) Failover: two workers share a 4-shard stream; one is dropped without
//!     a word (no shutdown, nothing released). Measured: the time until the
//!     survivor holds every lease and has initialized a processor for each.
//! (3) Handoff: the same, but one worker shuts down gracefully; measured
//!     from the call to `shutdown` until the other holds every lease with
//!     its processors initialized.
//!     Both run at a 2 s lease duration and are scaled x5 to the default
//!     10 s, as in the leases bench (every lease interval is a fixed
//!     fraction of the lease duration). Median of 3 runs.
//! (4) Memory: one `rkcl consume` process (the release binary) holding
//!     1,000 leases of an idle 1,000-shard stream (the local Kinesis' default
//!     shard limit, and the most one ListShards page of rkcl holds). After it
//!     holds all of them and has idled for 20 s: VmRSS and VmHWM from
//!     `/proc/<pid>/status`, and its CPU use while idle, at the default
//!     settings. Goals: 25 MB or less, 15 % of a core or less. Then,
//!     10 s later (every shard quiet for over 30 s, so read at the quiet
//!     back-off's cap), the same over another 20 s.
//!     Then SIGTERM: the time until it exits, the leases it released, and
//!     its VmHWM by then (every shard checkpoints and releases at once).
//!
//! Run with `cargo bench -p rkcl-cli --bench consumer`, or with
//! `-- throughput`, `-- failover` or `-- memory` for some parts. It prints
//! its figures.
#![allow(clippy::print_stdout)]

#[path = "common/proc.rs"]
mod proc;
use proc::{cpu_seconds, status_kb, with_local_env};

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rkcl::{
    Checkpointer, DynamoDbLeaseStore, InitializationInput, Kinesis, ProcessRecordsInput,
    ProcessorError, RecordProcessor, Scheduler, SchedulerConfig, ShardInfo, aws::StreamRef,
    leases::LeaseStore, record::ProducerRecord,
};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::{Aggregated, Plain};
use rkcl_local::testkit::{
    ReadLimits, create_stream, eventually_every, lease_table, plain_read_loop, put,
};

const SHARDS: u32 = 4;
const RECORDS: usize = 400_000;
const RECORD_SIZE: usize = 100;
const RUNS: usize = 3;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// The lease duration of the failover and handoff runs.
const LEASE_DURATION: Duration = Duration::from_secs(2);
/// From the run's lease duration to the default 10 s.
const SCALE: f64 = 5.0;
const IDLE_SHARDS: u32 = 1_000;
/// The pause between GetRecords calls on each idle shard of the memory run.
const IDLE_INTERVAL_MS: u64 = 500;
const IDLE_WINDOW: Duration = Duration::from_secs(20);
/// The wait between the first idle window and the settled one.
const SETTLE: Duration = Duration::from_secs(10);

/// Half the records plain, half in KPL aggregates.
async fn fill(kinesis: &Kinesis, stream: &StreamRef) {
    for (packing, first) in [(Plain, 0), (Aggregated, RECORDS / 2)] {
        let records: Vec<ProducerRecord> = (first..first + RECORDS / 2)
            .map(|i| ProducerRecord::new(format!("key-{i}"), vec![b'x'; RECORD_SIZE]))
            .collect();
        put(kinesis, stream, records, packing).await;
    }
}

/// What the counting processors have seen.
#[derive(Debug, Default)]
struct Progress {
    records: AtomicUsize,
    first_delivery: OnceLock<Instant>,
}

/// Counts records and checkpoints every [`CHECKPOINT_EVERY`].
struct Counting {
    progress: Arc<Progress>,
    last_checkpoint: Instant,
}

impl RecordProcessor for Counting {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        self.progress.first_delivery.get_or_init(Instant::now);
        if self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            checkpointer.checkpoint().await?;
            self.last_checkpoint = Instant::now();
        }
        self.progress
            .records
            .fetch_add(input.records.len(), Ordering::SeqCst);
        Ok(())
    }
}

/// One rkcl worker from start to the last record: the records per second
/// from `Scheduler::start` and from the first delivery.
async fn rkcl_worker(local: &Local, kinesis: &Kinesis, app: &str, stream: &str) -> (f64, f64) {
    let store = lease_table(local, app).await;
    let config = SchedulerConfig::builder(app, stream)
        .worker_id("counting")
        .build()
        .unwrap();
    let progress = Arc::new(Progress::default());
    let shared = progress.clone();
    let started = Instant::now();
    let worker = Scheduler::start(config, kinesis.clone(), store, move |_: &ShardInfo| {
        Counting {
            progress: shared.clone(),
            last_checkpoint: Instant::now(),
        }
    })
    .await
    .unwrap();
    eventually_every(
        "the worker to finish",
        Duration::from_secs(120),
        Duration::from_millis(2),
        || progress.records.load(Ordering::SeqCst) >= RECORDS,
    )
    .await;
    let done = Instant::now();
    assert_eq!(progress.records.load(Ordering::SeqCst), RECORDS);
    let report = worker.shutdown(Duration::from_secs(10)).await;
    assert!(report.unfinished_leases.is_empty(), "{report:?}");
    let first = *progress.first_delivery.get().unwrap();
    (
        RECORDS as f64 / (done - started).as_secs_f64(),
        RECORDS as f64 / (done - first).as_secs_f64(),
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn throughput(local: &Local) {
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "throughput", SHARDS).await;
    fill(&kinesis, &stream).await;
    let mut plain = Vec::new();
    let mut calls_only = Vec::new();
    let mut worker = Vec::new();
    let mut from_first = Vec::new();
    let mut kinesis_records = 0;
    // Interleaved runs, as the local servers share the machine's cores with
    // the readers.
    for run in 0..RUNS {
        let started = Instant::now();
        kinesis_records = plain_read_loop(local, &stream, ReadLimits::CallsAndBytes).await;
        plain.push(RECORDS as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        plain_read_loop(local, &stream, ReadLimits::Calls).await;
        calls_only.push(RECORDS as f64 / started.elapsed().as_secs_f64());
        let (total, first) =
            rkcl_worker(local, &kinesis, &format!("throughput-{run}"), "throughput").await;
        worker.push(total);
        from_first.push(first);
    }
    let (plain, calls_only) = (median(plain), median(calls_only));
    let (worker, from_first) = (median(worker), median(from_first));
    println!(
        "throughput, {SHARDS} shards, {RECORDS} user records ({} Kinesis records, half the user \
         records aggregated), median of {RUNS}:",
        kinesis_records
    );
    println!("  plain SDK GetRecords loop (5 calls/s, 2 MiB/s per shard) {plain:>9.0} records/s");
    println!(
        "  rkcl worker (Scheduler, DynamoDB leases)                 {worker:>9.0} records/s -> {:.2}x \
         (goal >= 0.90x); from its first delivery {from_first:.0} records/s",
        worker / plain
    );
    println!(
        "  for reference, the plain loop pacing calls only          {calls_only:>9.0} records/s \
         (above Kinesis' 2 MiB/s per shard: AWS would throttle it)"
    );
}

/// The shards whose processors are initialized and not yet stopped.
type Active = Arc<Mutex<BTreeSet<String>>>;

/// Tracks its shard in [`Active`] from `initialize` until it stops.
struct Tracked {
    shard: String,
    active: Active,
}

impl RecordProcessor for Tracked {
    async fn initialize(&mut self, _: &InitializationInput) -> Result<(), ProcessorError> {
        self.active.lock().unwrap().insert(self.shard.clone());
        Ok(())
    }

    async fn process_records(
        &mut self,
        _: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        Ok(checkpointer.checkpoint().await?)
    }

    async fn lease_lost(&mut self) {
        self.active.lock().unwrap().remove(&self.shard);
    }

    async fn shutdown_requested(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        let checkpointed = checkpointer.checkpoint().await;
        self.active.lock().unwrap().remove(&self.shard);
        Ok(checkpointed?)
    }
}

async fn tracked_worker(
    kinesis: &Kinesis,
    store: &DynamoDbLeaseStore,
    stream: &str,
    id: &str,
) -> (Scheduler, Active) {
    let config = SchedulerConfig::builder(store.table(), stream)
        .worker_id(id)
        .lease_duration(LEASE_DURATION)
        .build()
        .unwrap();
    let active = Active::default();
    let shared = active.clone();
    let worker = Scheduler::start(
        config,
        kinesis.clone(),
        store.clone(),
        move |s: &ShardInfo| Tracked {
            shard: s.shard_id.as_str().to_owned(),
            active: shared.clone(),
        },
    )
    .await
    .unwrap();
    (worker, active)
}

/// Whether `worker` holds `leases` leases with as many processors running.
fn holds(worker: &Scheduler, active: &Active, leases: usize) -> bool {
    worker.held_leases().len() == leases && active.lock().unwrap().len() == leases
}

/// How often the failover runs check their condition: the resolution of
/// the times they report.
const CHECK_EVERY: Duration = Duration::from_millis(10);

/// Two workers settle on two leases each; one leaves (dropped, or shut down
/// gracefully) and the time until the other runs all four is returned.
async fn leave(local: &Local, kinesis: &Kinesis, app: &str, graceful: bool) -> Duration {
    let store = lease_table(local, app).await;
    let (a, a_active) = tracked_worker(kinesis, &store, "failover", "a").await;
    let (b, b_active) = tracked_worker(kinesis, &store, "failover", "b").await;
    eventually_every(
        "two leases each",
        Duration::from_secs(60),
        CHECK_EVERY,
        || holds(&a, &a_active, 2) && holds(&b, &b_active, 2),
    )
    .await;
    // No handoff in flight when one leaves.
    eventually_every(
        "handoffs to settle",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            store
                .list()
                .await
                .unwrap()
                .iter()
                .all(|l| l.checkpoint_owner.is_none())
        },
    )
    .await;
    let started = Instant::now();
    if graceful {
        let report = a.shutdown(Duration::from_secs(10)).await;
        assert!(report.unfinished_leases.is_empty(), "{report:?}");
    } else {
        drop(a);
    }
    eventually_every(
        "the survivor runs every shard",
        Duration::from_secs(60),
        CHECK_EVERY,
        || holds(&b, &b_active, SHARDS as usize),
    )
    .await;
    let taken = started.elapsed();
    b.shutdown(Duration::from_secs(10)).await;
    taken
}

async fn failover(local: &Local) {
    let kinesis = Kinesis::new(local.kinesis_client());
    create_stream(&kinesis, "failover", SHARDS).await;
    let mut dropped = Vec::new();
    let mut graceful = Vec::new();
    for run in 0..RUNS {
        dropped.push(leave(local, &kinesis, &format!("dropped-{run}"), false).await);
        graceful.push(leave(local, &kinesis, &format!("graceful-{run}"), true).await);
    }
    let show = |times: &[Duration]| {
        let seconds = median(times.iter().map(Duration::as_secs_f64).collect());
        let all: Vec<String> = times
            .iter()
            .map(|t| format!("{:.2}", t.as_secs_f64()))
            .collect();
        format!(
            "{seconds:.2} s at 2 s leases, {:.1} s scaled to 10 s (runs: {} s)",
            seconds * SCALE,
            all.join(", ")
        )
    };
    println!(
        "2 workers x {SHARDS} shards, one leaves; until the other runs every shard, median of {RUNS}:"
    );
    println!(
        "  failover (worker dropped, no shutdown): {}",
        show(&dropped)
    );
    println!(
        "  handoff (graceful shutdown):            {}",
        show(&graceful)
    );
}

async fn memory() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    create_stream(&kinesis, "idle", IDLE_SHARDS).await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_rkcl"));
    with_local_env(&mut command, &local);
    let mut child = command
        .args(["consume", "--app", "idle-app", "--stream", "idle"])
        .args(["--worker-id", "idle-worker"])
        .args(["--idle-interval-ms", &IDLE_INTERVAL_MS.to_string()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let store = DynamoDbLeaseStore::new(local.dynamodb_client(), "idle-app");
    let all_held = eventually_every(
        "rkcl consume to hold every lease",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || {
            assert!(child.try_wait().unwrap().is_none(), "rkcl consume exited");
            let store = &store;
            async move {
                // The table appears once the process has created it.
                store.list().await.is_ok_and(|leases| {
                    leases.len() == IDLE_SHARDS as usize
                        && leases
                            .iter()
                            .all(|l| l.owner.as_deref() == Some("idle-worker"))
                })
            }
        },
    )
    .await;
    // The share of a core used over the next idle window.
    let cpu_over_window = || async move {
        let cpu_before = cpu_seconds(pid).unwrap_or_default();
        tokio::time::sleep(IDLE_WINDOW).await;
        (cpu_seconds(pid).unwrap_or_default() - cpu_before) / IDLE_WINDOW.as_secs_f64() * 100.0
    };
    let cpu = cpu_over_window().await;
    let rss = status_kb(pid, "VmRSS:").unwrap();
    let hwm = status_kb(pid, "VmHWM:").unwrap();
    let threads = status_kb(pid, "Threads:").unwrap();
    // Every shard quiet for more than 30 s: the quiet back-off at its cap.
    tokio::time::sleep(SETTLE).await;
    let settled_cpu = cpu_over_window().await;
    let settled_rss = status_kb(pid, "VmRSS:").unwrap();
    assert!(child.try_wait().unwrap().is_none(), "rkcl consume exited");
    // A graceful stop: every shard checkpoints and releases at once.
    let stopping = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut shutdown_hwm = hwm;
    while child.try_wait().unwrap().is_none() {
        // The process may be gone between the check and the read.
        if let Some(kb) = status_kb(pid, "VmHWM:") {
            shutdown_hwm = kb;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(60),
            "rkcl consume did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = stopping.elapsed();
    let released = store
        .list()
        .await
        .unwrap()
        .iter()
        .filter(|l| l.owner.is_none())
        .count();
    println!(
        "memory, one `rkcl consume` process holding {IDLE_SHARDS} leases of an idle \
         {IDLE_SHARDS}-shard stream (idle interval {IDLE_INTERVAL_MS} ms, default 10 s leases):"
    );
    println!(
        "  all leases held after {:.1} s; after {} s idle: VmRSS {:.1} MiB, VmHWM {:.1} MiB \
         (goal <= 25 MB), {threads} threads, CPU {cpu:.0}% of one core while idle (goal <= 15%)",
        all_held.as_secs_f64(),
        IDLE_WINDOW.as_secs(),
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
    );
    println!(
        "  settled (every shard quiet for over 30 s, reads at the quiet cap), the next {} s: \
         VmRSS {:.1} MiB, CPU {settled_cpu:.0}% of one core",
        IDLE_WINDOW.as_secs(),
        settled_rss as f64 / 1024.0,
    );
    println!(
        "  SIGTERM: exited after {:.1} s with {released} of {IDLE_SHARDS} leases released; \
         VmHWM by then {:.1} MiB",
        stopped.as_secs_f64(),
        shutdown_hwm as f64 / 1024.0,
    );
    local.shutdown().await;
}

#[tokio::main]
async fn main() {
    if wanted("throughput") || wanted("failover") {
        let local = Local::start().await.unwrap();
        if wanted("throughput") {
            throughput(&local).await;
        }
        if wanted("failover") {
            failover(&local).await;
        }
        local.shutdown().await;
    }
    if wanted("memory") {
        memory().await;
    }
}

/// Whether the command line asks for `part` (no part named: every part).
fn wanted(part: &str) -> bool {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    named.is_empty() || named.iter().any(|arg| arg == part)
}
