//! Writing records with PutRecords: batching, retries of failed entries,
//! per-key order, and KPL-style aggregation per predicted shard.
//!
//! Two ways in. [`Producer::put`] writes a batch the caller holds and returns
//! once all of it is written (this file: the config, the request building
//! and the retry loop share the `Pending` bookkeeping of entries in flight).
//! [`Producer::send`] hands one record to a background engine (`engine.rs`)
//! and answers with a [`Receipt`]: records linger briefly to fill requests,
//! are paced per shard (`rate_limit.rs`) and bounded in memory; the
//! senders' side, the `Sink` and the receipts stream are in `send.rs`.

mod engine;
mod rate_limit;
mod send;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use send::EngineHandle;
pub use send::{ProducerSink, Receipt, Receipts, SendError};

use crate::aws::{Kinesis, PutEntry, PutOutcome, ShardFilter, StreamRef};
use crate::backoff::{Backoff, FailureStreak};
use crate::error::{Error, Result};
use crate::kpl::{Aggregator, MAX_KINESIS_RECORD_SIZE};
use crate::model::{HashKey, ShardId};
use crate::record::ProducerRecord;
use crate::shards::ShardMap;

/// The most entries one PutRecords call takes.
const MAX_ENTRIES_PER_CALL: usize = 500;
/// The most bytes (data plus partition keys) one PutRecords call takes.
const MAX_BYTES_PER_CALL: usize = 5 * 1024 * 1024;
/// The longest partition key Kinesis accepts, in characters.
const MAX_PARTITION_KEY_CHARS: usize = 256;

/// How a [`Producer`] writes. Made with [`ProducerConfig::builder`] (or
/// [`Default`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// Pack user records into KPL aggregates, one stream of aggregates per
    /// predicted shard. Default: `false`.
    pub aggregate: bool,
    /// The largest aggregate in bytes. Default: [`Aggregator::DEFAULT_MAX_SIZE`].
    pub aggregate_max_size: usize,
    /// Keep per-key order even when entries fail: a request carries at most
    /// one entry per partition key (per shard when aggregating), so a later
    /// record never overtakes a failed earlier one. Default: `false`, which
    /// keeps order only while nothing fails.
    pub strict_order: bool,
    /// How many times an entry is sent before the producer gives up.
    /// Default: 10.
    pub max_attempts: u32,
    /// The first pause after a failure; it doubles up to
    /// [`max_backoff`](Self::max_backoff), with full jitter. Default: 100 ms.
    pub base_backoff: Duration,
    /// The longest pause after failures. Default: 5 s.
    pub max_backoff: Duration,
    /// [`Producer::send`]: how long a record may wait for others to fill a
    /// request before it is sent anyway. Default: [`DEFAULT_LINGER`].
    pub linger: Duration,
    /// [`Producer::send`]: how long a record may take, from `send` to being
    /// written (waiting for room, in the buffer and through retries), before
    /// it is answered with [`SendError::Expired`], like the KPL's
    /// `RecordTtl`. Default: [`DEFAULT_RECORD_TTL`].
    pub record_ttl: Duration,
    /// [`Producer::send`]: the most records sent and not yet answered; at
    /// the limit `send` waits and `try_send` fails. Default:
    /// [`DEFAULT_MAX_OUTSTANDING_RECORDS`].
    pub max_outstanding_records: usize,
    /// [`Producer::send`]: the most bytes (data plus partition keys) of
    /// records sent and not yet answered; at least 2 MiB. Default:
    /// [`DEFAULT_MAX_OUTSTANDING_BYTES`].
    pub max_outstanding_bytes: usize,
    /// [`Producer::send`]: the share, in percent (1 to 100), of a shard's
    /// write limits (1 MiB/s and 1,000 records/s) this producer uses per
    /// shard, so a hot shard is paced instead of throttled. Default: 100.
    pub rate_limit_percent: u32,
    /// [`Producer::send`]: the most PutRecords calls in flight at once (a
    /// shard is in at most one of them). Default: 8.
    pub max_requests_in_flight: usize,
}

