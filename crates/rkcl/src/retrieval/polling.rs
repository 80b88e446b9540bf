//! Reading one shard with GetRecords: pacing, bounded prefetch, recovery.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{RecordSource, ShardBatch, ShardEnd, ShardEndReason, ShardEvent};
use crate::aws::{Kinesis, ShardFilter, StreamRef};
use crate::backoff::{Backoff, retry};
use crate::error::{Error, Result};
use crate::kpl::{Deaggregator, HashRangePolicy};
use crate::model::{ExtendedSequenceNumber, SequenceNumber, ShardId, StartingPosition};
use crate::shards::Shard;

/// How a [`PollingSource`] reads a shard.
///
/// The defaults leave room for other applications on the same stream: at
/// most two GetRecords calls per second per shard while caught up (Kinesis
/// allows five per shard, shared by every reader), and as many as allowed
/// while behind.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PollingConfig {
    /// The most records one GetRecords call asks for (1 to 10,000).
    /// Default: [`DEFAULT_MAX_RECORDS`](Self::DEFAULT_MAX_RECORDS).
    pub max_records: u32,
    /// The pause between calls while caught up. Default:
    /// [`DEFAULT_IDLE_INTERVAL`](Self::DEFAULT_IDLE_INTERVAL). Each pause
    /// is 90 to 100 % of it, and a reader's first pause at the tip a random
    /// share of it, so that shards do not call in step; it is never less
    /// than [`min_call_interval`](Self::min_call_interval).
    pub idle_interval: Duration,
    /// The shortest time between two calls on a shard; Kinesis allows five
    /// calls per second per shard. Default: 200 ms.
    pub min_call_interval: Duration,
    /// The read budget per shard, as a token bucket holding one second of
    /// budget: a reader may take a burst, then waits until the bucket has
    /// refilled. Default: 2 MiB/s, Kinesis' limit.
    pub bytes_per_second: u64,
    /// The most user records fetched ahead of the consumer. Default: 30,000.
    pub prefetch_records: usize,
    /// The most bytes fetched ahead of the consumer. Default: 16 MiB. One
    /// GetRecords response larger than this still passes, alone.
    pub prefetch_bytes: usize,
    /// The most batches fetched ahead of the consumer. Default: 3.
    pub prefetch_batches: usize,
    /// The first pause after a throttled or failed call; it doubles up to
    /// [`max_backoff`](Self::max_backoff), with full jitter. Default: 200 ms.
    pub base_backoff: Duration,
    /// The longest pause after failed calls. Default: 10 s.
    pub max_backoff: Duration,
    /// What to do with KPL aggregates holding user records outside the
    /// shard's hash-key range. Default: [`HashRangePolicy::DropAggregate`].
    pub hash_range_policy: HashRangePolicy,
}

impl PollingConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> PollingConfigBuilder {
        PollingConfigBuilder {
            config: Self::default(),
        }
    }

    /// The default and largest number of records per GetRecords call.
    pub const DEFAULT_MAX_RECORDS: u32 = 10_000;
    /// The default pause between calls while caught up.
    pub const DEFAULT_IDLE_INTERVAL: Duration = Duration::from_millis(500);

    /// Checks the values against each other and Kinesis' limits.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first value out of range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=10_000).contains(&self.max_records) {
            return Err(Error::Config(format!(
                "max_records must be 1 to 10000, got {}",
                self.max_records
            )));
        }
        if self.min_call_interval < Duration::from_millis(200) {
            return Err(Error::Config(
                "min_call_interval below 200 ms exceeds Kinesis' 5 calls per second per shard"
                    .into(),
            ));
        }
        if self.idle_interval < self.min_call_interval {
            return Err(Error::Config(
                "idle_interval must be at least min_call_interval".into(),
            ));
        }
        if self.bytes_per_second == 0 || self.prefetch_records == 0 || self.prefetch_bytes == 0 {
            return Err(Error::Config(
                "bytes_per_second, prefetch_records and prefetch_bytes must be positive".into(),
            ));
        }
        if self.prefetch_batches == 0 {
            return Err(Error::Config("prefetch_batches must be at least 1".into()));
        }
        if self.base_backoff.is_zero() || self.base_backoff > self.max_backoff {
            return Err(Error::Config(
                "base_backoff must be positive and at most max_backoff".into(),
            ));
        }
        Ok(())
    }

    /// The pauses between retries of failed calls.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff {
            base: self.base_backoff,
            max: self.max_backoff,
        }
    }

    /// Whether a call that returned `records` Kinesis records found the
    /// reader caught up: the next call may wait the idle interval.
    pub(crate) fn caught_up(&self, records: usize, millis_behind: Option<u64>) -> bool {
        millis_behind.is_none_or(|m| m == 0) && records < self.max_records as usize
    }

    /// The pause from the start of one call to the start of the next while
    /// caught up: `share` (0 to 1) of the idle interval, never below the
    /// shortest call interval. (Behind, the pause is the shortest call
    /// interval; the byte budget is kept apart, by [`ReadBudget`].)
    pub(crate) fn idle_pause(&self, share: f64) -> Duration {
        self.idle_interval
            .mul_f64(share.clamp(0.0, 1.0))
            .max(self.min_call_interval)
    }
}

