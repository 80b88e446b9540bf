//! The Stream API, at least once: records flow through a transform into a
//! sink and each is committed only after the sink has it. Checkpoints follow
//! the commits in the background; a shutdown flushes them.
//!
//! Runs on the embedded local Kinesis and DynamoDB; nothing to set up:
//! `cargo run -p rkcl --example stream_at_least_once`.

use std::time::Duration;

use futures_util::StreamExt;
use rkcl::{
    Consumer, ConsumerConfig, DynamoDbLeaseStore, Kinesis, SchedulerConfig,
    aws::StreamRef,
    producer::{Producer, ProducerConfig},
    record::ProducerRecord,
};

/// A stand-in for a database or a queue: it takes a line and acknowledges.
async fn write_to_sink(line: String) -> std::io::Result<()> {
    tokio::task::yield_now().await;
    let _ = line;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = rkcl_local::Local::start().await?;
    let kinesis = Kinesis::new(local.kinesis_client());
    kinesis.create_stream("clicks", 2).await?;
    let stream = StreamRef::parse("clicks");
    kinesis
        .wait_until_active(&stream, Duration::from_secs(10))
        .await?;
    let mut producer = Producer::new(
        kinesis.clone(),
        stream,
        ProducerConfig::builder().aggregate(true).build()?,
    )?;
    let records = (0..5000)
        .map(|i| ProducerRecord::new(format!("user-{}", i % 100), format!("click {i}")))
        .collect();
    producer.put(records).await?;

    let store = DynamoDbLeaseStore::new(local.dynamodb_client(), "clicks-stream");
    store.ensure_table(Duration::from_secs(10)).await?;
    let scheduler = SchedulerConfig::builder("clicks-stream", "clicks")
        .worker_id("example")
        .build()?;
    let config = ConsumerConfig::builder(scheduler)
        .checkpoint_every(1000, Duration::from_secs(5))
        .build()?;
    let consumer = Consumer::start(config, kinesis, store).await?;
    let shutdown = consumer.shutdown_handle();
    shutdown.shutdown_on_signal();

    let mut written = 0;
    let mut records = consumer
        .records()
        // Transform: keep the commit handle next to the result.
        .map(|record| {
            record.map(|record| {
                let line = String::from_utf8_lossy(record.data()).to_uppercase();
                (line, record)
            })
        })
        // Up to 16 sink writes at once; commits may complete out of order,
        // the checkpoint still moves only past fully committed prefixes.
        .map(|item| async move {
            let (line, record) = item?;
            write_to_sink(line).await?;
            record.commit();
            Ok::<_, Box<dyn std::error::Error>>(())
        })
        .buffer_unordered(16);
    while let Some(done) = records.next().await {
        done?;
        written += 1;
        if written == 5000 {
            // Stop: the final checkpoint is written before this returns.
            // The stream ends once the shutdown is done.
            shutdown.trigger();
        }
    }
    let report = shutdown.shutdown().await;
    println!(
        "wrote {written} records; final checkpoints for {:?}",
        report.finished_leases
    );
    Ok(())
}
