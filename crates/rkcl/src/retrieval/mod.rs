//! Reading shards: the shard graph, the polling and enhanced fan-out
//! sources, and a reader that follows a whole stream through resharding.
//!
//! Everything a consumer reads comes through a [`RecordSource`]: one per
//! shard, yielding batches of de-aggregated user records and, at the end of
//! a closed shard, its children. [`PollingSource`] implements it with
//! GetRecords, [`FanOutSource`] with SubscribeToShard through a stream
//! consumer ([`resolve_consumer`] finds or registers it). [`StreamReader`]
//! reads every shard of a stream, each child only after all its parents
//! are read to their end, without leases or checkpoints (what `rkcl tail`
//! uses).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::aws::{Kinesis, StreamRef};
use crate::error::{Error, Result};
use crate::model::{ShardId, StartingPosition};
use crate::record::UserRecord;
use crate::shards::Shard;

mod consumer;
mod fanout;
mod fanout_config;
mod polling;
mod polling_config;
mod read_memory;
pub(crate) use read_memory::ReadMemory;
mod reader;
mod shard_graph;

pub use consumer::resolve_consumer;
pub use fanout::{FanOutSource, Prefetch, ResubscribeCause};
pub use fanout_config::{FanOutConfig, FanOutConfigBuilder};
pub use polling::PollingSource;
pub use polling_config::{PollingConfig, PollingConfigBuilder};
pub use reader::{DEFAULT_CONSUMER_NAME, StreamEvent, StreamReader};
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
    /// Whether the reader has caught up with the tip of an open shard:
    /// Kinesis says it is zero milliseconds behind and the call did not
    /// return as many records as it asked for (a full batch may have more
    /// behind it). Never true on a closed shard: it is done only at its
    /// [`ShardEvent::End`].
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
///
/// A shard consumer holds its source as a `Box<dyn RecordSource>`, so any
/// way of reading a shard plugs in: write the type, and add its arm to
/// [`Retrieval`]'s `open`.
pub trait RecordSource: Send {
    /// The next event, or `None` once the source has ended (after an
    /// [`ShardEvent::End`] or an error).
    ///
    /// # Errors
    ///
    /// An error that retrying cannot fix (access denied, KMS, invalid
    /// request); nothing follows it.
    ///
    /// # Cancel safety
    ///
    /// Implementations must be cancel safe: a shard consumer races this
    /// future against its stop signal, and an event not yet returned must
    /// stay queued for the next call.
    fn next_event(&mut self) -> BoxFuture<'_, Option<Result<ShardEvent>>>;
}

/// Runs a shard's background reader until it ends or `cancel` is
/// cancelled, in the shard's span: the task behind every [`RecordSource`]
/// of this module.
pub(crate) fn spawn_reader(
    shard_id: &ShardId,
    cancel: CancellationToken,
    reader: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let span = tracing::info_span!("shard", shard_id = %shard_id);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = reader => {}
            }
        },
        span,
    ));
}

/// How a worker reads its shards.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Retrieval {
    /// GetRecords calls, paced within the shard's read limits
    /// ([`PollingSource`]).
    Polling(PollingConfig),
    /// Enhanced fan-out: Kinesis pushes records over SubscribeToShard
    /// sessions, through a stream consumer of the application's own, with
    /// a read budget of its own ([`FanOutSource`]). The worker finds or
    /// registers the consumer when it starts.
    FanOut(FanOutConfig),
}

impl Default for Retrieval {
    fn default() -> Self {
        Retrieval::Polling(PollingConfig::default())
    }
}

/// Polling with these settings.
impl From<PollingConfig> for Retrieval {
    fn from(config: PollingConfig) -> Self {
        Retrieval::Polling(config)
    }
}

impl Retrieval {
    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first value out of
    /// range.
    pub fn validate(&self) -> Result<()> {
        match self {
            Retrieval::Polling(config) => config.validate(),
            Retrieval::FanOut(config) => config.validate(),
        }
    }
}

/// Opens a [`RecordSource`] for a shard: what a shard consumer needs of the
/// retrieval layer. The worker's implementation reads from Kinesis as its
/// [`Retrieval`] says; tests script one.
pub(crate) trait OpenRecordSource: Send + Sync + std::fmt::Debug {
    /// A source of `shard` from `start`, stopped when `stop` is cancelled
    /// (or when dropped).
    fn open(
        &self,
        shard: &Shard,
        start: StartingPosition,
        stop: CancellationToken,
    ) -> Result<Box<dyn RecordSource>>;
}

/// The worker's sources: one stream of one Kinesis client, read as
/// `retrieval` says.
#[derive(Debug)]
pub(crate) struct KinesisSources {
    pub(crate) kinesis: Kinesis,
    pub(crate) stream: StreamRef,
    pub(crate) retrieval: Retrieval,
    /// The ARN of the stream consumer fan-out reads through, resolved when
    /// the worker started; `None` for polling.
    pub(crate) consumer_arn: Option<String>,
    /// The read memory every polling reader of the worker shares.
    pub(crate) read_memory: Arc<read_memory::ReadMemory>,
}

impl KinesisSources {
    /// The sources of a worker reading `stream` as `retrieval` says, with
    /// one read memory for all its polling readers.
    pub(crate) fn new(
        kinesis: Kinesis,
        stream: StreamRef,
        retrieval: Retrieval,
        consumer_arn: Option<String>,
    ) -> Self {
        let read_memory = Self::read_memory_for(&retrieval);
        Self::sharing(kinesis, stream, retrieval, consumer_arn, read_memory)
    }

    /// The read memory of a worker reading as `retrieval` says, to share
    /// between the sources of all its streams.
    pub(crate) fn read_memory_for(retrieval: &Retrieval) -> Arc<read_memory::ReadMemory> {
        let (read_bytes, calls) = match retrieval {
            Retrieval::Polling(config) => (config.worker_read_bytes, config.worker_calls),
            Retrieval::FanOut(_) => (
                PollingConfig::DEFAULT_WORKER_READ_BYTES,
                PollingConfig::DEFAULT_WORKER_CALLS,
            ),
        };
        read_memory::ReadMemory::new(read_bytes, calls)
    }

    /// The sources of one stream of a worker, sharing `read_memory` with
    /// the worker's other streams.
    pub(crate) fn sharing(
        kinesis: Kinesis,
        stream: StreamRef,
        retrieval: Retrieval,
        consumer_arn: Option<String>,
        read_memory: Arc<read_memory::ReadMemory>,
    ) -> Self {
        Self {
            kinesis,
            stream,
            retrieval,
            consumer_arn,
            read_memory,
        }
    }
}

impl OpenRecordSource for KinesisSources {
    fn open(
        &self,
        shard: &Shard,
        start: StartingPosition,
        stop: CancellationToken,
    ) -> Result<Box<dyn RecordSource>> {
        match &self.retrieval {
            Retrieval::Polling(config) => Ok(Box::new(PollingSource::start_under(
                self.kinesis.clone(),
                self.stream.clone(),
                shard,
                start,
                config.clone(),
                stop,
                self.read_memory.clone(),
            )?)),
            Retrieval::FanOut(config) => {
                let consumer_arn = self.consumer_arn.clone().ok_or_else(|| {
                    Error::Config("enhanced fan-out without a resolved stream consumer".into())
                })?;
                Ok(Box::new(FanOutSource::start_under(
                    self.kinesis.clone(),
                    self.stream.clone(),
                    consumer_arn,
                    shard,
                    start,
                    config.clone(),
                    stop,
                )?))
            }
        }
    }
}
