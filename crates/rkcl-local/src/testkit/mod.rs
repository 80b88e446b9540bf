//! Helpers for tests on the local servers: streams and records, puts that
//! tell where each record landed, raw reads with plain SDK calls, waiting
//! for a condition, and the conformance suite every
//! [`LeaseStore`](rkcl::leases::LeaseStore) must pass.
//!
//! Enabled by the `testkit` feature, off by default:
//!
//! ```toml
//! [dev-dependencies]
//! rkcl-local = { version = "0.1", features = ["testkit"] }
//! ```
//!
//! These are test helpers: when something fails they panic with a message
//! saying what, which fails the test that called them. Every wait has a
//! timeout, so a helper never hangs a test.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use rkcl::{Kinesis, record::ProducerRecord};
//! use rkcl_local::Local;
//! use rkcl_local::testkit::{self, Packing};
//!
//! # async fn example() {
//! let local = Local::start().await.unwrap();
//! let kinesis = Kinesis::new(local.kinesis_client());
//! let stream = testkit::create_stream(&kinesis, "orders", 2).await;
//! let records = (0..100)
//!     .map(|i| ProducerRecord::new(format!("customer-{}", i % 10), format!("order {i}")))
//!     .collect();
//! testkit::put(&kinesis, &stream, records, Packing::Aggregated).await;
//! let raw = testkit::read_all_raw(&local, &stream).await;
//! assert_eq!(raw.user_records().len(), 100);
//! testkit::eventually("nothing to wait for", Duration::from_secs(1), || true).await;
//! # }
//! ```
// A test helper reports a failure by panicking: that fails the calling test
// with the helper's message, which is what a test wants.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod conformance;
mod positions;
mod raw;
mod stream;
mod wait;

pub use conformance::{lease_key, lease_store_conformance, sample_lease};
pub use positions::{
    PUT_RECORDS_MAX_ATTEMPTS, PUT_RECORDS_MAX_ENTRIES, PUT_RECORDS_RETRY_PAUSE, RecordPosition,
    put_with_positions,
};
pub use raw::{RawShard, RawStream, ReadLimits, plain_read_loop, read_all_raw, read_shard_raw};
pub use stream::{
    ACTIVE_TIMEOUT, PUT_CHUNK, Packing, TABLE_TIMEOUT, create_stream, lease_table, merge, put,
    split,
};
pub use wait::{Awaited, Condition, Immediate, POLL_INTERVAL, eventually, eventually_every};