crate::config::config_builder! {
    /// Builds a [`PollingConfig`]; [`build`](Self::build) validates it.
    PollingConfigBuilder => PollingConfig {
        max_records: u32,
        idle_interval: Duration,
        min_call_interval: Duration,
        bytes_per_second: u64,
        prefetch_records: usize,
        prefetch_bytes: usize,
        prefetch_batches: usize,
        base_backoff: Duration,
        max_backoff: Duration,
        hash_range_policy: HashRangePolicy,
    }
}

impl Default for PollingConfig {
    fn default() -> Self {
        Self {
            max_records: Self::DEFAULT_MAX_RECORDS,
            idle_interval: Self::DEFAULT_IDLE_INTERVAL,
            min_call_interval: Duration::from_millis(200),
            bytes_per_second: 2 * 1024 * 1024,
            prefetch_records: 30_000,
            prefetch_bytes: 16 * 1024 * 1024,
            prefetch_batches: 3,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            hash_range_policy: HashRangePolicy::DropAggregate,
        }
    }
}

/// A shard's read budget in bytes: a token bucket that holds one second of
/// budget and refills at `bytes_per_second`. A call may overdraw it; the next
/// call then waits until it is back to zero.
#[derive(Debug)]
pub(crate) struct ReadBudget {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl ReadBudget {
    pub(crate) fn new(bytes_per_second: u64, now: Instant) -> Self {
        let rate = bytes_per_second as f64;
        Self {
            rate,
            tokens: rate,
            updated: now,
        }
    }

    /// Spends `bytes` at `now` and says from when the next call may run.
    pub(crate) fn spend(&mut self, bytes: usize, now: Instant) -> Instant {
        let refill = now.saturating_duration_since(self.updated).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate) - bytes as f64;
        self.updated = now;
        if self.tokens >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// An event fetched ahead, holding its share of the prefetch budget until
/// the consumer takes it.
///
/// It crosses the channel boxed: a bounded channel allocates its slots in
/// blocks of 32 whatever its capacity, and an idle shard should not keep
/// 32 events' worth of memory.
#[derive(Debug)]
struct Prefetched {
    event: Result<ShardEvent>,
    _records: Option<OwnedSemaphorePermit>,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// Reads one shard with GetRecords in a background task, a bounded amount
/// ahead of the consumer.
///
/// The task paces its calls (see [`PollingConfig`]), de-aggregates KPL
/// records with the shard's hash-key range, replaces expired iterators
/// after the last record it saw, backs off on throttling and 5xx, ends the
/// shard cleanly when it is closed (with its children) or gone, and reports
/// errors that retrying cannot fix. Dropping the source stops the task.
#[derive(Debug)]
pub struct PollingSource {
    shard_id: ShardId,
    receiver: mpsc::Receiver<Box<Prefetched>>,
    cancel: CancellationToken,
    finished: bool,
}

impl PollingSource {
    /// Starts reading `shard` of `stream` at `start`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `config` does not validate.
    pub fn start(
        kinesis: Kinesis,
        stream: StreamRef,
        shard: &Shard,
        start: StartingPosition,
        config: PollingConfig,
    ) -> Result<Self> {
        Self::start_under(
            kinesis,
            stream,
            shard,
            start,
            config,
            CancellationToken::new(),
        )
    }

