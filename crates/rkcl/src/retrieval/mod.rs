//! Reading shards: the shard graph, the polling source, and a reader that
//! follows a whole stream through resharding.
//!
//! Everything a consumer reads comes through a [`RecordSource`]: one per
//! shard, yielding batches of de-aggregated user records and, at the end of
//! a closed shard, its children. [`PollingSource`] implements it with
//! GetRecords. [`StreamReader`] reads every shard of a stream, each child
//! only after all its parents are read to their end, without leases or
//! checkpoints (what `rkcl tail` uses).

use std::future::Future;

use crate::error::Result;
use crate::model::ShardId;
use crate::record::UserRecord;

mod polling;
mod polling_config;
mod reader;
mod shard_graph;

pub use polling::PollingSource;
pub use polling_config::PollingConfig;
pub use reader::{StreamEvent, StreamReader};
pub use shard_graph::ShardGraph;

/// The records of one GetRecords call, de-aggregated.
#[derive(Clone, Debug)]
pub struct ShardBatch {
    /// The shard they were read from.
    pub shard_id: ShardId,
    /// The user records, in order (possibly none).
    pub records: Vec<UserRecord>,
    /// How far behind the tip of the shard the reader is, when Kinesis says.
    pub millis_behind_latest: Option<u64>,
    /// The size of the Kinesis records' data.
    pub bytes: usize,
    /// Whether the reader has caught up with the tip of the shard: Kinesis
    /// says it is zero milliseconds behind and the call did not return as
    /// many records as it asked for (a full batch may have more behind it).
    pub at_tip: bool,
}

impl ShardBatch {
    /// Whether the reader has caught up with the tip of the shard.
    pub fn is_at_tip(&self) -> bool {
        self.at_tip
    }
}

/// Why a shard was read to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardEndReason {
    /// The shard was closed by a reshard and every record has been read.
    Closed,
    /// The shard or its stream no longer exists.
    NotFound,
}

/// The end of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardEnd {
    /// The shard that ended.
    pub shard_id: ShardId,
    /// Its children, to be read once all their parents have ended.
    pub children: Vec<ShardId>,
    /// Why it ended.
    pub reason: ShardEndReason,
}

/// What a [`RecordSource`] yields.
#[derive(Clone, Debug)]
pub enum ShardEvent {
    /// A batch of records (possibly empty, to report progress).
    Records(ShardBatch),
    /// The shard has been read to its end; nothing follows.
    End(ShardEnd),
}

/// A source of the records of one shard.
pub trait RecordSource: Send {
    /// The next event, or `None` once the source has ended (after an
    /// [`ShardEvent::End`] or an error).
    ///
    /// # Errors
    ///
    /// An error that retrying cannot fix (access denied, KMS, invalid
    /// request); nothing follows it.
    fn next_event(&mut self) -> impl Future<Output = Option<Result<ShardEvent>>> + Send;
}
