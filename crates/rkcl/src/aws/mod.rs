//! The only module that names `aws_sdk_*` types.
//!
//! Everything above this layer speaks in domain types ([`Shard`](crate::shards::Shard),
//! [`SequenceNumber`](crate::SequenceNumber), [`Error`](crate::Error)); this
//! layer turns SDK calls, shapes and errors into those. Retries of single
//! calls (throttling, 5xx, connection errors) are the SDK's standard retry
//! strategy, configured by the caller's `SdkConfig`.
//!
//! Every SDK call is awaited from the heap (`.send().boxed()`): an SDK
//! request future is several KiB, and a long-lived task that awaited one
//! inline would carry that size for its whole life, once per shard.

#[cfg(feature = "cloudwatch")]
mod cloudwatch;
mod consumers;
mod dynamodb;
mod error;
#[cfg(feature = "direct-get-records")]
mod get_records_json;
mod kinesis;
mod kinesis_shapes;
mod lease_item;
mod paging;
mod subscription;

#[cfg(feature = "cloudwatch")]
pub use cloudwatch::{CloudWatch, Datum, DatumUnit, DatumValue};
pub use consumers::{ConsumerStatus, StreamConsumer};
pub use dynamodb::{DynamoDbLeaseStore, LeaseTableRequests};
pub use kinesis::{Kinesis, RecordsDecoding};
pub use kinesis_shapes::{ChildShard, GetRecordsOutput, ShardFilter, StreamRef, StreamSummary};
pub(crate) use kinesis_shapes::{PutEntry, PutOutcome};
pub use subscription::{Subscription, SubscriptionEvent};
