//! The background task behind [`Producer::send`](super::Producer::send):
//! per-shard queues, lingering, batch assembly under per-shard token
//! buckets, PutRecords calls, retries with backoff, time-to-live, and the
//! answers to every record.
//!
//! One task owns all of this state, so nothing here is locked; senders talk
//! to it through one channel ([`Msg`]), and every record carries its own
//! answer channel and its share of the outstanding limits (semaphore
//! permits), released when it is answered.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;

use super::rate_limit::TokenBucket;
use super::send::{Receipt, SendError};
use super::{MAX_BYTES_PER_CALL, MAX_ENTRIES_PER_CALL, ProducerConfig};
use crate::aws::{Kinesis, PutEntry, PutOutcome, ShardFilter, StreamRef};
use crate::backoff::{Backoff, FailureStreak};
use crate::error::{Error, Result};
use crate::kpl::Aggregator;
use crate::metrics;
use crate::model::{HashKey, ShardId};
use crate::record::ProducerRecord;
use crate::shards::ShardMap;

/// The error code of a throttled PutRecords entry.
const THROTTLED: &str = "ProvisionedThroughputExceededException";
/// The shortest time between two ListShards calls of one producer.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(200);
/// How many messages the engine takes off its channel before it looks at
/// its queues again.
const MESSAGES_PER_ROUND: usize = 4096;

/// What senders tell the engine.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A record to write.
    Record(Queued),
    /// Answer once every record sent before this message is answered.
    Flush(oneshot::Sender<()>),
    /// Flush, answer what is left at the deadline with an error, and stop;
    /// the answer is how many records were answered so.
    Shutdown {
        deadline: Instant,
        done: oneshot::Sender<u64>,
    },
}

/// One user record in the producer, from `send` to its answer.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) record: ProducerRecord,
    /// Data plus partition key, what Kinesis counts.
    pub(crate) size: usize,
    pub(crate) enqueued: Instant,
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<std::result::Result<Receipt, SendError>>,
    /// Its share of the outstanding limits, given back when it is dropped.
    pub(crate) _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    /// Set by the engine: the order of arrival.
    pub(crate) id: u64,
    pub(crate) attempts: u32,
    pub(crate) last_error: Option<String>,
}

impl Queued {
    fn hash_key(&self) -> Option<HashKey> {
        HashKey::of_record(
            &self.record.partition_key,
            self.record.explicit_hash_key.as_deref(),
        )
        .ok()
    }
}

/// Records waiting to be sent, in order, and their bytes (kept as they
/// come and go, so that judging whether a request is full costs nothing
/// however long the queues grow).
#[derive(Debug, Default)]
struct Waiting {
    records: VecDeque<Queued>,
    bytes: usize,
}

impl Waiting {
    fn push_back(&mut self, queued: Queued) {
        self.bytes += queued.size;
        self.records.push_back(queued);
    }

    fn push_front(&mut self, queued: Queued) {
        self.bytes += queued.size;
        self.records.push_front(queued);
    }

    fn pop_front(&mut self) -> Option<Queued> {
        let queued = self.records.pop_front()?;
        self.bytes = self.bytes.saturating_sub(queued.size);
        Some(queued)
    }

    fn front(&self) -> Option<&Queued> {
        self.records.front()
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn drain(&mut self) -> std::collections::vec_deque::Drain<'_, Queued> {
        self.bytes = 0;
        self.records.drain(..)
    }
}

/// One shard's records waiting to be sent, and its pacing.
#[derive(Debug)]
struct ShardQueue {
    records: Waiting,
    bucket: TokenBucket,
    /// A request carrying this shard's records is in flight: the next one
    /// waits for it, so records of a key land in the order sent.
    in_flight: bool,
    /// After failures: no request before this.
    not_before: Instant,
    failures: u32,
}

impl ShardQueue {
    fn new(percent: u32, now: Instant) -> Self {
        Self {
            records: Waiting::default(),
            bucket: TokenBucket::for_shard(percent, now.into_std()),
            in_flight: false,
            not_before: now,
            failures: 0,
        }
    }
}

