//! Reading one shard with enhanced fan-out: SubscribeToShard sessions one
//! after another, bounded prefetch, recovery, and the end of the shard.
//!
//! The settings are in `fanout_config.rs`, the stream consumer's
//! registration in `consumer.rs`; this module is the background task that
//! subscribes and the source a shard consumer reads.
//!
//! How the end of a closed shard is found: Kinesis ends a closed shard with
//! an event that has no continuation sequence number and names the
//! children; that ends the shard at once. An event that names children
//! and still has a continuation only says the shard *may* be at its end
//! (some services name the children on every event of a closed shard); it
//! is confirmed by ListShards (the shard is closed and what was read is at
//! or past its ending sequence number) or by the next subscription, after
//! the last continuation: an event of it with no records that names the
//! children.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::consumer::consumer_status;
use super::fanout_config::FanOutConfig;
use super::{RecordSource, ShardBatch, ShardEnd, ShardEndReason, ShardEvent};
use crate::aws::{ChildShard, ConsumerStatus, Kinesis, StreamRef, Subscription, SubscriptionEvent};
use crate::backoff::retry;
use crate::error::{Error, Result, Service};
use crate::kpl::Deaggregator;
use crate::metrics;
use crate::model::{ExtendedSequenceNumber, SequenceNumber, ShardId, StartingPosition};
use crate::shards::Shard;

/// Kinesis allows one SubscribeToShard call per second per shard and
/// consumer.
const SUBSCRIBE_INTERVAL: Duration = Duration::from_secs(1);

/// An event with this many records may have more behind it, so it never
/// counts as caught up (the most one GetRecords call, or one event,
/// carries).
const FULL_EVENT_RECORDS: usize = 10_000;

/// After this many `ResourceInUse` answers in a row, the consumer's state
/// is checked: a consumer being deleted never becomes usable again.
const IN_USE_BEFORE_CHECK: u32 = 3;

/// Why a shard was subscribed to again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResubscribeCause {
    /// Kinesis ended the session (every five minutes on AWS).
    SessionEnd,
    /// No event arrived for the idle timeout.
    Idle,
    /// The subscription was throttled.
    Throttled,
    /// The shard was still subscribed to by this consumer, or the consumer
    /// was not active.
    InUse,
    /// A 5xx, a broken connection or a malformed frame.
    Error,
}

impl ResubscribeCause {
    /// Every cause.
    pub const ALL: [ResubscribeCause; 5] = [
        Self::SessionEnd,
        Self::Idle,
        Self::Throttled,
        Self::InUse,
        Self::Error,
    ];

    /// The cause as the `cause` label of `rkcl_resubscriptions` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionEnd => "session_end",
            Self::Idle => "idle",
            Self::Throttled => "throttled",
            Self::InUse => "in_use",
            Self::Error => "error",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::SessionEnd => 0,
            Self::Idle => 1,
            Self::Throttled => 2,
            Self::InUse => 3,
            Self::Error => 4,
        }
    }
}

/// What a [`FanOutSource`] has taken from its subscriptions that the
/// consumer has not taken yet.
///
/// The bounds of [`FanOutConfig`] hold for these (one event larger than a
/// whole bound passes alone). Besides, the background task may hold the
/// one event it has just received while it waits for room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Prefetch {
    /// Events waiting.
    pub events: usize,
    /// User records in them.
    pub records: usize,
    /// Bytes of Kinesis record data in them.
    pub bytes: usize,
}

/// What the source and its task share: the figures its accessors report.
#[derive(Debug, Default)]
struct Shared {
    events: AtomicUsize,
    records: AtomicUsize,
    bytes: AtomicUsize,
    subscriptions: AtomicU64,
    resubscriptions: [AtomicU64; 5],
}

