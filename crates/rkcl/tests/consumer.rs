//! The consumer end to end on the local Kinesis and DynamoDB: a group of
//! workers, workers killed and shut down, resharding, restarts inside an
//! aggregate, the failure policy and bad input at start-up.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{key_and_number, keyed_records, quick_polling};
use rkcl::{
    Checkpointer, DynamoDbLeaseStore, Error, ExtendedSequenceNumber, FailurePolicy, Kinesis,
    ProcessRecordsInput, ProcessorError, RecordProcessor, Scheduler, SchedulerConfig, ShardId,
    ShardInfo,
    aws::StreamRef,
    leases::{InMemoryLeaseStore, Lease, LeaseStore},
    model::LeaseKey,
};
use rkcl_local::testkit::Packing::{Aggregated, Plain};
use rkcl_local::testkit::{
    create_stream, eventually, lease_table, merge, put, read_all_raw, split,
};
use rkcl_local::{FaultKind, FaultPlan, Local};

/// One delivery of one user record.
#[derive(Clone, Debug)]
struct Delivery {
    worker: String,
    instance: u64,
    shard: ShardId,
    position: ExtendedSequenceNumber,
    key: usize,
    number: usize,
}

#[derive(Default)]
struct Journal {
    deliveries: Mutex<Vec<Delivery>>,
    ended: Mutex<Vec<ShardId>>,
    instances: AtomicU64,
}

impl Journal {
    fn unique(&self) -> usize {
        let deliveries = self.deliveries.lock().unwrap();
        deliveries
            .iter()
            .map(|d| (d.key, d.number))
            .collect::<BTreeSet<_>>()
            .len()
    }

    fn snapshot(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }
}

/// Logs every record and checkpoints after every batch.
struct Recorder {
    worker: String,
    instance: u64,
    shard: ShardId,
    journal: Arc<Journal>,
}

impl RecordProcessor for Recorder {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        {
            let mut deliveries = self.journal.deliveries.lock().unwrap();
            for record in &input.records {
                let (key, number) = key_and_number(&record.data);
                deliveries.push(Delivery {
                    worker: self.worker.clone(),
                    instance: self.instance,
                    shard: self.shard.clone(),
                    position: record.extended_sequence_number(),
                    key,
                    number,
                });
            }
        }
        checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, checkpointer: &Checkpointer) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        self.journal.ended.lock().unwrap().push(self.shard.clone());
        Ok(())
    }
}

fn recorder(worker: &str, journal: &Arc<Journal>) -> impl Fn(&ShardInfo) -> Recorder + use<> {
    let (worker, journal) = (worker.to_owned(), journal.clone());
    move |shard: &ShardInfo| Recorder {
        worker: worker.clone(),
        instance: journal.instances.fetch_add(1, Ordering::SeqCst),
        shard: shard.shard_id.clone(),
        journal: journal.clone(),
    }
}

const LEASE: Duration = Duration::from_secs(2);

fn config(app: &str, stream: &str, worker: &str) -> SchedulerConfig {
    SchedulerConfig::builder(app, stream)
        .worker_id(worker)
        .lease_duration(LEASE)
        .polling(quick_polling())
        .shard_sync_interval(Duration::from_secs(1))
        .parent_poll_interval(Duration::from_millis(200))
        .build()
        .unwrap()
}

async fn start(
    local: &Local,
    store: &DynamoDbLeaseStore,
    stream: &str,
    worker: &str,
    journal: &Arc<Journal>,
) -> Scheduler {
    Scheduler::start(
        config(store.table(), stream, worker),
        Kinesis::new(local.kinesis_client()),
        store.clone(),
        recorder(worker, journal),
    )
    .await
    .unwrap()
}

/// A stream of `shards` shards and a group of three workers `a`, `b`, `c`
/// consuming it into one journal.
struct Group {
    /// Keeps the servers running.
    _local: Local,
    kinesis: Kinesis,
    stream: StreamRef,
    store: DynamoDbLeaseStore,
    journal: Arc<Journal>,
}

