//! One shard's consumer: an explicit state machine, like the Java KCL's
//! `ShardConsumer`.
//!
//! ```text
//!  WaitingOnParents ─▶ Initializing ─▶ Processing ─▶ ShardEnding ─▶ Complete(Ended)
//!        │                  │              │              │
//!        │ stop             │ stop         │ stop         │ stop
//!        ▼                  ▼              ▼              ▼
//!  Complete(Released | Lost)        ShuttingDown(reason) ─▶ Complete(Released | Lost)
//! ```
//!
//! - *WaitingOnParents*: until every parent's lease is gone or at
//!   `SHARD_END` (a lease already at `SHARD_END` completes at once).
//! - *Initializing*: the processor is made and `initialize` is called until
//!   it succeeds; the record source is opened at the checkpoint.
//! - *Processing*: batches are handed over in order under the failure
//!   policy, raced against the shard's stop signal.
//! - *ShardEnding*: the shard was read to its end; `shard_ended` is called
//!   until `SHARD_END` is stored, then the children may start.
//! - *ShuttingDown*: a stop arrived with a processor in hand: `lease_lost`
//!   (nothing is written) or `shutdown_requested` (it checkpoints), then the
//!   lease is let go unless lost.
//! - *Complete*: the [`Outcome`]. A stop before the processor exists goes
//!   straight here; so does an error retrying cannot fix (the lease is then
//!   let go).
//!
//! The consumer knows its surroundings only through [`WorkerContext`]: a way
//! to open record sources, lease access, the shard list. It names no AWS
//! type, so it is unit-tested with a scripted source and an in-memory lease
//! store (`tests.rs`).
//!
//! One file on purpose: every state of the machine is one method here, so a
//! reader sees all transitions in one place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use tokio::sync::Notify;

use crate::checkpoint::Checkpointer;
use crate::error::{Error, Result};
use crate::leases::{FencingToken, Lease, LeaseAccess};
use crate::metrics;
use crate::model::{ExtendedSequenceNumber, HashKeyRange, LeaseKey, StartingPosition};
use crate::processor::{
    DeadLetter, FailurePolicy, InitializationInput, ProcessRecordsInput, RecordProcessor,
    RecordProcessorFactory, ShardInfo, guarded,
};
use crate::retrieval::{OpenRecordSource, RecordSource, ShardBatch, ShardEvent};
use crate::shards::Shard;
use crate::stop::{StopReason, StopSignal};
use crate::watchdog::ShardProgress;

#[cfg(test)]
mod tests;

/// How a shard's consumer ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The shard was processed to its end and `SHARD_END` is stored.
    Ended,
    /// Let go after a shutdown or handoff request.
    Released,
    /// The lease was lost.
    Lost,
    /// An error retrying cannot fix (the lease was let go).
    Failed(Error),
}

/// What every shard consumer of a worker shares.
#[derive(Debug)]
pub(crate) struct WorkerContext {
    /// The streams read, by stream identifier (`None`: the one stream of a
    /// single-stream application); a lease's key says which is its.
    pub(crate) streams: RwLock<HashMap<Option<String>, Arc<StreamContext>>>,
    pub(crate) leases: Arc<dyn LeaseAccess>,
    pub(crate) failure: FailurePolicy,
    pub(crate) parent_poll_interval: Duration,
    /// The shards as the last shard sync listed them, by lease key.
    pub(crate) shards: Mutex<HashMap<LeaseKey, Shard>>,
    /// Asks the scheduler for a shard sync now (after a shard ended).
    pub(crate) sync_now: Notify,
}

/// What the consumers of one stream's shards share.
#[derive(Debug)]
pub(crate) struct StreamContext {
    /// Opens each shard's record source, as the worker's retrieval setting
    /// says.
    pub(crate) sources: Arc<dyn OpenRecordSource>,
    /// The time of an `AT_TIMESTAMP` start.
    pub(crate) initial_timestamp: Option<SystemTime>,
}

impl WorkerContext {
    /// The context of the stream the lease `key` belongs to.
    fn stream_of(&self, key: &LeaseKey) -> Result<Arc<StreamContext>> {
        let stream = key.stream_identifier().map(str::to_owned);
        self.streams
            .read()
            .ok()
            .and_then(|streams| streams.get(&stream).cloned())
            .ok_or_else(|| {
                Error::Config(format!(
                    "the stream of lease {key} is not read by this worker"
                ))
            })
    }
}

