//! `rkcl demo`: a consumer group end to end on the embedded Kinesis and
//! DynamoDB, with nothing to set up. Three workers consume a 4-shard stream
//! while records are produced (half of them KPL-aggregated); one worker is
//! killed without a word a third of the way in, a shard is split half-way,
//! and a fourth worker joins at two thirds. The report says what arrived:
//! produced, consumed, duplicates, lost, out of order, per-worker leases
//! over time, throughput and latency.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rkcl::{
    Checkpointer, DynamoDbLeaseStore, Kinesis, ProcessRecordsInput, ProcessorError,
    RecordProcessor, Scheduler, SchedulerConfig, ShardInfo,
    aws::StreamRef,
    producer::{Producer, ProducerConfig},
    record::ProducerRecord,
    retrieval::PollingConfig,
};
use serde::Serialize;

use crate::output::write_json_line;

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How many user records to produce.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// How many shards the demo stream has.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// The workers' lease duration: how long a killed worker's shards wait.
    #[arg(long, default_value = "4s")]
    lease_duration: humantime::Duration,
    /// Print the report as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// How many distinct partition keys the demo writes.
const KEYS: usize = 1_000;
const APP: &str = "rkcl-demo";

/// What the workers saw, shared by every processor.
#[derive(Debug)]
struct Tally {
    started: Instant,
    /// Deliveries per record, by `number * KEYS + key`.
    seen: Vec<u32>,
    /// The highest number first delivered per key.
    highest: Vec<Option<usize>>,
    out_of_order: usize,
    deliveries: usize,
    per_worker: BTreeMap<String, usize>,
    latencies_ms: Vec<u64>,
    unknown: usize,
}

impl Tally {
    fn new(records: usize) -> Self {
        Self {
            started: Instant::now(),
            seen: vec![0; records.div_ceil(KEYS) * KEYS],
            highest: vec![None; KEYS],
            out_of_order: 0,
            deliveries: 0,
            per_worker: BTreeMap::new(),
            latencies_ms: Vec::new(),
            unknown: 0,
        }
    }

    fn record(&mut self, worker: &str, data: &[u8]) {
        let Some((key, number, produced_ms)) = parse_demo_record(data) else {
            self.unknown += 1;
            return;
        };
        let Some(count) = self.seen.get_mut(number * KEYS + key) else {
            self.unknown += 1;
            return;
        };
        *count += 1;
        self.deliveries += 1;
        *self.per_worker.entry(worker.to_owned()).or_default() += 1;
        if *count == 1 {
            if let Some(highest) = self.highest.get_mut(key) {
                match highest {
                    Some(h) if number < *h => self.out_of_order += 1,
                    _ => *highest = Some(number),
                }
            }
            let now_ms = self.started.elapsed().as_millis() as u64;
            self.latencies_ms.push(now_ms.saturating_sub(produced_ms));
        }
    }

    fn unique(&self, produced: usize) -> usize {
        self.seen.iter().take(produced).filter(|c| **c > 0).count()
    }
}

/// Counts every record and checkpoints after every batch.
struct DemoProcessor {
    worker: String,
    tally: Arc<Mutex<Tally>>,
}

impl RecordProcessor for DemoProcessor {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        if let Ok(mut tally) = self.tally.lock() {
            for record in &input.records {
                tally.record(&self.worker, &record.data);
            }
        }
        checkpointer.checkpoint().await?;
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct WorkerReport {
    id: String,
    records: usize,
    killed: bool,
    leases_at_end: usize,
}

#[derive(Debug, Serialize)]
struct LeaseSample {
    seconds: u64,
    leases: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
struct Report {
    produced: usize,
    consumed: usize,
    duplicates: usize,
    lost: usize,
    out_of_order: usize,
    kinesis_records: u64,
    workers: Vec<WorkerReport>,
    leases_over_time: Vec<LeaseSample>,
    seconds: f64,
    records_per_second: f64,
    latency_ms_p50: u64,
    latency_ms_p99: u64,
}

struct Fleet {
    local_kinesis: Kinesis,
    store: DynamoDbLeaseStore,
    tally: Arc<Mutex<Tally>>,
    lease_duration: Duration,
    running: BTreeMap<String, Scheduler>,
    killed: Vec<String>,
}

impl Fleet {
    async fn start(&mut self, id: &str) -> anyhow::Result<()> {
        let config = SchedulerConfig::builder(APP, "rkcl-demo")
            .worker_id(id)
            .lease_duration(self.lease_duration)
            .shard_sync_interval(Duration::from_secs(2))
            .parent_poll_interval(Duration::from_millis(200))
            .polling(
                PollingConfig::builder()
                    .idle_interval(Duration::from_millis(200))
                    .build()?,
            )
            .build()?;
        let (worker, tally) = (id.to_owned(), self.tally.clone());
        let scheduler = Scheduler::start(
            config,
            self.local_kinesis.clone(),
            self.store.clone(),
            move |_: &ShardInfo| DemoProcessor {
                worker: worker.clone(),
                tally: tally.clone(),
            },
        )
        .await?;
        self.running.insert(id.to_owned(), scheduler);
        Ok(())
    }

