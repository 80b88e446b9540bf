//! rkcl, the Kinesis Client Library for Rust.
//!
//! rkcl consumes Amazon Kinesis Data Streams the way the Java KCL does: each
//! shard has a lease in a DynamoDB table the Java KCL can read too, the
//! worker holding it reads the shard and checkpoints its progress there,
//! leases are balanced over the workers of an application and taken over
//! when a worker dies, resharding is followed parent before child, and KPL
//! aggregates are read back into the user records they carry, checkpointed
//! at (sequence number, sub-sequence number).
//!
//! Two ways to consume, on the same worker:
//!
//! - a [`RecordProcessor`] per shard, called strictly in order, with a
//!   [`Checkpointer`] fenced by the lease ([`Scheduler`]);
//! - an async [`Stream`](futures_util::Stream) of [`CommittableRecord`]s,
//!   checkpointed automatically at the commit watermark, with bounded memory
//!   ([`Consumer`]).
//!
//! The root holds what an application needs; the rest lives in public
//! modules: [`kpl`] (the aggregation format), [`leases`] (lease stores and
//! the coordinator), [`retrieval`] (reading shards), [`producer`] (writing),
//! [`stream`] (the Stream API's other types), [`metrics`] (the catalogue of
//! every metric) and the domain's words in [`model`], [`record`],
//! [`shards`], [`aws`], [`processor`], [`scheduler`] and [`error`].
//!
//! # Example
//!
//! One worker of the application `orders-app`, printing how many records
//! each batch holds and checkpointing after each:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use rkcl::{
//!     Checkpointer, DynamoDbLeaseStore, Kinesis, ProcessRecordsInput, ProcessorError,
//!     RecordProcessor, Scheduler, SchedulerConfig, ShardInfo,
//! };
//!
//! struct Counter;
//!
//! impl RecordProcessor for Counter {
//!     async fn process_records(
//!         &mut self,
//!         input: &ProcessRecordsInput,
//!         checkpointer: &Checkpointer,
//!     ) -> Result<(), ProcessorError> {
//!         tracing::info!(records = input.records.len(), "a batch");
//!         checkpointer.checkpoint().await?;
//!         Ok(())
//!     }
//! }
//!
//! # #[allow(dead_code)]
//! # async fn example(
//! #     kinesis_client: aws_sdk_kinesis::Client,
//! #     dynamodb_client: aws_sdk_dynamodb::Client,
//! # ) -> rkcl::Result<()> {
//! let store = DynamoDbLeaseStore::new(dynamodb_client, "orders-app");
//! store.ensure_table(Duration::from_secs(60)).await?;
//! let config = SchedulerConfig::builder("orders-app", "orders").build()?;
//! let kinesis = Kinesis::new(kinesis_client);
//! let scheduler = Scheduler::start(config, kinesis, store, |_: &ShardInfo| Counter).await?;
//! let report = scheduler.run_until_signal(Duration::from_secs(10)).await;
//! tracing::info!(?report, "stopped");
//! # Ok(())
//! # }
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

pub mod aws;
mod backoff;
mod checkpoint;
mod config;
pub mod error;
pub mod health;
pub mod kpl;
pub mod lag;
pub mod leases;
mod lifecycle;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod processor;
pub mod producer;
pub mod record;
pub mod retrieval;
pub mod scheduler;
mod shard_sync;
pub mod shards;
mod stop;
pub mod stream;
pub mod tracker;
pub mod watchdog;

pub use aws::{DynamoDbLeaseStore, Kinesis};
pub use checkpoint::Checkpointer;
pub use error::{Error, Result};
pub use model::{
    ExtendedSequenceNumber, InitialPosition, SequenceNumber, ShardId, StreamIdentifier,
};
pub use processor::{
    FailurePolicy, InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor,
    RecordProcessorFactory, ShardInfo,
};
pub use record::UserRecord;
pub use scheduler::{Scheduler, SchedulerConfig, ShutdownReport};
pub use stop::{StopReason, StopSignal};
pub use stream::{CommittableRecord, Consumer, ConsumerConfig};
pub use tracker::{MultiStreamConfig, StreamConfig};

// The README's examples compile as doctests of this item, so they keep up
// with the API. It exists only while doctests are collected.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
