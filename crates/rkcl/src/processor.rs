//! The record-processor API: what user code implements to consume shards.
//!
//! A [`RecordProcessorFactory`] makes one [`RecordProcessor`] per shard a
//! worker holds. For that shard the processor is called strictly in order,
//! one call at a time: [`initialize`](RecordProcessor::initialize), then
//! [`process_records`](RecordProcessor::process_records) for each batch, and
//! finally exactly one of [`shard_ended`](RecordProcessor::shard_ended),
//! [`shutdown_requested`](RecordProcessor::shutdown_requested) or
//! [`lease_lost`](RecordProcessor::lease_lost).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::checkpoint::Checkpointer;
use crate::error::{Error, Result};
use crate::leases::FencingToken;
use crate::model::{ExtendedSequenceNumber, LeaseKey, ShardId, StreamIdentifier};
use crate::record::UserRecord;
use crate::stop::StopSignal;

/// An error returned by user code.
pub type ProcessorError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The shard a processor consumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard.
    pub shard_id: ShardId,
    /// The shard's stream in a multi-stream application; `None` for an
    /// application of one stream.
    pub stream: Option<StreamIdentifier>,
    /// The lease key (the shard id for a single-stream application).
    pub lease_key: LeaseKey,
    /// The lease counter when this worker took the lease: pass it with
    /// downstream writes so a store can refuse a stale owner.
    pub fencing_token: FencingToken,
    /// The shard's parents, finished before this shard started.
    pub parent_shard_ids: Vec<ShardId>,
}

/// What [`RecordProcessor::initialize`] is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitializationInput {
    /// The shard.
    pub shard: ShardInfo,
    /// Where processing resumes: the stored checkpoint (a sentinel before
    /// the first one). Records after it are delivered next.
    pub checkpoint: ExtendedSequenceNumber,
    /// A prepared checkpoint not committed by the previous owner, if any.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// The shard's stop signal: requested when the worker shuts down, the
    /// lease is handed over or lost. Keep a clone to end long waits inside
    /// a call early.
    pub stop: StopSignal,
}

/// One batch for [`RecordProcessor::process_records`].
#[derive(Clone, Debug)]
pub struct ProcessRecordsInput {
    /// The user records, in shard order (KPL aggregates de-aggregated).
    pub records: Vec<UserRecord>,
    /// How far behind the tip of the shard the batch was read, when
    /// Kinesis said.
    pub millis_behind_latest: Option<u64>,
    /// 1 for the first delivery of this batch; more when it is retried
    /// after a failure.
    pub attempt: u32,
    /// The shard's stop signal (the same as in [`InitializationInput`]).
    pub stop: StopSignal,
}

/// User code that consumes one shard.
///
/// Every method runs on the worker's tokio runtime; a long computation
/// should move to `spawn_blocking`. An error or a panic in
/// [`process_records`](Self::process_records) is handled by the
/// [`FailurePolicy`]; it never kills the worker.
pub trait RecordProcessor: Send + 'static {
    /// Called once before the first batch.
    ///
    /// # Errors
    ///
    /// An error is logged and `initialize` is called again after a pause.
    fn initialize(
        &mut self,
        input: &InitializationInput,
    ) -> impl Future<Output = Result<(), ProcessorError>> + Send {
        let _ = input;
        async { Ok(()) }
    }

    /// Processes a batch. Checkpoint with `checkpointer` when the records
    /// are safely handled (every batch, every N records or every T time).
    ///
    /// # Errors
    ///
    /// The batch failed; the [`FailurePolicy`] decides whether it is
    /// delivered again or handed to the dead-letter handler.
    fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> impl Future<Output = Result<(), ProcessorError>> + Send;

    /// The lease was taken by another worker or could not be renewed. No
    /// checkpoint is possible any more; another worker continues from the
    /// last checkpoint.
    fn lease_lost(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Every record of a closed shard has been delivered. The processor
    /// must checkpoint (`checkpointer.checkpoint()` stores `SHARD_END`): the
    /// shard's children wait until it does. The default does just that.
    ///
    /// # Errors
    ///
    /// An error (or no `SHARD_END` checkpoint) is logged and `shard_ended`
    /// is called again after a pause.
    fn shard_ended(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> impl Future<Output = Result<(), ProcessorError>> + Send {
        async move {
            checkpointer
                .checkpoint()
                .await
                .map_err(ProcessorError::from)
        }
    }

    /// The worker is shutting down, or hands the shard to another worker to
    /// balance the fleet: finish, checkpoint what is done, return. The
    /// default checkpoints everything delivered.
    ///
    /// # Errors
    ///
    /// An error is logged; the lease is let go regardless.
    fn shutdown_requested(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> impl Future<Output = Result<(), ProcessorError>> + Send {
        async move {
            checkpointer
                .checkpoint()
                .await
                .map_err(ProcessorError::from)
        }
    }
}

/// Makes one processor per shard.
pub trait RecordProcessorFactory: Send + Sync + 'static {
    /// The processor type.
    type Processor: RecordProcessor;

    /// A processor for `shard`.
    fn create(&self, shard: &ShardInfo) -> Self::Processor;
}

impl<F, P> RecordProcessorFactory for F
where
    F: Fn(&ShardInfo) -> P + Send + Sync + 'static,
    P: RecordProcessor,
{
    type Processor = P;

    fn create(&self, shard: &ShardInfo) -> P {
        self(shard)
    }
}

/// A batch given up on, for the dead-letter handler.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The shard it came from.
    pub shard: ShardInfo,
    /// The records of the batch.
    pub records: Vec<UserRecord>,
    /// The last error (or panic message).
    pub error: String,
    /// How many times the batch was tried.
    pub attempts: u32,
}

