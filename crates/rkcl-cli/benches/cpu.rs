//! CPU per GB of the read path: how much processor time one polling worker
//! spends to read a stream, per GB of user record data.
//!
//! One `rkcl_local::Local` holds two streams of 4 shards, each with 400,000
//! user records of 100 bytes (0.04 GB): `plain` has one Kinesis record per
//! user record, `aggregated` has them all in KPL aggregates. Each contender
//! is a process of its own (so the local servers' CPU is not counted),
//! reads one stream from TRIM_HORIZON as a new application with DynamoDB
//! leases and default settings (so 2 MiB/s and 5 calls/s per shard), and
//! is stopped once it has delivered every record:
//! - counting worker: this bench binary run again as a child holding one
//!   `Scheduler` whose processor only counts (`fanout/worker.rs`, shared
//!   with the fan-out bench).
//! - `rkcl consume`: the release binary, writing a JSON line per record to
//!   a pipe; the bench reads and counts the lines (its own CPU is not the
//!   worker's).
//!
//! CPU s/GB is user plus system CPU time of the worker's process
//! (`/proc/PID/stat`) from its first record to its last, per GB (10^9
//! bytes) of user record data; "total" counts from the spawn, start-up
//! included (lease table, shard sync, lease taking). Median of 3
//! interleaved runs. Goals: 11 CPU s/GB for the counting worker, 1.5 times
//! that (16.5) for `rkcl consume`.
//!
//! Run with `cargo bench -p rkcl-cli --bench cpu`. It prints its figures;
//! the children's stderr goes to `<target dir>/peers/logs/`. Set
//! `RKCL_CPU_ONLY=count` or `=consume` to run one contender only (for
//! profiling).
#![allow(clippy::print_stdout)]

#[path = "common/proc.rs"]
mod proc;

// The fan-out bench's process driver and counting worker, shared.
#[path = "fanout/process.rs"]
#[allow(dead_code)]
mod process;
#[path = "fanout/worker.rs"]
mod worker;

/// The process driver reads the latency bench's lines too; this bench has
/// none.
mod latency {
    pub(crate) fn latency_ms(_line: &[u8]) -> Option<f64> {
        None
    }
}

use std::process::Command;
use std::time::{Duration, Instant};

use rkcl::{Kinesis, record::ProducerRecord};
use rkcl_local::Local;
use rkcl_local::testkit::{Packing, create_stream, put};

use process::{Endpoints, Progress, Run, Stop, local_env, measure};

const SHARDS: u32 = 4;
const RECORDS: u64 = 400_000;
const RECORD_SIZE: usize = 100;
const RUNS: usize = 3;
/// How long one contender may take to read everything.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);
const RKCL: &str = env!("CARGO_BIN_EXE_rkcl");
/// The goal for the counting worker, CPU s/GB.
const GOAL_COUNTING: f64 = 11.0;
/// `rkcl consume` may spend this many times the counting worker's goal.
const CONSUME_FACTOR: f64 = 1.5;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Counting,
    Consume,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Self::Counting => "count",
            Self::Consume => "consume",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Counting => "counting worker (library)",
            Self::Consume => "rkcl consume (JSON lines)",
        }
    }

    fn goal(self) -> f64 {
        match self {
            Self::Counting => GOAL_COUNTING,
            Self::Consume => GOAL_COUNTING * CONSUME_FACTOR,
        }
    }

    fn process(self, endpoints: &Endpoints, app: &str, stream: &str) -> (Command, Progress, Stop) {
        match self {
            Self::Counting => {
                let mut command = Command::new(std::env::current_exe().unwrap());
                command
                    .args([worker::CHILD_ARG, "polling"])
                    .args([&endpoints.kinesis, &endpoints.dynamodb, app, stream])
                    .arg(RECORDS.to_string());
                local_env(&mut command, endpoints);
                (command, Progress::Report, Stop::Stdin)
            }
            Self::Consume => {
                let mut command = Command::new(RKCL);
                command
                    .args(["consume", "--app", app, "--stream", stream])
                    .args(["--worker-id", &format!("{app}-worker")]);
                local_env(&mut command, endpoints);
                (command, Progress::Lines(RECORDS), Stop::Terminate)
            }
        }
    }
}

