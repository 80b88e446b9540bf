//! Lambda-style batch processing on top of the shard streams: batches by
//! size and window, several batches of one shard at once with per-key order
//! kept, and a failure policy (retries, bisect, partial success, maximum
//! record age, a failure callback).

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use super::{CommittableRecord, Consumer, ShardRecords};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::processor::{ProcessorError, ShardInfo};
use crate::record::UserRecord;
use crate::scheduler::ShutdownReport;

/// Records given up on, for the failure callback.
#[derive(Debug)]
pub struct BatchFailure {
    /// The shard they came from.
    pub shard: ShardInfo,
    /// The records, in shard order.
    pub records: Vec<UserRecord>,
    /// Why they were given up on.
    pub reason: FailureReason,
}

/// Why records were given up on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The handler failed on them every time.
    RetriesExhausted {
        /// The last error.
        error: String,
        /// How often the handler was called with them.
        attempts: u32,
    },
    /// They were older than the maximum record age when their batch was
    /// formed; the handler never saw them.
    TooOld {
        /// The configured maximum age.
        max_age: Duration,
    },
}

/// The failure callback: a dead letter for records given up on. The records
/// are committed once it returns.
pub type BatchFailureHandler = Arc<dyn Fn(BatchFailure) -> BoxFuture<'static, ()> + Send + Sync>;

/// How a batch handler failed.
#[derive(Debug)]
pub enum BatchError {
    /// The whole batch failed.
    Failed(ProcessorError),
    /// The records before `first_failed` (an index into the batch) were
    /// handled; the rest is retried from that record.
    Partial {
        /// The index of the first record not handled.
        first_failed: usize,
        /// Why it failed.
        error: ProcessorError,
    },
}

impl<E: Into<ProcessorError>> From<E> for BatchError {
    fn from(error: E) -> Self {
        Self::Failed(error.into())
    }
}

/// How [`Consumer::for_each_batch`] forms and retries batches. Made with
/// [`BatchOptions::builder`] (or [`Default`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct BatchOptions {
    /// The most records in one batch. Default: 100.
    pub batch_size: usize,
    /// How long a batch may wait for more records after its first.
    /// Default: 500 ms.
    pub max_batching_window: Duration,
    /// Batches of one shard handled at once, 1 to 10; records of one
    /// partition key always go to the same lane, in order. Default: 1.
    pub parallelization_factor: usize,
    /// How often a failed batch is retried before its records go to the
    /// failure callback and are committed. Default: `None`, retry until it
    /// succeeds (the shard waits, nothing is skipped).
    pub max_retries: Option<u32>,
    /// The pause before a retry: doubles from `base` up to `max`, with
    /// jitter. Default: 100 ms to 5 s.
    pub retry_backoff: (Duration, Duration),
    /// Split a failed batch in halves and handle each on its own, down to
    /// the single record that fails. Default: off.
    pub bisect_on_error: bool,
    /// Records older than this (by arrival time) are not handled: they go
    /// to the failure callback and are committed. Default: none.
    pub max_record_age: Option<Duration>,
    /// Where records given up on go. Required with `max_retries` or
    /// `max_record_age`, so nothing is skipped silently.
    pub on_failure: Option<BatchFailureHandler>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            max_batching_window: Duration::from_millis(500),
            parallelization_factor: 1,
            max_retries: None,
            retry_backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            bisect_on_error: false,
            max_record_age: None,
            on_failure: None,
        }
    }
}

impl std::fmt::Debug for BatchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchOptions")
            .field("batch_size", &self.batch_size)
            .field("max_batching_window", &self.max_batching_window)
            .field("parallelization_factor", &self.parallelization_factor)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("bisect_on_error", &self.bisect_on_error)
            .field("max_record_age", &self.max_record_age)
            .field("on_failure", &self.on_failure.is_some())
            .finish()
    }
}

crate::config::config_builder! {
    /// Builds [`BatchOptions`]; [`build`](Self::build) validates them.
    BatchOptionsBuilder => BatchOptions {
        batch_size: usize,
        max_batching_window: Duration,
        parallelization_factor: usize,
        max_retries: Option<u32>,
        retry_backoff: (Duration, Duration),
        bisect_on_error: bool,
        max_record_age: Option<Duration>,
    }
}