/// The states of a shard's consumer (see the module docs).
enum State<P> {
    WaitingOnParents,
    Initializing,
    Processing(Box<dyn RecordSource>, Running<P>),
    ShardEnding(Running<P>),
    ShuttingDown(StopReason, Running<P>),
    Complete(Outcome),
}

/// A state's name, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StateName {
    WaitingOnParents,
    Initializing,
    Processing,
    ShardEnding,
    ShuttingDown(StopReason),
    Complete,
}

impl StateName {
    /// The state in words, for the watchdog's warnings.
    pub(crate) const fn words(self) -> &'static str {
        match self {
            StateName::WaitingOnParents => "waiting on parents",
            StateName::Initializing => "initializing",
            StateName::Processing => "processing",
            StateName::ShardEnding => "shard ending",
            StateName::ShuttingDown(_) => "shutting down",
            StateName::Complete => "complete",
        }
    }
}

impl<P> State<P> {
    fn name(&self) -> StateName {
        match self {
            State::WaitingOnParents => StateName::WaitingOnParents,
            State::Initializing => StateName::Initializing,
            State::Processing(..) => StateName::Processing,
            State::ShardEnding(_) => StateName::ShardEnding,
            State::ShuttingDown(reason, _) => StateName::ShuttingDown(*reason),
            State::Complete(_) => StateName::Complete,
        }
    }
}

/// An initialized processor and its checkpointer.
struct Running<P> {
    processor: P,
    checkpointer: Checkpointer,
}

/// Consumes the shard of `lease` until it ends or `stop` is requested,
/// telling `progress` what it does.
pub(crate) async fn run<F: RecordProcessorFactory>(
    context: Arc<WorkerContext>,
    factory: Arc<F>,
    lease: Lease,
    token: FencingToken,
    stop: StopSignal,
    progress: Arc<ShardProgress>,
) -> Outcome {
    ShardConsumer::new(context, lease, token, stop, progress)
        .run(&*factory, |_| ())
        .await
}

struct ShardConsumer {
    context: Arc<WorkerContext>,
    info: ShardInfo,
    lease: Lease,
    stop: StopSignal,
    /// What it does, for the watchdog; also how the watchdog asks for a
    /// new reader.
    progress: Arc<ShardProgress>,
    /// The shard, once initialized (to open the reader again).
    shard: Option<Shard>,
    /// Where a reader opened now starts: the checkpoint, then after each
    /// record delivered.
    resume: Option<StartingPosition>,
}

/// Runs `call` into the processor with `progress` knowing it is under way.
async fn watched<T>(
    progress: &ShardProgress,
    name: &'static str,
    call: impl std::future::Future<Output = T>,
) -> T {
    progress.call_started(name);
    let result = call.await;
    progress.call_ended();
    result
}

impl ShardConsumer {
    fn new(
        context: Arc<WorkerContext>,
        lease: Lease,
        token: FencingToken,
        stop: StopSignal,
        progress: Arc<ShardProgress>,
    ) -> Self {
        let info = ShardInfo {
            shard_id: lease.shard_id(),
            stream: lease.key.stream(),
            lease_key: lease.key.clone(),
            fencing_token: token,
            parent_shard_ids: lease.parent_shard_ids.clone(),
        };
        Self {
            context,
            info,
            lease,
            stop,
            progress,
            shard: None,
            resume: None,
        }
    }

    /// Runs the state machine to completion, telling `entered` each state
    /// it enters. A failure lets the lease go.
    async fn run<F: RecordProcessorFactory>(
        mut self,
        factory: &F,
        mut entered: impl FnMut(StateName),
    ) -> Outcome {
        let mut state = State::WaitingOnParents;
        let outcome = loop {
            entered(state.name());
            self.progress.entered(state.name().words());
            tracing::debug!(state = ?state.name(), "shard consumer state");
            state = match state {
                State::WaitingOnParents => self.wait_for_parents().await,
                State::Initializing => self.initialize(factory).await,
                State::Processing(source, running) => self.process(source, running).await,
                State::ShardEnding(running) => self.end_shard(running).await,
                State::ShuttingDown(reason, running) => self.shut_down(reason, running).await,
                State::Complete(outcome) => break outcome,
            };
        };
        if let Outcome::Failed(err) = &outcome {
            tracing::error!(error = %err, "the shard's consumer failed; letting the lease go");
            let _ = self.context.leases.release(&self.info.lease_key).await;
        }
        outcome
    }

