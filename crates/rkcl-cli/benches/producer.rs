//! Producers side by side: rkcl's `Producer::send`, aiokpl and a plain
//! boto3 PutRecords loop writing to the same local Kinesis.
//!
//! One `rkcl_local::Local`; every run of every contender writes 1,000,000
//! records of 100 bytes (partition key: the record's index in decimal) into
//! a new stream of its own of [`SHARDS`] shards, as a process of its own;
//! aiokpl writes [`AIOKPL_RECORDS`] (40,000) instead, as at well under
//! 1,000 records/s here a million would take over 20 minutes a run; its
//! figures are per record and per byte all the same, but include more of
//! its start (the first 100 ms of lingering, its shard map).
//! Runs are interleaved (each contender once, then each again); each figure
//! is the median of [`RUNS`] runs.
//! - records/s: the records over the time from the first send to the last
//!   receipt, as the contender times it.
//! - CPU s/GB: user plus system CPU time of the contender's process
//!   (`/proc/PID/stat`) over the same span (from its `first` line to its
//!   `done` line), per GB of user data (1,000,000 x 100 bytes = 0.1 GB).
//!   The local Kinesis runs in the bench's process, so its CPU is not
//!   counted.
//! - p50/p99: put-to-receipt latency, the time from handing a record over
//!   to learning it was written, measured inside the contender: for rkcl
//!   every record (`send` to its `Receipt`), for aiokpl one record in 100
//!   (`put_record` to its `Outcome`), for boto3 every call (building the
//!   call of 500 to its answer). At full speed it is mostly time queued
//!   behind earlier records, so the latency goal is checked on paced runs.
//!
//! The contenders:
//! - rkcl send, aggregated and plain: this bench binary run again as a child
//!   (`producer/child.rs`): one `Producer`, default settings (linger
//!   100 ms, rate limit 100 %, 100,000 outstanding records) but
//!   aggregation, 4 tasks calling `send` as fast as the producer takes
//!   records, each waiting for at most 20,000 receipts at once (so `send`
//!   itself never waits for room).
//! - rkcl send, paced: the same at 10,000 records/s for 30,000 records
//!   (2.5 records/ms per shard, far below every limit): the latency goal,
//!   p99 at most linger + 50 ms when nothing throttles.
//! - aiokpl 0.2.0 from PyPI (a pure-Python KPL), aggregated (its default)
//!   and plain (`aggregation_enabled=False`), driven by
//!   `benches/peers/aiokpl_producer.py`: 4 asyncio tasks awaiting
//!   `put_record` (it wrote about 800 records/s on 2 cores in a trial of
//!   20,000 records), aiokpl defaults otherwise (100 ms buffering, the same
//!   per-shard rate limits, 100,000 outstanding records).
//! - boto3 PutRecords loop: `benches/peers/boto3_put_records.py`, 4 threads
//!   with a client each, calls of 500 records, no aggregation.
//!
//! The bench makes a virtual environment in `<target dir>/peers/producer-venv`
//! and installs aiokpl 0.2.0, aiobotocore 3.10.0, boto3 1.43.117 and
//! botocore 1.43.117 there unless they are installed already (this needs
//! `python3` 3.10 or later and PyPI); without it only rkcl runs.
//!
//! Rate limits: the local Kinesis does not enforce write limits here
//! (its default), but rkcl and aiokpl pace each shard at AWS' limits
//! (1,000 Kinesis records/s and 1 MiB/s), and rkcl cannot be set above
//! 100 % of them. On 4 shards that would cap a plain writer at 4,000
//! records/s, and an aggregating one at about 4 MiB/s of aggregates, so the
//! figure would be the limit, not the producer. The streams therefore have
//! [`SHARDS`] shards: the caps (printed with the table) sit far above what
//! any contender reaches here, and a figure near its cap is marked.
//!
//! Run with `cargo bench -p rkcl-cli --bench producer`. It prints its
//! figures; the children's stderr goes to `<target dir>/peers/logs/`.
//! `PRODUCER_BENCH_RECORDS` and `PRODUCER_BENCH_RUNS` shrink it for a quick
//! try.
#![allow(clippy::print_stdout)]

#[path = "common/proc.rs"]
mod proc;