impl BatchOptionsBuilder {
    /// Sets the failure callback, which receives the records given up on.
    /// Default: none (then nothing may be given up).
    pub fn on_failure<H, Fut>(mut self, handler: H) -> Self
    where
        H: Fn(BatchFailure) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.config.on_failure = Some(Arc::new(move |failure| Box::pin(handler(failure))));
        self
    }
}

impl BatchOptions {
    /// A builder starting from the defaults.
    pub fn builder() -> BatchOptionsBuilder {
        BatchOptionsBuilder {
            config: Self::default(),
        }
    }

    /// Checks every value.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first value out of range.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Config("batch_size must be positive".into()));
        }
        if !(1..=10).contains(&self.parallelization_factor) {
            return Err(Error::Config(
                "parallelization_factor must be 1 to 10".into(),
            ));
        }
        if (self.max_retries.is_some() || self.max_record_age.is_some())
            && self.on_failure.is_none()
        {
            return Err(Error::Config(
                "max_retries and max_record_age give records up: set on_failure to receive them"
                    .into(),
            ));
        }
        if self.retry_backoff.0.is_zero() || self.retry_backoff.1 < self.retry_backoff.0 {
            return Err(Error::Config(
                "retry_backoff must be positive and its max at least its base".into(),
            ));
        }
        Ok(())
    }
}

/// A batch for the handler of [`Consumer::for_each_batch`].
#[derive(Clone, Debug)]
pub struct Batch {
    /// The shard the records came from.
    pub shard: ShardInfo,
    /// The records, in shard order (per partition key when the
    /// parallelization factor is above 1).
    pub records: Vec<UserRecord>,
}

impl Consumer {
    /// Handles the records in batches, Lambda-style, until the consumer
    /// shuts down (see [`ShutdownHandle`](super::ShutdownHandle)); returns
    /// the shutdown report. A record is committed once the handler succeeded
    /// on it or it was given to the failure callback.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `options` do not validate (the consumer is
    /// shut down).
    pub async fn for_each_batch<H, Fut>(
        self,
        options: BatchOptions,
        handler: H,
    ) -> Result<ShutdownReport>
    where
        H: Fn(Batch) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), BatchError>> + Send + 'static,
    {
        let handle = self.shutdown_handle();
        if let Err(err) = options.validate() {
            handle.shutdown().await;
            return Err(err);
        }
        let options = Arc::new(options);
        let handler = Arc::new(handler);
        let mut shards = self.shards();
        let mut running = tokio::task::JoinSet::new();
        while let Some((info, records)) = shards.next().await {
            let (options, handler) = (options.clone(), handler.clone());
            running.spawn(run_shard(info, records, options, handler));
        }
        while running.join_next().await.is_some() {}
        Ok(handle.shutdown().await)
    }
}

/// One shard: records routed by partition key to lanes, each lane handling
/// its batches in order.
async fn run_shard<H, Fut>(
    info: ShardInfo,
    records: ShardRecords,
    options: Arc<BatchOptions>,
    handler: Arc<H>,
) where
    H: Fn(Batch) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), BatchError>> + Send + 'static,
{
    let lanes = options.parallelization_factor;
    if lanes == 1 {
        run_lane(records, &options, &*handler).await;
        return;
    }
    let mut senders = Vec::with_capacity(lanes);
    let running = FuturesUnordered::new();
    for _ in 0..lanes {
        let (sender, receiver) = mpsc::unbounded_channel();
        senders.push(sender);
        let lane = ShardRecords {
            info: info.clone(),
            receiver,
        };
        let (options, handler) = (options.clone(), handler.clone());
        running.push(async move { run_lane(lane, &options, &*handler).await });
    }
    let route = async move {
        let mut records = records;
        while let Some(record) = records.next().await {
            let lane = lane_of(record.partition_key(), senders.len());
            if let Some(sender) = senders.get(lane) {
                // A lane ends only when this sender is dropped.
                let _ = sender.send(record);
            }
        }
    };
    let lanes_done = running.collect::<Vec<()>>();
    tokio::join!(route, lanes_done);
}