    /// As [`start`](Self::start); the background task also stops when
    /// `cancel` is cancelled (a child of the shard consumer's stop signal).
    pub(crate) fn start_under(
        kinesis: Kinesis,
        stream: StreamRef,
        shard: &Shard,
        start: StartingPosition,
        config: PollingConfig,
        cancel: CancellationToken,
    ) -> Result<Self> {
        config.validate()?;
        let (sender, receiver) = mpsc::channel(config.prefetch_batches);
        let fetcher = Fetcher {
            deaggregator: Deaggregator::for_shard(
                shard.id.clone(),
                shard.hash_key_range,
                config.hash_range_policy,
            ),
            skip_through: match &start {
                StartingPosition::AfterCheckpoint(seq, sub) => {
                    Some(ExtendedSequenceNumber::new(seq.clone(), *sub))
                }
                _ => None,
            },
            kinesis,
            stream,
            shard_id: shard.id.clone(),
            record_budget: Arc::new(Semaphore::new(config.prefetch_records)),
            byte_budget: Arc::new(Semaphore::new(config.prefetch_bytes)),
            start,
            opened_latest_at: None,
            last_sequence_number: None,
            idled: false,
            config,
        };
        let token = cancel.clone();
        let span = tracing::info_span!("shard", shard_id = %shard.id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                tokio::select! {
                    () = token.cancelled() => {}
                    () = fetcher.run(sender) => {}
                }
            },
            span,
        ));
        Ok(Self {
            shard_id: shard.id.clone(),
            receiver,
            cancel,
            finished: false,
        })
    }

    /// The shard this source reads.
    pub fn shard_id(&self) -> &ShardId {
        &self.shard_id
    }
}

impl RecordSource for PollingSource {
    /// # Cancel safety
    ///
    /// Cancel safe: an event not yet returned stays queued for the next call.
    fn next_event(&mut self) -> BoxFuture<'_, Option<Result<ShardEvent>>> {
        Box::pin(async move {
            if self.finished {
                return None;
            }
            let prefetched = self.receiver.recv().await?;
            if matches!(prefetched.event, Ok(ShardEvent::End(_)) | Err(_)) {
                self.finished = true;
            }
            Some(prefetched.event)
        })
    }
}

impl Drop for PollingSource {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The background half of a [`PollingSource`].
struct Fetcher {
    kinesis: Kinesis,
    stream: StreamRef,
    shard_id: ShardId,
    config: PollingConfig,
    deaggregator: Deaggregator,
    /// User records at or below this position are skipped (resume after a
    /// checkpoint inside an aggregate).
    skip_through: Option<ExtendedSequenceNumber>,
    record_budget: Arc<Semaphore>,
    byte_budget: Arc<Semaphore>,
    start: StartingPosition,
    /// When a LATEST iterator was opened, to reopen without a gap.
    opened_latest_at: Option<SystemTime>,
    last_sequence_number: Option<SequenceNumber>,
    /// Whether the reader has paused at the tip before.
    idled: bool,
}

/// The consumer dropped the source.
struct Gone;

impl Fetcher {
    async fn run(mut self, sender: mpsc::Sender<Box<Prefetched>>) {
        if let Err(err) = self.read(&sender).await {
            tracing::warn!(error = %err, "stopped reading the shard");
            let _ = sender
                .send(Box::new(Prefetched {
                    event: Err(err),
                    _records: None,
                    _bytes: None,
                }))
                .await;
        }
    }

