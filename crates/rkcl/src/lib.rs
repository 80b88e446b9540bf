//! rkcl, the Kinesis Client Library for Rust.
//!
//! rkcl reads Amazon Kinesis Data Streams the way the Java KCL does: shard
//! leases and checkpoints in a DynamoDB table the Java KCL can read too,
//! resharding followed parent before child, and KPL aggregates read back
//! into the user records they carry, checkpointed at (sequence number,
//! sub-sequence number).
//!
//! This release holds the foundation:
//!
//! - the domain's words ([`ShardId`], [`SequenceNumber`],
//!   [`ExtendedSequenceNumber`], [`HashKey`], [`HashKeyRange`]);
//! - the KPL aggregation format, both ways ([`Deaggregator`], [`Aggregator`]);
//! - a [`Producer`] that writes with PutRecords, retries only what failed,
//!   keeps per-key order, and aggregates per predicted shard like the KPL;
//! - the [`Kinesis`] client that every Kinesis call of rkcl goes through.
//!
//! # Example
//!
//! ```
//! use rkcl::{Aggregator, Deaggregator, KinesisRecord, ProducerRecord};
//!
//! let mut aggregator = Aggregator::new();
//! for i in 0..3 {
//!     aggregator.add(ProducerRecord::new(format!("user-{i}"), format!("event {i}")))?;
//! }
//! let aggregate = aggregator.flush().expect("three records wait");
//!
//! // What a consumer reads back from the shard:
//! let record = KinesisRecord {
//!     sequence_number: "49590338271490256608559692538361571095921575989136654311".parse()?,
//!     partition_key: aggregate.partition_key,
//!     data: aggregate.data,
//!     approximate_arrival_timestamp: None,
//! };
//! let users = Deaggregator::new().deaggregate(record);
//! assert_eq!(users.len(), 3);
//! assert_eq!(users[2].sub_sequence_number, Some(2));
//! assert_eq!(users[2].data, "event 2");
//! # Ok::<(), rkcl::Error>(())
//! ```
// Library code never panics on data from the network or a user, and never
// prints: these lints hold it to that (tests may unwrap).
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::print_stdout,
        clippy::print_stderr
    )
)]
#![doc(test(attr(deny(warnings))))]

mod aws;
mod backoff;
mod checkpoint;
mod config;
mod error;
mod kpl;
mod leases;
mod lifecycle;
pub mod metrics;
mod model;
mod processor;
mod producer;
mod record;
mod retrieval;
mod scheduler;
mod shard_sync;
mod shards;
mod stop;
mod stream;

pub use aws::{
    ChildShard, DynamoDbLeaseStore, GetRecordsOutput, Kinesis, LeaseTableRequests, ShardFilter,
    StreamRef, StreamSummary,
};
pub use checkpoint::Checkpointer;
pub use error::{Error, Result, Service};
pub use kpl::{
    Aggregate, Aggregator, DeaggregationStats, Deaggregator, Decoded, HashRangePolicy,
    MAGIC as KPL_MAGIC, MAX_KINESIS_RECORD_SIZE, PassThroughReason, SubRecord, has_magic,
};
pub use leases::{
    FencingToken, InMemoryLeaseStore, Lease, LeaseCoordinator, LeaseCoordinatorConfig, LeaseEvent,
    LeaseStore,
};
pub use model::{
    ExtendedSequenceNumber, HashKey, HashKeyRange, InitialPosition, SequenceNumber, ShardId,
    StartingPosition,
};
pub use processor::{
    DeadLetter, DeadLetterHandler, FailurePolicy, InitializationInput, ProcessRecordsInput,
    ProcessorError, RecordProcessor, RecordProcessorFactory, ShardInfo,
};
pub use producer::{Producer, ProducerConfig, ProducerConfigBuilder, PutSummary};
pub use record::{KinesisRecord, ProducerRecord, UserRecord};
pub use retrieval::{
    PollingConfig, PollingConfigBuilder, PollingSource, RecordSource, Retrieval, ShardBatch,
    ShardEnd, ShardEndReason, ShardEvent, ShardGraph, StreamEvent, StreamReader,
};
pub use scheduler::{
    Scheduler, SchedulerConfig, SchedulerConfigBuilder, ShutdownReport, wait_for_signal,
};
pub use shards::{Shard, ShardMap};
pub use stop::{StopReason, StopSignal};
pub use stream::{
    Batch, BatchError, BatchFailure, BatchFailureHandler, BatchOptions, Chunks, CommitHandle,
    CommittableBatch, CommittableRecord, Consumer, ConsumerConfig, ConsumerConfigBuilder,
    FailureReason, Records, ShardChunks, ShardRecords, ShardStreams, ShutdownHandle,
};
