//! One shard's consumer: waits for the shard's parents, reads it, calls its
//! processor strictly in order, applies the failure policy, and ends the
//! shard (shard end, handoff, shutdown or a lost lease).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use tokio::sync::{Notify, watch};

use crate::checkpoint::Checkpointer;
use crate::error::{Error, Result};
use crate::leases::{FencingToken, Lease, LeaseAccess};
use crate::model::{ExtendedSequenceNumber, HashKeyRange, ShardId, StartingPosition};
use crate::processor::{
    DeadLetter, FailurePolicy, InitializationInput, ProcessRecordsInput, RecordProcessor,
    RecordProcessorFactory, ShardInfo,
};
use crate::retrieval::{PollingConfig, PollingSource, RecordSource, ShardBatch, ShardEvent};
use crate::shards::Shard;
use crate::{Kinesis, StreamRef};

/// Why a shard's consumer must stop, as the scheduler says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Keep going.
    Running,
    /// The worker shuts down: checkpoint, let go.
    Shutdown,
    /// Another worker asked for the lease: checkpoint, let go.
    Handoff,
    /// The lease is gone: stop without a checkpoint.
    LeaseLost,
}

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
    pub(crate) kinesis: Kinesis,
    pub(crate) stream: StreamRef,
    pub(crate) polling: PollingConfig,
    pub(crate) initial_timestamp: Option<SystemTime>,
    pub(crate) leases: Arc<dyn LeaseAccess>,
    pub(crate) failure: FailurePolicy,
    pub(crate) parent_poll_interval: Duration,
    /// The shards as the last shard sync listed them.
    pub(crate) shards: Mutex<HashMap<ShardId, Shard>>,
    /// Asks the scheduler for a shard sync now (after a shard ended).
    pub(crate) sync_now: Notify,
}

/// The key of another shard's lease in the same key space as `key`.
pub(crate) fn lease_key_of(key: &str, shard: &ShardId) -> String {
    match key.rsplit_once(':') {
        Some((prefix, _)) => format!("{prefix}:{shard}"),
        None => shard.as_str().to_owned(),
    }
}

/// Consumes the shard of `lease` until it ends or `stop` says otherwise.
pub(crate) async fn run<F: RecordProcessorFactory>(
    context: Arc<WorkerContext>,
    factory: Arc<F>,
    lease: Lease,
    token: FencingToken,
    stop: watch::Receiver<Stop>,
) -> Outcome {
    let info = ShardInfo {
        shard_id: lease.shard_id(),
        lease_key: lease.key.clone(),
        fencing_token: token,
        parent_shard_ids: lease.parent_shard_ids.clone(),
    };
    let mut consumer = ShardConsumer {
        context,
        info,
        stop,
    };
    let outcome = consumer.consume(&lease, &*factory).await;
    if let Outcome::Failed(err) = &outcome {
        tracing::error!(error = %err, "the shard's consumer failed; letting the lease go");
        let _ = consumer
            .context
            .leases
            .release(&consumer.info.lease_key)
            .await;
    }
    outcome
}

struct ShardConsumer {
    context: Arc<WorkerContext>,
    info: ShardInfo,
    stop: watch::Receiver<Stop>,
}

/// Whether to go on after a step.
enum Flow {
    Continue,
    Stopped(Stop),
}

impl ShardConsumer {
    fn stopping(&self) -> Stop {
        *self.stop.borrow()
    }