    /// Reads until the shard ends, the consumer goes, or an error that
    /// retrying cannot fix.
    async fn read(&mut self, sender: &mpsc::Sender<Box<Prefetched>>) -> Result<()> {
        let first = self.start.clone();
        let Some(mut iterator) = self.open_iterator(&first).await? else {
            return self.end(sender, Vec::new(), ShardEndReason::NotFound).await;
        };
        let backoff = self.config.backoff();
        let mut failures = 0u32;
        let mut next_call = Instant::now();
        let mut budget = ReadBudget::new(self.config.bytes_per_second, next_call);
        loop {
            tokio::time::sleep_until(next_call).await;
            let call_started = Instant::now();
            let response = match self
                .kinesis
                .get_records(&iterator, self.config.max_records)
                .await
            {
                Ok(response) => response,
                Err(Error::ExpiredIterator { .. }) => {
                    tracing::info!("the shard iterator expired; opening a new one");
                    let position = self.resume_position();
                    match self.open_iterator(&position).await? {
                        Some(fresh) => iterator = fresh,
                        None => {
                            return self.end(sender, Vec::new(), ShardEndReason::NotFound).await;
                        }
                    }
                    continue;
                }
                Err(Error::ResourceNotFound { message, .. }) => {
                    tracing::info!(message, "the shard or stream is gone; ending the shard");
                    return self.end(sender, Vec::new(), ShardEndReason::NotFound).await;
                }
                Err(err) if err.is_retryable() => {
                    failures += 1;
                    tracing::debug!(error = %err, failures, "GetRecords failed; backing off");
                    next_call = Instant::now() + backoff.delay(failures);
                    continue;
                }
                Err(err) => return Err(err),
            };
            failures = 0;
            let at_tip = response.millis_behind_latest == Some(0)
                && response.records.len() < self.config.max_records as usize;
            let bytes: usize = response.records.iter().map(|r| r.data.len()).sum();
            let pause = if self
                .config
                .caught_up(response.records.len(), response.millis_behind_latest)
            {
                let share = self.idle_share();
                self.config.idle_pause(share)
            } else {
                self.config.min_call_interval
            };
            let paced = call_started + pause;
            next_call = paced.max(budget.spend(bytes, Instant::now()));
            if let Some(last) = response.records.last() {
                self.last_sequence_number = Some(last.sequence_number.clone());
            }
            let mut records = Vec::with_capacity(response.records.len());
            for record in response.records {
                self.deaggregator.deaggregate_into(record, &mut records);
            }
            if let Some(skip) = &self.skip_through {
                records.retain(|user| &user.extended_sequence_number() > skip);
                if self.last_sequence_number.as_ref() > skip.sequence_number() {
                    self.skip_through = None;
                }
            }
            let batch = ShardBatch {
                shard_id: self.shard_id.clone(),
                records,
                millis_behind_latest: response.millis_behind_latest,
                bytes,
                at_tip,
            };
            if self.send(sender, ShardEvent::Records(batch)).await.is_err() {
                return Ok(());
            }
            match response.next_shard_iterator {
                Some(next) => iterator = next,
                None => {
                    let children = if response.child_shards.is_empty() {
                        Box::pin(self.children_from_list_shards()).await?
                    } else {
                        response.child_shards.into_iter().map(|c| c.id).collect()
                    };
                    return self.end(sender, children, ShardEndReason::Closed).await;
                }
            }
        }
    }

    /// The share of the idle interval the next pause at the tip takes: a
    /// random share the first time, so that shards taken at one moment do
    /// not go on calling at one moment (a burst of calls is a burst of
    /// connections and buffers), then 90 to 100 %, so they stay apart.
    fn idle_share(&mut self) -> f64 {
        let rng = &mut rand::rng();
        if std::mem::replace(&mut self.idled, true) {
            rng.random_range(0.9..=1.0)
        } else {
            rng.random_range(0.0..=1.0)
        }
    }

    /// Where to reopen after an expired iterator: after the last record
    /// seen, or where reading started.
    fn resume_position(&self) -> StartingPosition {
        match (&self.last_sequence_number, self.opened_latest_at) {
            (Some(seq), _) => StartingPosition::AfterSequenceNumber(seq.clone()),
            // A new LATEST iterator would skip what arrived meanwhile; go
            // back to when the first one was opened (a second early, for
            // clock skew: a duplicate is better than a loss).
            (None, Some(opened)) => StartingPosition::AtTimestamp(
                opened.checked_sub(Duration::from_secs(1)).unwrap_or(opened),
            ),
            (None, None) => self.start.clone(),
        }
    }

