//! One worker over ten streams against ten single-stream workers, on the
//! same data in one run (the local Kinesis and DynamoDB).
//!
//! (1) Reading: ten streams of ten shards, each pre-filled with 100,000
//!     KPL-aggregated user records of 100 bytes (1,000,000 in all). Layout A:
//!     one `rkcl consume` process (the release binary) with ten `--stream`s,
//!     one lease table. Layout B: ten `rkcl consume` processes, one per
//!     stream, each with its own table. Measured: every record written
//!     (counted from the processes' stdout), records per second from the
//!     start of the processes to the last record, CPU seconds, and the peak
//!     RSS (VmHWM) of the one process against the sum over the ten. The
//!     layouts run in turn, `RKCL_BENCH_RUNS` times (default 2), and
//!     medians are shown.
//! (2) Lease-table cost: in process, one multi-stream `Scheduler` over the
//!     100 shards against ten single-stream schedulers, idle in steady
//!     state for 30 s at a 2 s lease duration; DynamoDB requests counted by
//!     the lease stores, scaled to the default 10 s lease (every lease
//!     interval is a fixed fraction of it) and given per lease-hour.
//!
//! Run with `cargo bench -p rkcl-cli --bench multi_stream`. It prints its
//! figures.
#![allow(clippy::print_stdout)]

#[path = "common/proc.rs"]
mod proc;
use proc::{cpu_seconds, status_kb, with_local_env};

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rkcl::tracker::{MultiStreamConfig, StaticStreams, StreamConfig};
use rkcl::{
    DynamoDbLeaseStore, Kinesis, ProcessRecordsInput, ProcessorError, RecordProcessor, Scheduler,
    SchedulerConfig, ShardInfo, aws::LeaseTableRequests, leases::LeaseStore,
    record::ProducerRecord,
};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::Aggregated;
use rkcl_local::testkit::{create_stream, eventually_every, lease_table, put};

const STREAMS: usize = 10;
const SHARDS: u32 = 10;
const PER_STREAM: usize = 100_000;
const LEASE_DURATION: Duration = Duration::from_secs(2);
/// From the run's lease duration to the default 10 s.
const SCALE: f64 = 5.0;
const STEADY_WINDOW: Duration = Duration::from_secs(30);

fn stream_name(i: usize) -> String {
    format!("bench-stream-{i}")
}