    /// Sleeps `pause`, or less when a stop arrives.
    async fn pause(&mut self, pause: Duration) -> Flow {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = self.stop.changed() => {}
        }
        match self.stopping() {
            Stop::Running => Flow::Continue,
            stop => Flow::Stopped(stop),
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
    async fn stopped_early(&self, stop: Stop) -> Outcome {
        match stop {
            Stop::LeaseLost => Outcome::Lost,
            _ => self.let_go().await,
        }
    }

    async fn consume<F: RecordProcessorFactory>(&mut self, lease: &Lease, factory: &F) -> Outcome {
        if lease.checkpoint == ExtendedSequenceNumber::ShardEnd {
            // Finished before: nothing to read, nobody needs to hold it.
            self.context.sync_now.notify_one();
            self.let_go().await;
            return Outcome::Ended;
        }
        if let Flow::Stopped(stop) = self.wait_for_parents(lease).await {
            return self.stopped_early(stop).await;
        }
        let shard = match self.shard(lease).await {
            Ok(shard) => shard,
            Err(Flow::Stopped(stop)) => return self.stopped_early(stop).await,
            Err(Flow::Continue) => {
                return Outcome::Failed(Error::InvalidInput(format!(
                    "shard {} is not listed and its lease has no hash-key range",
                    self.info.shard_id
                )));
            }
        };
        let mut processor = factory.create(&self.info);
        let input = InitializationInput {
            shard: self.info.clone(),
            checkpoint: lease.checkpoint.clone(),
            pending_checkpoint: lease.pending_checkpoint.clone(),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match guarded(processor.initialize(&input)).await {
                Ok(()) => break,
                Err(message) => {
                    tracing::warn!(error = %message, attempt, "initialize failed; trying again");
                    if let Flow::Stopped(stop) = self
                        .pause(self.context.failure.backoff().delay(attempt))
                        .await
                    {
                        return self.stopped_early(stop).await;
                    }
                }
            }
        }
        let checkpointer = Checkpointer::new(
            self.info.shard_id.clone(),
            self.info.lease_key.clone(),
            self.info.fencing_token.clone(),
            lease.checkpoint.clone(),
            self.context.leases.clone(),
            self.stop.clone(),
        );
        let start = match self.starting_position(&lease.checkpoint) {
            Ok(start) => start,
            Err(err) => return Outcome::Failed(err),
        };
        let mut source = match PollingSource::start(
            self.context.kinesis.clone(),
            self.context.stream.clone(),
            &shard,
            start,
            self.context.polling.clone(),
        ) {
            Ok(source) => source,
            Err(err) => return Outcome::Failed(err),
        };
        loop {
            let event = tokio::select! {
                biased;
                _ = self.stop.changed() => None,
                event = source.next_event() => Some(event),
            };
            let flow = match event {
                None => match self.stopping() {
                    Stop::Running => Flow::Continue,
                    stop => Flow::Stopped(stop),
                },
                Some(None) => {
                    return Outcome::Failed(Error::InvalidInput(format!(
                        "the reader of shard {} stopped",
                        self.info.shard_id
                    )));
                }
                Some(Some(Err(err))) => return Outcome::Failed(err),
                Some(Some(Ok(ShardEvent::Records(batch)))) => {
                    self.deliver(&mut processor, batch, &checkpointer).await
                }
                Some(Some(Ok(ShardEvent::End(_)))) => {
                    drop(source);
                    return self.end_shard(&mut processor, &checkpointer).await;
                }
            };
            if let Flow::Stopped(stop) = flow {
                return self.finish(&mut processor, &checkpointer, stop).await;
            }
        }
    }

    async fn finish<P: RecordProcessor>(
        &mut self,
        processor: &mut P,
        checkpointer: &Checkpointer,
        stop: Stop,
    ) -> Outcome {
        match stop {
            Stop::LeaseLost | Stop::Running => {
                if let Err(message) = guarded(processor.lease_lost().map(Ok)).await {
                    tracing::warn!(error = %message, "lease_lost failed");
                }
                Outcome::Lost
            }
            Stop::Shutdown | Stop::Handoff => {
                if let Err(message) = guarded(processor.shutdown_requested(checkpointer)).await {
                    tracing::warn!(error = %message, "shutdown_requested failed");
                }
                self.let_go().await
            }
        }
    }

    /// Waits until every parent's lease is gone or at `SHARD_END`.
    async fn wait_for_parents(&mut self, lease: &Lease) -> Flow {
        for parent in &lease.parent_shard_ids {
            let key = lease_key_of(&lease.key, parent);
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
                if let Flow::Stopped(stop) = self.pause(self.context.parent_poll_interval).await {
                    return Flow::Stopped(stop);
                }
            }
        }
        Flow::Continue
    }

    /// The shard as listed, or as far as its lease describes it.
    async fn shard(&mut self, lease: &Lease) -> Result<Shard, Flow> {
        for attempt in 1..=3 {
            if let Some(shard) = self
                .context
                .shards
                .lock()
                .ok()
                .and_then(|shards| shards.get(&self.info.shard_id).cloned())
            {
                return Ok(shard);
            }
            if let Some(range) = lease.hash_key_range {
                return Ok(shard_from_lease(lease, range));
            }
            self.context.sync_now.notify_one();
            if let Flow::Stopped(stop) = self.pause(Duration::from_secs(attempt)).await {
                return Err(Flow::Stopped(stop));
            }
        }
        Err(Flow::Continue)
    }