    /// Sleeps `pause`; the stop's reason if one arrives first.
    async fn pause(&self, pause: Duration) -> Option<StopReason> {
        tokio::select! {
            () = tokio::time::sleep(pause) => self.stop.reason(),
            reason = self.stop.requested() => Some(reason),
        }
    }

    /// Releases the lease; if that fails it expires instead.
    async fn let_go(&self) -> Outcome {
        if let Err(err) = self.context.leases.release(&self.info.lease_key).await {
            tracing::warn!(error = %err, "could not release the lease; it will expire");
        }
        Outcome::Released
    }

    /// A stop before the processor exists: nothing to tell it.
    async fn stopped_early<P>(&self, reason: StopReason) -> State<P> {
        State::Complete(match reason {
            StopReason::LeaseLost => Outcome::Lost,
            _ => self.let_go().await,
        })
    }

    /// *WaitingOnParents*: until every parent's lease is gone or at
    /// `SHARD_END`.
    async fn wait_for_parents<P>(&mut self) -> State<P> {
        if self.lease.checkpoint == ExtendedSequenceNumber::ShardEnd {
            // Finished before: nothing to read, nobody needs to hold it.
            self.context.sync_now.notify_one();
            self.let_go().await;
            return State::Complete(Outcome::Ended);
        }
        for parent in &self.lease.parent_shard_ids {
            let key = self.lease.key.sibling(parent);
            loop {
                match self.context.leases.read(&key).await {
                    Ok(None) => break,
                    Ok(Some(parent)) if parent.checkpoint == ExtendedSequenceNumber::ShardEnd => {
                        break;
                    }
                    Ok(Some(_)) => {
                        tracing::debug!(parent = %key, "waiting for the parent shard to finish");
                    }
                    Err(err) => {
                        tracing::warn!(parent = %key, error = %err, "could not read the parent's lease")
                    }
                }
                if let Some(reason) = self.pause(self.context.parent_poll_interval).await {
                    return self.stopped_early(reason).await;
                }
            }
        }
        State::Initializing
    }

    /// *Initializing*: makes the processor, initializes it, opens the
    /// source at the checkpoint.
    async fn initialize<F: RecordProcessorFactory>(&mut self, factory: &F) -> State<F::Processor> {
        let shard = match self.shard().await {
            Ok(Some(shard)) => shard,
            Ok(None) => {
                return State::Complete(Outcome::Failed(Error::InvalidInput(format!(
                    "shard {} is not listed and its lease has no hash-key range",
                    self.info.shard_id
                ))));
            }
            Err(reason) => return self.stopped_early(reason).await,
        };
        let mut processor = factory.create(&self.info);
        let input = InitializationInput {
            shard: self.info.clone(),
            checkpoint: self.lease.checkpoint.clone(),
            pending_checkpoint: self.lease.pending_checkpoint.clone(),
            stop: self.stop.clone(),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match watched(
                &self.progress,
                "initialize",
                guarded(processor.initialize(&input)),
            )
            .await
            {
                Ok(()) => break,
                Err(message) => {
                    tracing::warn!(error = %message, attempt, "initialize failed; trying again");
                    let pause = self.context.failure.backoff().delay(attempt);
                    if let Some(reason) = self.pause(pause).await {
                        return self.stopped_early(reason).await;
                    }
                }
            }
        }
        let checkpointer = Checkpointer::new(
            self.info.shard_id.clone(),
            self.info.lease_key.clone(),
            self.info.fencing_token.clone(),
            self.lease.checkpoint.clone(),
            self.context.leases.clone(),
        );
        let start = match self.starting_position() {
            Ok(start) => start,
            Err(err) => return State::Complete(Outcome::Failed(err)),
        };
        self.resume = Some(start.clone());
        let opened = self
            .context
            .stream_of(&self.info.lease_key)
            .and_then(|stream| stream.sources.open(&shard, start, self.stop.child_token()));
        self.shard = Some(shard);
        match opened {
            Ok(source) => State::Processing(
                source,
                Running {
                    processor,
                    checkpointer,
                },
            ),
            Err(err) => State::Complete(Outcome::Failed(err)),
        }
    }