/// One PutRecords entry in a request: a plain record or an aggregate, and
/// the user records it carries.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The shard it was built for.
    shard: ShardId,
    members: Vec<Queued>,
    aggregated: bool,
    put: PutEntry,
}

impl Entry {
    fn size(&self) -> usize {
        self.put.data.len() + self.put.partition_key.len()
    }
}

/// What a background call of the engine came back with.
enum Done {
    Request {
        entries: Vec<Entry>,
        started: Instant,
        result: Result<Vec<crate::aws::PutOutcome>>,
    },
    ShardMap(Result<ShardMap>),
}

/// The engine's state; [`run`](Engine::run) is the task.
pub(crate) struct Engine {
    kinesis: Kinesis,
    stream: StreamRef,
    config: ProducerConfig,
    backoff: Backoff,
    rx: mpsc::UnboundedReceiver<Msg>,
    rx_open: bool,
    map: Option<ShardMap>,
    shards: HashMap<ShardId, ShardQueue>,
    /// Shard ids in a fixed order, for round-robin batch assembly.
    order: Vec<ShardId>,
    next_shard: usize,
    /// Records whose shard is not known yet (no shard map, or their
    /// aggregate landed in a shard the map does not know).
    unrouted: VecDeque<Queued>,
    outstanding: BTreeSet<u64>,
    next_id: u64,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    shutdown: Option<(Instant, oneshot::Sender<u64>)>,
    background: FuturesUnordered<BoxFuture<'static, Done>>,
    requests_in_flight: usize,
    refreshing: bool,
    needs_refresh: bool,
    refresh_after: Instant,
    refresh_streak: FailureStreak,
    put_streak: FailureStreak,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("stream", &self.stream)
            .field("outstanding", &self.outstanding.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub(crate) fn new(
        kinesis: Kinesis,
        stream: StreamRef,
        config: ProducerConfig,
        rx: mpsc::UnboundedReceiver<Msg>,
    ) -> Self {
        let backoff = Backoff {
            base: config.base_backoff,
            max: config.max_backoff,
        };
        Self {
            kinesis,
            stream,
            config,
            backoff,
            rx,
            rx_open: true,
            map: None,
            shards: HashMap::new(),
            order: Vec::new(),
            next_shard: 0,
            unrouted: VecDeque::new(),
            outstanding: BTreeSet::new(),
            next_id: 0,
            flushes: Vec::new(),
            shutdown: None,
            background: FuturesUnordered::new(),
            requests_in_flight: 0,
            refreshing: false,
            needs_refresh: true,
            refresh_after: Instant::now(),
            refresh_streak: FailureStreak::new("ListShards"),
            put_streak: FailureStreak::new("PutRecords"),
        }
    }

    /// The task: runs until it is shut down, or until every handle is gone
    /// and every record is answered.
    pub(crate) async fn run(mut self) {
        loop {
            let now = Instant::now();
            self.expire(now);
            self.start_refresh(now);
            while self.requests_in_flight < self.config.max_requests_in_flight {
                let Some(batch) = self.assemble(now) else {
                    break;
                };
                self.start_request(batch, now);
            }
            self.answer_flushes();
            metrics::PRODUCER_OUTSTANDING_RECORDS
                .gauge(&[])
                .set(self.outstanding.len() as f64);
            if let Some((deadline, _)) = &self.shutdown {
                if self.outstanding.is_empty() {
                    self.finish_shutdown(0);
                    return;
                }
                if now >= *deadline {
                    let left = self.abandon();
                    self.finish_shutdown(left);
                    return;
                }
            }
            if !self.rx_open && self.outstanding.is_empty() && self.background.is_empty() {
                return;
            }
            let wake = self.next_wake(now);
            tokio::select! {
                message = self.rx.recv(), if self.rx_open => match message {
                    Some(message) => {
                        self.on_message(message);
                        for _ in 0..MESSAGES_PER_ROUND {
                            match self.rx.try_recv() {
                                Ok(message) => self.on_message(message),
                                Err(_) => break,
                            }
                        }
                    }
                    None => self.rx_open = false,
                },
                Some(done) = self.background.next(), if !self.background.is_empty() => {
                    self.on_done(done);
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn flushing(&self) -> bool {
        !self.flushes.is_empty() || self.shutdown.is_some()
    }

    fn on_message(&mut self, message: Msg) {
        match message {
            Msg::Record(mut queued) => {
                queued.id = self.next_id;
                self.next_id += 1;
                self.outstanding.insert(queued.id);
                self.route_back(queued);
            }
            Msg::Flush(done) => self.flushes.push((self.next_id, done)),
            Msg::Shutdown { deadline, done } => {
                // A second shutdown's caller hears from the first one's end.
                if self.shutdown.is_none() {
                    self.shutdown = Some((deadline, done));
                }
            }
        }
    }

    /// The shard the current map routes a record to.
    fn shard_of(&self, queued: &Queued) -> Option<ShardId> {
        let key = queued.hash_key()?;
        Some(self.map.as_ref()?.shard_for(key)?.id.clone())
    }

    fn queue_mut(&mut self, shard: &ShardId) -> &mut ShardQueue {
        let percent = self.config.rate_limit_percent;
        if !self.shards.contains_key(shard) {
            self.order.push(shard.clone());
        }
        self.shards
            .entry(shard.clone())
            .or_insert_with(|| ShardQueue::new(percent, Instant::now()))
    }

    /// Queues a record behind the others of its shard.
    fn route_back(&mut self, queued: Queued) {
        match self.shard_of(&queued) {
            Some(shard) => self.queue_mut(&shard).records.push_back(queued),
            None => self.unrouted.push_back(queued),
        }
    }

    /// Puts records back in front of their shards' queues, keeping their
    /// order.
    fn requeue_front(&mut self, records: Vec<Queued>) {
        for queued in records.into_iter().rev() {
            match self.shard_of(&queued) {
                Some(shard) => self.queue_mut(&shard).records.push_front(queued),
                None => self.unrouted.push_front(queued),
            }
        }
    }

    fn answer(&mut self, queued: Queued, result: std::result::Result<Receipt, SendError>) {
        self.outstanding.remove(&queued.id);
        if result.is_err() {
            metrics::PRODUCER_FAILED_RECORDS.counter(&[]).increment(1);
        }
        // The permits go back before the answer, so a sender that has its
        // answer finds the room it held free. The sender may have stopped
        // waiting; its permits go back either way.
        let Queued {
            reply, _permits, ..
        } = queued;
        drop(_permits);
        let _ = reply.send(result);
    }

    fn expired(queued: &Queued) -> SendError {
        SendError::Expired {
            attempts: queued.attempts,
            last_error: queued.last_error.clone(),
        }
    }

    /// Answers records past their time-to-live. Each queue is in order of
    /// arrival (retries go back in front, and are older), so the expired
    /// records are at the front.
    fn expire(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for queue in self.shards.values_mut() {
            while queue.records.front().is_some_and(|q| q.deadline <= now) {
                expired.extend(queue.records.pop_front());
            }
        }
        while self.unrouted.front().is_some_and(|q| q.deadline <= now) {
            expired.extend(self.unrouted.pop_front());
        }
        if !expired.is_empty() {
            tracing::warn!(
                stream = %self.stream,
                records = expired.len(),
                "records passed their time-to-live unwritten"
            );
        }
        for queued in expired {
            let error = Self::expired(&queued);
            self.answer(queued, Err(error));
        }
    }

    fn start_refresh(&mut self, now: Instant) {
        if self.refreshing || !self.needs_refresh || now < self.refresh_after {
            return;
        }
        self.refreshing = true;
        self.needs_refresh = false;
        let kinesis = self.kinesis.clone();
        let stream = self.stream.clone();
        self.background.push(Box::pin(async move {
            let shards = kinesis
                .list_shards_with(&stream, Some(&ShardFilter::AtLatest))
                .await;
            Done::ShardMap(shards.map(ShardMap::new))
        }));
    }

    /// The next request's entries, or `None` when nothing is due: a request
    /// goes when a ready shard's oldest record has lingered long enough,
    /// when the ready shards hold a full request, or during a flush.
    fn assemble(&mut self, now: Instant) -> Option<Vec<Entry>> {
        let linger = self.config.linger;
        let ready = |queue: &ShardQueue| {
            !queue.records.is_empty() && !queue.in_flight && queue.not_before <= now
        };
        let mut due = self.flushing();
        let mut queued_records = 0;
        let mut queued_bytes = 0;
        for queue in self.shards.values().filter(|q| ready(q)) {
            if queue
                .records
                .front()
                .is_some_and(|q| q.enqueued + linger <= now)
            {
                due = true;
                break;
            }
            queued_records += queue.records.len();
            queued_bytes += queue.records.bytes;
        }
        let full = if self.config.aggregate {
            queued_bytes >= MAX_BYTES_PER_CALL
        } else {
            queued_records >= MAX_ENTRIES_PER_CALL || queued_bytes >= MAX_BYTES_PER_CALL
        };
        if !due && !full {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        let count = self.order.len();
        let start = self.next_shard;
        let now_std = now.into_std();
        'shards: for step in 0..count {
            let Some(shard) = self.order.get((start + step) % count).cloned() else {
                continue;
            };
            let Some(queue) = self.shards.get(&shard) else {
                continue;
            };
            if !ready(queue) {
                continue;
            }
            let mut keys = HashSet::new();
            let mut took = false;
            loop {
                let Some(entry) = self.next_entry(&shard, now) else {
                    break;
                };
                let size = entry.size();
                let batch_full = batch.len() >= MAX_ENTRIES_PER_CALL
                    || (!batch.is_empty() && bytes + size > MAX_BYTES_PER_CALL);
                let repeated_key = self.config.strict_order
                    && !entry.aggregated
                    && !keys.insert(entry.put.partition_key.clone());
                let queue = self.queue_mut(&shard);
                if batch_full || repeated_key || !queue.bucket.try_take(1, size, now_std) {
                    for member in entry.members.into_iter().rev() {
                        queue.records.push_front(member);
                    }
                    if batch_full {
                        if took {
                            queue.in_flight = true;
                        }
                        self.next_shard = (start + step) % count;
                        break 'shards;
                    }
                    break;
                }
                took = true;
                bytes += size;
                batch.push(entry);
                // Strict order with aggregation: one aggregate per shard.
                if self.config.strict_order && self.config.aggregate {
                    break;
                }
            }
            if took {
                self.queue_mut(&shard).in_flight = true;
            }
        }
        if batch.is_empty() {
            return None;
        }
        self.next_shard = (self.next_shard + 1) % count.max(1);
        Some(batch)
    }

    /// Takes the next entry off a shard's queue: its front record, or as
    /// many front records as fit in one aggregate. Records past their
    /// time-to-live are answered on the way.
    fn next_entry(&mut self, shard: &ShardId, now: Instant) -> Option<Entry> {
        let aggregate = self.config.aggregate;
        let max_size = self.config.aggregate_max_size;
        let mut members: Vec<Queued> = Vec::new();
        let mut expired = Vec::new();
        let mut aggregator = Aggregator::with_max_size(max_size).ok()?;
        let mut built = None;
        let mut rejected = Vec::new();
        {
            let queue = self.shards.get_mut(shard)?;
            while let Some(queued) = queue.records.pop_front() {
                if queued.deadline <= now {
                    expired.push(queued);
                    continue;
                }
                if !aggregate {
                    members.push(queued);
                    break;
                }
                match aggregator.add(queued.record.clone()) {
                    Ok(None) => members.push(queued),
                    Ok(Some(full)) => {
                        queue.records.push_front(queued);
                        built = Some(full);
                        break;
                    }
                    Err(error) => rejected.push((queued, error)),
                }
            }
        }
        for queued in expired {
            let error = Self::expired(&queued);
            self.answer(queued, Err(error));
        }
        for (queued, error) in rejected {
            self.answer(queued, Err(SendError::Invalid(Arc::new(error))));
        }
        if members.is_empty() {
            return None;
        }
        if !aggregate {
            let record = &members.first()?.record;
            let put = PutEntry {
                partition_key: record.partition_key.clone(),
                explicit_hash_key: record.explicit_hash_key.clone(),
                data: record.data.clone(),
            };
            return Some(Entry {
                shard: shard.clone(),
                members,
                aggregated: false,
                put,
            });
        }
        let aggregate = built.or_else(|| aggregator.flush())?;
        Some(Entry {
            shard: shard.clone(),
            members,
            aggregated: true,
            put: PutEntry {
                partition_key: aggregate.partition_key,
                // Route by the first user record's hash key, which lies in
                // the predicted shard.
                explicit_hash_key: Some(aggregate.hash_key.to_string()),
                data: aggregate.data,
            },
        })
    }

    fn start_request(&mut self, mut batch: Vec<Entry>, now: Instant) {
        for entry in &mut batch {
            for member in &mut entry.members {
                member.attempts += 1;
            }
        }
        let puts: Vec<PutEntry> = batch.iter().map(|e| e.put.clone()).collect();
        tracing::debug!(stream = %self.stream, entries = puts.len(), "PutRecords");
        let kinesis = self.kinesis.clone();
        let stream = self.stream.clone();
        self.requests_in_flight += 1;
        self.background.push(Box::pin(async move {
            let result = kinesis.put_records(&stream, &puts).await;
            Done::Request {
                entries: batch,
                started: now,
                result,
            }
        }));
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::ShardMap(result) => self.on_shard_map(result),
            Done::Request {
                entries,
                started,
                result,
            } => {
                self.requests_in_flight = self.requests_in_flight.saturating_sub(1);
                for entry in &entries {
                    if let Some(queue) = self.shards.get_mut(&entry.shard) {
                        queue.in_flight = false;
                    }
                }
                match result {
                    Ok(outcomes) => self.on_outcomes(entries, outcomes, started),
                    Err(error) if error.is_retryable() => {
                        self.put_streak.failed(&error);
                        let cause = if matches!(error, Error::Throttled { .. }) {
                            "throttled"
                        } else {
                            "call_error"
                        };
                        let message = error.to_string();
                        let mut back = Vec::new();
                        for entry in entries {
                            metrics::PRODUCER_RETRIES
                                .counter(&[cause])
                                .increment(entry.members.len() as u64);
                            self.pause_shard(&entry.shard);
                            for mut member in entry.members {
                                member.last_error = Some(message.clone());
                                back.push(member);
                            }
                        }
                        self.requeue_front(back);
                    }
                    Err(error) => {
                        tracing::warn!(
                            stream = %self.stream,
                            error = %error,
                            "PutRecords failed in a way retrying cannot fix; answering its records with the error"
                        );
                        let error = Arc::new(error);
                        for entry in entries {
                            for member in entry.members {
                                self.answer(member, Err(SendError::Failed(error.clone())));
                            }
                        }
                    }
                }
            }
        }
    }

    fn pause_shard(&mut self, shard: &ShardId) {
        let backoff = self.backoff;
        if let Some(queue) = self.shards.get_mut(shard) {
            queue.failures += 1;
            queue.not_before = Instant::now() + backoff.delay(queue.failures);
        }
    }

    fn on_outcomes(&mut self, entries: Vec<Entry>, outcomes: Vec<PutOutcome>, started: Instant) {
        let mut back = Vec::new();
        let mut failed_shards = HashSet::new();
        let mut last_error = None;
        for (entry, outcome) in entries.into_iter().zip(outcomes) {
            match outcome {
                PutOutcome::Written {
                    shard_id,
                    sequence_number,
                } => {
                    if shard_id != entry.shard {
                        // The map is out of date: the stream was resharded.
                        self.needs_refresh = true;
                        if entry.aggregated && !self.range_holds(&shard_id, &entry.members) {
                            // A KCL consumer of that shard would drop the
                            // aggregate: send its user records again.
                            metrics::PRODUCER_RETRIES
                                .counter(&["reshard"])
                                .increment(entry.members.len() as u64);
                            tracing::info!(
                                stream = %self.stream,
                                user_records = entry.members.len(),
                                "an aggregate landed in another shard than predicted; re-sending its user records"
                            );
                            for member in entry.members {
                                self.unrouted.push_back(member);
                            }
                            continue;
                        }
                    }
                    let size = entry.size();
                    metrics::PRODUCER_KINESIS_RECORDS.counter(&[]).increment(1);
                    metrics::PRODUCER_BYTES.counter(&[]).increment(size as u64);
                    metrics::PRODUCER_USER_RECORDS
                        .counter(&[])
                        .increment(entry.members.len() as u64);
                    let buffer = metrics::PRODUCER_BUFFER_SECONDS.histogram(&[]);
                    for (index, member) in entry.members.into_iter().enumerate() {
                        let time_in_buffer = started.saturating_duration_since(member.enqueued);
                        buffer.record(time_in_buffer.as_secs_f64());
                        let receipt = Receipt {
                            shard_id: shard_id.clone(),
                            sequence_number: sequence_number.clone(),
                            sub_sequence_number: entry.aggregated.then_some(index as u64),
                            attempts: member.attempts,
                            time_in_buffer,
                        };
                        self.answer(member, Ok(receipt));
                    }
                }
                PutOutcome::Failed { code, message } => {
                    let cause = if code == THROTTLED {
                        metrics::PRODUCER_THROTTLES.counter(&[]).increment(1);
                        "throttled"
                    } else {
                        "entry_error"
                    };
                    metrics::PRODUCER_RETRIES
                        .counter(&[cause])
                        .increment(entry.members.len() as u64);
                    let error = format!("{code}: {message}");
                    failed_shards.insert(entry.shard.clone());
                    for mut member in entry.members {
                        member.last_error = Some(error.clone());
                        back.push(member);
                    }
                    last_error = Some(error);
                }
            }
        }
        if let Some(error) = last_error {
            self.put_streak.failed(&format_args!(
                "{} entries failed, the last with {error}",
                back.len()
            ));
        } else {
            self.put_streak.succeeded();
        }
        for shard in &failed_shards {
            self.pause_shard(shard);
        }
        for (shard, queue) in &mut self.shards {
            if !failed_shards.contains(shard) && !queue.in_flight {
                queue.failures = 0;
            }
        }
        self.requeue_front(back);
    }

    /// Whether the current map knows `shard` and its range holds every
    /// member's hash key.
    fn range_holds(&self, shard: &ShardId, members: &[Queued]) -> bool {
        let Some(range) = self
            .map
            .as_ref()
            .and_then(|map| map.get(shard))
            .map(|shard| shard.hash_key_range)
        else {
            return false;
        };
        members
            .iter()
            .all(|m| m.hash_key().is_some_and(|key| range.contains(key)))
    }

    fn on_shard_map(&mut self, result: Result<ShardMap>) {
        self.refreshing = false;
        let now = Instant::now();
        match result {
            Ok(map) => {
                self.refresh_streak.succeeded();
                self.refresh_after = now + MIN_REFRESH_INTERVAL;
                self.map = Some(map);
                // Route everything again, in order of arrival.
                let mut all: Vec<Queued> = self.unrouted.drain(..).collect();
                for queue in self.shards.values_mut() {
                    all.extend(queue.records.drain());
                }
                all.sort_by_key(|q| q.id);
                let open: HashSet<ShardId> = self
                    .map
                    .iter()
                    .flat_map(|m| m.open_shards().iter().map(|s| s.id.clone()))
                    .collect();
                self.shards
                    .retain(|id, queue| queue.in_flight || open.contains(id));
                self.order.retain(|id| self.shards.contains_key(id));
                for queued in all {
                    self.route_back(queued);
                }
            }
            Err(error) if !error.is_retryable() => {
                // A missing stream or no access: the records waiting for a
                // shard hear of it now rather than at their time-to-live.
                tracing::warn!(stream = %self.stream, error = %error, "ListShards failed in a way retrying cannot fix");
                self.needs_refresh = true;
                self.refresh_after = now + self.config.max_backoff;
                let error = Arc::new(error);
                let waiting: Vec<Queued> = self.unrouted.drain(..).collect();
                for queued in waiting {
                    self.answer(queued, Err(SendError::Failed(error.clone())));
                }
            }
            Err(error) => {
                let failures = self.refresh_streak.failed(&error);
                self.needs_refresh = true;
                self.refresh_after = now + self.backoff.delay(failures).max(MIN_REFRESH_INTERVAL);
            }
        }
    }

    fn answer_flushes(&mut self) {
        let oldest = self.outstanding.first().copied().unwrap_or(u64::MAX);
        let mut kept = Vec::new();
        for (target, tx) in self.flushes.drain(..) {
            if target <= oldest {
                let _ = tx.send(());
            } else {
                kept.push((target, tx));
            }
        }
        self.flushes = kept;
    }

    /// Answers every record still held with [`SendError::Closed`]; how many.
    fn abandon(&mut self) -> u64 {
        let left = self.outstanding.len() as u64;
        let mut queued: Vec<Queued> = self.unrouted.drain(..).collect();
        for queue in self.shards.values_mut() {
            queued.extend(queue.records.drain());
        }
        for record in queued {
            self.answer(record, Err(SendError::Closed));
        }
        // Records in requests still in flight are answered with `Closed`
        // when their answer channels are dropped with the requests.
        self.background = FuturesUnordered::new();
        self.outstanding.clear();
        tracing::warn!(
            stream = %self.stream,
            records = left,
            "producer shut down with records unwritten at its deadline"
        );
        metrics::PRODUCER_OUTSTANDING_RECORDS.gauge(&[]).set(0.0);
        left
    }

    fn finish_shutdown(&mut self, left: u64) {
        if let Some((_, done)) = self.shutdown.take() {
            let _ = done.send(left);
        }
        for (_, tx) in self.flushes.drain(..) {
            let _ = tx.send(());
        }
    }

    /// When something may next be due: a record lingered long enough, a
    /// bucket refilled, a backoff over, a record past its time-to-live, a
    /// shard map to fetch again, the shutdown deadline.
    fn next_wake(&mut self, now: Instant) -> Instant {
        let mut wake = now + Duration::from_secs(1);
        let linger = self.config.linger;
        let flushing = self.flushing();
        let now_std = now.into_std();
        for queue in self.shards.values_mut() {
            let Some(front) = queue.records.front() else {
                continue;
            };
            wake = wake.min(front.deadline);
            if queue.in_flight {
                continue;
            }
            let mut due = queue.not_before;
            if !flushing {
                due = due.max(front.enqueued + linger);
            }
            let size = if self.config.aggregate { 1 } else { front.size };
            let refill = queue.bucket.wait_for(1, size, now_std);
            if !refill.is_zero() {
                due = due.max(now + refill + Duration::from_millis(1));
            }
            wake = wake.min(due);
        }
        if let Some(front) = self.unrouted.front() {
            wake = wake.min(front.deadline);
        }
        if self.needs_refresh && !self.refreshing {
            wake = wake.min(self.refresh_after);
        }
        if let Some((deadline, _)) = &self.shutdown {
            wake = wake.min(*deadline);
        }
        wake.max(now)
    }
}
