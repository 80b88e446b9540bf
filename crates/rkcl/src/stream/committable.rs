//! Records with commit handles, and the per-shard state their commits feed:
//! the watermark, the in-flight budget and the trigger for automatic
//! checkpoints.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::budget::ShardBudget;
use super::watermark::{Oldest, Watermark};
use crate::leases::FencingToken;
use crate::model::{ExtendedSequenceNumber, SequenceNumber};
use crate::processor::ShardInfo;
use crate::record::UserRecord;

/// The state of one shard's stream while this worker holds its lease.
#[derive(Debug)]
pub(crate) struct ShardState {
    pub(crate) info: ShardInfo,
    watermark: Mutex<Watermark>,
    budget: ShardBudget,
    /// Commits since the last automatic checkpoint.
    commits: AtomicU64,
    checkpoint_every: u64,
    commit_on_drop: bool,
    /// The stream ended: commits still move the watermark (nothing is
    /// written any more) but no longer give back the total budget.
    closed: AtomicBool,
    /// Wakes the checkpoint task: enough commits for a checkpoint.
    pub(crate) checkpoint_due: Notify,
    /// Wakes waits for the shard to settle: nothing left in hand, or every
    /// record below the watermark.
    pub(crate) changed: Notify,
}

impl ShardState {
    pub(crate) fn new(
        info: ShardInfo,
        budget: ShardBudget,
        checkpoint_every: u64,
        commit_on_drop: bool,
    ) -> Self {
        Self {
            info,
            watermark: Mutex::new(Watermark::default()),
            budget,
            commits: AtomicU64::new(0),
            checkpoint_every,
            commit_on_drop,
            closed: AtomicBool::new(false),
            checkpoint_due: Notify::new(),
            changed: Notify::new(),
        }
    }

    fn watermark(&self) -> std::sync::MutexGuard<'_, Watermark> {
        // A panic while the lock was held cannot leave the watermark
        // half-updated (every change is one step), so go on with it.
        self.watermark
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for room, then registers `record` as delivered.
    pub(crate) async fn admit(self: &Arc<Self>, record: UserRecord) -> CommittableRecord {
        let cost = self
            .budget
            .cost(record.data.len() + record.partition_key.len());
        self.budget.acquire(cost).await;
        let index =
            self.watermark()
                .deliver(record.extended_sequence_number(), cost, Instant::now());
        self.committable(record, index)
    }

    fn committable(self: &Arc<Self>, record: UserRecord, index: u64) -> CommittableRecord {
        CommittableRecord {
            record,
            handle: CommitHandle {
                shard: self.clone(),
                index,
                settled: false,
            },
        }
    }

    /// Registers every record of a batch at once when the whole batch fits
    /// the budget now (the common case); `None` leaves it to [`admit`](Self::admit).
    pub(crate) fn try_admit_all(
        self: &Arc<Self>,
        records: &[UserRecord],
    ) -> Option<Vec<CommittableRecord>> {
        let costs: Vec<usize> = records
            .iter()
            .map(|r| self.budget.cost(r.data.len() + r.partition_key.len()))
            .collect();
        if !self.budget.try_acquire(records.len(), costs.iter().sum()) {
            return None;
        }
        let now = Instant::now();
        let mut watermark = self.watermark();
        Some(
            records
                .iter()
                .zip(costs)
                .map(|(record, cost)| {
                    let index = watermark.deliver(record.extended_sequence_number(), cost, now);
                    self.committable(record.clone(), index)
                })
                .collect(),
        )
    }

    fn commit(&self, index: u64) {
        // Read `closed` under the lock that `close` takes, so every record
        // is given back once: here or there.
        let (passed, closed, settled) = {
            let mut watermark = self.watermark();
            let passed = watermark.commit(index);
            let settled = watermark.in_hand() == 0 || watermark.is_drained();
            (passed, self.closed.load(Ordering::Acquire), settled)
        };
        if passed.records > 0 && !closed {
            self.budget.release(passed.records, passed.bytes);
        }
        if self.commits.fetch_add(1, Ordering::AcqRel) + 1 == self.checkpoint_every {
            self.checkpoint_due.notify_one();
        }
        if settled {
            self.changed.notify_waiters();
        }
    }

    fn abandon(&self, index: u64) {
        let settled = {
            let mut watermark = self.watermark();
            watermark.abandon(index);
            watermark.in_hand() == 0
        };
        if settled {
            self.changed.notify_waiters();
        }
    }

    /// Whether enough commits arrived for a checkpoint; resets the count.
    pub(crate) fn take_commit_trigger(&self) -> bool {
        self.commits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c >= self.checkpoint_every).then_some(0)
            })
            .is_ok()
    }

    /// The position below which everything is committed.
    pub(crate) fn mark(&self) -> Option<ExtendedSequenceNumber> {
        self.watermark().mark().cloned()
    }

    pub(crate) fn in_hand(&self) -> usize {
        self.watermark().in_hand()
    }

    pub(crate) fn is_drained(&self) -> bool {
        self.watermark().is_drained()
    }

    pub(crate) fn oldest(&self) -> Option<Oldest> {
        self.watermark().oldest()
    }

    /// The stream ended: give its in-flight share of the total budget back.
    pub(crate) fn close(&self) {
        let watermark = self.watermark();
        if !self.closed.swap(true, Ordering::AcqRel) {
            let in_flight = watermark.in_flight();
            self.budget
                .release_total(in_flight.records, in_flight.bytes);
        }
    }
}

