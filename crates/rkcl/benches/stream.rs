//! The Stream API against the record-processor API, and its memory bound.
//!
//! (a) Records per second through `Consumer::records()` with a commit per
//!     record (automatic checkpoints at the defaults) against a
//!     `RecordProcessor` that counts and checkpoints every second, over the
//!     same data (4 shards, 400,000 user records, half of them in KPL
//!     aggregates) in the same run, each with its own lease table, both
//!     from TRIM_HORIZON to the last record. Median of three alternating
//!     runs. Goal: the stream at least 0.9x the processor.
//! (b) A user that commits nothing under a 64 MiB in-flight limit (16 MiB
//!     per shard, 4 shards, about 120 MiB of 1 KiB records waiting): the
//!     records and bytes delivered before the shards stop, and the peak
//!     resident memory (VmHWM) of the consumer, which runs in a child
//!     process of this bench so the local servers' memory is not counted.
//!     The idle baseline is the same child on an empty 4-shard stream (its
//!     VmHWM after 10 s without records). Goal: peak at most 1.5 x 64 MiB
//!     plus that baseline.
//!
//! Run with `cargo bench -p rkcl --bench stream`, or with `-- throughput` or
//! `-- memory` for one part. It prints its figures.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rkcl::{
    Checkpointer, Consumer, ConsumerConfig, DynamoDbLeaseStore, Kinesis, ProcessRecordsInput,
    ProcessorError, RecordProcessor, Scheduler, SchedulerConfig, ShardInfo, aws::StreamRef,
    record::ProducerRecord,
};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::{Aggregated, Plain};
use rkcl_local::testkit::{create_stream, lease_table, put};

const RECORDS: usize = 400_000;

async fn fill(local: &Local) -> (Kinesis, StreamRef) {
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "bench", 4).await;
    for packing in [Plain, Aggregated] {
        let records: Vec<ProducerRecord> = (0..RECORDS / 2)
            .map(|i| ProducerRecord::new(format!("key-{}", i % 1000), vec![b'x'; 100]))
            .collect();
        put(&kinesis, &stream, records, packing).await;
    }
    (kinesis, stream)
}

fn scheduler_config(app: &str) -> SchedulerConfig {
    SchedulerConfig::builder(app, "bench")
        .worker_id("bench")
        .build()
        .unwrap()
}

struct Counting {
    count: Arc<AtomicUsize>,
    last_checkpoint: Instant,
}

impl RecordProcessor for Counting {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        self.count.fetch_add(input.records.len(), Ordering::Relaxed);
        if self.last_checkpoint.elapsed() >= Duration::from_secs(1) {
            checkpointer.checkpoint().await?;
            self.last_checkpoint = Instant::now();
        }
        Ok(())
    }
}

/// Seconds until the processor API has seen every record.
async fn processor_run(local: &Local, kinesis: &Kinesis, run: usize) -> f64 {
    let app = format!("bench-processor-{run}");
    let store = lease_table(local, &app).await;
    let count = Arc::new(AtomicUsize::new(0));
    let factory = {
        let count = count.clone();
        move |_: &ShardInfo| Counting {
            count: count.clone(),
            last_checkpoint: Instant::now(),
        }
    };
    let started = Instant::now();
    let scheduler = Scheduler::start(scheduler_config(&app), kinesis.clone(), store, factory)
        .await
        .unwrap();
    while count.load(Ordering::Relaxed) < RECORDS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    scheduler.shutdown(Duration::from_secs(10)).await;
    seconds
}

