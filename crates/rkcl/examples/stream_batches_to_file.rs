//! Effectively once into a file: batches are appended with the position of
//! their last record, and a batch replayed after a crash (written, not yet
//! checkpointed) is recognised by its positions and not written twice.
//!
//! The first run "crashes" after writing a batch it never commits; the
//! second run reads that batch again and skips it.
//!
//! Runs on the embedded local Kinesis and DynamoDB; nothing to set up:
//! `cargo run -p rkcl --example stream_batches_to_file`.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use rkcl::{
    Consumer, ConsumerConfig, DynamoDbLeaseStore, ExtendedSequenceNumber, Kinesis, SchedulerConfig,
    aws::StreamRef,
    producer::{Producer, ProducerConfig},
    record::ProducerRecord,
    stream::CommittableBatch,
};

/// The last position written per shard, read back from the file: each line
/// is `shard<TAB>position<TAB>data`.
fn written_positions(path: &Path) -> std::io::Result<HashMap<String, ExtendedSequenceNumber>> {
    let mut last = HashMap::new();
    if !path.exists() {
        return Ok(last);
    }
    for line in std::io::BufReader::new(std::fs::File::open(path)?).lines() {
        let line = line?;
        let mut fields = line.splitn(3, '\t');
        if let (Some(shard), Some(position)) = (fields.next(), fields.next())
            && let Some((sequence, sub)) = position.split_once('/')
            && let (Ok(sequence), Ok(sub)) = (sequence.parse(), sub.parse())
        {
            last.insert(shard.to_owned(), ExtendedSequenceNumber::new(sequence, sub));
        }
    }
    Ok(last)
}

/// Appends the records after what the file already has; returns how many.
fn append(
    path: &Path,
    batch: &CommittableBatch,
    last: &mut HashMap<String, ExtendedSequenceNumber>,
) -> std::io::Result<usize> {
    let shard = batch.shard().shard_id.as_str().to_owned();
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut lines = String::new();
    let mut newest = None;
    for record in batch.records() {
        let position = record.position();
        if last.get(&shard).is_some_and(|done| &position <= done) {
            continue; // Written before the crash: a replay.
        }
        lines.push_str(&format!(
            "{shard}\t{}/{}\t{}\n",
            record.sequence_number(),
            record.sub_sequence_number().unwrap_or(0),
            String::from_utf8_lossy(record.data())
        ));
        newest = Some(position);
    }
    out.write_all(lines.as_bytes())?;
    out.sync_data()?;
    if let Some(newest) = newest {
        last.insert(shard, newest);
    }
    Ok(lines.lines().count())
}

async fn run(
    local: &rkcl_local::Local,
    path: &Path,
    crash_after_batches: Option<usize>,
) -> Result<usize, Box<dyn std::error::Error>> {
    let store = DynamoDbLeaseStore::new(local.dynamodb_client(), "events-to-file");
    store.ensure_table(Duration::from_secs(10)).await?;
    let scheduler = SchedulerConfig::builder("events-to-file", "events")
        .worker_id("example")
        .build()?;
    let consumer = Consumer::start(
        ConsumerConfig::builder(scheduler).build()?,
        Kinesis::new(local.kinesis_client()),
        store,
    )
    .await?;
    let shutdown = consumer.shutdown_handle();
    let mut last = written_positions(path)?;
    let mut batches = consumer.chunks(250, Duration::from_millis(500));
    let (mut appended, mut seen) = (0, 0);
    while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_secs(3), batches.next()).await {
        let batch = batch?;
        appended += append(path, &batch, &mut last)?;
        seen += 1;
        if crash_after_batches == Some(seen) {
            // Written but never committed: the checkpoint stays before it.
            drop(batch);
            break;
        }
        batch.commit();
    }
    drop(batches);
    shutdown.shutdown().await;
    Ok(appended)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = rkcl_local::Local::start().await?;
    let kinesis = Kinesis::new(local.kinesis_client());
    kinesis.create_stream("events", 1).await?;
    let stream = StreamRef::parse("events");
    kinesis
        .wait_until_active(&stream, Duration::from_secs(10))
        .await?;
    let mut producer = Producer::new(kinesis, stream, ProducerConfig::default())?;
    let records = (0..1000)
        .map(|i| ProducerRecord::new(format!("device-{}", i % 20), format!("event {i}")))
        .collect();
    producer.put(records).await?;

    let path = std::env::temp_dir().join(format!("rkcl-events-{}.tsv", std::process::id()));
    let first = run(&local, &path, Some(2)).await?;
    let second = run(&local, &path, None).await?;
    let lines = std::fs::read_to_string(&path)?.lines().count();
    println!(
        "first run appended {first}, second run {second}; {lines} lines for 1000 records in {}",
        path.display()
    );
    std::fs::remove_file(&path)?;
    Ok(())
}