    /// *Processing*: one event of the source, or the stop.
    async fn process<P: RecordProcessor>(
        &mut self,
        mut source: Box<dyn RecordSource>,
        mut running: Running<P>,
    ) -> State<P> {
        let event = tokio::select! {
            biased;
            reason = self.stop.requested() => {
                return State::ShuttingDown(reason, running);
            }
            () = self.progress.reader_restart_requested() => {
                return match self.reopen(source) {
                    Ok(source) => State::Processing(source, running),
                    Err(err) => State::Complete(Outcome::Failed(err)),
                };
            }
            event = source.next_event() => event,
        };
        match &event {
            Some(Ok(ShardEvent::Records(batch))) => {
                self.progress
                    .event(batch.records.len(), batch.millis_behind_latest);
            }
            Some(Ok(ShardEvent::End(_))) => self.progress.event(0, None),
            _ => {}
        }
        match event {
            None => State::Complete(Outcome::Failed(Error::InvalidInput(format!(
                "the reader of shard {} stopped",
                self.info.shard_id
            )))),
            Some(Err(err)) => State::Complete(Outcome::Failed(err)),
            Some(Ok(ShardEvent::Records(batch))) => match self.deliver(&mut running, batch).await {
                None => State::Processing(source, running),
                Some(reason) => State::ShuttingDown(reason, running),
            },
            Some(Ok(ShardEvent::End(_))) => State::ShardEnding(running),
        }
    }

    /// Drops `source` (stopping its reader) and opens a new one after the
    /// last record delivered.
    fn reopen(&mut self, source: Box<dyn RecordSource>) -> Result<Box<dyn RecordSource>> {
        drop(source);
        let (Some(shard), Some(start)) = (&self.shard, &self.resume) else {
            return Err(Error::InvalidInput(format!(
                "the reader of shard {} was restarted before it was opened",
                self.info.shard_id
            )));
        };
        tracing::info!(from = ?start, "opening the shard's reader again");
        let source = self.context.stream_of(&self.info.lease_key)?.sources.open(
            shard,
            start.clone(),
            self.stop.child_token(),
        )?;
        self.progress.reader_restarted();
        Ok(source)
    }