// A bench's root is its file in benches/; its modules live in a folder of
// its name, as the modules of a non-root file would.
#[path = "producer/child.rs"]
mod child;
#[path = "producer/process.rs"]
mod process;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rkcl::Kinesis;
use rkcl_local::testkit::create_stream;
use rkcl_local::{KinesisSettings, Local};

use process::{AIOKPL_VERSION, BOTO3_VERSION, Run, local_env, measure};

const SHARDS: u32 = 128;
const RECORDS: u64 = 1_000_000;
const RECORD_SIZE: usize = 100;
const RUNS: usize = 2;
/// The paced runs: their rate and their records.
const PACED_RATE: u64 = 10_000;
const PACED_RECORDS: u64 = 30_000;
/// aiokpl's records per run: it writes well under 1,000 records/s here, so
/// 1,000,000 would take over 20 minutes a run.
const AIOKPL_RECORDS: u64 = 40_000;
/// The producers' linger (rkcl's default), for the latency goal.
const LINGER_MS: f64 = 100.0;
/// How long one run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
const AIOKPL_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/peers/aiokpl_producer.py"
);
const BOTO3_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/peers/boto3_put_records.py"
);

/// A number from the environment, for a quick try, or the default.
fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A writer, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Contender {
    RkclAggregated,
    RkclPlain,
    AiokplAggregated,
    AiokplPlain,
    Boto3,
    RkclAggregatedPaced,
    RkclPlainPaced,
}

impl Contender {
    const ALL: [Self; 7] = [
        Self::RkclAggregated,
        Self::RkclPlain,
        Self::AiokplAggregated,
        Self::AiokplPlain,
        Self::Boto3,
        Self::RkclAggregatedPaced,
        Self::RkclPlainPaced,
    ];

    fn label(self) -> String {
        match self {
            Self::RkclAggregated => "rkcl send, aggregated".to_owned(),
            Self::RkclPlain => "rkcl send, plain".to_owned(),
            Self::AiokplAggregated => format!("aiokpl {AIOKPL_VERSION}, aggregated"),
            Self::AiokplPlain => format!("aiokpl {AIOKPL_VERSION}, plain"),
            Self::Boto3 => format!("boto3 {BOTO3_VERSION} put_records loop"),
            Self::RkclAggregatedPaced => format!("rkcl send, aggregated, {PACED_RATE}/s"),
            Self::RkclPlainPaced => format!("rkcl send, plain, {PACED_RATE}/s"),
        }
    }

    /// Its name in stream names and log files.
    fn name(self) -> &'static str {
        match self {
            Self::RkclAggregated => "rkcl-aggregated",
            Self::RkclPlain => "rkcl-plain",
            Self::AiokplAggregated => "aiokpl-aggregated",
            Self::AiokplPlain => "aiokpl-plain",
            Self::Boto3 => "boto3",
            Self::RkclAggregatedPaced => "rkcl-aggregated-paced",
            Self::RkclPlainPaced => "rkcl-plain-paced",
        }
    }

    fn python(self) -> bool {
        matches!(
            self,
            Self::AiokplAggregated | Self::AiokplPlain | Self::Boto3
        )
    }

    fn paced(self) -> bool {
        matches!(self, Self::RkclAggregatedPaced | Self::RkclPlainPaced)
    }

    /// The most records/s the per-shard rate limit lets it write on
    /// [`SHARDS`] shards, if it keeps one: a plain record is one Kinesis
    /// record; an aggregated one costs its data, its partition key in the
    /// aggregate's key table and about 10 bytes of framing.
    fn cap(self) -> Option<f64> {
        let shards = f64::from(SHARDS);
        match self {
            Self::RkclPlain | Self::AiokplPlain | Self::RkclPlainPaced => Some(1_000.0 * shards),
            Self::RkclAggregated | Self::AiokplAggregated | Self::RkclAggregatedPaced => {
                Some(1024.0 * 1024.0 * shards / (RECORD_SIZE as f64 + 16.0))
            }
            Self::Boto3 => None,
        }
    }

    /// The records of one run, given the bench's records per run.
    fn records(self, records: u64) -> u64 {
        match self {
            Self::RkclAggregatedPaced | Self::RkclPlainPaced => PACED_RECORDS.min(records),
            Self::AiokplAggregated | Self::AiokplPlain => AIOKPL_RECORDS.min(records),
            _ => records,
        }
    }

    fn command(self, python: &Path, kinesis: &str, stream: &str, records: u64) -> Command {
        let records = self.records(records);
        let records_arg = records.to_string();
        let size = RECORD_SIZE.to_string();
        let mut command = if self.python() {
            let mut command = Command::new(python);
            let script = if self == Self::Boto3 {
                BOTO3_SCRIPT
            } else {
                AIOKPL_SCRIPT
            };
            command
                .arg(script)
                .args(["--endpoint", kinesis, "--stream", stream])
                .args(["--records", &records_arg, "--size", &size]);
            if self == Self::AiokplPlain {
                command.arg("--no-aggregate");
            }
            command
        } else {
            let packing = match self {
                Self::RkclAggregated | Self::RkclAggregatedPaced => "aggregated",
                _ => "plain",
            };
            let rate = if self.paced() { PACED_RATE } else { 0 };
            let mut command = Command::new(std::env::current_exe().unwrap());
            command
                .args([child::CHILD_ARG, kinesis, stream, packing])
                .args([records.to_string(), rate.to_string()]);
            command
        };
        local_env(&mut command, kinesis);
        command
    }
}