    async fn open_iterator(&mut self, position: &StartingPosition) -> Result<Option<String>> {
        let backoff = self.config.backoff();
        let mut failures = 0;
        loop {
            let opened_at = SystemTime::now();
            match self
                .kinesis
                .get_shard_iterator(&self.stream, &self.shard_id, position)
                .await
            {
                Ok(iterator) => {
                    if matches!(position, StartingPosition::Latest) {
                        self.opened_latest_at = Some(opened_at);
                    }
                    return Ok(iterator);
                }
                Err(Error::ResourceNotFound { .. }) => return Ok(None),
                Err(err) if err.is_retryable() => {
                    failures += 1;
                    tracing::debug!(error = %err, failures, "GetShardIterator failed; backing off");
                    backoff.sleep(failures).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn children_from_list_shards(&self) -> Result<Vec<ShardId>> {
        let backoff = self.config.backoff();
        // Children have higher ids than their parents.
        let filter = ShardFilter::AfterShardId(self.shard_id.clone());
        let listed = retry(backoff, "ListShards", || {
            self.kinesis.list_shards_with(&self.stream, Some(&filter))
        })
        .await;
        match listed {
            Ok(shards) => Ok(shards
                .into_iter()
                .filter(|shard| shard.parents().any(|p| p == &self.shard_id))
                .map(|shard| shard.id)
                .collect()),
            Err(Error::ResourceNotFound { .. }) => Ok(Vec::new()),
            Err(err) => Err(err),
        }
    }

    async fn end(
        &self,
        sender: &mpsc::Sender<Box<Prefetched>>,
        children: Vec<ShardId>,
        reason: ShardEndReason,
    ) -> Result<()> {
        tracing::info!(?reason, children = children.len(), "the shard ended");
        let end = ShardEnd {
            shard_id: self.shard_id.clone(),
            children,
            reason,
        };
        let _ = self.send(sender, ShardEvent::End(end)).await;
        Ok(())
    }

    /// Sends an event once the prefetch budget has room for it.
    async fn send(
        &self,
        sender: &mpsc::Sender<Box<Prefetched>>,
        event: ShardEvent,
    ) -> Result<(), Gone> {
        let (records, bytes) = match &event {
            ShardEvent::Records(batch) => (batch.records.len(), batch.bytes),
            ShardEvent::End(_) => (0, 0),
        };
        let records = self
            .acquire(&self.record_budget, records, self.config.prefetch_records)
            .await?;
        let bytes = self
            .acquire(&self.byte_budget, bytes, self.config.prefetch_bytes)
            .await?;
        sender
            .send(Box::new(Prefetched {
                event: Ok(event),
                _records: records,
                _bytes: bytes,
            }))
            .await
            .map_err(|_| Gone)
    }

    /// Takes `amount` from a budget of `capacity` (an amount above the whole
    /// budget takes all of it, so one oversized batch still passes alone).
    async fn acquire(
        &self,
        budget: &Arc<Semaphore>,
        amount: usize,
        capacity: usize,
    ) -> Result<Option<OwnedSemaphorePermit>, Gone> {
        if amount == 0 {
            return Ok(None);
        }
        let amount = u32::try_from(amount.min(capacity)).unwrap_or(u32::MAX);
        budget
            .clone()
            .acquire_many_owned(amount)
            .await
            .map(Some)
            .map_err(|_| Gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_at_once_while_behind_and_idles_when_caught_up() {
        let config = PollingConfig::default();
        assert!(!config.caught_up(10, Some(5_000)));
        assert!(!config.caught_up(10_000, Some(0)));
        assert!(config.caught_up(3, Some(0)));
        assert!(config.caught_up(0, None));
        assert_eq!(config.idle_pause(1.0), Duration::from_millis(500));
        assert_eq!(config.idle_pause(0.9), Duration::from_millis(450));
        // Never more than the idle interval, never less than the shortest
        // call interval.
        assert_eq!(config.idle_pause(1.5), Duration::from_millis(500));
        assert_eq!(config.idle_pause(0.1), Duration::from_millis(200));
    }

    #[test]
    fn the_byte_budget_allows_a_burst_then_keeps_the_rate() {
        let start = Instant::now();
        let mut budget = ReadBudget::new(2_000_000, start);
        // One second of budget may be spent at once.
        assert_eq!(budget.spend(1_500_000, start), start);
        assert_eq!(budget.spend(500_000, start), start);
        // Overdrawn by 4 MB: two seconds until the next call.
        assert_eq!(
            budget.spend(4_000_000, start),
            start + Duration::from_secs(2)
        );
        // Two seconds later the debt is paid and nothing is saved beyond it.
        let later = start + Duration::from_secs(2);
        assert_eq!(budget.spend(0, later), later);
        // Idle time refills at most one second of budget.
        let much_later = later + Duration::from_secs(60);
        assert_eq!(budget.spend(2_000_000, much_later), much_later);
        assert_eq!(
            budget.spend(1_000_000, much_later),
            much_later + Duration::from_millis(500)
        );
    }

    #[test]
    fn config_is_checked() {
        assert!(PollingConfig::default().validate().is_ok());
        let too_fast = PollingConfig {
            min_call_interval: Duration::from_millis(100),
            ..PollingConfig::default()
        };
        assert!(too_fast.validate().is_err());
        let idle_too_short = PollingConfig {
            idle_interval: Duration::from_millis(150),
            ..PollingConfig::default()
        };
        assert!(idle_too_short.validate().is_err());
        let too_many = PollingConfig {
            max_records: 10_001,
            ..PollingConfig::default()
        };
        assert!(too_many.validate().is_err());
    }
}