/// An event fetched ahead, holding its share of the prefetch budget until
/// the consumer takes it.
#[derive(Debug)]
struct Prefetched {
    event: Result<ShardEvent>,
    records: usize,
    bytes: usize,
    _records: Option<OwnedSemaphorePermit>,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// Reads one shard with enhanced fan-out in a background task, a bounded
/// amount ahead of the consumer.
///
/// The task subscribes from the start position (a checkpoint inside a KPL
/// aggregate is read at its sequence number, and the user records up to
/// the checkpoint are dropped), de-aggregates with the shard's hash-key
/// range, and subscribes again after the last continuation sequence number
/// when a session ends, when it is throttled or the shard is still
/// subscribed, after 5xx and connection errors (with backoff), and when no
/// event arrives for the idle timeout; never more than once a second. It
/// takes an event from the subscription only while the prefetch bounds
/// have room, so a slow consumer holds the subscription back instead of
/// growing memory. It ends the shard cleanly when it is closed (with its
/// children) or gone, and reports errors that retrying cannot fix (access
/// denied, KMS, an invalid request, the stream consumer deregistered).
/// Dropping the source stops the task and closes the subscription.
#[derive(Debug)]
pub struct FanOutSource {
    shard_id: ShardId,
    receiver: mpsc::Receiver<Box<Prefetched>>,
    cancel: CancellationToken,
    finished: bool,
    shared: Arc<Shared>,
}

impl FanOutSource {
    /// Starts reading `shard` of `stream` at `start` through the stream
    /// consumer `consumer_arn` (see
    /// [`resolve_consumer`](super::resolve_consumer)).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `config` does not validate.
    pub fn start(
        kinesis: Kinesis,
        stream: StreamRef,
        consumer_arn: impl Into<String>,
        shard: &Shard,
        start: StartingPosition,
        config: FanOutConfig,
    ) -> Result<Self> {
        Self::start_under(
            kinesis,
            stream,
            consumer_arn.into(),
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
        consumer_arn: String,
        shard: &Shard,
        start: StartingPosition,
        config: FanOutConfig,
        cancel: CancellationToken,
    ) -> Result<Self> {
        config.validate()?;
        let (sender, receiver) = mpsc::channel(config.prefetch_events);
        let shared = Arc::new(Shared::default());
        let subscriber = Subscriber {
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
            consumer_arn,
            shard_id: shard.id.clone(),
            known_closed: !shard.is_open(),
            record_budget: Arc::new(Semaphore::new(config.prefetch_records)),
            byte_budget: Arc::new(Semaphore::new(config.prefetch_bytes)),
            start,
            continuation: None,
            last_record: None,
            opened_latest_at: None,
            children_seen: false,
            last_subscribe: None,
            failures: 0,
            in_use: 0,
            shared: shared.clone(),
            config,
        };
        super::spawn_reader(&shard.id, cancel.clone(), subscriber.run(sender));
        Ok(Self {
            shard_id: shard.id.clone(),
            receiver,
            cancel,
            finished: false,
            shared,
        })
    }

    /// The shard this source reads.
    pub fn shard_id(&self) -> &ShardId {
        &self.shard_id
    }

    /// What has been fetched and is waiting for the consumer now.
    pub fn prefetched(&self) -> Prefetch {
        Prefetch {
            events: self.shared.events.load(Ordering::Relaxed),
            records: self.shared.records.load(Ordering::Relaxed),
            bytes: self.shared.bytes.load(Ordering::Relaxed),
        }
    }

    /// How many subscriptions this source has opened (what
    /// `rkcl_subscriptions` counts, for this source alone).
    pub fn subscriptions(&self) -> u64 {
        self.shared.subscriptions.load(Ordering::Relaxed)
    }

    /// How many times this source subscribed again for `cause` (what
    /// `rkcl_resubscriptions` counts, for this source alone).
    pub fn resubscriptions(&self, cause: ResubscribeCause) -> u64 {
        self.shared
            .resubscriptions
            .get(cause.index())
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }
}

impl RecordSource for FanOutSource {
    /// # Cancel safety
    ///
    /// Cancel safe: an event not yet returned stays queued for the next call.
    fn next_event(&mut self) -> BoxFuture<'_, Option<Result<ShardEvent>>> {
        Box::pin(async move {
            if self.finished {
                return None;
            }
            let prefetched = self.receiver.recv().await?;
            self.shared.events.fetch_sub(1, Ordering::Relaxed);
            self.shared
                .records
                .fetch_sub(prefetched.records, Ordering::Relaxed);
            self.shared
                .bytes
                .fetch_sub(prefetched.bytes, Ordering::Relaxed);
            if matches!(prefetched.event, Ok(ShardEvent::End(_)) | Err(_)) {
                self.finished = true;
            }
            Some(prefetched.event)
        })
    }
}

impl Drop for FanOutSource {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What to do after a session or a failed subscription.
enum Next {
    /// Subscribe again.
    Again(ResubscribeCause),
    /// The shard has ended.
    End(Vec<ShardId>, ShardEndReason),
    /// The consumer dropped the source.
    Gone,
}

/// The consumer dropped the source.
struct Gone;

/// An event's share of the record and byte budgets (none for an event
/// without records or bytes).
type Permits = (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>);

/// The background half of a [`FanOutSource`].
struct Subscriber {
    kinesis: Kinesis,
    stream: StreamRef,
    consumer_arn: String,
    shard_id: ShardId,
    config: FanOutConfig,
    deaggregator: Deaggregator,
    /// User records at or below this position are dropped (a resume after
    /// a checkpoint inside an aggregate), until a record past it is seen.
    skip_through: Option<ExtendedSequenceNumber>,
    /// Whether the shard was listed as closed when the source started.
    known_closed: bool,
    record_budget: Arc<Semaphore>,
    byte_budget: Arc<Semaphore>,
    start: StartingPosition,
    /// The last continuation sequence number: where the next subscription
    /// goes on.
    continuation: Option<SequenceNumber>,
    last_record: Option<SequenceNumber>,
    /// When a LATEST subscription was opened, to reopen without a gap
    /// before any event said where it was.
    opened_latest_at: Option<SystemTime>,
    /// An event named children: the shard may be at its end.
    children_seen: bool,
    last_subscribe: Option<Instant>,
    /// Failed subscriptions in a row (for the backoff).
    failures: u32,
    /// `ResourceInUse` answers in a row.
    in_use: u32,
    shared: Arc<Shared>,
}

impl Subscriber {
    async fn run(mut self, sender: mpsc::Sender<Box<Prefetched>>) {
        if let Err(err) = self.read(&sender).await {
            tracing::warn!(error = %err, "stopped reading the shard");
            let _ = self.send(&sender, Err(err)).await;
        }
    }