/// How long a record sent with [`Producer::send`] waits for others by
/// default: 100 ms, the KPL's `RecordMaxBufferedTime`.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(100);
/// A record's default time-to-live: 30 s, the KPL's `RecordTtl`.
pub const DEFAULT_RECORD_TTL: Duration = Duration::from_secs(30);
/// The default limit of outstanding records: 100,000.
pub const DEFAULT_MAX_OUTSTANDING_RECORDS: usize = 100_000;
/// The default limit of outstanding bytes: 64 MiB.
pub const DEFAULT_MAX_OUTSTANDING_BYTES: usize = 64 * 1024 * 1024;

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            aggregate: false,
            aggregate_max_size: Aggregator::DEFAULT_MAX_SIZE,
            strict_order: false,
            max_attempts: 10,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            linger: DEFAULT_LINGER,
            record_ttl: DEFAULT_RECORD_TTL,
            max_outstanding_records: DEFAULT_MAX_OUTSTANDING_RECORDS,
            max_outstanding_bytes: DEFAULT_MAX_OUTSTANDING_BYTES,
            rate_limit_percent: 100,
            max_requests_in_flight: 8,
        }
    }
}

impl ProducerConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> ProducerConfigBuilder {
        ProducerConfigBuilder {
            config: Self::default(),
        }
    }

    /// Checks every value.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field: an aggregate size outside
    /// 64 B..=1 MiB, zero attempts, a base backoff above the maximum, a zero
    /// time-to-live, outstanding limits below one record or 2 MiB, a rate
    /// limit outside 1..=100 %, no request in flight.
    pub fn validate(&self) -> Result<()> {
        // Its error names the aggregate size and the allowed range.
        Aggregator::with_max_size(self.aggregate_max_size)?;
        if self.max_attempts == 0 {
            return Err(Error::Config("max_attempts must be at least 1".into()));
        }
        if self.base_backoff.is_zero() || self.base_backoff > self.max_backoff {
            return Err(Error::Config(
                "base_backoff must be positive and not exceed max_backoff".into(),
            ));
        }
        if self.record_ttl.is_zero() {
            return Err(Error::Config("record_ttl must be positive".into()));
        }
        if self.linger > Duration::from_secs(60) {
            return Err(Error::Config("linger must be at most 60 s".into()));
        }
        if self.max_outstanding_records == 0 || self.max_outstanding_records > 100_000_000 {
            return Err(Error::Config(
                "max_outstanding_records must be between 1 and 100,000,000".into(),
            ));
        }
        if !(2 * MAX_KINESIS_RECORD_SIZE..=u32::MAX as usize).contains(&self.max_outstanding_bytes)
        {
            return Err(Error::Config(
                "max_outstanding_bytes must be between 2 MiB and 4 GiB".into(),
            ));
        }
        if !(1..=100).contains(&self.rate_limit_percent) {
            return Err(Error::Config(
                "rate_limit_percent must be between 1 and 100".into(),
            ));
        }
        if self.max_requests_in_flight == 0 {
            return Err(Error::Config(
                "max_requests_in_flight must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

crate::config::config_builder! {
    /// Builds a [`ProducerConfig`]; [`build`](Self::build) validates it.
    ProducerConfigBuilder => ProducerConfig {
        aggregate: bool,
        aggregate_max_size: usize,
        strict_order: bool,
        max_attempts: u32,
        base_backoff: Duration,
        max_backoff: Duration,
        linger: Duration,
        record_ttl: Duration,
        max_outstanding_records: usize,
        max_outstanding_bytes: usize,
        rate_limit_percent: u32,
        max_requests_in_flight: usize,
    }
}

/// What a [`Producer::put`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutSummary {
    /// User records written.
    pub user_records: u64,
    /// Kinesis records written (aggregates count once).
    pub kinesis_records: u64,
    /// Entries sent again after Kinesis failed them.
    pub retried_entries: u64,
    /// User records re-sent because their aggregate landed in a shard other
    /// than the predicted one (the stream was resharded meanwhile).
    pub resent_after_reshard: u64,
    /// PutRecords calls made.
    pub requests: u64,
}

impl std::ops::AddAssign for PutSummary {
    fn add_assign(&mut self, other: Self) {
        self.user_records += other.user_records;
        self.kinesis_records += other.kinesis_records;
        self.retried_entries += other.retried_entries;
        self.resent_after_reshard += other.resent_after_reshard;
        self.requests += other.requests;
    }
}

/// One entry waiting to be written.
#[derive(Debug)]
struct Pending {
    entry: PutEntry,
    /// Entries with the same key must land in order.
    ordering_key: String,
    /// For an aggregate: the shard it was built for and its user records, to
    /// re-send them if it lands elsewhere.
    aggregate: Option<(ShardId, Vec<ProducerRecord>)>,
    attempts: u32,
}

impl Pending {
    fn user_records(&self) -> u64 {
        self.aggregate
            .as_ref()
            .map_or(1, |(_, records)| records.len() as u64)
    }

    fn size(&self) -> usize {
        self.entry.data.len() + self.entry.partition_key.len()
    }
}

/// Writes user records to a stream with PutRecords.
///
/// Each [`put`](Self::put) sends its records in batches of at most 500
/// entries and 5 MiB, retries only the entries that failed (with capped
/// exponential backoff and full jitter), and returns once every record is
/// written. Per partition key, records land in the order given while
/// nothing fails; with [`ProducerConfig::strict_order`] also when entries
/// fail.
///
/// With [`ProducerConfig::aggregate`] it works like the KPL: it groups the
/// records by the shard their hash key falls in (from ListShards), packs each
/// group into aggregates, and sends each aggregate with an explicit hash key
/// inside that shard's range, so a KCL-compatible consumer never drops its
/// user records. When an aggregate lands in another shard than predicted and
/// that shard's range does not hold all of its user records (a consumer
/// would drop it), the producer refreshes its shard map and re-sends those
/// user records.
///
/// ```no_run
/// # #[allow(dead_code)]
/// # async fn example(kinesis: rkcl::Kinesis) -> rkcl::Result<()> {
/// use rkcl::{aws::StreamRef, producer::{Producer, ProducerConfig}, record::ProducerRecord};
///
/// let config = ProducerConfig::builder().aggregate(true).build()?;
/// let mut producer = Producer::new(kinesis, StreamRef::parse("orders"), config)?;
/// let summary = producer
///     .put(vec![ProducerRecord::new("customer-1", "order placed")])
///     .await?;
/// assert_eq!(summary.user_records, 1);
/// # Ok(())
/// # }
/// ```
///
/// [`send`](Self::send) takes one record at a time and answers with where it
/// was written; it takes `&self`, and a producer is cheap to clone (clones
/// share one background engine), so many tasks write through one producer:
///
/// ```no_run
/// # #[allow(dead_code)]
/// # async fn example(kinesis: rkcl::Kinesis) -> rkcl::Result<()> {
/// use std::time::Duration;
/// use rkcl::{aws::StreamRef, producer::{Producer, ProducerConfig}, record::ProducerRecord};
///
/// let config = ProducerConfig::builder().aggregate(true).build()?;
/// let producer = Producer::new(kinesis, StreamRef::parse("orders"), config)?;
/// let receipt = producer
///     .send(ProducerRecord::new("customer-1", "order placed"))
///     .await
///     .map_err(|e| rkcl::Error::InvalidInput(e.to_string()))?;
/// tracing::info!(shard = %receipt.shard_id, sequence = %receipt.sequence_number, "written");
/// producer.shutdown(Duration::from_secs(10)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Producer {
    kinesis: Kinesis,
    stream: StreamRef,
    config: ProducerConfig,
    shard_map: Option<ShardMap>,
    engine: Arc<EngineSlot>,
}

/// The engine shared by a producer's clones, started by the first `send`.
/// Dropped with the last clone: records still outstanding then are logged.
#[derive(Debug, Default)]
struct EngineSlot {
    handle: OnceLock<Result<Arc<EngineHandle>, SendError>>,
}

impl Drop for EngineSlot {
    fn drop(&mut self) {
        if let Some(Ok(handle)) = self.handle.get() {
            let outstanding = handle.outstanding();
            if outstanding > 0 && !handle.shut_down.load(std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    records = outstanding,
                    "producer dropped without shutdown while records were outstanding; they are still being written, but nobody may hear of their outcome"
                );
            }
        }
    }
}

impl Producer {
    /// A producer for `stream`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an aggregate size outside 64 B..=1 MiB or zero
    /// attempts.
    pub fn new(kinesis: Kinesis, stream: StreamRef, config: ProducerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            kinesis,
            stream,
            config,
            shard_map: None,
            engine: Arc::new(EngineSlot::default()),
        })
    }

    fn engine(&self) -> Result<Arc<EngineHandle>, SendError> {
        self.engine
            .handle
            .get_or_init(|| {
                EngineHandle::start(
                    self.kinesis.clone(),
                    self.stream.clone(),
                    self.config.clone(),
                )
                .map(Arc::new)
            })
            .clone()
    }

    /// Sends one record through the background engine; the future answers
    /// with where it was written.
    ///
    /// The record is queued when `send` is called if the producer has room
    /// (so records of one key sent by one task land in the order of the
    /// calls), otherwise when the future is first polled and room frees up
    /// (backpressure). It waits up to [`ProducerConfig::linger`] for other
    /// records to fill a request, is paced at its shard's write limits, and
    /// failed entries are retried with backoff until the record's
    /// [`ProducerConfig::record_ttl`] passes. The first `send` starts the
    /// engine on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`SendError::Invalid`] for a record Kinesis would refuse (nothing is
    /// sent); [`SendError::Expired`] once its time-to-live passed;
    /// [`SendError::Failed`] for an error retrying cannot fix (a missing
    /// stream); [`SendError::Closed`] after [`shutdown`](Self::shutdown).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not withdraw a record already queued: it is
    /// still written, only its receipt is lost. A record still waiting for
    /// room is not sent.
    pub fn send(
        &self,
        record: ProducerRecord,
    ) -> impl Future<Output = std::result::Result<Receipt, SendError>> + Send + 'static + use<>
    {
        let sent = self.engine().map(|engine| engine.send(record));
        async move { sent?.await }
    }

    /// Queues one record at once, or fails at once when the producer holds
    /// [`ProducerConfig::max_outstanding_records`] or
    /// [`ProducerConfig::max_outstanding_bytes`]; the future answers as
    /// [`send`](Self::send)'s does.
    ///
    /// # Errors
    ///
    /// [`SendError::Full`] (with the record) when there is no room;
    /// [`SendError::Invalid`] and [`SendError::Closed`] as for `send`.
    pub fn try_send(
        &self,
        record: ProducerRecord,
    ) -> std::result::Result<
        impl Future<Output = std::result::Result<Receipt, SendError>> + Send + 'static + use<>,
        SendError,
    > {
        let answer = self.engine()?.try_enqueue(record)?;
        Ok(send::wait(answer))
    }

    /// Waits until every record sent so far is answered (written, expired
    /// or failed). Records sent meanwhile are sent at once, without
    /// lingering, until the flush is done.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] when the producer was shut down.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future loses nothing.
    pub async fn flush(&self) -> std::result::Result<(), SendError> {
        self.engine()?.flush().await
    }

    /// Flushes, then stops the engine: records not answered within
    /// `timeout` are answered with [`SendError::Closed`], and later sends
    /// fail with it. Returns how many records were answered so (0 when all
    /// were written in time).
    ///
    /// # Cancel safety
    ///
    /// The shutdown goes on when the future is dropped.
    pub async fn shutdown(&self, timeout: Duration) -> u64 {
        match self.engine.handle.get() {
            Some(Ok(engine)) => engine.shutdown(timeout).await,
            _ => 0,
        }
    }

    /// Records sent with [`send`](Self::send) and not yet answered.
    pub fn outstanding(&self) -> usize {
        match self.engine.handle.get() {
            Some(Ok(engine)) => engine.outstanding(),
            _ => 0,
        }
    }

    /// A [`Sink`](futures_util::Sink) of records into this producer
    /// (`records.forward(producer.sink())`); see [`ProducerSink`] for what
    /// its calls wait for. Without receipts, a record that cannot be
    /// written is the sink's error.
    ///
    /// # Errors
    ///
    /// [`SendError::Failed`] when there is no tokio runtime to start the
    /// engine on.
    pub fn sink(&self) -> std::result::Result<ProducerSink, SendError> {
        Ok(ProducerSink::new(self.engine()?, None))
    }

    /// A [`Sink`](futures_util::Sink) of records into this producer and the
    /// stream of their answers, in the order the records were given.
    ///
    /// # Errors
    ///
    /// As [`sink`](Self::sink).
    pub fn sink_with_receipts(&self) -> std::result::Result<(ProducerSink, Receipts), SendError> {
        Ok(Receipts::pair(self.engine()?))
    }

    /// Writes `records`, in order per partition key, and returns once all are
    /// written.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] or [`Error::RecordTooLarge`] for a record
    /// Kinesis would refuse (checked before anything is sent);
    /// [`Error::PutFailed`] when entries still fail after
    /// [`ProducerConfig::max_attempts`]; a non-retryable error of the call
    /// (missing stream, no access). Records written before an error stay
    /// written.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a dropped future may have written part of the records.
    pub async fn put(&mut self, records: Vec<ProducerRecord>) -> Result<PutSummary> {
        for record in &records {
            self.validate(record)?;
        }
        let mut summary = PutSummary::default();
        let pending = if self.config.aggregate {
            self.aggregate_by_shard(records, false).await?
        } else {
            records.into_iter().map(plain_entry).collect()
        };
        let mut queue: VecDeque<Pending> = pending.into();
        let mut streak = FailureStreak::new("PutRecords");
        while !queue.is_empty() {
            let batch = self.take_batch(&mut queue);
            let entries: Vec<PutEntry> = batch.iter().map(|p| p.entry.clone()).collect();
            summary.requests += 1;
            let outcomes = match self.kinesis.put_records(&self.stream, &entries).await {
                Ok(outcomes) => outcomes,
                Err(err) if err.is_retryable() => {
                    let failures_in_a_row = streak.failed(&err);
                    let mut back = Vec::with_capacity(batch.len());
                    for mut pending in batch {
                        pending.attempts += 1;
                        self.check_attempts(&pending, &err.to_string())?;
                        back.push(pending);
                    }
                    summary.retried_entries += back.len() as u64;
                    requeue_front(&mut queue, back);
                    self.pause(failures_in_a_row).await;
                    continue;
                }
                Err(err) => return Err(err),
            };
            let mut failed = Vec::new();
            let mut misrouted = Vec::new();
            let mut last_error = String::new();
            for (mut pending, outcome) in batch.into_iter().zip(outcomes) {
                match outcome {
                    PutOutcome::Written { shard_id, .. } => {
                        if let Some(records) = self.misrouted(&pending, &shard_id).await? {
                            misrouted.extend(records);
                        } else {
                            summary.kinesis_records += 1;
                            summary.user_records += pending.user_records();
                        }
                    }
                    PutOutcome::Failed { code, message } => {
                        pending.attempts += 1;
                        last_error = format!("{code}: {message}");
                        self.check_attempts(&pending, &last_error)?;
                        failed.push(pending);
                    }
                }
            }
            summary.retried_entries += failed.len() as u64;
            if !misrouted.is_empty() {
                summary.resent_after_reshard += misrouted.len() as u64;
                tracing::info!(
                    stream = %self.stream,
                    user_records = misrouted.len(),
                    "aggregates landed in another shard than predicted; re-sending their user records"
                );
                let resend = self.aggregate_by_shard(misrouted, true).await?;
                failed.extend(resend);
            }
            if failed.is_empty() {
                streak.succeeded();
            } else {
                let failures_in_a_row = streak.failed(&format_args!(
                    "{} entries failed, the last with {last_error}",
                    failed.len()
                ));
                requeue_front(&mut queue, failed);
                self.pause(failures_in_a_row).await;
            }
        }
        Ok(summary)
    }

    fn validate(&self, record: &ProducerRecord) -> Result<()> {
        // An aggregate is sent with its first user record's partition key,
        // so every key must be one Kinesis accepts.
        let chars = record.partition_key.chars().count();
        if !(1..=MAX_PARTITION_KEY_CHARS).contains(&chars) {
            return Err(Error::InvalidInput(format!(
                "a partition key must have 1 to {MAX_PARTITION_KEY_CHARS} characters, got {chars}"
            )));
        }
        HashKey::of_record(&record.partition_key, record.explicit_hash_key.as_deref())?;
        let size = record.data.len() + record.partition_key.len();
        if !self.config.aggregate && size > MAX_KINESIS_RECORD_SIZE {
            return Err(Error::RecordTooLarge {
                size,
                max: MAX_KINESIS_RECORD_SIZE,
            });
        }
        Ok(())
    }

    fn check_attempts(&self, pending: &Pending, last_error: &str) -> Result<()> {
        if pending.attempts >= self.config.max_attempts {
            return Err(Error::PutFailed {
                failed: usize::try_from(pending.user_records()).unwrap_or(usize::MAX),
                attempts: pending.attempts,
                last_error: last_error.to_owned(),
            });
        }
        Ok(())
    }

    /// Takes the next request's entries off the front of the queue.
    fn take_batch(&self, queue: &mut VecDeque<Pending>) -> Vec<Pending> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        if !self.config.strict_order {
            while let Some(front) = queue.front() {
                if batch.len() == MAX_ENTRIES_PER_CALL
                    || (!batch.is_empty() && bytes + front.size() > MAX_BYTES_PER_CALL)
                {
                    break;
                }
                bytes += front.size();
                batch.extend(queue.pop_front());
            }
            return batch;
        }
        // Strict order: at most one entry per key, the first of each key.
        let mut keys_seen = HashSet::new();
        let mut rest = VecDeque::with_capacity(queue.len());
        while let Some(pending) = queue.pop_front() {
            let full = batch.len() == MAX_ENTRIES_PER_CALL
                || (!batch.is_empty() && bytes + pending.size() > MAX_BYTES_PER_CALL);
            if full {
                rest.push_back(pending);
                rest.extend(queue.drain(..));
                break;
            }
            if keys_seen.insert(pending.ordering_key.clone()) {
                bytes += pending.size();
                batch.push(pending);
            } else {
                rest.push_back(pending);
            }
        }
        *queue = rest;
        batch
    }

    /// For an aggregate that landed in `actual` instead of the predicted
    /// shard: its user records when a consumer of `actual` would drop it.
    async fn misrouted(
        &mut self,
        pending: &Pending,
        actual: &ShardId,
    ) -> Result<Option<Vec<ProducerRecord>>> {
        let Some((predicted, records)) = &pending.aggregate else {
            return Ok(None);
        };
        if predicted == actual {
            return Ok(None);
        }
        self.refresh_shard_map().await?;
        let range = self
            .shard_map
            .as_ref()
            .and_then(|map| map.get(actual))
            .map(|shard| shard.hash_key_range);
        let all_inside = range.is_some_and(|range| {
            records.iter().all(|record| {
                HashKey::of_record(&record.partition_key, record.explicit_hash_key.as_deref())
                    .is_ok_and(|key| range.contains(key))
            })
        });
        Ok((!all_inside).then(|| records.clone()))
    }

    async fn refresh_shard_map(&mut self) -> Result<()> {
        let shards = self
            .kinesis
            .list_shards_with(&self.stream, Some(&ShardFilter::AtLatest))
            .await?;
        self.shard_map = Some(ShardMap::new(shards));
        Ok(())
    }

    /// Groups records by predicted shard and packs each group into aggregates.
    async fn aggregate_by_shard(
        &mut self,
        records: Vec<ProducerRecord>,
        refresh: bool,
    ) -> Result<Vec<Pending>> {
        if refresh || self.shard_map.is_none() {
            self.refresh_shard_map().await?;
        }
        let map = self.shard_map.clone().unwrap_or_default();
        // Per shard, in order of first appearance: the aggregator and the
        // user records of its current aggregate.
        let mut groups: Vec<(ShardId, Aggregator, Vec<ProducerRecord>)> = Vec::new();
        let mut out = Vec::new();
        for record in records {
            let key =
                HashKey::of_record(&record.partition_key, record.explicit_hash_key.as_deref())?;
            let shard = map.shard_for(key).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "no open shard of stream {} holds hash key {key}",
                    self.stream
                ))
            })?;
            let index = match groups.iter().position(|(id, _, _)| id == &shard.id) {
                Some(index) => index,
                None => {
                    groups.push((
                        shard.id.clone(),
                        Aggregator::with_max_size(self.config.aggregate_max_size)?,
                        Vec::new(),
                    ));
                    groups.len() - 1
                }
            };
            let Some((shard_id, aggregator, members)) = groups.get_mut(index) else {
                continue;
            };
            if let Some(full) = aggregator.add(record.clone())? {
                out.push(aggregate_entry(
                    shard_id.clone(),
                    full,
                    std::mem::take(members),
                ));
            }
            members.push(record);
        }
        for (shard_id, mut aggregator, members) in groups {
            if let Some(last) = aggregator.flush() {
                out.push(aggregate_entry(shard_id, last, members));
            }
        }
        Ok(out)
    }

    async fn pause(&self, failures_in_a_row: u32) {
        let backoff = Backoff {
            base: self.config.base_backoff,
            max: self.config.max_backoff,
        };
        backoff.sleep(failures_in_a_row).await;
    }
}

fn plain_entry(record: ProducerRecord) -> Pending {
    Pending {
        ordering_key: record.partition_key.clone(),
        entry: PutEntry {
            partition_key: record.partition_key,
            explicit_hash_key: record.explicit_hash_key,
            data: record.data,
        },
        aggregate: None,
        attempts: 0,
    }
}

fn aggregate_entry(
    shard_id: ShardId,
    aggregate: crate::kpl::Aggregate,
    members: Vec<ProducerRecord>,
) -> Pending {
    Pending {
        ordering_key: shard_id.to_string(),
        entry: PutEntry {
            partition_key: aggregate.partition_key,
            // Route by the first user record's hash key, which lies in the
            // predicted shard, whatever the aggregate's partition key hashes to.
            explicit_hash_key: Some(aggregate.hash_key.to_string()),
            data: aggregate.data,
        },
        aggregate: Some((shard_id, members)),
        attempts: 0,
    }
}

/// Puts `entries` back at the front of the queue, keeping their order.
fn requeue_front(queue: &mut VecDeque<Pending>, entries: Vec<Pending>) {
    for pending in entries.into_iter().rev() {
        queue.push_front(pending);
    }
}
