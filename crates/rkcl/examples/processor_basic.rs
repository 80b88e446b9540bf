//! The record-processor API: one processor per shard, checkpoint after each
//! batch, a graceful shutdown that writes final checkpoints.
//!
//! Runs on the embedded local Kinesis and DynamoDB; nothing to set up:
//! `cargo run -p rkcl --example processor_basic`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rkcl::{
    Checkpointer, DynamoDbLeaseStore, Kinesis, ProcessRecordsInput, ProcessorError,
    RecordProcessor, Scheduler, SchedulerConfig, ShardInfo,
    aws::StreamRef,
    producer::{Producer, ProducerConfig},
    record::ProducerRecord,
};

/// Counts the records of one shard and checkpoints after every batch.
struct CountingProcessor {
    shard: ShardInfo,
    total: Arc<AtomicUsize>,
}

impl RecordProcessor for CountingProcessor {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        // Do the work first; checkpoint only what is done.
        self.total.fetch_add(input.records.len(), Ordering::SeqCst);
        checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn lease_lost(&mut self) {
        eprintln!(
            "{}: lease lost; another worker continues",
            self.shard.shard_id
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = rkcl_local::Local::start().await?;
    let kinesis = Kinesis::new(local.kinesis_client());
    kinesis.create_stream("orders", 2).await?;
    let stream = StreamRef::parse("orders");
    kinesis
        .wait_until_active(&stream, Duration::from_secs(10))
        .await?;

    let mut producer = Producer::new(kinesis.clone(), stream, ProducerConfig::default())?;
    let records = (0..1000)
        .map(|i| ProducerRecord::new(format!("customer-{}", i % 10), format!("order {i}")))
        .collect();
    producer.put(records).await?;

    let store = DynamoDbLeaseStore::new(local.dynamodb_client(), "orders-processor");
    store.ensure_table(Duration::from_secs(10)).await?;
    let config = SchedulerConfig::builder("orders-processor", "orders")
        .worker_id("example")
        .build()?;
    let total = Arc::new(AtomicUsize::new(0));
    let factory = {
        let total = total.clone();
        move |shard: &ShardInfo| CountingProcessor {
            shard: shard.clone(),
            total: total.clone(),
        }
    };
    let scheduler = Scheduler::start(config, kinesis, store, factory).await?;
    while total.load(Ordering::SeqCst) < 1000 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = scheduler.shutdown(Duration::from_secs(10)).await;
    println!(
        "processed {} records; finished shards: {:?}",
        total.load(Ordering::SeqCst),
        report.finished_leases
    );
    Ok(())
}