    /// Subscribes until the shard ends, the consumer goes, or an error that
    /// retrying cannot fix.
    async fn read(&mut self, sender: &mpsc::Sender<Box<Prefetched>>) -> Result<()> {
        let subscribed = metrics::SUBSCRIPTIONS.counter(&[self.shard_id.as_str()]);
        let mut again: Option<ResubscribeCause> = None;
        loop {
            if let Some(cause) = again.take() {
                self.count_resubscription(cause);
            }
            self.pace().await;
            let position = self.resume_position();
            self.last_subscribe = Some(Instant::now());
            let opened_at = SystemTime::now();
            let next = match self
                .kinesis
                .subscribe_to_shard(&self.consumer_arn, &self.shard_id, &position)
                .await
            {
                Ok(subscription) => {
                    if position == StartingPosition::Latest && self.opened_latest_at.is_none() {
                        self.opened_latest_at = Some(opened_at);
                    }
                    self.shared.subscriptions.fetch_add(1, Ordering::Relaxed);
                    subscribed.increment(1);
                    tracing::debug!(?position, "subscribed");
                    self.session(subscription, sender).await?
                }
                Err(err) => self.after_error(err).await?,
            };
            match next {
                Next::Again(cause) => again = Some(cause),
                Next::End(children, reason) => return self.end(sender, children, reason).await,
                Next::Gone => return Ok(()),
            }
        }
    }

    /// Reads one session's events.
    async fn session(
        &mut self,
        mut subscription: Subscription,
        sender: &mpsc::Sender<Box<Prefetched>>,
    ) -> Result<Next> {
        let confirming = self.children_seen;
        loop {
            // Room first: an event is taken from the subscription only when
            // the queue and both budgets have room for more.
            let Ok(slot) = sender.reserve().await else {
                return Ok(Next::Gone);
            };
            let (Ok(records), Ok(bytes)) = (
                self.record_budget.clone().acquire_owned().await,
                self.byte_budget.clone().acquire_owned().await,
            ) else {
                return Ok(Next::Gone);
            };
            let received =
                tokio::time::timeout(self.config.idle_timeout, subscription.next_event()).await;
            let event = match received {
                Err(_) => {
                    tracing::info!(
                        timeout = ?self.config.idle_timeout,
                        "no event within the idle timeout; subscribing again"
                    );
                    return Ok(Next::Again(ResubscribeCause::Idle));
                }
                Ok(Ok(None)) => return self.session_ended().await,
                Ok(Ok(Some(event))) => event,
                Ok(Err(err)) => return self.after_error(err).await,
            };
            self.failures = 0;
            self.in_use = 0;
            if let Some(next) = self.take(event, confirming, slot, (records, bytes)).await? {
                return Ok(next);
            }
        }
    }