    fn starting_position(&self, checkpoint: &ExtendedSequenceNumber) -> Result<StartingPosition> {
        Ok(match checkpoint {
            ExtendedSequenceNumber::TrimHorizon => StartingPosition::TrimHorizon,
            ExtendedSequenceNumber::Latest => StartingPosition::Latest,
            ExtendedSequenceNumber::AtTimestamp => match self.context.initial_timestamp {
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

    /// Hands one batch to the processor under the failure policy.
    async fn deliver<P: RecordProcessor>(
        &mut self,
        processor: &mut P,
        batch: ShardBatch,
        checkpointer: &Checkpointer,
    ) -> Flow {
        let shard = self.info.shard_id.as_str().to_owned();
        if let Some(behind) = batch.millis_behind_latest {
            metrics::gauge!("rkcl_millis_behind_latest", "shard" => shard.clone())
                .set(behind as f64);
        }
        let Some(last) = batch.records.last().map(|r| r.extended_sequence_number()) else {
            return Flow::Continue;
        };
        let count = batch.records.len();
        checkpointer.delivered(last);
        let mut input = ProcessRecordsInput {
            records: batch.records,
            millis_behind_latest: batch.millis_behind_latest,
            attempt: 0,
        };
        loop {
            input.attempt += 1;
            let started = Instant::now();
            let result = guarded(processor.process_records(&input, checkpointer)).await;
            metrics::histogram!("rkcl_process_seconds", "shard" => shard.clone())
                .record(started.elapsed().as_secs_f64());
            let message = match result {
                Ok(()) => {
                    metrics::counter!("rkcl_records_processed", "shard" => shard.clone())
                        .increment(count as u64);
                    metrics::counter!("rkcl_bytes_processed", "shard" => shard)
                        .increment(batch.bytes as u64);
                    return Flow::Continue;
                }
                Err(message) => message,
            };
            metrics::counter!("rkcl_process_failures", "shard" => shard.clone()).increment(1);
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
                return Flow::Continue;
            }
            let pause = self.context.failure.backoff().delay(input.attempt);
            if let Flow::Stopped(stop) = self.pause(pause).await {
                return Flow::Stopped(stop);
            }
        }
    }

    /// The shard was read to its end: `shard_ended` until `SHARD_END` is
    /// stored, then children may start.
    async fn end_shard<P: RecordProcessor>(
        &mut self,
        processor: &mut P,
        checkpointer: &Checkpointer,
    ) -> Outcome {
        checkpointer.reached_shard_end();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match guarded(processor.shard_ended(checkpointer)).await {
                Ok(()) if checkpointer.last_checkpoint() == ExtendedSequenceNumber::ShardEnd => {
                    break;
                }
                Ok(()) => tracing::error!(
                    "shard_ended returned without checkpointing SHARD_END; the children wait"
                ),
                Err(message) => tracing::warn!(error = %message, attempt, "shard_ended failed"),
            }
            if let Flow::Stopped(stop) = self
                .pause(self.context.failure.backoff().delay(attempt))
                .await
            {
                return match stop {
                    Stop::LeaseLost | Stop::Running => Outcome::Lost,
                    _ => self.let_go().await,
                };
            }
        }
        tracing::info!("the shard is finished");
        self.context.sync_now.notify_one();
        self.let_go().await;
        Outcome::Ended
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

/// Runs user code, turning an error or a panic into a message.
///
/// The call is awaited from the heap, so a shard's task does not carry the
/// size of the user's largest future while it idles between batches.
async fn guarded<F>(call: F) -> std::result::Result<(), String>
where
    F: std::future::Future<Output = std::result::Result<(), crate::processor::ProcessorError>>,
{
    match AssertUnwindSafe(Box::pin(call)).catch_unwind().await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(panic) => Err(format!("panicked: {}", panic_message(panic.as_ref()))),
    }
}

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

    #[test]
    fn parent_keys_follow_the_key_space() {
        let parent = ShardId::from("shardId-000000000001");
        assert_eq!(
            lease_key_of("shardId-000000000003", &parent),
            "shardId-000000000001"
        );
        assert_eq!(
            lease_key_of("123:orders:170:shardId-000000000003", &parent),
            "123:orders:170:shardId-000000000001"
        );
    }

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