/// Seconds until `records()` has yielded (and the user committed) every
/// record.
async fn stream_run(local: &Local, kinesis: &Kinesis, run: usize) -> f64 {
    let app = format!("bench-stream-{run}");
    let store = lease_table(local, &app).await;
    let started = Instant::now();
    let consumer = Consumer::start(
        ConsumerConfig::builder(scheduler_config(&app))
            .build()
            .unwrap(),
        kinesis.clone(),
        store,
    )
    .await
    .unwrap();
    let handle = consumer.shutdown_handle();
    let mut records = consumer.records();
    let mut count = 0;
    while count < RECORDS {
        let record = records.next().await.unwrap().unwrap();
        record.commit();
        count += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    handle.trigger();
    while records.next().await.is_some() {}
    seconds
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn throughput() {
    let local = Local::start().await.unwrap();
    let (kinesis, _) = fill(&local).await;
    let (mut processor, mut stream) = (Vec::new(), Vec::new());
    for run in 0..3 {
        processor.push(processor_run(&local, &kinesis, run).await);
        stream.push(stream_run(&local, &kinesis, run).await);
    }
    let rate = |seconds: f64| RECORDS as f64 / seconds;
    println!("(a) {RECORDS} user records over 4 shards (half aggregated), median of 3");
    println!("    processor runs (s): {processor:.2?}");
    println!("    stream runs (s):    {stream:.2?}");
    let (p, s) = (median(processor), median(stream));
    println!(
        "    RecordProcessor, checkpoint every 1 s: {:>9.0} records/s",
        rate(p)
    );
    println!(
        "    records() + commit per record:         {:>9.0} records/s",
        rate(s)
    );
    println!("    ratio stream / processor: {:.2}x (goal >= 0.9x)", p / s);
    local.shutdown().await;
}

async fn bounded_memory() {
    const RECORD: usize = 1024;
    const RECORDS: usize = 120_000;
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "bench", 4).await;
    for part in 0..12 {
        let records: Vec<ProducerRecord> = (0..RECORDS / 12)
            .map(|i| ProducerRecord::new(format!("key-{part}-{i}"), vec![b'y'; RECORD]))
            .collect();
        put(&kinesis, &stream, records, Plain).await;
    }
    create_stream(&kinesis, "bench-empty", 4).await;
    lease_table(&local, "bench-memory").await;
    lease_table(&local, "bench-baseline").await;
    let child = |mode: &str, stream: &str, app: &str| {
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .env(CHILD, mode)
            .env("RKCL_BENCH_STREAM", stream)
            .env("RKCL_BENCH_APP", app)
            .env("RKCL_BENCH_KINESIS", local.kinesis_endpoint())
            .env("RKCL_BENCH_DYNAMODB", local.dynamodb_endpoint());
        tokio::task::spawn_blocking(move || command.output())
    };
    let baseline = child("memory", "bench-empty", "bench-baseline")
        .await
        .unwrap()
        .unwrap();
    let baseline = String::from_utf8_lossy(&baseline.stdout);
    let baseline_kb = kb_after(&baseline, "VmHWM ");
    let run = child("memory", "bench", "bench-memory")
        .await
        .unwrap()
        .unwrap();
    let run = String::from_utf8_lossy(&run.stdout);
    println!(
        "(b) commit nothing, 64 MiB in flight allowed, {} MiB waiting in the stream",
        (RECORDS * RECORD) >> 20
    );
    print!("{run}");
    let peak_kb = kb_after(&run, "VmHWM ");
    let goal_kb = 96 * 1024 + baseline_kb;
    println!(
        "    idle baseline (the same consumer on an empty 4-shard stream): VmHWM {:.1} MiB",
        baseline_kb as f64 / 1024.0
    );
    println!(
        "    peak {:.1} MiB vs goal 1.5 x 64 MiB + baseline = {:.1} MiB: {}",
        peak_kb as f64 / 1024.0,
        goal_kb as f64 / 1024.0,
        if peak_kb <= goal_kb { "met" } else { "missed" }
    );
    local.shutdown().await;
}

/// The number of kB after `label` in a child's report.
fn kb_after(report: &str, label: &str) -> u64 {
    report
        .split(label)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0)
}

/// The child process of (b): one consumer that keeps every record and
/// commits none, until nothing arrives for 10 s (the 2 MiB/s read budget
/// of a shard spaces big batches out by seconds).
async fn commit_nothing() {
    let kinesis = std::env::var("RKCL_BENCH_KINESIS").unwrap();
    let dynamodb = std::env::var("RKCL_BENCH_DYNAMODB").unwrap();
    let stream = std::env::var("RKCL_BENCH_STREAM").unwrap();
    let app = std::env::var("RKCL_BENCH_APP").unwrap();
    let store = DynamoDbLeaseStore::new(rkcl_local::dynamodb_client(&dynamodb), &app);
    let config = ConsumerConfig::builder(
        SchedulerConfig::builder(&app, &stream)
            .worker_id("bench")
            .build()
            .unwrap(),
    )
    .max_in_flight(1_000_000, 64 << 20)
    .max_in_flight_per_shard(1_000_000, 16 << 20)
    .build()
    .unwrap();
    let consumer = Consumer::start(
        config,
        Kinesis::new(rkcl_local::kinesis_client(&kinesis)),
        store,
    )
    .await
    .unwrap();
    let mut records = consumer.records();
    let mut kept = Vec::new();
    let started = Instant::now();
    let mut last = Instant::now();
    while let Ok(Some(record)) = tokio::time::timeout(Duration::from_secs(10), records.next()).await
    {
        kept.push(record.unwrap());
        last = Instant::now();
    }
    let bytes: usize = kept
        .iter()
        .map(|r| r.data().len() + r.partition_key().len())
        .sum();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map_or("?".to_owned(), |v| v.trim().to_owned())
    };
    println!(
        "    delivered {} records, {:.1} MiB, in {:.1} s; then the shards stopped",
        kept.len(),
        bytes as f64 / (1 << 20) as f64,
        last.duration_since(started).as_secs_f64()
    );
    println!(
        "    consumer process: VmHWM {} (peak), VmRSS {}",
        field("VmHWM:"),
        field("VmRSS:")
    );
    // Exit without a flush: nothing was committed.
    std::process::exit(0);
}

/// Whether the command line asks for `part` (no part named: every part).
fn wanted(part: &str) -> bool {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    named.is_empty() || named.iter().any(|arg| arg == part)
}

/// Set in the child process of (b).
const CHILD: &str = "RKCL_BENCH_CHILD";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if std::env::var_os(CHILD).is_some() {
            commit_nothing().await;
        }
        if wanted("throughput") {
            throughput().await;
        }
        if wanted("memory") {
            bounded_memory().await;
        }
    });
}