    /// Handles one event: queues its records, and ends the shard when the
    /// event says it is over. `confirming`: the subscription was opened
    /// after an event named children.
    async fn take(
        &mut self,
        event: SubscriptionEvent,
        confirming: bool,
        slot: mpsc::Permit<'_, Box<Prefetched>>,
        room: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) -> Result<Option<Next>> {
        let SubscriptionEvent {
            records: mut kinesis_records,
            continuation_sequence_number,
            millis_behind_latest,
            child_shards,
            ..
        } = event;
        let count = kinesis_records.len();
        // Records at or below the last one read are not read again. After a
        // continuation Kinesis sends none, so this drops nothing; it keeps
        // a service that sends a shard again from its start (as the local
        // emulator does, ignoring the sequence number) from duplicating.
        if let Some(last) = &self.last_record {
            kinesis_records.retain(|record| &record.sequence_number > last);
        }
        let replayed = kinesis_records.len() < count;
        let bytes: usize = kinesis_records.iter().map(|r| r.data.len()).sum();
        if let Some(last) = kinesis_records.last() {
            self.last_record = Some(last.sequence_number.clone());
        }
        let at_end = continuation_sequence_number.is_none();
        if let Some(continuation) = continuation_sequence_number
            && self.continuation.as_ref() < Some(&continuation)
        {
            self.continuation = Some(continuation);
        }
        let names_children = !child_shards.is_empty();
        self.children_seen |= names_children;
        // A closed shard is never at its tip before its end: more records
        // may follow, however far behind Kinesis says the reader is.
        let at_tip = millis_behind_latest == Some(0)
            && count < FULL_EVENT_RECORDS
            && !replayed
            && !self.known_closed
            && !self.children_seen;
        let mut records = Vec::with_capacity(kinesis_records.len());
        for record in kinesis_records {
            self.deaggregator.deaggregate_into(record, &mut records);
        }
        if let Some(skip) = &self.skip_through {
            // Resuming inside an aggregate: only the user records up to the
            // checkpoint go, and only until a record past it is read.
            records.retain(|user| &user.extended_sequence_number() > skip);
            if self.last_record.as_ref() > skip.sequence_number() {
                self.skip_through = None;
            }
        }
        let end = if at_end {
            // Kinesis' end of a closed shard: no continuation.
            Some(self.children_of(child_shards).await?)
        } else if confirming && count == 0 && names_children {
            // A subscription after an event that named children finds no
            // record and names them again: the end, confirmed.
            Some(self.children_of(child_shards).await?)
        } else {
            None
        };
        if end.is_none() || !records.is_empty() {
            let batch = self.batch(
                records,
                millis_behind_latest,
                bytes,
                at_tip && end.is_none(),
            );
            let Ok(permits) = self.admit(room, batch.records.len(), bytes).await else {
                return Ok(Some(Next::Gone));
            };
            self.queue(slot, Ok(ShardEvent::Records(batch)), permits);
        }
        Ok(end.map(|children| Next::End(children, ShardEndReason::Closed)))
    }

    fn batch(
        &self,
        records: Vec<crate::record::UserRecord>,
        millis_behind_latest: Option<u64>,
        bytes: usize,
        at_tip: bool,
    ) -> ShardBatch {
        ShardBatch {
            shard_id: self.shard_id.clone(),
            records,
            millis_behind_latest,
            bytes,
            at_tip,
        }
    }

    /// The session ended. If an event named children, the shard may be at
    /// its end: ListShards may confirm it at once; otherwise the next
    /// subscription will.
    async fn session_ended(&mut self) -> Result<Next> {
        if self.children_seen
            && let Some(children) = self.confirmed_by_listing().await?
        {
            return Ok(Next::End(children, ShardEndReason::Closed));
        }
        tracing::debug!("the session ended; subscribing again");
        Ok(Next::Again(ResubscribeCause::SessionEnd))
    }