/// 1000000 as 1M, 40000 as 40k.
fn thousands(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// A figure, or a dash.
fn figure(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// A contender's medians: records/s, CPU s/GB, p50 and p99 in ms.
#[derive(Clone, Copy, Debug)]
struct Medians {
    rate: f64,
    cpu_per_gb: f64,
    p50: Option<f64>,
    p99: Option<f64>,
}

fn medians(runs: &[Run], records: u64) -> Option<Medians> {
    if runs.is_empty() {
        return None;
    }
    let gb = (records * RECORD_SIZE as u64) as f64 / 1e9;
    let optional = |values: Vec<Option<f64>>| -> Option<f64> {
        let values: Option<Vec<f64>> = values.into_iter().collect();
        values.map(median)
    };
    Some(Medians {
        rate: median(
            runs.iter()
                .map(|r| r.report.count as f64 / r.report.seconds)
                .collect(),
        ),
        cpu_per_gb: median(runs.iter().map(|r| r.cpu / gb).collect()),
        p50: optional(runs.iter().map(|r| r.report.p50_ms).collect()),
        p99: optional(runs.iter().map(|r| r.report.p99_ms).collect()),
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(child::CHILD_ARG) {
        return child::child(&args[1..]).await;
    }
    let started = Instant::now();
    let records = setting("PRODUCER_BENCH_RECORDS", RECORDS);
    let runs = setting("PRODUCER_BENCH_RUNS", RUNS as u64) as usize;
    let installing = Instant::now();
    let python: Result<PathBuf, String> =
        tokio::task::spawn_blocking(process::python).await.unwrap();
    match &python {
        Ok(python) => println!(
            "aiokpl {AIOKPL_VERSION} and boto3 {BOTO3_VERSION} ready in {:.1} s: {}",
            installing.elapsed().as_secs_f64(),
            python.display()
        ),
        Err(why) => println!("aiokpl and boto3 could not be installed, not run: {why}"),
    }
    // Every run writes into a stream of its own; the default limit of 1,000
    // shards would not hold them all.
    let settings = KinesisSettings {
        shard_limit: 100_000,
        ..KinesisSettings::default()
    };
    let local = Local::builder()
        .kinesis_settings(settings)
        .start()
        .await
        .unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let endpoint = local.kinesis_endpoint().to_owned();
    println!(
        "{records} records of {RECORD_SIZE} bytes per run, {SHARDS} shards per stream, \
         {runs} interleaved runs; local Kinesis write limits off"
    );
    let mut results: BTreeMap<Contender, Vec<Run>> = BTreeMap::new();
    let mut failures: BTreeMap<Contender, Vec<String>> = BTreeMap::new();
    for run in 0..runs {
        for contender in Contender::ALL {
            let Ok(python) = python.clone().or_else(|_| {
                if contender.python() {
                    Err(())
                } else {
                    Ok(PathBuf::new())
                }
            }) else {
                continue;
            };
            let stream = format!("{}-{run}", contender.name());
            create_stream(&kinesis, &stream, SHARDS).await;
            let command = contender.command(&python, &endpoint, &stream, records);
            let name = stream.clone();
            let measured = tokio::task::spawn_blocking(move || measure(&name, command))
                .await
                .unwrap();
            let expected = contender.records(records);
            match measured {
                Ok(r) if r.report.count == expected => {
                    println!(
                        "run {run}, {}: {:.0} records/s, {:.2} CPU s, p50/p99 {}/{} ms",
                        contender.label(),
                        r.report.count as f64 / r.report.seconds,
                        r.cpu,
                        figure(r.report.p50_ms, 1),
                        figure(r.report.p99_ms, 1),
                    );
                    results.entry(contender).or_default().push(r);
                }
                Ok(r) => {
                    let why = format!("wrote {} of {expected} records", r.report.count);
                    println!("run {run}, {}: {why}", contender.label());
                    failures.entry(contender).or_default().push(why);
                }
                Err(why) => {
                    println!("run {run}, {}: failed: {why}", contender.label());
                    failures.entry(contender).or_default().push(why);
                }
            }
        }
    }
    local.shutdown().await;

    println!();
    println!(
        "{:<44} {:>11} {:>10} {:>17} {:>6} {:>11}",
        "contender (records per run)", "records/s", "CPU s/GB", "p50/p99 ms", "runs", "rate cap"
    );
    let mut table: BTreeMap<Contender, Medians> = BTreeMap::new();
    for contender in Contender::ALL {
        let runs_ok = results.get(&contender).map_or(0, Vec::len);
        let expected = contender.records(records);
        let Some(m) = results.get(&contender).and_then(|r| medians(r, expected)) else {
            let why = if contender.python() && python.is_err() {
                "not run: aiokpl/boto3 could not be installed".to_owned()
            } else {
                failures
                    .get(&contender)
                    .and_then(|f| f.first().cloned())
                    .unwrap_or_default()
            };
            println!("{:<44} {why}", contender.label());
            continue;
        };
        table.insert(contender, m);
        let capped = contender
            .cap()
            .is_some_and(|cap| !contender.paced() && m.rate > 0.8 * cap);
        println!(
            "{:<44} {:>11.0} {:>10.1} {:>17} {:>6} {:>11}{}",
            format!("{} ({})", contender.label(), thousands(expected)),
            m.rate,
            m.cpu_per_gb,
            format!("{}/{}", figure(m.p50, 1), figure(m.p99, 1)),
            format!("{runs_ok}/{runs}"),
            figure(contender.cap(), 0),
            if capped { " near its cap" } else { "" }
        );
    }
    println!();
    println!(
        "rate cap: records/s the per-shard pacing of rkcl and aiokpl (AWS' 1,000 records/s and \
         1 MiB/s per shard) allows on {SHARDS} shards; boto3 keeps none"
    );
    println!("goals of issue 19:");
    if let (Some(rkcl), Some(aiokpl)) = (
        table.get(&Contender::RkclAggregated),
        table.get(&Contender::AiokplAggregated),
    ) {
        let speed = rkcl.rate / aiokpl.rate;
        let cpu = rkcl.cpu_per_gb / aiokpl.cpu_per_gb;
        println!(
            "  aggregated: rkcl writes {speed:.1}x aiokpl's records/s (goal >= 5x: {}) at \
             {cpu:.2}x its CPU per GB (goal <= 0.2x: {})",
            if speed >= 5.0 { "met" } else { "missed" },
            if cpu <= 0.2 { "met" } else { "missed" },
        );
    }
    if let (Some(rkcl), Some(aiokpl)) = (
        table.get(&Contender::RkclPlain),
        table.get(&Contender::AiokplPlain),
    ) {
        println!(
            "  plain, for reference: rkcl writes {:.1}x aiokpl's records/s at {:.2}x its CPU per GB",
            rkcl.rate / aiokpl.rate,
            rkcl.cpu_per_gb / aiokpl.cpu_per_gb
        );
    }
    for contender in [Contender::RkclAggregatedPaced, Contender::RkclPlainPaced] {
        if let Some(p99) = table.get(&contender).and_then(|m| m.p99) {
            let goal = LINGER_MS + 50.0;
            println!(
                "  {}: put-to-receipt p99 {p99:.1} ms (goal <= linger + 50 ms = {goal:.0} ms: {})",
                contender.label(),
                if p99 <= goal { "met" } else { "missed" }
            );
        }
    }
    println!();
    println!("the bench took {:.0} s", started.elapsed().as_secs_f64());
}