impl Group {
    async fn start(name: &str, shards: u32) -> (Self, [Scheduler; 3]) {
        let local = Local::start().await.unwrap();
        let kinesis = Kinesis::new(local.kinesis_client());
        let stream = create_stream(&kinesis, name, shards).await;
        let store = lease_table(&local, &format!("{name}-app")).await;
        let journal = Arc::new(Journal::default());
        let mut workers = Vec::new();
        for id in ["a", "b", "c"] {
            workers.push(start(&local, &store, name, id, &journal).await);
        }
        let Ok(workers) = <[Scheduler; 3]>::try_from(workers) else {
            unreachable!()
        };
        let group = Self {
            _local: local,
            kinesis,
            stream,
            store,
            journal,
        };
        (group, workers)
    }
}

/// Within one processor instance, positions strictly increase.
fn assert_shard_order(deliveries: &[Delivery]) {
    let mut last: HashMap<u64, &ExtendedSequenceNumber> = HashMap::new();
    for delivery in deliveries {
        if let Some(previous) = last.insert(delivery.instance, &delivery.position) {
            assert!(
                previous < &delivery.position,
                "out of order in {}: {previous} then {}",
                delivery.shard,
                delivery.position
            );
        }
    }
}

fn held_counts(workers: &[&Scheduler]) -> Vec<usize> {
    workers.iter().map(|w| w.held_leases().len()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_consume_every_record_in_shard_order_with_balanced_leases() {
    let (group, [a, b, c]) = Group::start("group", 4).await;
    let Group {
        kinesis,
        stream,
        store,
        journal,
        ..
    } = &group;
    put(kinesis, stream, keyed_records(100, 500, 0), Plain).await;
    put(kinesis, stream, keyed_records(100, 500, 500), Aggregated).await;
    eventually("100,000 records consumed", Duration::from_secs(120), || {
        journal.unique() == 100_000
    })
    .await;
    assert_shard_order(&journal.snapshot());
    eventually(
        "4 leases spread over 3 workers",
        Duration::from_secs(30),
        || {
            let counts = held_counts(&[&a, &b, &c]);
            counts.iter().sum::<usize>() == 4 && counts.iter().all(|c| (1..=2).contains(c))
        },
    )
    .await;
    for worker in [a, b, c] {
        let report = worker.shutdown(Duration::from_secs(10)).await;
        assert!(report.unfinished_leases.is_empty(), "{report:?}");
    }
    // Every lease is released and checkpointed at the last record.
    for lease in store.list().await.unwrap() {
        assert_eq!(lease.owner, None);
        assert!(lease.checkpoint.sequence_number().is_some(), "{lease:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_after_expiry_and_duplicates_come_only_after_its_checkpoint() {
    let (group, [a, b, c]) = Group::start("kill", 4).await;
    let Group {
        kinesis,
        stream,
        store,
        journal,
        ..
    } = &group;
    put(kinesis, stream, keyed_records(40, 250, 0), Aggregated).await;
    eventually("first 10,000", Duration::from_secs(60), || {
        journal.unique() == 10_000
    })
    .await;
    eventually("a holds a lease", Duration::from_secs(30), || {
        !a.held_leases().is_empty()
    })
    .await;
    let dead_shards: BTreeSet<String> = a
        .held_leases()
        .into_iter()
        .map(|l| l.key.to_string())
        .collect();
    // Killed: no shutdown, nothing released.
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let checkpoints: BTreeMap<String, ExtendedSequenceNumber> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.key.to_string(), l.checkpoint))
        .collect();
    let deliveries_before = journal.snapshot().len();
    put(kinesis, stream, keyed_records(40, 250, 250), Aggregated).await;
    eventually("all 20,000", Duration::from_secs(60), || {
        journal.unique() == 20_000
    })
    .await;
    eventually(
        "survivors hold every lease",
        Duration::from_secs(30),
        || held_counts(&[&b, &c]).iter().sum::<usize>() == 4,
    )
    .await;
    let deliveries = journal.snapshot();
    assert_shard_order(&deliveries);
    let mut seen = BTreeSet::new();
    for (index, delivery) in deliveries.iter().enumerate() {
        if !seen.insert((delivery.key, delivery.number)) {
            // A repeat: only on a dead worker's shard, after its checkpoint,
            // delivered again by a survivor.
            assert!(index >= deliveries_before, "duplicate before the kill");
            assert!(dead_shards.contains(delivery.shard.as_str()));
            assert!(delivery.position > checkpoints[delivery.shard.as_str()]);
            assert_ne!(delivery.worker, "a");
        }
    }
    b.shutdown(Duration::from_secs(10)).await;
    c.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_hands_shards_over_within_a_cycle_without_duplicates() {
    let (group, [a, b, c]) = Group::start("leave", 4).await;
    let Group {
        kinesis,
        stream,
        journal,
        ..
    } = &group;
    put(kinesis, stream, keyed_records(40, 250, 0), Plain).await;
    eventually("first 10,000", Duration::from_secs(60), || {
        journal.unique() == 10_000
    })
    .await;
    eventually("a holds a lease", Duration::from_secs(30), || {
        !a.held_leases().is_empty()
    })
    .await;
    let report = a.shutdown(Duration::from_secs(10)).await;
    assert!(!report.finished_leases.is_empty() && report.unfinished_leases.is_empty());
    let stopped = tokio::time::Instant::now();
    eventually(
        "survivors hold every lease",
        Duration::from_secs(30),
        || held_counts(&[&b, &c]).iter().sum::<usize>() == 4,
    )
    .await;
    let handoff = stopped.elapsed();
    // One scan interval (half the lease duration) plus jitter and reads.
    assert!(
        handoff <= LEASE / 2 + Duration::from_millis(700),
        "{handoff:?}"
    );
    put(kinesis, stream, keyed_records(40, 250, 250), Plain).await;
    eventually("all 20,000", Duration::from_secs(60), || {
        journal.unique() == 20_000
    })
    .await;
    let deliveries = journal.snapshot();
    assert_eq!(
        deliveries.len(),
        20_000,
        "duplicates after a graceful shutdown"
    );
    b.shutdown(Duration::from_secs(10)).await;
    c.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_and_merges_while_consuming_keep_key_order_and_children_wait_for_parents() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "reshard", 3).await;
    let store = lease_table(&local, "reshard-app").await;
    let journal = Arc::new(Journal::default());
    let a = start(&local, &store, "reshard", "a", &journal).await;
    let b = start(&local, &store, "reshard", "b", &journal).await;
    put(&kinesis, &stream, keyed_records(30, 100, 0), Aggregated).await;
    let shards = kinesis.list_shards(&stream).await.unwrap();
    split(&local, &stream, &shards[0], None).await;
    put(&kinesis, &stream, keyed_records(30, 100, 100), Plain).await;
    merge(&local, &stream, &shards[1], &shards[2]).await;
    put(&kinesis, &stream, keyed_records(30, 100, 200), Aggregated).await;
    eventually("all 9,000", Duration::from_secs(90), || {
        journal.unique() == 9_000
    })
    .await;

    let deliveries = journal.snapshot();
    assert_shard_order(&deliveries);
    // Per key, first deliveries come in the order written.
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut seen = BTreeSet::new();
    for delivery in &deliveries {
        if seen.insert((delivery.key, delivery.number)) {
            let expected = next.entry(delivery.key).or_insert(0);
            assert_eq!(
                delivery.number, *expected,
                "key {} out of order",
                delivery.key
            );
            *expected += 1;
        }
    }
    // Children start only after every parent's last delivery.
    let all = kinesis.list_shards(&stream).await.unwrap();
    let first: HashMap<&ShardId, usize> = deliveries
        .iter()
        .enumerate()
        .rev()
        .map(|(i, d)| (&d.shard, i))
        .collect();
    let last: HashMap<&ShardId, usize> = deliveries
        .iter()
        .enumerate()
        .map(|(i, d)| (&d.shard, i))
        .collect();
    for child in all.iter().filter(|s| s.parent_shard_id.is_some()) {
        for parent in child.parents() {
            if let (Some(start), Some(end)) = (first.get(&child.id), last.get(parent)) {
                assert!(start > end, "{} started before {parent} ended", child.id);
            }
        }
    }
    // Every parent ended with SHARD_END; their leases are cleaned up once
    // the children have progressed.
    let ended: BTreeSet<ShardId> = journal.ended.lock().unwrap().iter().cloned().collect();
    for parent in &shards {
        assert!(ended.contains(&parent.id), "{} did not end", parent.id);
    }
    let parents: BTreeSet<String> = shards.iter().map(|s| s.id.as_str().to_owned()).collect();
    let mut remaining = usize::MAX;
    for _ in 0..100 {
        remaining = store
            .list()
            .await
            .unwrap()
            .iter()
            .filter(|l| parents.contains(l.key.as_str()))
            .count();
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        remaining,
        0,
        "parent leases were not cleaned up: {:?}",
        store.list().await.unwrap()
    );
    a.shutdown(Duration::from_secs(10)).await;
    b.shutdown(Duration::from_secs(10)).await;
}

/// Checkpoints at one chosen user record, and never at shutdown.
struct StopsMidAggregate {
    journal: Arc<Journal>,
    checkpoint_at: usize,
}

impl RecordProcessor for StopsMidAggregate {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        for record in &input.records {
            let (key, number) = key_and_number(&record.data);
            self.journal.deliveries.lock().unwrap().push(Delivery {
                worker: "first".into(),
                instance: 0,
                shard: checkpointer.shard_id().clone(),
                position: record.extended_sequence_number(),
                key,
                number,
            });
            if number == self.checkpoint_at {
                assert!(record.is_aggregated());
                checkpointer.checkpoint_record(record).await?;
            }
        }
        Ok(())
    }

    async fn shutdown_requested(&mut self, _: &Checkpointer) -> Result<(), ProcessorError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_group_resumes_inside_an_aggregate_without_repeating_or_skipping() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "resume", 1).await;
    let store = lease_table(&local, "resume-app").await;
    put(&kinesis, &stream, keyed_records(1, 1000, 0), Aggregated).await;
    let first = Arc::new(Journal::default());
    let journal = first.clone();
    let worker = Scheduler::start(
        config("resume-app", "resume", "first"),
        kinesis.clone(),
        store.clone(),
        move |_: &ShardInfo| StopsMidAggregate {
            journal: journal.clone(),
            checkpoint_at: 437,
        },
    )
    .await
    .unwrap();
    eventually("all read once", Duration::from_secs(30), || {
        first.unique() == 1000
    })
    .await;
    worker.shutdown(Duration::from_secs(10)).await;
    let lease = store.list().await.unwrap().remove(0);
    // Stored inside the aggregate: record 437 is user record 437 % n of its
    // aggregate, not the aggregate's start.
    assert!(lease.checkpoint.sub_sequence_number() > 0, "{lease:?}");

    let second = Arc::new(Journal::default());
    let worker = start(&local, &store, "resume", "second", &second).await;
    eventually("the rest read", Duration::from_secs(30), || {
        second.unique() == 1000 - 438
    })
    .await;
    let numbers: Vec<usize> = second.snapshot().iter().map(|d| d.number).collect();
    assert_eq!(numbers, (438..1000).collect::<Vec<_>>());
    worker.shutdown(Duration::from_secs(10)).await;
}