/// A stream of [`RECORDS`] user records packed as `packing`.
async fn fill(kinesis: &Kinesis, name: &str, packing: Packing) -> u64 {
    let stream = create_stream(kinesis, name, SHARDS).await;
    let records: Vec<ProducerRecord> = (0..RECORDS)
        .map(|i| ProducerRecord::new(format!("key-{i}"), vec![b'x'; RECORD_SIZE]))
        .collect();
    put(kinesis, &stream, records, packing)
        .await
        .kinesis_records
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(worker::CHILD_ARG) {
        return worker::child(&args[1..]).await;
    }
    let only = std::env::var("RKCL_CPU_ONLY").ok();
    let contenders: Vec<Contender> = [Contender::Counting, Contender::Consume]
        .into_iter()
        .filter(|c| only.as_deref().is_none_or(|o| o == c.name()))
        .collect();
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let endpoints = Endpoints::of(&local);
    let mut streams = Vec::new();
    for (name, packing) in [
        ("plain", Packing::Plain),
        ("aggregated", Packing::Aggregated),
    ] {
        let filling = Instant::now();
        let kinesis_records = fill(&kinesis, name, packing).await;
        println!(
            "stream {name}: {RECORDS} user records in {kinesis_records} Kinesis records, put in \
             {:.1} s",
            filling.elapsed().as_secs_f64()
        );
        streams.push(name);
    }
    let mut results: Vec<(&str, Contender, Vec<Run>)> = Vec::new();
    for run in 0..RUNS {
        for stream in &streams {
            for &contender in &contenders {
                let app = format!("{}-{stream}-{run}", contender.name());
                let (command, progress, stop) = contender.process(&endpoints, &app, stream);
                let measured =
                    tokio::task::spawn_blocking(move || measure(&app, command, progress, stop))
                        .await
                        .unwrap();
                let measured = match measured {
                    Ok(measured) => measured,
                    Err(why) => panic!("{} on {stream} failed: {why}", contender.label()),
                };
                assert_eq!(measured.count, RECORDS, "{}", contender.label());
                println!(
                    "  run {run}: {stream:<10} {:<26} CPU {:.2} s reading, {:.2} s total; \
                     {:.1} s reading",
                    contender.label(),
                    measured.cpu_reading,
                    measured.cpu_total,
                    (measured.last - measured.first).as_secs_f64()
                );
                match results
                    .iter_mut()
                    .find(|(s, c, _)| s == stream && *c == contender)
                {
                    Some((_, _, runs)) => runs.push(measured),
                    None => results.push((stream, contender, vec![measured])),
                }
            }
        }
    }
    let gigabytes = (RECORDS as usize * RECORD_SIZE) as f64 / 1e9;
    println!();
    println!(
        "CPU per GB of the read path, {SHARDS} shards, {RECORDS} user records of {RECORD_SIZE} \
         bytes per stream, worker in its own process, median of {RUNS}:"
    );
    println!(
        "  {:<10} {:<26} {:>12} {:>11} {:>10} {:>9}",
        "stream", "worker", "CPU s/GB", "CPU s", "records/s", "peak RSS"
    );
    for (stream, contender, runs) in &results {
        let of = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let per_gb = of(|r| r.cpu_reading) / gigabytes;
        let total = of(|r| r.cpu_total);
        let rate = of(|r| RECORDS as f64 / (r.last - r.first).as_secs_f64());
        let peak = of(|r| r.peak_kib as f64) / 1024.0;
        let goal = contender.goal();
        let verdict = if per_gb <= goal { "met" } else { "not met" };
        println!(
            "  {stream:<10} {:<26} {per_gb:>12.1} {total:>11.2} {rate:>10.0} {peak:>7.1} MiB   \
             goal <= {goal:.1}: {verdict}",
            contender.label()
        );
    }
    println!("  CPU s/GB: from the first record to the last; CPU s: from the spawn, start-up too.");
    local.shutdown().await;
}
