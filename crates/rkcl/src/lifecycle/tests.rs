//! The shard consumer's state machine, driven by a scripted record source
//! and an in-memory lease store: every transition, in the orders they
//! happen in.
//!
//! Long on purpose: one test per transition, each with its own scripted
//! shard, and the scripted source and lease access they share.

use std::collections::VecDeque;
use std::sync::Mutex as StdMutex;

use futures_util::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::leases::{InMemoryLeaseStore, LeaseStore};
use crate::model::{HashKey, SequenceNumber, ShardId};
use crate::processor::ProcessorError;
use crate::record::UserRecord;
use crate::retrieval::{ShardEnd, ShardEndReason};
use crate::stop::StopSender;

const ME: &str = "worker-a";
const SHARD: &str = "shardId-000000000002";
const PARENT: &str = "shardId-000000000000";

/// One step of a scripted shard: an event, or "nothing more for now" (the
/// source then waits forever, like a shard at its tip).
type Script = VecDeque<Option<Result<ShardEvent>>>;

#[derive(Debug)]
struct ScriptedSource(Script);

impl RecordSource for ScriptedSource {
    fn next_event(&mut self) -> BoxFuture<'_, Option<Result<ShardEvent>>> {
        Box::pin(async move {
            match self.0.pop_front() {
                Some(Some(event)) => Some(event),
                Some(None) | None => std::future::pending().await,
            }
        })
    }
}

/// Opens the script once and remembers where it was asked to start.
#[derive(Debug, Default)]
struct ScriptedSources {
    script: StdMutex<Option<Script>>,
    opened_at: StdMutex<Vec<StartingPosition>>,
}

impl OpenRecordSource for ScriptedSources {
    fn open(
        &self,
        _shard: &Shard,
        start: StartingPosition,
        _stop: CancellationToken,
    ) -> Result<Box<dyn RecordSource>> {
        self.opened_at.lock().unwrap().push(start);
        let script = self.script.lock().unwrap().take().unwrap_or_default();
        Ok(Box::new(ScriptedSource(script)))
    }
}

/// Lease access straight on an in-memory store, as one worker sees it.
#[derive(Debug, Clone)]
struct StoreAccess(Arc<InMemoryLeaseStore>);

impl LeaseAccess for StoreAccess {
    fn checkpoint<'a>(
        &'a self,
        key: &'a LeaseKey,
        position: &'a ExtendedSequenceNumber,
    ) -> BoxFuture<'a, Result<Lease>> {
        Box::pin(async move {
            let lost = || Error::LeaseLost {
                lease_key: key.to_string(),
            };
            let lease = self.0.get(key).await?.ok_or_else(lost)?;
            if lease.holder() != Some(ME) {
                return Err(lost());
            }
            self.0
                .update_checkpoint(&lease, position)
                .await?
                .ok_or_else(lost)
        })
    }

    fn release<'a>(&'a self, key: &'a LeaseKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match self.0.get(key).await? {
                Some(lease) if lease.holder() == Some(ME) => {
                    Ok(self.0.release(&lease).await?.is_some())
                }
                _ => Ok(false),
            }
        })
    }

    fn read<'a>(&'a self, key: &'a LeaseKey) -> BoxFuture<'a, Result<Option<Lease>>> {
        Box::pin(self.0.get(key))
    }

    fn held(&self) -> Vec<Lease> {
        Vec::new()
    }
}

/// What the processor was told, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Initialize,
    Process(usize),
    ShardEnded,
    ShutdownRequested,
    LeaseLost,
}

/// How the test processor behaves.
#[derive(Clone, Copy, Debug, Default)]
struct Behaviour {
    /// `initialize` fails every time.
    initialize_fails: bool,
    /// `process_records` waits for a permit of the gate first.
    gated: bool,
    /// `process_records` checkpoints and fails when that fails.
    checkpoint_each_batch: bool,
    /// `shard_ended` fails every time.
    shard_ended_fails: bool,
}

