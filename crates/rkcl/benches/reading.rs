//! Reading throughput and put-to-delivery latency on the local Kinesis.
//!
//! (a) Records per second through `StreamReader` (polling, pacing,
//!     de-aggregation, bounded prefetch) across 4 and 16 shards, against a
//!     plain loop of SDK GetRecords calls over the same data in the same run.
//!     Both keep Kinesis' budget of five calls per second per shard (200 ms
//!     between calls on a shard), as any reader of a real stream must; the
//!     unpaced plain loop is shown for reference.
//! (b) Put-to-delivery latency p50/p99 with the default idle interval
//!     (500 ms) and with 200 ms, on shards that receive a record about every
//!     100 ms (so they never count as quiet).
//! (c) The first record after a quiet period: 16 shards read at the
//!     defaults get nothing for 35 s (past the 30 s after which the quiet
//!     back-off reaches its 3 s cap), then records are put one every
//!     250 ms; the latency of the first record of each shard.
//!
//! Run with `cargo bench -p rkcl --bench reading`, or with `-- throughput`
//! `-- latency` or `-- quiet` for one part. It prints its figures.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rkcl::{
    Kinesis,
    aws::StreamRef,
    model::StartingPosition,
    record::ProducerRecord,
    retrieval::{PollingConfig, StreamEvent, StreamReader},
};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::Plain;
use rkcl_local::testkit::{ReadLimits, create_stream, plain_read_loop, put};

const RECORDS_PER_SHARD: usize = 25_000;

async fn fill(local: &Local, name: &str, shards: u32) -> (Kinesis, StreamRef, usize) {
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, name, shards).await;
    let total = RECORDS_PER_SHARD * shards as usize;
    let records: Vec<ProducerRecord> = (0..total)
        .map(|i| ProducerRecord::new(format!("key-{i}"), vec![b'x'; 100]))
        .collect();
    put(&kinesis, &stream, records, Plain).await;
    (kinesis, stream, total)
}

async fn rkcl_reader(kinesis: &Kinesis, stream: &StreamRef, total: usize) -> usize {
    let mut reader = StreamReader::start(
        kinesis.clone(),
        stream.clone(),
        StartingPosition::TrimHorizon,
        PollingConfig::default(),
    )
    .await
    .unwrap();
    let mut count = 0;
    while count < total {
        if let Some(Ok(StreamEvent::Records(batch))) = reader.next().await {
            count += batch.records.len();
        }
    }
    count
}

async fn throughput(local: &Local, shards: u32) {
    let (kinesis, stream, total) = fill(local, &format!("throughput-{shards}"), shards).await;
    // Interleaved runs; the median of each is reported, as the local
    // servers share the machine's two cores with the readers.
    let mut unpaced = Vec::new();
    let mut paced = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(
            plain_read_loop(local, &stream, ReadLimits::Off).await,
            total
        );
        unpaced.push(total as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        assert_eq!(
            plain_read_loop(local, &stream, ReadLimits::Calls).await,
            total
        );
        paced.push(total as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        assert_eq!(rkcl_reader(&kinesis, &stream, total).await, total);
        ours.push(total as f64 / started.elapsed().as_secs_f64());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (unpaced, paced, ours) = (median(unpaced), median(paced), median(ours));
    println!(
        "throughput, {shards:>2} shards, {total} records: rkcl {ours:>9.0} records/s, \
         plain SDK loop (same 5 calls/s budget) {paced:>9.0} records/s -> {:.2}x; \
         unpaced plain loop {unpaced:>9.0} records/s",
        ours / paced
    );
}

async fn latency(local: &Local, idle: Duration) {
    let name = format!("latency-{}", idle.as_millis());
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, &name, 4).await;
    let config = PollingConfig::builder()
        .idle_interval(idle)
        .build()
        .unwrap();
    let mut reader = StreamReader::start(
        kinesis.clone(),
        stream.clone(),
        StartingPosition::Latest,
        config,
    )
    .await
    .unwrap();
    // Let every shard open its LATEST iterator.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let origin = Arc::new(Instant::now());
    let sends = 400;
    let producer = {
        let (kinesis, stream, origin) = (kinesis.clone(), stream.clone(), origin.clone());
        tokio::spawn(async move {
            for i in 0..sends {
                let sent = origin.elapsed().as_micros().to_string();
                put(
                    &kinesis,
                    &stream,
                    vec![ProducerRecord::new(format!("k{i}"), sent)],
                    Plain,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let mut latencies = Vec::new();
    while latencies.len() < sends {
        if let Some(Ok(StreamEvent::Records(batch))) = reader.next().await {
            let now = origin.elapsed().as_micros();
            for record in batch.records {
                let sent: u128 = std::str::from_utf8(&record.data).unwrap().parse().unwrap();
                latencies.push(Duration::from_micros((now - sent) as u64));
            }
        }
    }
    producer.await.unwrap();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "put-to-delivery latency, idle interval {} ms: p50 {} ms, p99 {} ms, max {} ms ({} records)",
        idle.as_millis(),
        at(0.50).as_millis(),
        at(0.99).as_millis(),
        latencies.last().unwrap().as_millis(),
        latencies.len()
    );
}

async fn after_quiet(local: &Local) {
    const SHARDS: u32 = 16;
    const QUIET: Duration = Duration::from_secs(35);
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "quiet", SHARDS).await;
    let mut reader = StreamReader::start(
        kinesis.clone(),
        stream.clone(),
        StartingPosition::Latest,
        PollingConfig::default(),
    )
    .await
    .unwrap();
    tokio::time::sleep(QUIET).await;
    let origin = Arc::new(Instant::now());
    let producer = {
        let (kinesis, stream, origin) = (kinesis.clone(), stream.clone(), origin.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                let sent = origin.elapsed().as_micros().to_string();
                put(
                    &kinesis,
                    &stream,
                    vec![ProducerRecord::new(format!("quiet-{i}"), sent)],
                    Plain,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let mut first = std::collections::BTreeMap::new();
    while first.len() < SHARDS as usize {
        if let Some(Ok(StreamEvent::Records(batch))) = reader.next().await {
            let now = origin.elapsed().as_micros();
            if let Some(record) = batch.records.first() {
                let sent: u128 = std::str::from_utf8(&record.data).unwrap().parse().unwrap();
                first
                    .entry(batch.shard_id.clone())
                    .or_insert(Duration::from_micros((now - sent) as u64));
            }
        }
    }
    producer.abort();
    let mut latencies: Vec<Duration> = first.into_values().collect();
    latencies.sort();
    println!(
        "first record after {} s quiet, {SHARDS} shards at the defaults (quiet cap {} ms): \
         p50 {} ms, max {} ms",
        QUIET.as_secs(),
        PollingConfig::DEFAULT_MAX_QUIET_INTERVAL.as_millis(),
        latencies[latencies.len() / 2].as_millis(),
        latencies.last().unwrap().as_millis(),
    );
}

#[tokio::main]
async fn main() {
    let local = Local::start().await.unwrap();
    if wanted("throughput") {
        throughput(&local, 4).await;
        throughput(&local, 16).await;
    }
    if wanted("latency") {
        latency(&local, PollingConfig::DEFAULT_IDLE_INTERVAL).await;
        latency(&local, Duration::from_millis(200)).await;
    }
    if wanted("quiet") {
        after_quiet(&local).await;
    }
    local.shutdown().await;
}

/// Whether the command line asks for `part` (no part named: every part).
fn wanted(part: &str) -> bool {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    named.is_empty() || named.iter().any(|arg| arg == part)
}
