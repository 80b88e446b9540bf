//! The checkpointer a record processor writes its progress with.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backoff::{Backoff, retry_up_to};
use crate::error::{Error, Result};
use crate::leases::{FencingToken, LeaseAccess};
use crate::model::{ExtendedSequenceNumber, LeaseKey, SequenceNumber, ShardId};
use crate::record::UserRecord;

/// How often a checkpoint write is tried when DynamoDB throttles or fails.
const CHECKPOINT_ATTEMPTS: u32 = 8;

/// The pauses between those tries.
const CHECKPOINT_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// Stores how far one shard has been processed, in its lease.
///
/// Checks as the Java KCL does: a checkpoint may not move backwards nor past
/// the last record delivered ([`Error::InvalidCheckpoint`]); it is fenced by
/// the lease counter, so a worker that lost the lease gets
/// [`Error::LeaseLost`] and writes nothing; throttling and server errors are
/// retried with backoff before an error is returned. Cheap to clone.
///
/// The checkpointer checks what only it knows (what was delivered); the
/// lease coordinator, through which every write to a held lease goes one at
/// a time, checks that a checkpoint never moves backwards.
#[derive(Clone, Debug)]
pub struct Checkpointer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shard_id: ShardId,
    lease_key: LeaseKey,
    token: FencingToken,
    leases: Arc<dyn LeaseAccess>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    delivered: Option<ExtendedSequenceNumber>,
    at_shard_end: bool,
    stored: ExtendedSequenceNumber,
}

impl Checkpointer {
    pub(crate) fn new(
        shard_id: ShardId,
        lease_key: LeaseKey,
        token: FencingToken,
        stored: ExtendedSequenceNumber,
        leases: Arc<dyn LeaseAccess>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shard_id,
                lease_key,
                token,
                leases,
                state: Mutex::new(State {
                    delivered: None,
                    at_shard_end: false,
                    stored,
                }),
            }),
        }
    }

    /// Records that everything up to `position` has been delivered.
    pub(crate) fn delivered(&self, position: ExtendedSequenceNumber) {
        if let Ok(mut state) = self.inner.state.lock() {
            state.delivered = Some(position);
        }
    }

    /// Records that the shard has been delivered to its end.
    pub(crate) fn reached_shard_end(&self) {
        if let Ok(mut state) = self.inner.state.lock() {
            state.at_shard_end = true;
        }
    }

    /// The shard.
    pub fn shard_id(&self) -> &ShardId {
        &self.inner.shard_id
    }

    /// The fencing token of the lease this worker holds for the shard.
    pub fn fencing_token(&self) -> &FencingToken {
        &self.inner.token
    }

    /// The checkpoint stored last.
    pub fn last_checkpoint(&self) -> ExtendedSequenceNumber {
        self.inner
            .state
            .lock()
            .map(|s| s.stored.clone())
            .unwrap_or(ExtendedSequenceNumber::TrimHorizon)
    }

    /// The position of the last record delivered, if any.
    pub fn last_delivered(&self) -> Option<ExtendedSequenceNumber> {
        self.inner
            .state
            .lock()
            .ok()
            .and_then(|s| s.delivered.clone())
    }

    /// Checkpoints everything delivered so far; at the end of a closed shard
    /// (in `shard_ended`) that is `SHARD_END`. Nothing is written when
    /// nothing new was delivered.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when this worker no longer holds the lease; the
    /// store's error when retries did not help.
    pub async fn checkpoint(&self) -> Result<()> {
        let target = match self.inner.state.lock() {
            Ok(state) if state.at_shard_end => Some(ExtendedSequenceNumber::ShardEnd),
            Ok(state) => state.delivered.clone(),
            Err(_) => None,
        };
        match target {
            Some(target) => self.write(target).await,
            None => Ok(()),
        }
    }

    /// Checkpoints at (sequence number, sub-sequence number): processing
    /// resumes after that user record.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCheckpoint`] when the position is before the stored
    /// checkpoint or after the last record delivered; otherwise as
    /// [`checkpoint`](Self::checkpoint).
    pub async fn checkpoint_at(
        &self,
        sequence_number: &SequenceNumber,
        sub_sequence_number: u64,
    ) -> Result<()> {
        let target = ExtendedSequenceNumber::new(sequence_number.clone(), sub_sequence_number);
        let delivered = self.last_delivered();
        if delivered.as_ref().is_none_or(|d| &target > d) {
            return Err(self.invalid(format!(
                "{target} is after the last record delivered ({})",
                delivered.map_or_else(|| "none".to_owned(), |d| d.to_string())
            )));
        }
        self.write(target).await
    }

    /// Checkpoints at `record`: processing resumes after it.
    ///
    /// # Errors
    ///
    /// As [`checkpoint_at`](Self::checkpoint_at).
    pub async fn checkpoint_record(&self, record: &UserRecord) -> Result<()> {
        self.checkpoint_at(
            &record.sequence_number,
            record.sub_sequence_number.unwrap_or(0),
        )
        .await
    }

    fn invalid(&self, message: String) -> Error {
        Error::InvalidCheckpoint {
            lease_key: self.inner.lease_key.to_string(),
            message,
        }
    }

    async fn write(&self, target: ExtendedSequenceNumber) -> Result<()> {
        if target == self.last_checkpoint() {
            return Ok(());
        }
        let started = Instant::now();
        let key = &self.inner.lease_key;
        let stored = retry_up_to(
            CHECKPOINT_ATTEMPTS,
            CHECKPOINT_BACKOFF,
            "checkpoint",
            || self.inner.leases.checkpoint(key, &target),
        )
        .await?;
        crate::metrics::CHECKPOINT_SECONDS
            .histogram(&[
                key.stream_identifier().unwrap_or_default(),
                self.inner.shard_id.as_str(),
            ])
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(lease_key = %key, checkpoint = %target, "checkpointed");
        if let Ok(mut state) = self.inner.state.lock()
            && stored.checkpoint > state.stored
        {
            state.stored = stored.checkpoint;
        }
        Ok(())
    }
}