struct Recorder {
    calls: mpsc::UnboundedSender<Call>,
    behaviour: Behaviour,
    gate: Arc<Semaphore>,
}

impl RecordProcessor for Recorder {
    async fn initialize(&mut self, _: &InitializationInput) -> Result<(), ProcessorError> {
        self.calls.send(Call::Initialize).unwrap();
        if self.behaviour.initialize_fails {
            return Err("not ready".into());
        }
        Ok(())
    }

    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        self.calls.send(Call::Process(input.records.len())).unwrap();
        if self.behaviour.gated {
            self.gate.acquire().await.unwrap().forget();
        }
        if self.behaviour.checkpoint_each_batch {
            checkpointer.checkpoint().await?;
        }
        Ok(())
    }

    async fn lease_lost(&mut self) {
        self.calls.send(Call::LeaseLost).unwrap();
    }

    async fn shard_ended(&mut self, checkpointer: &Checkpointer) -> Result<(), ProcessorError> {
        self.calls.send(Call::ShardEnded).unwrap();
        if self.behaviour.shard_ended_fails {
            return Err("cannot finish".into());
        }
        checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shutdown_requested(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        self.calls.send(Call::ShutdownRequested).unwrap();
        checkpointer.checkpoint().await?;
        Ok(())
    }
}

/// One shard consumer under test, with its surroundings.
struct Harness {
    store: Arc<InMemoryLeaseStore>,
    sources: Arc<ScriptedSources>,
    context: Arc<WorkerContext>,
    stop: StopSender,
    gate: Arc<Semaphore>,
    calls: mpsc::UnboundedReceiver<Call>,
    calls_sender: mpsc::UnboundedSender<Call>,
    progress: Arc<ShardProgress>,
}

fn sequence(n: u128) -> SequenceNumber {
    SequenceNumber::from_u128(1_000 + n)
}

fn batch(numbers: std::ops::Range<u128>) -> Result<ShardEvent> {
    let records: Vec<UserRecord> = numbers
        .map(|n| UserRecord {
            sequence_number: sequence(n),
            sub_sequence_number: None,
            partition_key: format!("key-{n}"),
            explicit_hash_key: None,
            data: bytes::Bytes::from_static(b"x"),
            approximate_arrival_timestamp: None,
        })
        .collect();
    Ok(ShardEvent::Records(ShardBatch {
        shard_id: ShardId::from(SHARD),
        bytes: records.len(),
        records,
        millis_behind_latest: Some(0),
        at_tip: false,
    }))
}

fn end(children: &[&str]) -> Result<ShardEvent> {
    Ok(ShardEvent::End(ShardEnd {
        shard_id: ShardId::from(SHARD),
        children: children.iter().map(|c| ShardId::from(*c)).collect(),
        reason: ShardEndReason::Closed,
    }))
}

impl Harness {
    fn new(script: Vec<Option<Result<ShardEvent>>>) -> Self {
        let store = Arc::new(InMemoryLeaseStore::new());
        let sources = Arc::new(ScriptedSources::default());
        *sources.script.lock().unwrap() = Some(script.into());
        let stream = StreamContext {
            sources: sources.clone(),
            initial_timestamp: None,
        };
        let context = Arc::new(WorkerContext {
            streams: RwLock::new(HashMap::from([(None, Arc::new(stream))])),
            leases: Arc::new(StoreAccess(store.clone())),
            failure: FailurePolicy::retry()
                .with_backoff(Duration::from_millis(100), Duration::from_millis(100)),
            parent_poll_interval: Duration::from_millis(500),
            shards: Mutex::new(HashMap::new()),
            sync_now: Notify::new(),
        });
        let (calls_sender, calls) = mpsc::unbounded_channel();
        Self {
            store,
            sources,
            context,
            stop: StopSender::child_of(&CancellationToken::new()),
            gate: Arc::new(Semaphore::new(0)),
            calls,
            calls_sender,
            progress: Arc::default(),
        }
    }