fn consume(local: &Local, app: &str, streams: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rkcl"));
    with_local_env(&mut command, local);
    command.args(["consume", "--app", app]);
    for stream in streams {
        command.args(["--stream", stream]);
    }
    command
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

/// A process whose stdout lines are counted.
fn spawn(mut command: Command, lines: &Arc<AtomicUsize>) -> Child {
    let mut child = command.spawn().expect("the rkcl binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let lines = lines.clone();
    std::thread::spawn(move || {
        // Newlines counted in raw reads: the bench's own share of the CPU
        // stays small next to the workers'.
        let mut stdout = stdout;
        let mut buffer = vec![0_u8; 1 << 16];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 {
                break;
            }
            let read = buffer.get(..n).unwrap_or_default();
            lines.fetch_add(
                read.iter().filter(|b| **b == b'\n').count(),
                Ordering::Relaxed,
            );
        }
    });
    child
}

/// What one layout did.
#[derive(Clone, Copy, Debug)]
struct Reading {
    records_per_second: f64,
    first_record: Duration,
    cpu_seconds: f64,
    peak_rss_mib: f64,
}

/// Runs the processes until every record is written; their figures.
fn read_with(processes: Vec<Command>) -> Reading {
    let lines = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut children: Vec<Child> = processes.into_iter().map(|c| spawn(c, &lines)).collect();
    let total = STREAMS * PER_STREAM;
    let mut peak_kb = vec![0_u64; children.len()];
    let mut cpu = vec![0.0_f64; children.len()];
    let mut first_record = None;
    while lines.load(Ordering::Relaxed) < total {
        if first_record.is_none() && lines.load(Ordering::Relaxed) > 0 {
            first_record = Some(started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} of {total} records after 600 s",
            lines.load(Ordering::Relaxed)
        );
        for (i, child) in children.iter().enumerate() {
            peak_kb[i] = peak_kb[i].max(status_kb(child.id(), "VmHWM:").unwrap_or(0));
            cpu[i] = cpu_seconds(child.id()).unwrap_or(cpu[i]);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    for (i, child) in children.iter().enumerate() {
        peak_kb[i] = peak_kb[i].max(status_kb(child.id(), "VmHWM:").unwrap_or(0));
        cpu[i] = cpu_seconds(child.id()).unwrap_or(cpu[i]);
    }
    for child in &mut children {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for child in &mut children {
        let _ = child.wait();
    }
    Reading {
        records_per_second: total as f64 / elapsed.as_secs_f64(),
        first_record: first_record.unwrap_or(elapsed),
        cpu_seconds: cpu.iter().sum(),
        peak_rss_mib: peak_kb.iter().sum::<u64>() as f64 / 1024.0,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A processor that only takes the records.
struct Idle;

impl RecordProcessor for Idle {
    async fn process_records(
        &mut self,
        _input: &ProcessRecordsInput,
        _checkpointer: &rkcl::Checkpointer,
    ) -> Result<(), ProcessorError> {
        Ok(())
    }
}

fn idle(_: &ShardInfo) -> Idle {
    Idle
}

fn scheduler_config(builder: rkcl::scheduler::SchedulerConfigBuilder, id: &str) -> SchedulerConfig {
    builder
        .worker_id(id)
        .lease_duration(LEASE_DURATION)
        .build()
        .expect("a valid config")
}

/// The requests of several stores, added up.
fn sum(requests: &[LeaseTableRequests]) -> LeaseTableRequests {
    let mut total = LeaseTableRequests::default();
    for r in requests {
        total.get_item += r.get_item;
        total.put_item += r.put_item;
        total.update_item += r.update_item;
        total.delete_item += r.delete_item;
        total.scan += r.scan;
        total.table += r.table;
    }
    total
}

fn per_lease_hour(count: u64, leases: usize, window: Duration) -> f64 {
    count as f64 / leases as f64 / window.as_secs_f64() * 3_600.0 / SCALE
}

/// Steady-state requests of `stores` while their schedulers idle.
async fn steady(stores: &[DynamoDbLeaseStore], leases: usize) -> LeaseTableRequests {
    let held = || async {
        let mut all = 0;
        for store in stores {
            all += store
                .list()
                .await
                .map(|l| l.iter().filter(|l| l.owner.is_some()).count())
                .unwrap_or(0);
        }
        all == leases
    };
    eventually_every(
        "every lease held",
        Duration::from_secs(120),
        Duration::from_millis(500),
        held,
    )
    .await;
    // Let start-up settle (first scans, takes) before counting.
    tokio::time::sleep(LEASE_DURATION * 3).await;
    let before: Vec<LeaseTableRequests> = stores.iter().map(DynamoDbLeaseStore::requests).collect();
    tokio::time::sleep(STEADY_WINDOW).await;
    let after: Vec<LeaseTableRequests> = stores.iter().map(DynamoDbLeaseStore::requests).collect();
    let (before, after) = (sum(&before), sum(&after));
    LeaseTableRequests {
        get_item: after.get_item - before.get_item,
        put_item: after.put_item - before.put_item,
        update_item: after.update_item - before.update_item,
        delete_item: after.delete_item - before.delete_item,
        scan: after.scan - before.scan,
        table: after.table - before.table,
    }
}

fn show(label: &str, r: &LeaseTableRequests, leases: usize) {
    println!(
        "  {label:<34} {:>7.0} {:>7.1} {:>7.1} {:>8.0}",
        per_lease_hour(r.update_item, leases, STEADY_WINDOW),
        per_lease_hour(r.scan, leases, STEADY_WINDOW),
        per_lease_hour(r.get_item, leases, STEADY_WINDOW),
        per_lease_hour(r.total(), leases, STEADY_WINDOW),
    );
}

async fn lease_cost(local: &Local, kinesis: &Kinesis) {
    let leases = STREAMS * SHARDS as usize;
    println!("(2) lease table, per lease-hour at the default 10 s lease ({leases} idle leases):");
    println!(
        "  {:<34} {:>7} {:>7} {:>7} {:>8}",
        "layout", "Update", "Scan", "Get", "all"
    );
    // One worker over every stream.
    let store = lease_table(local, "cost-multi").await;
    let streams = StaticStreams(
        (0..STREAMS)
            .map(|i| StreamConfig::new(&stream_name(i)))
            .collect(),
    );
    let multi = Scheduler::start(
        scheduler_config(
            SchedulerConfig::builder_for_streams("cost-multi", MultiStreamConfig::new(streams)),
            "multi",
        ),
        kinesis.clone(),
        store.clone(),
        idle,
    )
    .await
    .expect("the multi-stream worker starts");
    let one = steady(std::slice::from_ref(&store), leases).await;
    multi.shutdown(Duration::from_secs(10)).await;
    show("1 worker x 10 streams", &one, leases);
    // Ten workers, one per stream.
    let mut stores = Vec::new();
    let mut workers = Vec::new();
    for i in 0..STREAMS {
        let app = format!("cost-single-{i}");
        let store = lease_table(local, &app).await;
        workers.push(
            Scheduler::start(
                scheduler_config(SchedulerConfig::builder(&app, stream_name(i)), &app),
                kinesis.clone(),
                store.clone(),
                idle,
            )
            .await
            .expect("a single-stream worker starts"),
        );
        stores.push(store);
    }
    let ten = steady(&stores, leases).await;
    for worker in workers {
        worker.shutdown(Duration::from_secs(10)).await;
    }
    show("10 workers x 1 stream", &ten, leases);
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("RKCL_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let local = Local::start().await.expect("local services");
    let kinesis = Kinesis::new(local.kinesis_client());
    let names: Vec<String> = (0..STREAMS).map(stream_name).collect();
    for name in &names {
        let stream = create_stream(&kinesis, name, SHARDS).await;
        let records: Vec<ProducerRecord> = (0..PER_STREAM)
            .map(|i| ProducerRecord::new(format!("key-{}", i % 1_000), vec![b'x'; 100]))
            .collect();
        put(&kinesis, &stream, records, Aggregated).await;
    }
    println!(
        "(1) reading {STREAMS} streams x {SHARDS} shards, {} records of 100 B, {runs} runs, medians:",
        STREAMS * PER_STREAM
    );
    let mut multi = Vec::new();
    let mut single = Vec::new();
    for run in 0..runs {
        let app = format!("read-multi-{run}");
        multi.push(read_with(vec![consume(&local, &app, &names)]));
        let processes = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                consume(
                    &local,
                    &format!("read-single-{run}-{i}"),
                    std::slice::from_ref(name),
                )
            })
            .collect();
        single.push(read_with(processes));
    }
    for (label, readings) in [
        ("1 worker x 10 streams", &multi),
        ("10 workers x 1 stream", &single),
    ] {
        println!(
            "  {label:<24} {:>9.0} records/s  first record {:>5.2} s  {:>6.1} CPU-s  {:>7.1} MiB peak RSS (sum)",
            median(readings.iter().map(|r| r.records_per_second).collect()),
            median(
                readings
                    .iter()
                    .map(|r| r.first_record.as_secs_f64())
                    .collect()
            ),
            median(readings.iter().map(|r| r.cpu_seconds).collect()),
            median(readings.iter().map(|r| r.peak_rss_mib).collect()),
        );
    }
    lease_cost(&local, &kinesis).await;
}