    fn leases(&self) -> BTreeMap<String, usize> {
        self.running
            .iter()
            .map(|(id, s)| (id.clone(), s.held_leases().len()))
            .collect()
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let local = rkcl_local::Local::start().await?;
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = StreamRef::parse("rkcl-demo");
    kinesis.create_stream(stream.name(), args.shards).await?;
    kinesis
        .wait_until_active(&stream, Duration::from_secs(30))
        .await?;
    let store = DynamoDbLeaseStore::new(local.dynamodb_client(), APP);
    store.ensure_table(Duration::from_secs(30)).await?;
    progress(
        &args,
        &format!("stream {stream} with {} shards is active", args.shards),
    );

    let tally = Arc::new(Mutex::new(Tally::new(args.records)));
    let mut fleet = Fleet {
        local_kinesis: kinesis.clone(),
        store,
        tally: tally.clone(),
        lease_duration: args.lease_duration.into(),
        running: BTreeMap::new(),
        killed: Vec::new(),
    };
    for id in ["worker-1", "worker-2", "worker-3"] {
        fleet.start(id).await?;
    }
    progress(&args, "three workers started");

    let started = Instant::now();
    let mut kinesis_records = 0;
    let mut samples = Vec::new();
    let mut last_sample = Instant::now();
    let chunk = 5_000.min(args.records.max(1));
    let chunks = args.records.div_ceil(chunk);
    let (mut killed, mut split, mut joined) = (false, false, false);
    for index in 0..chunks {
        let range = index * chunk..((index + 1) * chunk).min(args.records);
        let produced_ms = started.elapsed().as_millis();
        let records: Vec<ProducerRecord> = range
            .clone()
            .map(|i| {
                ProducerRecord::new(
                    format!("key-{}", i % KEYS),
                    format!("{}:{}:{produced_ms}", i % KEYS, i / KEYS),
                )
            })
            .collect();
        let mut producer = Producer::new(
            kinesis.clone(),
            stream.clone(),
            ProducerConfig::builder()
                .aggregate(index % 2 == 1)
                .build()?,
        )?;
        kinesis_records += producer.put(records).await?.kinesis_records;
        let done = range.end;
        if !killed && done * 3 >= args.records {
            killed = true;
            // Killed without a word: no shutdown, no released lease.
            drop(fleet.running.remove("worker-1"));
            fleet.killed.push("worker-1".into());
            progress(&args, "killed worker-1 without a shutdown");
        }
        if !split && done * 2 >= args.records {
            split = true;
            let shards = kinesis.list_shards(&stream).await?;
            let shard = shards
                .iter()
                .find(|s| s.is_open())
                .context("no open shard")?;
            kinesis
                .split_shard(&stream, &shard.id, shard.hash_key_range.middle())
                .await
                .context("could not split a shard")?;
            kinesis
                .wait_until_active(&stream, Duration::from_secs(30))
                .await?;
            progress(&args, &format!("split {}", shard.id));
        }
        if !joined && done * 3 >= args.records * 2 {
            joined = true;
            fleet.start("worker-4").await?;
            progress(&args, "worker-4 joined");
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            last_sample = Instant::now();
            sample(&args, &fleet, &tally, started, done, &mut samples);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress(&args, &format!("produced {} records", args.records));

    let deadline = Instant::now() + Duration::from_secs(120) + fleet.lease_duration * 4;
    loop {
        let unique = tally.lock().map(|t| t.unique(args.records)).unwrap_or(0);
        if unique >= args.records || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_sample.elapsed() >= Duration::from_secs(1) {
            last_sample = Instant::now();
            sample(&args, &fleet, &tally, started, args.records, &mut samples);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    sample(&args, &fleet, &tally, started, args.records, &mut samples);
    let mut workers: Vec<WorkerReport> = Vec::new();
    let leases_at_end = fleet.leases();
    let running = std::mem::take(&mut fleet.running);
    for (_, scheduler) in running {
        scheduler.shutdown(Duration::from_secs(10)).await;
    }
    local.shutdown().await;

    let tally = tally
        .lock()
        .map_err(|_| anyhow::anyhow!("a processor panicked"))?;
    let (mut lost, mut duplicates) = (0, 0);
    for &count in tally.seen.iter().take(args.records) {
        match count {
            0 => lost += 1,
            1 => {}
            n => duplicates += n as usize - 1,
        }
    }
    for id in ["worker-1", "worker-2", "worker-3", "worker-4"] {
        workers.push(WorkerReport {
            id: id.to_owned(),
            records: tally.per_worker.get(id).copied().unwrap_or(0),
            killed: fleet.killed.iter().any(|k| k == id),
            leases_at_end: leases_at_end.get(id).copied().unwrap_or(0),
        });
    }
    let mut latencies = tally.latencies_ms.clone();
    latencies.sort_unstable();
    let percentile = |p: f64| -> u64 {
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(index).copied().unwrap_or(0)
    };
    let consumed = args.records - lost;
    let report = Report {
        produced: args.records,
        consumed,
        duplicates,
        lost,
        out_of_order: tally.out_of_order + tally.unknown,
        kinesis_records,
        workers,
        leases_over_time: samples,
        seconds,
        records_per_second: consumed as f64 / seconds.max(1e-9),
        latency_ms_p50: percentile(0.5),
        latency_ms_p99: percentile(0.99),
    };

    let mut out = std::io::stdout().lock();
    if args.json {
        write_json_line(&mut out, &report)?;
    } else {
        for worker in &report.workers {
            crate::output::write_line(
                &mut out,
                &format!(
                    "{}: {} records{}, {} leases at the end",
                    worker.id,
                    worker.records,
                    if worker.killed { " (killed)" } else { "" },
                    worker.leases_at_end
                ),
            )?;
        }
        crate::output::write_line(
            &mut out,
            &format!(
                "produced {}, consumed {} (unique), duplicates {}, lost {}, out of order {}; \
                 {:.0} records/s over {:.1} s; latency p50 {} ms, p99 {} ms",
                report.produced,
                report.consumed,
                report.duplicates,
                report.lost,
                report.out_of_order,
                report.records_per_second,
                report.seconds,
                report.latency_ms_p50,
                report.latency_ms_p99
            ),
        )?;
    }
    Ok(if report.lost == 0 && report.out_of_order == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Samples the workers' leases and shows a progress line.
fn sample(
    args: &DemoArgs,
    fleet: &Fleet,
    tally: &Mutex<Tally>,
    started: Instant,
    produced: usize,
    samples: &mut Vec<LeaseSample>,
) {
    let leases = fleet.leases();
    let seconds = started.elapsed().as_secs_f64();
    let unique = tally.lock().map(|t| t.unique(args.records)).unwrap_or(0);
    let shown: Vec<String> = leases.iter().map(|(id, n)| format!("{id}:{n}")).collect();
    progress(
        args,
        &format!(
            "{seconds:5.1} s  produced {produced:>7}  consumed {unique:>7}  ({:.0}/s)  lag {:>6}  leases {}",
            unique as f64 / seconds.max(1e-9),
            produced.saturating_sub(unique),
            shown.join(" ")
        ),
    );
    samples.push(LeaseSample {
        seconds: seconds as u64,
        leases,
    });
}

fn parse_demo_record(data: &[u8]) -> Option<(usize, usize, u64)> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.split(':');
    let key = parts.next()?.parse().ok()?;
    let number = parts.next()?.parse().ok()?;
    let produced_ms = parts.next()?.parse().ok()?;
    Some((key, number, produced_ms))
}

fn progress(args: &DemoArgs, text: &str) {
    if !args.json {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("rkcl demo: {text}");
        }
    }
}