    /// Puts the shard's lease (with `parents`, at `checkpoint`) in the
    /// store, held by this worker.
    async fn lease(&self, checkpoint: ExtendedSequenceNumber, parents: &[&str]) -> Lease {
        let mut lease = Lease::new(crate::model::LeaseKey::parse(SHARD).unwrap(), checkpoint);
        lease.parent_shard_ids = parents.iter().map(|p| ShardId::from(*p)).collect();
        lease.hash_key_range = Some(HashKeyRange::new(HashKey::MIN, HashKey::MAX).unwrap());
        assert!(self.store.create_if_absent(&lease).await.unwrap());
        self.store.take(&lease, ME).await.unwrap().unwrap()
    }

    /// Starts the consumer; its outcome and the states it entered (each
    /// run of one state once) arrive when it completes.
    fn start(
        &self,
        lease: Lease,
        behaviour: Behaviour,
    ) -> tokio::task::JoinHandle<(Outcome, Vec<StateName>)> {
        let consumer = ShardConsumer::new(
            self.context.clone(),
            lease.clone(),
            lease.fencing_token(),
            self.stop.signal(),
            self.progress.clone(),
        );
        let (calls, gate) = (self.calls_sender.clone(), self.gate.clone());
        let factory = move |_: &ShardInfo| Recorder {
            calls: calls.clone(),
            behaviour,
            gate: gate.clone(),
        };
        tokio::spawn(async move {
            let mut states: Vec<StateName> = Vec::new();
            let outcome = consumer
                .run(&factory, |state| {
                    if states.last() != Some(&state) {
                        states.push(state);
                    }
                })
                .await;
            (outcome, states)
        })
    }

    async fn next_call(&mut self) -> Call {
        tokio::time::timeout(Duration::from_secs(60), self.calls.recv())
            .await
            .expect("a processor call")
            .unwrap()
    }

    fn calls_so_far(&mut self) -> Vec<Call> {
        let mut calls = Vec::new();
        while let Ok(call) = self.calls.try_recv() {
            calls.push(call);
        }
        calls
    }

    async fn stored(&self) -> Lease {
        self.store
            .get(&LeaseKey::parse(SHARD).unwrap())
            .await
            .unwrap()
            .unwrap()
    }
}

use StateName::*;