/// Fails (or panics) as told, and logs what it processed.
struct Flaky {
    journal: Arc<Journal>,
    failures_left: Arc<AtomicU32>,
    panic_on_shard: Option<ShardId>,
    poison: Option<usize>,
    shard: ShardId,
}

impl RecordProcessor for Flaky {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        if self.panic_on_shard.as_ref() == Some(&self.shard) {
            panic!("this shard always panics");
        }
        if input
            .records
            .iter()
            .any(|r| Some(key_and_number(&r.data).1) == self.poison)
        {
            return Err("a poison record".into());
        }
        if self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(format!("failure on attempt {}", input.attempt).into());
        }
        {
            let mut deliveries = self.journal.deliveries.lock().unwrap();
            for record in &input.records {
                let (key, number) = key_and_number(&record.data);
                deliveries.push(Delivery {
                    worker: "w".into(),
                    instance: 0,
                    shard: self.shard.clone(),
                    position: record.extended_sequence_number(),
                    key,
                    number,
                });
            }
        }
        checkpointer.checkpoint().await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batches_are_retried_or_dead_lettered_and_a_panicking_shard_does_not_stall_others() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());

    // Retry: three failures, then the same batch again, nothing skipped.
    let stream = create_stream(&kinesis, "retry", 1).await;
    put(&kinesis, &stream, keyed_records(1, 100, 0), Plain).await;
    let store = lease_table(&local, "retry-app").await;
    let journal = Arc::new(Journal::default());
    let failures = Arc::new(AtomicU32::new(3));
    let (j, f) = (journal.clone(), failures.clone());
    let policy =
        FailurePolicy::retry().with_backoff(Duration::from_millis(20), Duration::from_millis(50));
    let mut cfg = config("retry-app", "retry", "w");
    cfg.failure_policy = policy.clone();
    let worker = Scheduler::start(cfg, kinesis.clone(), store.clone(), move |s: &ShardInfo| {
        Flaky {
            journal: j.clone(),
            failures_left: f.clone(),
            panic_on_shard: None,
            poison: None,
            shard: s.shard_id.clone(),
        }
    })
    .await
    .unwrap();
    eventually("100 after retries", Duration::from_secs(30), || {
        journal.unique() == 100
    })
    .await;
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    let numbers: Vec<usize> = journal.snapshot().iter().map(|d| d.number).collect();
    assert_eq!(numbers, (0..100).collect::<Vec<_>>());
    worker.shutdown(Duration::from_secs(5)).await;

    // Dead letter: the poisoned batch goes to the handler after 3 tries.
    let stream = create_stream(&kinesis, "poison", 1).await;
    put(&kinesis, &stream, keyed_records(1, 50, 0), Plain).await;
    let store = lease_table(&local, "poison-app").await;
    let journal = Arc::new(Journal::default());
    let letters = Arc::new(Mutex::new(Vec::new()));
    let sink = letters.clone();
    let mut cfg = config("poison-app", "poison", "w");
    cfg.failure_policy = FailurePolicy::dead_letter(3, move |letter| {
        let sink = sink.clone();
        async move { sink.lock().unwrap().push(letter) }
    })
    .with_backoff(Duration::from_millis(20), Duration::from_millis(50));
    let j = journal.clone();
    let worker = Scheduler::start(cfg, kinesis.clone(), store.clone(), move |s: &ShardInfo| {
        Flaky {
            journal: j.clone(),
            failures_left: Arc::new(AtomicU32::new(0)),
            panic_on_shard: None,
            poison: Some(20),
            shard: s.shard_id.clone(),
        }
    })
    .await
    .unwrap();
    eventually("a dead letter", Duration::from_secs(30), || {
        !letters.lock().unwrap().is_empty()
    })
    .await;
    put(&kinesis, &stream, keyed_records(1, 50, 50), Plain).await;
    eventually("later records go on", Duration::from_secs(30), || {
        journal.snapshot().iter().any(|d| d.number == 99)
    })
    .await;
    {
        let letters = letters.lock().unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].attempts, 3);
        assert!(
            letters[0]
                .records
                .iter()
                .any(|r| key_and_number(&r.data).1 == 20)
        );
        assert_eq!(letters[0].error, "a poison record");
    }
    worker.shutdown(Duration::from_secs(5)).await;

    // A panicking shard: the other shards are consumed all the same.
    let stream = create_stream(&kinesis, "panics", 3).await;
    put(&kinesis, &stream, keyed_records(30, 20, 0), Plain).await;
    let shards = kinesis.list_shards(&stream).await.unwrap();
    let bad = shards[1].id.clone();
    let store = lease_table(&local, "panics-app").await;
    let journal = Arc::new(Journal::default());
    let mut cfg = config("panics-app", "panics", "w");
    cfg.failure_policy = policy;
    let (j, bad_shard) = (journal.clone(), bad.clone());
    let worker = Scheduler::start(cfg, kinesis.clone(), store.clone(), move |s: &ShardInfo| {
        Flaky {
            journal: j.clone(),
            failures_left: Arc::new(AtomicU32::new(0)),
            panic_on_shard: Some(bad_shard.clone()),
            poison: None,
            shard: s.shard_id.clone(),
        }
    })
    .await
    .unwrap();
    let users = read_all_raw(&local, &stream).await.user_records();
    let others = users.len()
        - users
            .iter()
            .filter(|u| {
                let key = rkcl::model::HashKey::of_partition_key(&u.partition_key);
                shards[1].hash_key_range.contains(key)
            })
            .count();
    eventually("the other shards consumed", Duration::from_secs(30), || {
        journal.unique() == others
    })
    .await;
    assert!(journal.snapshot().iter().all(|d| d.shard != bad));
    // The panicking shard is still held and retried, never skipped.
    assert!(worker.held_leases().iter().any(|l| l.key == bad.as_str()));
    let stored = store
        .get(&LeaseKey::parse(bad.as_str()).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.checkpoint, ExtendedSequenceNumber::TrimHorizon);
    worker.shutdown(Duration::from_secs(5)).await;
}