    /// Decides what follows an error of a subscription.
    async fn after_error(&mut self, err: Error) -> Result<Next> {
        match err {
            Error::ResourceInUse { message, .. } => {
                self.failures += 1;
                self.in_use += 1;
                tracing::debug!(
                    message,
                    "the shard is still subscribed or the consumer is not active"
                );
                if self.in_use.is_multiple_of(IN_USE_BEFORE_CHECK) {
                    self.check_consumer().await?;
                }
                Ok(Next::Again(ResubscribeCause::InUse))
            }
            Error::ResourceNotFound { message, .. } => {
                // The consumer, the stream or the shard: only the shard's or
                // stream's absence ends the shard.
                match consumer_status(&self.kinesis, &self.consumer_arn).await {
                    Ok(Some(_)) => {
                        tracing::info!(message, "the shard or stream is gone; ending the shard");
                        Ok(Next::End(Vec::new(), ShardEndReason::NotFound))
                    }
                    Ok(None) => Err(self.consumer_gone()),
                    Err(check) if check.is_retryable() => {
                        self.failures += 1;
                        Ok(Next::Again(ResubscribeCause::Error))
                    }
                    Err(check) => Err(check),
                }
            }
            Error::Throttled { message, .. } => {
                self.failures += 1;
                tracing::debug!(message, failures = self.failures, "throttled; backing off");
                Ok(Next::Again(ResubscribeCause::Throttled))
            }
            err if err.is_retryable() => {
                self.failures += 1;
                tracing::debug!(error = %err, failures = self.failures, "the subscription failed; backing off");
                Ok(Next::Again(ResubscribeCause::Error))
            }
            err => Err(err),
        }
    }