/// Receives batches given up on. Processing of the shard continues once it
/// returns.
pub type DeadLetterHandler = Arc<dyn Fn(DeadLetter) -> BoxFuture<'static, ()> + Send + Sync>;

/// What happens when [`RecordProcessor::process_records`] fails or panics.
/// The Java KCL logs the error and skips the batch; rkcl never skips a batch
/// silently.
#[derive(Clone)]
pub enum FailurePolicy {
    /// Deliver the batch again after a capped exponential backoff with
    /// jitter, as often as it takes. The shard waits; nothing is skipped.
    Retry {
        /// The first pause.
        base_backoff: Duration,
        /// The longest pause.
        max_backoff: Duration,
    },
    /// Deliver the batch up to `attempts` times, then give it to `handler`
    /// and move on.
    DeadLetter {
        /// Deliveries before giving up (at least 1).
        attempts: u32,
        /// The first pause between deliveries.
        base_backoff: Duration,
        /// The longest pause between deliveries.
        max_backoff: Duration,
        /// Where given-up batches go.
        handler: DeadLetterHandler,
    },
}

impl FailurePolicy {
    /// Retry forever with pauses from 200 ms up to 30 s (the default).
    pub fn retry() -> Self {
        FailurePolicy::Retry {
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Try `attempts` times (pauses from 200 ms up to 30 s), then call
    /// `handler` with the batch and move on.
    pub fn dead_letter<H, Fut>(attempts: u32, handler: H) -> Self
    where
        H: Fn(DeadLetter) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        FailurePolicy::DeadLetter {
            attempts,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            handler: Arc::new(move |letter| Box::pin(handler(letter))),
        }
    }

    /// Sets the pauses between deliveries.
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        match &mut self {
            FailurePolicy::Retry {
                base_backoff,
                max_backoff,
            }
            | FailurePolicy::DeadLetter {
                base_backoff,
                max_backoff,
                ..
            } => {
                *base_backoff = base;
                *max_backoff = max;
            }
        }
        self
    }

    pub(crate) fn backoff(&self) -> crate::backoff::Backoff {
        match self {
            FailurePolicy::Retry {
                base_backoff,
                max_backoff,
            }
            | FailurePolicy::DeadLetter {
                base_backoff,
                max_backoff,
                ..
            } => crate::backoff::Backoff {
                base: *base_backoff,
                max: *max_backoff,
            },
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let backoff = self.backoff();
        if backoff.base.is_zero() || backoff.max < backoff.base {
            return Err(Error::Config(
                "the failure policy's backoff must be positive and max >= base".into(),
            ));
        }
        if let FailurePolicy::DeadLetter { attempts: 0, .. } = self {
            return Err(Error::Config(
                "a dead-letter policy needs at least one attempt".into(),
            ));
        }
        Ok(())
    }
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self::retry()
    }
}

impl std::fmt::Debug for FailurePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailurePolicy::Retry {
                base_backoff,
                max_backoff,
            } => f
                .debug_struct("Retry")
                .field("base_backoff", base_backoff)
                .field("max_backoff", max_backoff)
                .finish(),
            FailurePolicy::DeadLetter {
                attempts,
                base_backoff,
                max_backoff,
                ..
            } => f
                .debug_struct("DeadLetter")
                .field("attempts", attempts)
                .field("base_backoff", base_backoff)
                .field("max_backoff", max_backoff)
                .finish_non_exhaustive(),
        }
    }
}

/// Runs user code, turning an error or a panic into a message.
///
/// The call is awaited from the heap, so a shard's task does not carry the
/// size of the user's largest future while it idles between batches.
pub(crate) async fn guarded<F>(call: F) -> std::result::Result<(), String>
where
    F: Future<Output = std::result::Result<(), ProcessorError>>,
{
    match std::panic::AssertUnwindSafe(Box::pin(call))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(panic) => Err(format!("panicked: {}", panic_message(panic.as_ref()))),
    }
}

/// The message of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_message() {
        let message = guarded(async { panic!("boom") }).await.unwrap_err();
        assert_eq!(message, "panicked: boom");
        let message = guarded(async { Err("bad record".into()) })
            .await
            .unwrap_err();
        assert_eq!(message, "bad record");
    }
}