/// A store that refuses everything, as DynamoDB does without permissions.
#[derive(Debug, Default)]
struct Forbidden(InMemoryLeaseStore);

fn denied() -> Error {
    Error::AccessDenied {
        service: rkcl::error::Service::DynamoDb,
        message: "not authorized to perform dynamodb:Scan".into(),
    }
}

impl LeaseStore for Forbidden {
    async fn create_if_absent(&self, _: &Lease) -> rkcl::Result<bool> {
        Err(denied())
    }
    async fn list(&self) -> rkcl::Result<Vec<Lease>> {
        Err(denied())
    }
    async fn get(&self, key: &LeaseKey) -> rkcl::Result<Option<Lease>> {
        self.0.get(key).await
    }
    async fn renew(&self, lease: &Lease) -> rkcl::Result<Option<Lease>> {
        self.0.renew(lease).await
    }
    async fn take(&self, lease: &Lease, owner: &str) -> rkcl::Result<Option<Lease>> {
        self.0.take(lease, owner).await
    }
    async fn hand_off(&self, lease: &Lease, owner: &str) -> rkcl::Result<Option<Lease>> {
        self.0.hand_off(lease, owner).await
    }
    async fn withdraw_handoff(&self, lease: &Lease) -> rkcl::Result<Option<Lease>> {
        self.0.withdraw_handoff(lease).await
    }
    async fn release(&self, lease: &Lease) -> rkcl::Result<Option<Lease>> {
        self.0.release(lease).await
    }
    async fn evict(&self, lease: &Lease) -> rkcl::Result<Option<Lease>> {
        self.0.evict(lease).await
    }
    async fn update_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &ExtendedSequenceNumber,
    ) -> rkcl::Result<Option<Lease>> {
        self.0.update_checkpoint(lease, checkpoint).await
    }
    async fn delete(&self, lease: &Lease) -> rkcl::Result<bool> {
        self.0.delete(lease).await
    }
}