    /// Fails when the stream consumer is being deleted or gone.
    async fn check_consumer(&self) -> Result<()> {
        match consumer_status(&self.kinesis, &self.consumer_arn).await {
            Ok(None) => Err(self.consumer_gone()),
            Ok(Some(ConsumerStatus::Deleting)) => Err(Error::ResourceInUse {
                service: Service::Kinesis,
                message: format!(
                    "the stream consumer {} is being deleted; the shard cannot be read through it",
                    self.consumer_arn
                ),
            }),
            Ok(Some(_)) => Ok(()),
            Err(err) if err.is_retryable() => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn consumer_gone(&self) -> Error {
        Error::ResourceNotFound {
            service: Service::Kinesis,
            message: format!(
                "the stream consumer {} does not exist (deregistered?); \
                 the shard cannot be read through it",
                self.consumer_arn
            ),
        }
    }

    fn count_resubscription(&self, cause: ResubscribeCause) {
        if let Some(count) = self.shared.resubscriptions.get(cause.index()) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        metrics::RESUBSCRIPTIONS
            .counter(&[self.shard_id.as_str(), cause.as_str()])
            .increment(1);
    }

    /// Waits until the next subscription may be made: a second after the
    /// last one, and after the backoff while subscriptions fail.
    async fn pace(&self) {
        let now = Instant::now();
        let mut next = self
            .last_subscribe
            .map_or(now, |at| at + SUBSCRIBE_INTERVAL);
        if self.failures > 0 {
            next = next.max(now + self.config.backoff().delay(self.failures));
        }
        tokio::time::sleep_until(next).await;
    }

    /// Where the next subscription starts: after the last continuation
    /// sequence number (nothing to filter there), or where reading started.
    fn resume_position(&self) -> StartingPosition {
        match (&self.continuation, &self.last_record, self.opened_latest_at) {
            (Some(seq), _, _) | (None, Some(seq), _) => {
                StartingPosition::AfterSequenceNumber(seq.clone())
            }
            // A new LATEST subscription would skip what arrived meanwhile;
            // go back to when the first one was opened (a second early,
            // for clock skew: a duplicate is better than a loss).
            (None, None, Some(opened)) => StartingPosition::AtTimestamp(
                opened.checked_sub(Duration::from_secs(1)).unwrap_or(opened),
            ),
            (None, None, None) => self.start.clone(),
        }
    }

    /// The children the event named that list this shard as a parent, or,
    /// when it named none, those ListShards names.
    async fn children_of(&self, named: Vec<ChildShard>) -> Result<Vec<ShardId>> {
        let children: Vec<ShardId> = named
            .into_iter()
            .filter(|child| child.parent_shard_ids.contains(&self.shard_id))
            .map(|child| child.id)
            .collect();
        if !children.is_empty() {
            return Ok(children);
        }
        Ok(self
            .list()
            .await?
            .map_or_else(Vec::new, |(_, children)| children))
    }

    /// The end, when ListShards shows the shard closed and what was read at
    /// or past its ending sequence number: the children.
    async fn confirmed_by_listing(&self) -> Result<Option<Vec<ShardId>>> {
        let Some((Some(ending), children)) = self.list().await? else {
            return Ok(None);
        };
        let read_to = self.continuation.as_ref().max(self.last_record.as_ref());
        Ok((read_to >= Some(&ending)).then_some(children))
    }

    /// This shard's ending sequence number and its children, as ListShards
    /// says; `None` when the shard or stream is not listed.
    async fn list(&self) -> Result<Option<(Option<SequenceNumber>, Vec<ShardId>)>> {
        let listed = retry(self.config.backoff(), "ListShards", || {
            self.kinesis.list_shards(&self.stream)
        })
        .await;
        let shards = match listed {
            Ok(shards) => shards,
            Err(Error::ResourceNotFound { .. }) => return Ok(None),
            Err(err) => return Err(err),
        };
        let Some(ending) = shards
            .iter()
            .find(|shard| shard.id == self.shard_id)
            .map(|shard| shard.ending_sequence_number.clone())
        else {
            return Ok(None);
        };
        let children = shards
            .into_iter()
            .filter(|shard| shard.parents().any(|p| p == &self.shard_id))
            .map(|shard| shard.id)
            .collect();
        Ok(Some((ending, children)))
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
        let _ = self.send(sender, Ok(ShardEvent::End(end))).await;
        Ok(())
    }

    /// Sends an event that holds no budget (an end or an error).
    async fn send(
        &self,
        sender: &mpsc::Sender<Box<Prefetched>>,
        event: Result<ShardEvent>,
    ) -> Result<(), Gone> {
        let slot = sender.reserve().await.map_err(|_| Gone)?;
        self.queue(slot, event, (None, None));
        Ok(())
    }

    /// Puts an event in its reserved slot and counts it.
    fn queue(
        &self,
        slot: mpsc::Permit<'_, Box<Prefetched>>,
        event: Result<ShardEvent>,
        (records_permit, bytes_permit): (
            Option<OwnedSemaphorePermit>,
            Option<OwnedSemaphorePermit>,
        ),
    ) {
        let (records, bytes) = match &event {
            Ok(ShardEvent::Records(batch)) => (batch.records.len(), batch.bytes),
            _ => (0, 0),
        };
        self.shared.events.fetch_add(1, Ordering::Relaxed);
        self.shared.records.fetch_add(records, Ordering::Relaxed);
        self.shared.bytes.fetch_add(bytes, Ordering::Relaxed);
        slot.send(Box::new(Prefetched {
            event,
            records,
            bytes,
            _records: records_permit,
            _bytes: bytes_permit,
        }));
    }

    /// Takes the budget of an event of `records` user records and `bytes`
    /// bytes, on top of the one unit of each held while it was received
    /// (an amount above a whole budget takes all of it, so one oversized
    /// event still passes alone).
    async fn admit(
        &self,
        (mut records_permit, mut bytes_permit): (OwnedSemaphorePermit, OwnedSemaphorePermit),
        records: usize,
        bytes: usize,
    ) -> Result<Permits, Gone> {
        let records_permit = if records == 0 {
            None
        } else {
            let more = records.min(self.config.prefetch_records).saturating_sub(1);
            if more > 0 {
                records_permit.merge(acquire(&self.record_budget, more).await?);
            }
            Some(records_permit)
        };
        let bytes_permit = if bytes == 0 {
            None
        } else {
            let more = bytes.min(self.config.prefetch_bytes).saturating_sub(1);
            if more > 0 {
                bytes_permit.merge(acquire(&self.byte_budget, more).await?);
            }
            Some(bytes_permit)
        };
        Ok((records_permit, bytes_permit))
    }
}

async fn acquire(budget: &Arc<Semaphore>, amount: usize) -> Result<OwnedSemaphorePermit, Gone> {
    let amount = u32::try_from(amount).unwrap_or(u32::MAX);
    budget
        .clone()
        .acquire_many_owned(amount)
        .await
        .map_err(|_| Gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_the_catalogues() {
        let names: Vec<&str> = ResubscribeCause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, metrics::RESUBSCRIPTION_CAUSES);
        for (index, cause) in ResubscribeCause::ALL.iter().enumerate() {
            assert_eq!(cause.index(), index);
        }
    }
}