    /// *ShardEnding*: `shard_ended` until `SHARD_END` is stored, then
    /// children may start.
    async fn end_shard<P: RecordProcessor>(&mut self, mut running: Running<P>) -> State<P> {
        let checkpointer = &running.checkpointer;
        checkpointer.reached_shard_end();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let call = guarded(running.processor.shard_ended(checkpointer));
            match watched(&self.progress, "shard_ended", call).await {
                Ok(()) if checkpointer.last_checkpoint() == ExtendedSequenceNumber::ShardEnd => {
                    break;
                }
                Ok(()) => tracing::error!(
                    "shard_ended returned without checkpointing SHARD_END; the children wait"
                ),
                Err(message) => tracing::warn!(error = %message, attempt, "shard_ended failed"),
            }
            let pause = self.context.failure.backoff().delay(attempt);
            if let Some(reason) = self.pause(pause).await {
                return self.stopped_early(reason).await;
            }
        }
        tracing::info!("the shard is finished");
        self.context.sync_now.notify_one();
        self.let_go().await;
        State::Complete(Outcome::Ended)
    }

    /// *ShuttingDown*: tells the processor, lets the lease go unless lost.
    async fn shut_down<P: RecordProcessor>(
        &mut self,
        reason: StopReason,
        mut running: Running<P>,
    ) -> State<P> {
        // A lost lease may have overridden the request meanwhile.
        let reason = self.stop.reason().unwrap_or(reason);
        State::Complete(match reason {
            StopReason::LeaseLost => {
                let call = guarded(running.processor.lease_lost().map(Ok));
                if let Err(message) = watched(&self.progress, "lease_lost", call).await {
                    tracing::warn!(error = %message, "lease_lost failed");
                }
                Outcome::Lost
            }
            StopReason::Shutdown | StopReason::Handoff => {
                let call = guarded(running.processor.shutdown_requested(&running.checkpointer));
                if let Err(message) = watched(&self.progress, "shutdown_requested", call).await {
                    tracing::warn!(error = %message, "shutdown_requested failed");
                }
                self.let_go().await
            }
        })
    }

    /// The shard as listed, or as far as its lease describes it; `None`
    /// when neither knows it; the stop's reason if one arrives first.
    async fn shard(&self) -> std::result::Result<Option<Shard>, StopReason> {
        for attempt in 1..=3 {
            if let Some(shard) = self
                .context
                .shards
                .lock()
                .ok()
                .and_then(|shards| shards.get(&self.info.lease_key).cloned())
            {
                return Ok(Some(shard));
            }
            if let Some(range) = self.lease.hash_key_range {
                return Ok(Some(shard_from_lease(&self.lease, range)));
            }
            self.context.sync_now.notify_one();
            if let Some(reason) = self.pause(Duration::from_secs(attempt)).await {
                return Err(reason);
            }
        }
        Ok(None)
    }

    fn starting_position(&self) -> Result<StartingPosition> {
        Ok(match &self.lease.checkpoint {
            ExtendedSequenceNumber::TrimHorizon => StartingPosition::TrimHorizon,
            ExtendedSequenceNumber::Latest => StartingPosition::Latest,
            ExtendedSequenceNumber::AtTimestamp => match self
                .context
                .stream_of(&self.info.lease_key)?
                .initial_timestamp
            {
                Some(at) => StartingPosition::AtTimestamp(at),
                None => {
                    return Err(Error::Config(format!(
                        "lease {} starts AT_TIMESTAMP but no timestamp is configured",
                        self.info.lease_key
                    )));
                }
            },
            ExtendedSequenceNumber::Sequence {
                sequence_number,
                sub_sequence_number,
            } => StartingPosition::AfterCheckpoint(sequence_number.clone(), *sub_sequence_number),
            ExtendedSequenceNumber::ShardEnd => StartingPosition::TrimHorizon,
        })
    }

    /// Hands one batch to the processor under the failure policy; the stop's
    /// reason if one arrives while a failed batch waits to be retried.
    async fn deliver<P: RecordProcessor>(
        &mut self,
        running: &mut Running<P>,
        batch: ShardBatch,
    ) -> Option<StopReason> {
        let shard = [
            self.info.lease_key.stream_identifier().unwrap_or_default(),
            self.info.shard_id.as_str(),
        ];
        if let Some(behind) = batch.millis_behind_latest {
            metrics::MILLIS_BEHIND_LATEST
                .gauge(&shard)
                .set(behind as f64);
        }
        let last_record = batch.records.last()?;
        let last = last_record.extended_sequence_number();
        self.resume = Some(StartingPosition::AfterCheckpoint(
            last_record.sequence_number.clone(),
            last_record.sub_sequence_number.unwrap_or(0),
        ));
        let count = batch.records.len();
        running.checkpointer.delivered(last);
        let mut input = ProcessRecordsInput {
            records: batch.records,
            millis_behind_latest: batch.millis_behind_latest,
            attempt: 0,
            stop: self.stop.clone(),
        };
        loop {
            input.attempt += 1;
            let started = Instant::now();
            let call = running
                .processor
                .process_records(&input, &running.checkpointer);
            let result = watched(&self.progress, "process_records", guarded(call)).await;
            metrics::PROCESS_SECONDS
                .histogram(&shard)
                .record(started.elapsed().as_secs_f64());
            let message = match result {
                Ok(()) => {
                    metrics::RECORDS_PROCESSED
                        .counter(&shard)
                        .increment(count as u64);
                    metrics::BYTES_PROCESSED
                        .counter(&shard)
                        .increment(batch.bytes as u64);
                    return None;
                }
                Err(message) => message,
            };
            metrics::PROCESS_FAILURES.counter(&shard).increment(1);
            tracing::warn!(error = %message, attempt = input.attempt, records = count, "processing a batch failed");
            if let FailurePolicy::DeadLetter {
                attempts, handler, ..
            } = &self.context.failure
                && input.attempt >= *attempts
            {
                tracing::warn!(
                    records = count,
                    "handing the batch to the dead-letter handler"
                );
                let letter = DeadLetter {
                    shard: self.info.clone(),
                    records: std::mem::take(&mut input.records),
                    error: message,
                    attempts: input.attempt,
                };
                handler(letter).await;
                return None;
            }
            let pause = self.context.failure.backoff().delay(input.attempt);
            if let Some(reason) = self.pause(pause).await {
                return Some(reason);
            }
        }
    }
}

fn shard_from_lease(lease: &Lease, range: HashKeyRange) -> Shard {
    let mut parents = lease.parent_shard_ids.iter().cloned();
    Shard {
        id: lease.shard_id(),
        parent_shard_id: parents.next(),
        adjacent_parent_shard_id: parents.next(),
        hash_key_range: range,
        starting_sequence_number: crate::model::SequenceNumber::from_u128(0),
        ending_sequence_number: None,
    }
}
