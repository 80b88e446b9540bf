//! Read a stream, transform each record, write the result to another stream,
//! and commit each input record only once its output has a receipt: at least
//! once end to end (a crash re-reads, and re-writes, only records whose
//! outputs were not yet confirmed).
//!
//! Runs on the embedded local Kinesis and DynamoDB; nothing to set up:
//! `cargo run -p rkcl --example stream_transform`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rkcl::{
    Consumer, ConsumerConfig, DynamoDbLeaseStore, Kinesis, SchedulerConfig,
    aws::StreamRef,
    producer::{Producer, ProducerConfig},
    record::ProducerRecord,
};

const RECORDS: usize = 5_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = rkcl_local::Local::start().await?;
    let kinesis = Kinesis::new(local.kinesis_client());
    for (name, shards) in [("orders", 2), ("orders-enriched", 4)] {
        kinesis.create_stream(name, shards).await?;
        kinesis
            .wait_until_active(&StreamRef::parse(name), Duration::from_secs(10))
            .await?;
    }

    // Some input, written through the producer's sink.
    let input = Producer::new(
        kinesis.clone(),
        StreamRef::parse("orders"),
        ProducerConfig::builder().aggregate(true).build()?,
    )?;
    let mut orders = futures_util::stream::iter((0..RECORDS).map(|i| {
        Ok(ProducerRecord::new(
            format!("customer-{}", i % 100),
            format!("order {i}"),
        ))
    }));
    let mut sink = input.sink()?;
    sink.send_all(&mut orders).await?;
    sink.close().await?;

    // The output producer: aggregated, paced at 80 % of each shard's limits.
    let output = Producer::new(
        kinesis.clone(),
        StreamRef::parse("orders-enriched"),
        ProducerConfig::builder()
            .aggregate(true)
            .rate_limit_percent(80)
            .build()?,
    )?;

    let store = DynamoDbLeaseStore::new(local.dynamodb_client(), "orders-enricher");
    store.ensure_table(Duration::from_secs(10)).await?;
    let scheduler = SchedulerConfig::builder("orders-enricher", "orders")
        .worker_id("example")
        .build()?;
    let config = ConsumerConfig::builder(scheduler)
        .checkpoint_every(1000, Duration::from_secs(5))
        .build()?;
    let consumer = Consumer::start(config, kinesis, store).await?;
    let shutdown = consumer.shutdown_handle();
    shutdown.shutdown_on_signal();

    let mut written = 0;
    let mut done = consumer
        .records()
        .map(|record| {
            let output = output.clone();
            async move {
                let record = record?;
                // The transform: same key, enriched data.
                let enriched = format!("{} (enriched)", String::from_utf8_lossy(record.data()));
                let out = ProducerRecord::new(record.partition_key(), enriched);
                // Many sends in flight share requests; each input record is
                // committed only after its output is written.
                let receipt = output.send(out).await?;
                record.commit();
                Ok::<_, Box<dyn std::error::Error>>(receipt)
            }
        })
        .buffer_unordered(512);
    while let Some(receipt) = done.next().await {
        let receipt = receipt?;
        tracing::debug!(shard = %receipt.shard_id, sequence = %receipt.sequence_number, "written");
        written += 1;
        if written == RECORDS {
            shutdown.trigger();
        }
    }
    let report = shutdown.shutdown().await;
    let unwritten = output.shutdown(Duration::from_secs(10)).await;
    println!(
        "transformed {written} records ({unwritten} left unwritten); final checkpoints for {:?}",
        report.finished_leases
    );
    Ok(())
}