#[tokio::test]
async fn bad_input_is_a_clear_error_at_start_up() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let journal = Arc::new(Journal::default());

    let missing = Scheduler::start(
        config("missing-app", "no-such-stream", "w"),
        kinesis.clone(),
        InMemoryLeaseStore::new(),
        recorder("w", &journal),
    )
    .await;
    assert!(
        matches!(missing, Err(Error::ResourceNotFound { .. })),
        "{missing:?}"
    );

    create_stream(&kinesis, "present", 1).await;
    let forbidden = Scheduler::start(
        config("forbidden-app", "present", "w"),
        kinesis.clone(),
        Forbidden::default(),
        recorder("w", &journal),
    )
    .await;
    let message = forbidden.unwrap_err().to_string();
    assert!(message.contains("access denied"), "{message}");

    for (what, built) in [
        ("short name", SchedulerConfig::builder("x", "s").build()),
        (
            "bad table name",
            SchedulerConfig::builder("my app!", "s").build(),
        ),
        (
            "zero lease",
            SchedulerConfig::builder("app", "s")
                .lease_duration(Duration::ZERO)
                .build(),
        ),
        (
            "no leases",
            SchedulerConfig::builder("app", "s")
                .max_leases_per_worker(0)
                .build(),
        ),
        (
            "dead letter without attempts",
            SchedulerConfig::builder("app", "s")
                .failure_policy(FailurePolicy::dead_letter(0, |_| async {}))
                .build(),
        ),
        (
            "sync too often",
            SchedulerConfig::builder("app", "s")
                .shard_sync_interval(Duration::from_millis(10))
                .build(),
        ),
    ] {
        assert!(matches!(built, Err(Error::Config(_))), "{what}: {built:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_every_consumer_call_cost_no_record_and_no_order() {
    // Throttles, 5xx, expired iterators, dropped connections and latency on
    // the calls a worker makes, on both services; the writer's PutRecords is
    // spared so the stream holds exactly what was written.
    let plan = FaultPlan::parse(
        "kinesis.GetRecords:throttle=10%,kinesis.GetRecords:error=5%,\
         kinesis.GetRecords:expired=3%,kinesis.GetRecords:reset=2%,\
         kinesis.GetShardIterator:error=10%,kinesis.ListShards:throttle=10%,\
         dynamodb.*:throttle=5%,dynamodb.*:error=3%,dynamodb.UpdateItem:reset=2%,\
         *:latency=0..20ms",
    )
    .unwrap();
    let local = Local::builder()
        .faults(plan)
        .fault_seed(7)
        .start()
        .await
        .unwrap();
    let writer = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&writer, "faulty", 4).await;
    put(&writer, &stream, keyed_records(50, 100, 0), Plain).await;
    put(&writer, &stream, keyed_records(50, 100, 100), Aggregated).await;
    let store = lease_table(&local, "faulty-app").await;
    let journal = Arc::new(Journal::default());
    let a = start(&local, &store, "faulty", "a", &journal).await;
    let b = start(&local, &store, "faulty", "b", &journal).await;
    eventually(
        "10,000 records consumed under faults",
        Duration::from_secs(120),
        || journal.unique() == 10_000,
    )
    .await;
    assert_shard_order(&journal.snapshot());
    // Per key, first deliveries come in the order written.
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut first = BTreeSet::new();
    for delivery in journal.snapshot() {
        if first.insert((delivery.key, delivery.number)) {
            let expected = next.entry(delivery.key).or_default();
            assert_eq!(
                delivery.number, *expected,
                "key {} out of order",
                delivery.key
            );
            *expected += 1;
        }
    }
    // The workers go on reading at the tip until every kind of fault has
    // hit them at least once; nothing more may arrive meanwhile.
    eventually(
        "every kind of fault injected",
        Duration::from_secs(60),
        || {
            let counts = local.fault_counts();
            [
                FaultKind::Throttle,
                FaultKind::Error,
                FaultKind::Expired,
                FaultKind::Reset,
            ]
            .iter()
            .all(|kind| counts.total(*kind) > 0)
        },
    )
    .await;
    assert_eq!(journal.unique(), 10_000);
    assert_shard_order(&journal.snapshot());
    for worker in [a, b] {
        worker.shutdown(Duration::from_secs(20)).await;
    }
}