/// The right to commit one delivered record. Commit it once the record's
/// effect is done; the shard's checkpoint then moves past it as soon as
/// every earlier record is committed too.
///
/// Dropped without [`commit`](Self::commit), the record counts as not
/// processed: the checkpoint stays before it for good (after a restart the
/// shard resumes there), unless the consumer was configured to commit on
/// drop.
#[derive(Debug)]
pub struct CommitHandle {
    shard: Arc<ShardState>,
    index: u64,
    settled: bool,
}

impl CommitHandle {
    /// Marks the record processed. Cheap and never blocks: the checkpoint
    /// is written later, in the background.
    pub fn commit(mut self) {
        self.settled = true;
        self.shard.commit(self.index);
    }

    /// The shard the record came from.
    pub fn shard(&self) -> &ShardInfo {
        &self.shard.info
    }
}

impl Drop for CommitHandle {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if self.shard.commit_on_drop {
            self.shard.commit(self.index);
        } else {
            self.shard.abandon(self.index);
        }
    }
}

/// A user record with its commit handle.
#[derive(Debug)]
pub struct CommittableRecord {
    record: UserRecord,
    handle: CommitHandle,
}

impl CommittableRecord {
    /// The user record (data, partition key, sequence numbers, arrival).
    pub fn record(&self) -> &UserRecord {
        &self.record
    }

    /// The record's data.
    pub fn data(&self) -> &Bytes {
        &self.record.data
    }

    /// The record's partition key.
    pub fn partition_key(&self) -> &str {
        &self.record.partition_key
    }

    /// The sequence number of the Kinesis record that carried it.
    pub fn sequence_number(&self) -> &SequenceNumber {
        &self.record.sequence_number
    }

    /// The index inside its KPL aggregate, `None` for a plain record.
    pub fn sub_sequence_number(&self) -> Option<u64> {
        self.record.sub_sequence_number
    }

    /// Its position for checkpoints: (sequence number, sub-sequence number).
    pub fn position(&self) -> ExtendedSequenceNumber {
        self.record.extended_sequence_number()
    }

    /// When Kinesis accepted it, if Kinesis said.
    pub fn arrival_time(&self) -> Option<SystemTime> {
        self.record.approximate_arrival_timestamp
    }

    /// The shard it came from.
    pub fn shard(&self) -> &ShardInfo {
        self.handle.shard()
    }

    /// The stream it came from in a multi-stream application; `None` for an
    /// application of one stream.
    pub fn stream(&self) -> Option<&crate::model::StreamIdentifier> {
        self.handle.shard().stream.as_ref()
    }

    /// The fencing token of the lease it was read under: pass it with
    /// downstream writes so a store can refuse a stale owner.
    pub fn fencing_token(&self) -> &FencingToken {
        &self.handle.shard().fencing_token
    }

    /// Whether the record's shard stream has ended (the lease was lost or
    /// handed over, or the consumer shut down): a commit then changes
    /// nothing, and the record is read again from the checkpoint.
    pub fn is_stale(&self) -> bool {
        self.handle.shard.closed.load(Ordering::Acquire)
    }

    /// Marks the record processed (see [`CommitHandle::commit`]).
    pub fn commit(self) {
        self.handle.commit();
    }

    /// The record and its handle apart, to move the data into a sink and
    /// commit after the write.
    pub fn into_parts(self) -> (UserRecord, CommitHandle) {
        (self.record, self.handle)
    }
}

/// Up to N records of one shard, in shard order, committed together.
#[derive(Debug)]
pub struct CommittableBatch {
    shard: ShardInfo,
    records: Vec<CommittableRecord>,
}

impl CommittableBatch {
    pub(crate) fn new(shard: ShardInfo, records: Vec<CommittableRecord>) -> Self {
        Self { shard, records }
    }

    /// The shard the records came from.
    pub fn shard(&self) -> &ShardInfo {
        &self.shard
    }

    /// The records, in shard order.
    pub fn records(&self) -> &[CommittableRecord] {
        &self.records
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are none (never for a batch a stream yields).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The positions of the first and last record: a key for idempotent
    /// writes (a replay after a crash yields the same ranges).
    pub fn range(&self) -> Option<(ExtendedSequenceNumber, ExtendedSequenceNumber)> {
        Some((
            self.records.first()?.position(),
            self.records.last()?.position(),
        ))
    }

    /// Commits every record.
    pub fn commit(self) {
        for record in self.records {
            record.commit();
        }
    }

    /// The records, to commit one by one.
    pub fn into_records(self) -> Vec<CommittableRecord> {
        self.records
    }
}