fn lane_of(partition_key: &str, lanes: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    partition_key.hash(&mut hasher);
    (hasher.finish() % lanes.max(1) as u64) as usize
}

async fn run_lane<H, Fut>(records: ShardRecords, options: &BatchOptions, handler: &H)
where
    H: Fn(Batch) -> Fut,
    Fut: Future<Output = std::result::Result<(), BatchError>>,
{
    let info = records.shard().clone();
    let mut batches = records.chunks(options.batch_size, options.max_batching_window);
    while let Some(batch) = batches.next().await {
        handle_batch(&info, batch.into_records(), options, handler).await;
    }
}

/// Gives records up: to the failure callback, then committed.
async fn give_up(
    info: &ShardInfo,
    records: Vec<CommittableRecord>,
    reason: FailureReason,
    options: &BatchOptions,
) {
    tracing::warn!(
        records = records.len(),
        ?reason,
        "giving records up to the failure callback"
    );
    if let Some(on_failure) = &options.on_failure {
        let failure = BatchFailure {
            shard: info.clone(),
            records: records.iter().map(|r| r.record().clone()).collect(),
            reason,
        };
        on_failure(failure).await;
    }
    for record in records {
        record.commit();
    }
}

fn too_old(record: &CommittableRecord, max_age: Duration, now: SystemTime) -> bool {
    record
        .arrival_time()
        .and_then(|arrived| now.duration_since(arrived).ok())
        .is_some_and(|age| age > max_age)
}

/// Handles one batch under the failure policy; returns once every record
/// is committed or the shard's stream is over.
async fn handle_batch<H, Fut>(
    info: &ShardInfo,
    records: Vec<CommittableRecord>,
    options: &BatchOptions,
    handler: &H,
) where
    H: Fn(Batch) -> Fut,
    Fut: Future<Output = std::result::Result<(), BatchError>>,
{
    let mut records = records;
    if let Some(max_age) = options.max_record_age {
        let now = SystemTime::now();
        let (old, fresh): (Vec<_>, Vec<_>) =
            records.into_iter().partition(|r| too_old(r, max_age, now));
        if !old.is_empty() {
            give_up(info, old, FailureReason::TooOld { max_age }, options).await;
        }
        records = fresh;
    }
    let backoff = Backoff {
        base: options.retry_backoff.0,
        max: options.retry_backoff.1,
    };
    let mut parts: VecDeque<Vec<CommittableRecord>> = VecDeque::from([records]);
    while let Some(mut part) = parts.pop_front() {
        let mut attempts = 0;
        while !part.is_empty() {
            if part.first().is_some_and(CommittableRecord::is_stale) {
                // The lease is gone or the consumer stopped: another owner
                // (or a restart) reads these again from the checkpoint.
                return;
            }
            attempts += 1;
            let batch = Batch {
                shard: info.clone(),
                records: part.iter().map(|r| r.record().clone()).collect(),
            };
            let error = match AssertUnwindSafe(handler(batch)).catch_unwind().await {
                Ok(Ok(())) => {
                    for record in part.drain(..) {
                        record.commit();
                    }
                    break;
                }
                Ok(Err(BatchError::Partial {
                    first_failed,
                    error,
                })) if first_failed < part.len() => {
                    let rest = part.split_off(first_failed);
                    for record in part {
                        record.commit();
                    }
                    part = rest;
                    error.to_string()
                }
                Ok(Err(BatchError::Partial { first_failed, .. })) => format!(
                    "the handler named record {first_failed} as failed in a batch of {}",
                    part.len()
                ),
                Ok(Err(BatchError::Failed(error))) => error.to_string(),
                Err(panic) => format!(
                    "panicked: {}",
                    crate::processor::panic_message(panic.as_ref())
                ),
            };
            tracing::warn!(error = %error, attempts, records = part.len(), "a batch failed");
            if options.bisect_on_error && part.len() > 1 {
                let second = part.split_off(part.len() / 2);
                parts.push_front(second);
                parts.push_front(part);
                break;
            }
            if options.max_retries.is_some_and(|max| attempts > max) {
                let reason = FailureReason::RetriesExhausted { error, attempts };
                give_up(info, std::mem::take(&mut part), reason, options).await;
                break;
            }
            backoff.sleep(attempts).await;
        }
    }
}