#[tokio::test(start_paused = true)]
async fn a_closed_shard_is_read_to_its_end_and_finished() {
    let mut h = Harness::new(vec![
        Some(batch(0..2)),
        Some(batch(2..3)),
        Some(end(&["shardId-000000000005"])),
    ]);
    let lease = h.lease(ExtendedSequenceNumber::TrimHorizon, &[]).await;
    let (outcome, states) = h.start(lease, Behaviour::default()).await.unwrap();
    assert!(matches!(outcome, Outcome::Ended), "{outcome:?}");
    assert_eq!(
        states,
        [
            WaitingOnParents,
            Initializing,
            Processing,
            ShardEnding,
            Complete
        ]
    );
    assert_eq!(
        h.calls_so_far(),
        [
            Call::Initialize,
            Call::Process(2),
            Call::Process(1),
            Call::ShardEnded
        ]
    );
    let stored = h.stored().await;
    assert_eq!(stored.checkpoint, ExtendedSequenceNumber::ShardEnd);
    assert_eq!(stored.owner, None, "a finished lease is let go");
    // The children are found by a shard sync, asked for at once.
    tokio::time::timeout(Duration::from_millis(1), h.context.sync_now.notified())
        .await
        .expect("a shard sync was asked for");
    assert_eq!(
        *h.sources.opened_at.lock().unwrap(),
        [StartingPosition::TrimHorizon]
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_already_at_shard_end_completes_without_a_processor() {
    let mut h = Harness::new(vec![]);
    let lease = h.lease(ExtendedSequenceNumber::ShardEnd, &[]).await;
    let (outcome, states) = h.start(lease, Behaviour::default()).await.unwrap();
    assert!(matches!(outcome, Outcome::Ended), "{outcome:?}");
    assert_eq!(states, [WaitingOnParents, Complete]);
    assert!(h.calls_so_far().is_empty());
    assert_eq!(h.stored().await.owner, None);
    assert!(h.sources.opened_at.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_child_waits_until_its_parent_is_at_shard_end() {
    let mut h = Harness::new(vec![Some(batch(0..1))]);
    let parent = Lease::new(
        crate::model::LeaseKey::parse(PARENT).unwrap(),
        ExtendedSequenceNumber::new(sequence(0), 0),
    );
    assert!(h.store.create_if_absent(&parent).await.unwrap());
    let parent = h.store.take(&parent, "worker-p").await.unwrap().unwrap();
    let lease = h
        .lease(ExtendedSequenceNumber::TrimHorizon, &[PARENT])
        .await;
    let task = h.start(lease, Behaviour::default());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        h.calls_so_far().is_empty(),
        "initialized before the parent finished"
    );
    h.store
        .update_checkpoint(&parent, &ExtendedSequenceNumber::ShardEnd)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.next_call().await, Call::Initialize);
    assert_eq!(h.next_call().await, Call::Process(1));
    h.stop.request(StopReason::Shutdown);
    let (outcome, states) = task.await.unwrap();
    assert!(matches!(outcome, Outcome::Released), "{outcome:?}");
    assert_eq!(
        states,
        [
            WaitingOnParents,
            Initializing,
            Processing,
            ShuttingDown(StopReason::Shutdown),
            Complete
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_lost_while_waiting_for_parents_is_not_released() {
    let h = Harness::new(vec![]);
    let parent = Lease::new(
        crate::model::LeaseKey::parse(PARENT).unwrap(),
        ExtendedSequenceNumber::TrimHorizon,
    );
    assert!(h.store.create_if_absent(&parent).await.unwrap());
    let lease = h
        .lease(ExtendedSequenceNumber::TrimHorizon, &[PARENT])
        .await;
    let task = h.start(lease, Behaviour::default());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Another worker took the lease; the worker says so.
    let stored = h.stored().await;
    h.store.take(&stored, "worker-b").await.unwrap().unwrap();
    h.stop.request(StopReason::LeaseLost);
    let (outcome, states) = task.await.unwrap();
    assert!(matches!(outcome, Outcome::Lost), "{outcome:?}");
    assert_eq!(states, [WaitingOnParents, Complete]);
    assert_eq!(h.stored().await.owner.as_deref(), Some("worker-b"));
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_initialize_lets_go_without_shutting_the_processor_down() {
    let mut h = Harness::new(vec![Some(batch(0..1))]);
    let lease = h.lease(ExtendedSequenceNumber::TrimHorizon, &[]).await;
    let behaviour = Behaviour {
        initialize_fails: true,
        ..Behaviour::default()
    };
    let task = h.start(lease, behaviour);
    assert_eq!(h.next_call().await, Call::Initialize);
    assert_eq!(
        h.next_call().await,
        Call::Initialize,
        "initialize is retried"
    );
    h.stop.request(StopReason::Shutdown);
    let (outcome, states) = task.await.unwrap();
    assert!(matches!(outcome, Outcome::Released), "{outcome:?}");
    assert_eq!(states, [WaitingOnParents, Initializing, Complete]);
    assert!(
        h.calls_so_far().iter().all(|c| *c == Call::Initialize),
        "only initialize was called"
    );
    let stored = h.stored().await;
    assert_eq!(stored.owner, None, "released");
    assert_eq!(stored.checkpoint, ExtendedSequenceNumber::TrimHorizon);
    assert!(h.sources.opened_at.lock().unwrap().is_empty(), "never read");
}

#[tokio::test(start_paused = true)]
async fn a_lease_lost_mid_batch_ends_with_lease_lost_and_writes_nothing() {
    let mut h = Harness::new(vec![Some(batch(0..3)), Some(batch(3..4))]);
    let lease = h.lease(ExtendedSequenceNumber::TrimHorizon, &[]).await;
    let behaviour = Behaviour {
        gated: true,
        checkpoint_each_batch: true,
        ..Behaviour::default()
    };
    let task = h.start(lease, behaviour);
    assert_eq!(h.next_call().await, Call::Initialize);
    assert_eq!(h.next_call().await, Call::Process(3));
    // While the batch is in the processor, another worker takes the lease
    // and the worker learns of it.
    let stored = h.stored().await;
    h.store.take(&stored, "worker-b").await.unwrap().unwrap();
    h.stop.request(StopReason::LeaseLost);
    h.gate.add_permits(10);
    let (outcome, states) = task.await.unwrap();
    assert!(matches!(outcome, Outcome::Lost), "{outcome:?}");
    assert_eq!(
        states,
        [
            WaitingOnParents,
            Initializing,
            Processing,
            ShuttingDown(StopReason::LeaseLost),
            Complete
        ]
    );
    assert_eq!(
        h.calls_so_far(),
        [Call::LeaseLost],
        "no second batch, no shutdown"
    );
    let stored = h.stored().await;
    assert_eq!(stored.owner.as_deref(), Some("worker-b"));
    assert_eq!(
        stored.checkpoint,
        ExtendedSequenceNumber::TrimHorizon,
        "nothing written"
    );
}

#[tokio::test(start_paused = true)]
async fn a_handoff_checkpoints_what_was_delivered_and_lets_go() {
    let mut h = Harness::new(vec![Some(batch(0..4)), None]);
    let lease = h
        .lease(
            ExtendedSequenceNumber::new(SequenceNumber::from_u128(999), 0),
            &[],
        )
        .await;
    let task = h.start(lease, Behaviour::default());
    assert_eq!(h.next_call().await, Call::Initialize);
    assert_eq!(h.next_call().await, Call::Process(4));
    h.stop.request(StopReason::Handoff);
    let (outcome, states) = task.await.unwrap();
    assert!(matches!(outcome, Outcome::Released), "{outcome:?}");
    assert_eq!(
        states,
        [
            WaitingOnParents,
            Initializing,
            Processing,
            ShuttingDown(StopReason::Handoff),
            Complete
        ]
    );
    assert_eq!(h.calls_so_far(), [Call::ShutdownRequested]);
    let stored = h.stored().await;
    assert_eq!(
        stored.checkpoint,
        ExtendedSequenceNumber::new(sequence(3), 0)
    );
    assert_eq!(stored.owner, None);
    assert_eq!(
        *h.sources.opened_at.lock().unwrap(),
        [StartingPosition::AfterCheckpoint(
            SequenceNumber::from_u128(999),
            0
        )],
        "resumed after the checkpoint"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_shard_ending_leaves_the_shard_unfinished() {
    let mut h = Harness::new(vec![Some(batch(0..1)), Some(end(&[]))]);
    let lease = h.lease(ExtendedSequenceNumber::TrimHorizon, &[]).await;
    let behaviour = Behaviour {
        shard_ended_fails: true,
        ..Behaviour::default()
    };
    let task = h.start(lease, behaviour);
    assert_eq!(h.next_call().await, Call::Initialize);
    assert_eq!(h.next_call().await, Call::Process(1));
    assert_eq!(h.next_call().await, Call::ShardEnded);
    assert_eq!(
        h.next_call().await,
        Call::ShardEnded,
        "shard_ended is retried"
    );
    h.stop.request(StopReason::Shutdown);
    let (outcome, states) = task.await.unwrap();
    assert!(matches!(outcome, Outcome::Released), "{outcome:?}");
    assert_eq!(
        states,
        [
            WaitingOnParents,
            Initializing,
            Processing,
            ShardEnding,
            Complete
        ]
    );
    let stored = h.stored().await;
    assert_ne!(
        stored.checkpoint,
        ExtendedSequenceNumber::ShardEnd,
        "children still wait"
    );
    assert_eq!(stored.owner, None);
}

#[tokio::test(start_paused = true)]
async fn a_reader_error_fails_the_consumer_and_lets_go() {
    let h = Harness::new(vec![
        Some(batch(0..1)),
        Some(Err(Error::AccessDenied {
            service: crate::error::Service::Kinesis,
            message: "no GetRecords".into(),
        })),
    ]);
    let lease = h.lease(ExtendedSequenceNumber::TrimHorizon, &[]).await;
    let (outcome, states) = h.start(lease, Behaviour::default()).await.unwrap();
    assert!(
        matches!(outcome, Outcome::Failed(Error::AccessDenied { .. })),
        "{outcome:?}"
    );
    assert_eq!(
        states,
        [WaitingOnParents, Initializing, Processing, Complete]
    );
    assert_eq!(h.stored().await.owner, None, "let go for another worker");
}

#[tokio::test(start_paused = true)]
async fn a_worker_shutdown_reaches_the_shard_through_the_tree() {
    let root = CancellationToken::new();
    let mut h = Harness::new(vec![None]);
    h.stop = StopSender::child_of(&root);
    let lease = h.lease(ExtendedSequenceNumber::TrimHorizon, &[]).await;
    let task = h.start(lease, Behaviour::default());
    assert_eq!(h.next_call().await, Call::Initialize);
    root.cancel();
    let (outcome, states) = task.await.unwrap();
    assert!(matches!(outcome, Outcome::Released), "{outcome:?}");
    assert_eq!(states.last(), Some(&Complete));
    assert!(states.contains(&ShuttingDown(StopReason::Shutdown)));
    assert_eq!(h.calls_so_far(), [Call::ShutdownRequested]);
}

#[tokio::test(start_paused = true)]
async fn a_reader_restart_reopens_after_the_last_record_delivered() {
    let mut h = Harness::new(vec![Some(batch(0..3)), None]);
    let lease = h.lease(ExtendedSequenceNumber::TrimHorizon, &[]).await;
    let task = h.start(lease, Behaviour::default());
    assert_eq!(h.next_call().await, Call::Initialize);
    assert_eq!(h.next_call().await, Call::Process(3));
    // The watchdog asks for a new reader: the old one is dropped and the
    // new one starts after record 2, not at the checkpoint.
    h.progress.request_reader_restart();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        *h.sources.opened_at.lock().unwrap(),
        [
            StartingPosition::TrimHorizon,
            StartingPosition::AfterCheckpoint(sequence(2), 0)
        ]
    );
    h.stop.request(StopReason::Shutdown);
    let (outcome, states) = task.await.unwrap();
    assert!(matches!(outcome, Outcome::Released), "{outcome:?}");
    assert!(states.contains(&Processing));
}

#[tokio::test(start_paused = true)]
async fn a_processor_call_that_does_not_return_is_a_stall() {
    let mut h = Harness::new(vec![Some(batch(0..1)), None]);
    let lease = h.lease(ExtendedSequenceNumber::TrimHorizon, &[]).await;
    let behaviour = Behaviour {
        gated: true,
        ..Behaviour::default()
    };
    let task = h.start(lease, behaviour);
    assert_eq!(h.next_call().await, Call::Initialize);
    assert_eq!(h.next_call().await, Call::Process(1));
    let config = crate::watchdog::WatchdogConfig::builder()
        .processor_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let later = std::time::Instant::now() + Duration::from_secs(31);
    let stall = h.progress.stall(later, &config).expect("a stall");
    assert_eq!(stall.cause, crate::watchdog::StallCause::Processor);
    assert_eq!(stall.doing, "process_records");
    h.gate.add_permits(1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        h.progress
            .stall(std::time::Instant::now(), &config)
            .map(|s| s.cause),
        None,
        "the call returned"
    );
    h.stop.request(StopReason::Shutdown);
    let (outcome, _) = task.await.unwrap();
    assert!(matches!(outcome, Outcome::Released), "{outcome:?}");
}
