//! Reading one shard with GetRecords: pacing, bounded prefetch, recovery.
//!
//! The limits and the pacing arithmetic are in `polling_config.rs`; this
//! module is the background task that applies them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::polling_config::{PollingConfig, ReadBudget};
use super::read_memory::{self, FIRST_RECORD_COST, Held, RECORD_OVERHEAD, ReadMemory};
use super::{RecordSource, ShardBatch, ShardEnd, ShardEndReason, ShardEvent};
use crate::aws::{Kinesis, ShardFilter, StreamRef};
use crate::backoff::{FailureStreak, retry};
use crate::error::{Error, Result};
use crate::kpl::Deaggregator;
use crate::model::{ExtendedSequenceNumber, SequenceNumber, ShardId, StartingPosition};
use crate::shards::Shard;

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
    /// The batch's share of the worker's read memory, kept by the source
    /// until the consumer asks for the next event.
    memory: Option<Held>,
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
    /// The worker's read memory held by the last event returned: the
    /// consumer is handling it until it asks for the next one.
    in_hand: Option<Held>,
}

impl PollingSource {
    /// Starts reading `shard` of `stream` at `start`, with a read memory
    /// of its own of [`PollingConfig::worker_read_bytes`] and
    /// [`PollingConfig::worker_calls`].
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
        let memory = ReadMemory::new(config.worker_read_bytes, config.worker_calls);
        Self::start_under(
            kinesis,
            stream,
            shard,
            start,
            config,
            CancellationToken::new(),
            memory,
        )
    }

    /// As [`start`](Self::start); the background task also stops when
    /// `cancel` is cancelled (a child of the shard consumer's stop signal),
    /// and it shares `memory` with the worker's other readers.
    pub(crate) fn start_under(
        kinesis: Kinesis,
        stream: StreamRef,
        shard: &Shard,
        start: StartingPosition,
        config: PollingConfig,
        cancel: CancellationToken,
        memory: Arc<ReadMemory>,
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
            memory,
            record_cost: FIRST_RECORD_COST,
            last_held: usize::MAX,
            closed: shard.ending_sequence_number.is_some(),
            config,
        };
        super::spawn_reader(&shard.id, cancel.clone(), fetcher.run(sender));
        Ok(Self {
            shard_id: shard.id.clone(),
            receiver,
            cancel,
            finished: false,
            in_hand: None,
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
            // The consumer is done with the last event.
            self.in_hand = None;
            if self.finished {
                return None;
            }
            let mut prefetched = self.receiver.recv().await?;
            if matches!(prefetched.event, Ok(ShardEvent::End(_)) | Err(_)) {
                self.finished = true;
            }
            self.in_hand = prefetched.memory.take();
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
    /// The worker's read memory, shared with its other readers.
    memory: Arc<ReadMemory>,
    /// What one of the shard's records costs in memory, from its last
    /// batch with records (data and overhead).
    record_cost: usize,
    /// What the shard's last response held (unbounded before the first).
    last_held: usize,
    /// Whether the shard was listed as closed (it has an ending sequence
    /// number) when the source started.
    closed: bool,
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
                    memory: None,
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
        let mut streak = FailureStreak::new("GetRecords");
        let mut next_call = Instant::now();
        let mut budget = ReadBudget::new(self.config.bytes_per_second, next_call);
        // Since when the shard has returned no record.
        let mut quiet_since = next_call;
        loop {
            tokio::time::sleep_until(next_call).await;
            // Room in the worker's read memory for the response, which
            // sets the call's Limit. A call waits for a quarter of the room
            // it wants rather than read a few records: the pace of calls,
            // not their size, would then bound the shard's throughput.
            let one_record = self.record_cost * read_memory::DECODE_FACTOR;
            let most = self
                .memory
                .call_share()
                .min(
                    self.record_cost
                        * read_memory::DECODE_FACTOR
                        * self.config.max_records as usize,
                )
                .min(read_memory::call_bound(self.last_held));
            let least = (most / 4).max(one_record);
            let mut held = self.memory.reserve(least, most).await;
            let limit =
                read_memory::limit_for(held.bytes(), self.record_cost, self.config.max_records);
            let slot = self.memory.call_slot().await;
            let call_started = Instant::now();
            let response = self.kinesis.get_records(&iterator, limit).await;
            drop(slot);
            let response = match response {
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
                    let failures = streak.failed(&err);
                    next_call = Instant::now() + backoff.delay(failures);
                    continue;
                }
                Err(err) => return Err(err),
            };
            streak.succeeded();
            if !response.records.is_empty() {
                quiet_since = call_started;
            }
            // A closed shard is never at its tip: it is done only at its
            // end, which the next event says (Kinesis may call its last
            // batch zero milliseconds behind).
            let at_tip = !self.closed
                && response.next_shard_iterator.is_some()
                && response.millis_behind_latest == Some(0)
                && response.records.len() < limit as usize;
            let bytes: usize = response.records.iter().map(|r| r.data.len()).sum();
            let held_cost = bytes + response.records.len() * RECORD_OVERHEAD;
            if let Some(cost) = held_cost.checked_div(response.records.len()) {
                self.record_cost = cost.max(RECORD_OVERHEAD);
            }
            held.resize(held_cost);
            self.last_held = held_cost;
            let caught_up = self
                .config
                .caught_up(response.records.len(), response.millis_behind_latest)
                && response.records.len() < limit as usize;
            let pause = if caught_up {
                let share = self.idle_share();
                self.config
                    .quiet_pause(call_started.duration_since(quiet_since), share)
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
            if self
                .send(sender, ShardEvent::Records(batch), Some(held))
                .await
                .is_err()
            {
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
        let mut streak = FailureStreak::new("GetShardIterator");
        loop {
            let opened_at = SystemTime::now();
            match self
                .kinesis
                .get_shard_iterator(&self.stream, &self.shard_id, position)
                .await
            {
                Ok(iterator) => {
                    streak.succeeded();
                    if matches!(position, StartingPosition::Latest) {
                        self.opened_latest_at = Some(opened_at);
                    }
                    return Ok(iterator);
                }
                Err(Error::ResourceNotFound { .. }) => return Ok(None),
                Err(err) if err.is_retryable() => {
                    backoff.sleep(streak.failed(&err)).await;
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
        let _ = self.send(sender, ShardEvent::End(end), None).await;
        Ok(())
    }

    /// Sends an event once the prefetch budget has room for it.
    async fn send(
        &self,
        sender: &mpsc::Sender<Box<Prefetched>>,
        event: ShardEvent,
        memory: Option<Held>,
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
                memory,
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
