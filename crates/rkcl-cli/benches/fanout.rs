//! Enhanced fan-out side by side: rkcl, kcl-rs and a plain SDK
//! SubscribeToShard loop on the same local Kinesis and DynamoDB.
//!
//! (1) Throughput. One `rkcl_local::Local` and one stream of 4 shards
//!     holding 400,000 user records of 100 bytes, half of them in KPL
//!     aggregates. Each contender reads all of it as a process of its own,
//!     alone, from TRIM_HORIZON, as a new application (its own lease table
//!     and stream consumer). Runs are interleaved; each figure is the median
//!     of 3 runs.
//!     - records/s: the 400,000 user records over the time from the first
//!       record delivered to the last; "from start" over the time from the
//!       process' spawn to the last record, so start-up counts (lease
//!       table, shard sync, lease taking, consumer registration).
//!     - first record: seconds from the spawn to the first record.
//!     - CPU s/GB: user plus system CPU time of the process
//!       (`/proc/PID/stat`) from its first record to its last, per GB of
//!       user record data (400,000 x 100 bytes = 0.04 GB); "total" is its
//!       CPU time from the spawn to the last record, start-up included.
//!     - peak RSS: VmHWM of the process (`/proc/PID/status`) at its last
//!       record.
//!
//!     The contenders:
//!     - rkcl polling: the `rkcl consume` release binary, DynamoDB leases,
//!       default settings. It has no counting mode: it writes each record as
//!       a JSON line, and the bench counts lines, so its figures include
//!       encoding and writing 400,000 JSON lines (about 160 MB), which the
//!       others do not do.
//!     - rkcl fan-out: the same with `--retrieval fan-out`, run only once
//!       `rkcl consume --help` mentions `--retrieval`
//!       (`contenders::rkcl_fan_out_command`).
//!     - rkcl worker, counting, fan-out and polling: rkcl as a library, as
//!       the kcl-rs script uses kcl-rs: this bench binary run again as a
//!       child holding one `Scheduler` with default settings whose processor
//!       only counts (`worker.rs`), so it compares with kcl-rs like for
//!       like (no JSON lines written).
//!     - kcl-rs 0.1.4 from PyPI (a Rust port of the Java KCL with Python
//!       bindings) in fan-out mode, its default, and in polling mode with
//!       its polling defaults (up to 10,000 records per call, 1.5 s between
//!       calls), driven by `benches/peers/kcl_rs_consumer.py`, whose
//!       processor only counts. The bench makes a virtual environment in
//!       `<target dir>/peers/kcl-rs-venv` and installs `kcl-rs==0.1.4`
//!       there unless it is installed already (this needs `python3` 3.11 or
//!       later and PyPI). Its shard sync interval is set to 1 s: at its
//!       default of 60 s a new application's first shard sync waits that
//!       whole minute. It still waits a random 1 to 30 s for another
//!       worker to fill an empty lease table first, as the Java KCL does,
//!       which shows in "first record" and "from start". It publishes
//!       CloudWatch metrics; every endpoint but the local Kinesis and
//!       DynamoDB points at a closed port of 127.0.0.1, so those fail at
//!       once (logged, not counted).
//!     - SDK SubscribeToShard loop, the floor: this bench binary run again
//!       as a child process: it registers a stream consumer, waits until it
//!       is ACTIVE, subscribes to each shard from TRIM_HORIZON (and again
//!       AFTER_SEQUENCE_NUMBER of the last continuation when a subscription
//!       ends) and counts the Kinesis records it receives, aggregates whole.
//!
//! (2) Put-to-delivery latency, on a new `Local`: 400 records of 100 bytes
//!     put one at a time with PutRecord at a steady pace over 10 s to a new
//!     4-shard stream, each carrying its send time (wall clock); the reader
//!     notes when it receives each one. p50 and p99 over the 400 records.
//!     The local Kinesis serves a subscription by reading its log every
//!     200 ms, which is the floor of any fan-out reader here (about 100 ms
//!     at p50, 200 ms at p99). Readers: the SDK SubscribeToShard loop, in
//!     this process; `rkcl consume` polling with `--idle-interval-ms 200`,
//!     for reference; and, once it exists, `rkcl consume --retrieval
//!     fan-out` (`latency::rkcl_fan_out_latency`). For `rkcl consume` the time of
//!     receipt is when its JSON line reaches this process.
//!
//! Run with `cargo bench -p rkcl-cli --bench fanout`. It prints its figures;
//! the children's stderr goes to `<target dir>/peers/logs/`. It takes about
//! four minutes on two cores (kcl-rs' random start-up makes it vary).
//!
//! The modules, in `benches/fanout/`: `process` runs a contender as a child process and reads its
//! figures; `contenders` says how each contender is started (and installs
//! kcl-rs); `subscribe` is the SDK SubscribeToShard loop; `throughput` and
//! `latency` are the two measurements.
#![allow(clippy::print_stdout)]

#[path = "common/proc.rs"]
mod proc;

// A bench's root is its file in benches/; its modules live in a folder of
// its name, as the modules of a non-root file would.
#[path = "fanout/contenders.rs"]
mod contenders;
#[path = "fanout/latency.rs"]
mod latency;
#[path = "fanout/process.rs"]
mod process;
#[path = "fanout/subscribe.rs"]
mod subscribe;
#[path = "fanout/throughput.rs"]
mod throughput;
#[path = "fanout/worker.rs"]
mod worker;

use std::time::{Duration, Instant};

use rkcl_local::Local;

const SHARDS: u32 = 4;
const RECORDS: u64 = 400_000;
const RECORD_SIZE: usize = 100;
const RUNS: usize = 3;
/// How long one contender may take to read everything.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(subscribe::CHILD_ARG) {
        return subscribe::child(&args[1..]).await;
    }
    if args.first().map(String::as_str) == Some(worker::CHILD_ARG) {
        return worker::child(&args[1..]).await;
    }
    let started = Instant::now();
    let fan_out = contenders::rkcl_has_fan_out();
    let local = Local::start().await.unwrap();
    throughput::run(&local, fan_out).await;
    local.shutdown().await;
    latency::run(fan_out).await;
    println!();
    println!("the bench took {:.0} s", started.elapsed().as_secs_f64());
}
