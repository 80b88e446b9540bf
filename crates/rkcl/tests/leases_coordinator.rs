//! Workers' lease loops: balance, failover after a crash, fast handoff
//! after a graceful shutdown, graceful handoff when stealing, fencing of a
//! stale owner, and a seeded simulation with crashes that checks no lease
//! is ever held by two live workers. Timing runs on tokio's paused clock
//! with the in-memory store; one test runs in real time on the local
//! DynamoDB.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rkcl::{
    Error, ExtendedSequenceNumber,
    leases::{
        InMemoryLeaseStore, Lease, LeaseCoordinator, LeaseCoordinatorConfig, LeaseEvent, LeaseStore,
    },
    model::LeaseKey,
};
use rkcl_local::testkit::lease_key;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const DURATION: Duration = Duration::from_secs(10);

async fn table(leases: usize) -> Arc<InMemoryLeaseStore> {
    let store = Arc::new(InMemoryLeaseStore::new());
    for i in 0..leases {
        let lease = Lease::new(
            lease_key(&format!("shardId-{i:012}")),
            ExtendedSequenceNumber::TrimHorizon,
        );
        store.create_if_absent(&lease).await.unwrap();
    }
    store
}

/// How a test worker answers a handoff request.
#[derive(Clone, Copy, Debug)]
enum OnHandoff {
    /// Releases after this long (a processor finishing its batch).
    ReleaseAfter(Duration),
    /// Never answers.
    Ignore,
}

/// A worker whose events are forwarded to the test; dropping it is a crash
/// (nothing released).
struct Worker<S> {
    coordinator: LeaseCoordinator<S>,
    events: UnboundedReceiver<LeaseEvent>,
    forwarder: JoinHandle<()>,
}

impl<S> Drop for Worker<S> {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

fn worker_with<S: LeaseStore + 'static>(
    store: S,
    config: LeaseCoordinatorConfig,
    on_handoff: OnHandoff,
) -> Worker<S> {
    let (coordinator, mut events) = LeaseCoordinator::start(store, config).unwrap();
    let (forward, received) = unbounded_channel();
    let handle = coordinator.clone();
    let forwarder = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let (LeaseEvent::HandoffRequested { key, .. }, OnHandoff::ReleaseAfter(after)) =
                (&event, on_handoff)
            {
                let (handle, key) = (handle.clone(), key.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    handle.release(&key).await.unwrap();
                });
            }
            let _ = forward.send(event);
        }
    });
    Worker {
        coordinator,
        events: received,
        forwarder,
    }
}

fn worker<S: LeaseStore + 'static>(store: S, id: &str, duration: Duration) -> Worker<S> {
    worker_with(
        store,
        LeaseCoordinatorConfig::with_lease_duration(id, duration),
        OnHandoff::ReleaseAfter(Duration::ZERO),
    )
}

fn keys<S: LeaseStore + 'static>(worker: &Worker<S>) -> BTreeSet<LeaseKey> {
    worker
        .coordinator
        .held()
        .into_iter()
        .map(|l| l.key)
        .collect()
}

/// Held sets are disjoint and their sizes are fair shares.
fn assert_balanced<S: LeaseStore + 'static>(workers: &[&Worker<S>], leases: usize) {
    let sets: Vec<BTreeSet<LeaseKey>> = workers.iter().map(|w| keys(w)).collect();
    let all: BTreeSet<&LeaseKey> = sets.iter().flatten().collect();
    assert_eq!(
        all.len(),
        sets.iter().map(BTreeSet::len).sum::<usize>(),
        "a lease held twice"
    );
    assert_eq!(
        all.len(),
        leases,
        "{:?}",
        sets.iter().map(BTreeSet::len).collect::<Vec<_>>()
    );
    let (low, high) = (leases / workers.len(), leases.div_ceil(workers.len()));
    for set in &sets {
        assert!(
            (low..=high).contains(&set.len()),
            "{:?}",
            sets.iter().map(BTreeSet::len).collect::<Vec<_>>()
        );
    }
}

/// Waits for `count` acquisitions, failing on a loss.
async fn acquisitions<S>(worker: &mut Worker<S>, count: usize) -> Vec<Lease> {
    let mut taken = Vec::new();
    while taken.len() < count {
        match tokio::time::timeout(Duration::from_secs(120), worker.events.recv())
            .await
            .expect("no acquisition in time")
            .unwrap()
        {
            LeaseEvent::Acquired { lease, .. } => taken.push(*lease),
            LeaseEvent::Lost { key } => panic!("lost {key}"),
            LeaseEvent::HandoffRequested { .. } => {}
        }
    }
    taken
}

#[tokio::test(start_paused = true)]
async fn workers_share_the_leases_fairly_and_rebalance_when_one_joins() {
    let store = table(12).await;
    let a = worker(store.clone(), "a", DURATION);
    let b = worker(store.clone(), "b", DURATION);
    let c = worker(store.clone(), "c", DURATION);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_balanced(&[&a, &b, &c], 12);
    let d = worker(store.clone(), "d", DURATION);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_balanced(&[&a, &b, &c, &d], 12);
}

#[tokio::test(start_paused = true)]
async fn a_crashed_workers_leases_move_after_expiry_and_its_checkpoints_are_fenced() {
    let store = table(8).await;
    let a = worker(store.clone(), "a", DURATION);
    let mut b = worker(store.clone(), "b", DURATION);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_balanced(&[&a, &b], 8);
    let dead_copies = a.coordinator.held();
    while b.events.try_recv().is_ok() {}
    // The worker dies: its loops stop, nothing is released.
    drop(a);
    let died = Instant::now();
    acquisitions(&mut b, dead_copies.len()).await;
    let failover = died.elapsed();
    let config = LeaseCoordinatorConfig::new("b");
    // Not before the lease could have expired (the last renewal was at
    // most one renew interval before the crash), and within one lease
    // duration plus one scan interval (with jitter) of it.
    assert!(
        failover >= DURATION - config.renew_interval,
        "taken before expiry: {failover:?}"
    );
    let bound = DURATION + config.scan_interval.mul_f64(1.1) + Duration::from_millis(50);
    assert!(failover <= bound, "failover took {failover:?}");
    assert_eq!(keys(&b).len(), 8);
    // The dead worker's last copies cannot checkpoint any more.
    for copy in dead_copies {
        let position = ExtendedSequenceNumber::new("42".parse().unwrap(), 0);
        assert!(
            store
                .update_checkpoint(&copy, &position)
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_graceful_shutdown_hands_leases_over_within_one_taker_cycle() {
    let store = table(6).await;
    let a = worker(store.clone(), "a", DURATION);
    let mut b = worker(store.clone(), "b", DURATION);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let released = a.coordinator.held().len();
    assert!(released >= 3);
    while b.events.try_recv().is_ok() {}
    assert!(a.coordinator.shutdown().await.is_empty());
    let stopped = Instant::now();
    acquisitions(&mut b, released).await;
    let handoff = stopped.elapsed();
    let cycle = LeaseCoordinatorConfig::new("b").scan_interval;
    assert!(handoff <= cycle.mul_f64(1.1), "handoff took {handoff:?}");
    assert_eq!(keys(&b).len(), 6);
}

#[tokio::test(start_paused = true)]
async fn stealing_hands_over_gracefully_the_old_owner_checkpoints_first() {
    let store = table(4).await;
    let mut a = worker_with(
        store.clone(),
        LeaseCoordinatorConfig::with_lease_duration("a", DURATION),
        OnHandoff::Ignore,
    );
    acquisitions(&mut a, 4).await;
    let mut b = worker(store.clone(), "b", DURATION);
    // a is asked for leases; it checkpoints each and lets go.
    let mut final_checkpoints = Vec::new();
    let started = Instant::now();
    while final_checkpoints.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(60), a.events.recv())
            .await
            .expect("no handoff request")
            .unwrap();
        let LeaseEvent::HandoffRequested { key, next_owner } = event else {
            panic!("unexpected {event:?}");
        };
        assert_eq!(next_owner, "b");
        // The new owner has not started: nobody else holds the lease.
        assert!(!keys(&b).contains(&key));
        let position = ExtendedSequenceNumber::new(
            format!("{}", 1000 + final_checkpoints.len())
                .parse()
                .unwrap(),
            3,
        );
        a.coordinator.checkpoint(&key, &position).await.unwrap();
        assert!(a.coordinator.release(&key).await.unwrap());
        final_checkpoints.push((key, position));
    }
    let taken = acquisitions(&mut b, 2).await;
    let handoff = started.elapsed();
    for lease in &taken {
        let (_, position) = final_checkpoints
            .iter()
            .find(|(key, _)| key == &lease.key)
            .expect("b took a lease it did not ask for");
        // The new owner starts exactly at the old owner's final checkpoint.
        assert_eq!(&lease.checkpoint, position);
        assert_eq!(lease.checkpoint_owner, None);
    }
    assert_balanced(&[&a, &b], 4);
    assert!(handoff <= Duration::from_secs(20), "took {handoff:?}");
}

#[tokio::test(start_paused = true)]
async fn an_owner_that_never_answers_a_handoff_loses_the_lease_after_the_timeout() {
    let store = table(2).await;
    let mut config = LeaseCoordinatorConfig::with_lease_duration("a", DURATION);
    config.handoff_timeout = Duration::from_secs(15);
    let mut a = worker_with(store.clone(), config.clone(), OnHandoff::Ignore);
    acquisitions(&mut a, 2).await;
    let mut b = worker(store.clone(), "b", DURATION);
    let key = loop {
        if let Some(LeaseEvent::HandoffRequested { key, .. }) = a.events.recv().await {
            break key;
        }
    };
    let asked = Instant::now();
    assert_eq!(
        a.events.recv().await.unwrap(),
        LeaseEvent::Lost { key: key.clone() }
    );
    let gave_up = asked.elapsed();
    assert!(gave_up >= config.handoff_timeout, "{gave_up:?}");
    assert!(gave_up <= config.handoff_timeout + config.renew_interval);
    let taken = acquisitions(&mut b, 1).await;
    assert_eq!(taken[0].key, key);
    assert!(asked.elapsed() <= gave_up + DURATION);
}

#[tokio::test(start_paused = true)]
async fn a_next_owner_that_shuts_down_withdraws_its_handoff_and_the_owner_keeps_the_lease() {
    let store = table(2).await;
    let mut a = worker_with(
        store.clone(),
        LeaseCoordinatorConfig::with_lease_duration("a", DURATION),
        OnHandoff::Ignore,
    );
    acquisitions(&mut a, 2).await;
    let b = worker(store.clone(), "b", DURATION);
    let key = loop {
        if let Some(LeaseEvent::HandoffRequested { key, next_owner }) = a.events.recv().await {
            assert_eq!(next_owner, "b");
            break key;
        }
    };
    assert!(b.coordinator.held().is_empty());
    assert_eq!(b.coordinator.shutdown().await, Vec::<LeaseKey>::new());
    let stored = store.get(&key).await.unwrap().unwrap();
    assert_eq!(
        (stored.owner.as_deref(), stored.checkpoint_owner.as_deref()),
        (Some("a"), None)
    );
    // a keeps both leases well past the handoff timeout, and can still
    // checkpoint the one that was asked for.
    tokio::time::sleep(DURATION * 6).await;
    assert!(a.events.try_recv().is_err(), "a heard more");
    assert_eq!(keys(&a).len(), 2);
    let position = ExtendedSequenceNumber::new("77".parse().unwrap(), 0);
    let written = a.coordinator.checkpoint(&key, &position).await.unwrap();
    assert_eq!(written.owner.as_deref(), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_by_another_is_reported_lost_at_the_next_renewal() {
    let store = table(1).await;
    let (a, mut events) = LeaseCoordinator::start(
        store.clone(),
        LeaseCoordinatorConfig::with_lease_duration("a", DURATION),
    )
    .unwrap();
    let Some(LeaseEvent::Acquired { lease, token }) = events.recv().await else {
        panic!("a took nothing");
    };
    assert_eq!(token, lease.fencing_token());
    // Checkpoints go through the coordinator, fenced and never backwards.
    let later = ExtendedSequenceNumber::new("500".parse().unwrap(), 2);
    a.checkpoint(&lease.key, &later).await.unwrap();
    let earlier = ExtendedSequenceNumber::new("500".parse().unwrap(), 1);
    assert!(matches!(
        a.checkpoint(&lease.key, &earlier).await,
        Err(Error::InvalidCheckpoint { .. })
    ));
    // An operator (or a leader) takes it away.
    let current = store.get(&lease.key).await.unwrap().unwrap();
    store.take(&current, "someone-else").await.unwrap().unwrap();
    let taken_at = Instant::now();
    assert_eq!(
        events.recv().await.unwrap(),
        LeaseEvent::Lost {
            key: lease.key.clone()
        }
    );
    assert!(taken_at.elapsed() <= DURATION / 3 + Duration::from_millis(1));
    assert!(a.held().is_empty());
    assert!(matches!(
        a.checkpoint(&lease.key, &later).await,
        Err(Error::LeaseLost { .. })
    ));
    // The new owner's token is above the old one: downstream can fence.
    let newer = store
        .get(&lease.key)
        .await
        .unwrap()
        .unwrap()
        .fencing_token();
    assert!(newer > token);
}

#[tokio::test(start_paused = true)]
async fn a_stale_owner_checkpoint_is_fenced() {
    let store = table(1).await;
    let mut a = worker(store.clone(), "a", DURATION);
    let lease = acquisitions(&mut a, 1).await.remove(0);
    let current = store.get(&lease.key).await.unwrap().unwrap();
    store.take(&current, "b").await.unwrap().unwrap();
    // Before a's next renewal notices, its checkpoint is already refused.
    let position = ExtendedSequenceNumber::new("7".parse().unwrap(), 0);
    assert!(matches!(
        a.coordinator.checkpoint(&lease.key, &position).await,
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(
        store.get(&lease.key).await.unwrap().unwrap().checkpoint,
        ExtendedSequenceNumber::TrimHorizon
    );
}

#[test]
fn bad_timings_are_refused() {
    let mut config = LeaseCoordinatorConfig::new("w");
    assert!(config.validate().is_ok());
    config.renew_interval = Duration::from_secs(5);
    assert!(
        config.validate().is_err(),
        "two renewals must fit before the lease is reported lost"
    );
    let mut config = LeaseCoordinatorConfig::new("");
    assert!(config.validate().is_err());
    config.worker_id = "w".into();
    config.safety_margin = DURATION;
    assert!(config.validate().is_err());
    let mut config = LeaseCoordinatorConfig::new("w");
    config.scan_interval = config.taker_interval / 2;
    assert!(config.validate().is_err());
}

/// Live workers and, per lease, which of them hold it now.
fn holders(
    workers: &[(String, Worker<Arc<InMemoryLeaseStore>>)],
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut holders = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (id, worker) in workers {
        for lease in worker.coordinator.held() {
            holders
                .entry(lease.key.to_string())
                .or_default()
                .push(id.clone());
        }
    }
    holders
}

/// A seeded fleet of workers (some stealing with a graceful handoff, some
/// without) that join, crash and shut down at random, with processors that
/// take up to 4 s to let go of a lease; every 50 ms of (paused) time no
/// lease may be held by two live workers.
async fn simulate(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let leases = rng.random_range(1..=24);
    let store = table(leases).await;
    let mut next_id = 0;
    let mut spawn = |rng: &mut StdRng| {
        next_id += 1;
        let id = format!("w{next_id}");
        let delay = Duration::from_millis(rng.random_range(0..4000));
        let mut config = LeaseCoordinatorConfig::with_lease_duration(id.clone(), DURATION);
        config.graceful_handoff = rng.random_bool(0.7);
        (
            id,
            worker_with(store.clone(), config, OnHandoff::ReleaseAfter(delay)),
        )
    };
    let mut workers: Vec<(String, Worker<Arc<InMemoryLeaseStore>>)> = (0..rng.random_range(1..=4))
        .map(|_| spawn(&mut rng))
        .collect();
    for _ in 0..25 {
        let steps = rng.random_range(20..200);
        for _ in 0..steps {
            tokio::time::sleep(Duration::from_millis(50)).await;
            for (key, owners) in holders(&workers) {
                assert!(
                    owners.len() <= 1,
                    "seed {seed}: {key} held by {owners:?} at the same time"
                );
            }
        }
        match rng.random_range(0..10) {
            0 | 1 if workers.len() > 1 => {
                let index = rng.random_range(0..workers.len());
                drop(workers.swap_remove(index));
            }
            2 if workers.len() > 1 => {
                let index = rng.random_range(0..workers.len());
                let (_, worker) = workers.swap_remove(index);
                worker.coordinator.shutdown().await;
            }
            3 | 4 if workers.len() < 6 => workers.push(spawn(&mut rng)),
            _ => {}
        }
    }
    // Left alone, the survivors end up holding every lease, fairly.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let live: Vec<&Worker<_>> = workers.iter().map(|(_, w)| w).collect();
    assert_balanced(&live, leases);
}

#[tokio::test(start_paused = true)]
async fn a_random_fleet_with_crashes_never_holds_a_lease_twice() {
    for seed in 0..20 {
        simulate(seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_time_on_dynamodb_two_workers_balance_and_fail_over() {
    let local = rkcl_local::Local::start().await.unwrap();
    let store = rkcl_local::testkit::lease_table(&local, "coordinated").await;
    for i in 0..6 {
        let lease = Lease::new(
            lease_key(&format!("shardId-{i:012}")),
            ExtendedSequenceNumber::TrimHorizon,
        );
        store.create_if_absent(&lease).await.unwrap();
    }
    let duration = Duration::from_secs(2);
    let a = worker(store.clone(), "a", duration);
    let b = worker(store.clone(), "b", duration);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_balanced(&[&a, &b], 6);
    drop(a);
    tokio::time::sleep(duration * 2 + Duration::from_secs(1)).await;
    assert_eq!(keys(&b).len(), 6);
    let table = store.list().await.unwrap();
    assert!(table.iter().all(|l| l.owner.as_deref() == Some("b")));
    assert!(store.requests().update_item > 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_checkpoints_more_often_than_it_renews_hears_of_a_handoff_at_once() {
    // A processor that checkpoints every batch moves the counter before each
    // renewal, so the renewer skips the lease: the checkpoint itself must
    // learn of the handoff.
    let store = table(1).await;
    let mut a = worker_with(
        store.clone(),
        LeaseCoordinatorConfig::with_lease_duration("a", Duration::from_secs(30)),
        OnHandoff::Ignore,
    );
    let lease = acquisitions(&mut a, 1).await.remove(0);
    let position =
        |n: u32| ExtendedSequenceNumber::new(format!("{}", 1000 + n).parse().unwrap(), 0);
    a.coordinator
        .checkpoint(&lease.key, &position(1))
        .await
        .unwrap();
    // Another worker asks for the lease.
    let stored = store.get(&lease.key).await.unwrap().unwrap();
    store.hand_off(&stored, "b").await.unwrap().unwrap();
    // The next checkpoint (well before any renewal is due) writes and says so.
    let written = a
        .coordinator
        .checkpoint(&lease.key, &position(2))
        .await
        .unwrap();
    assert_eq!(written.checkpoint, position(2));
    let event = tokio::time::timeout(Duration::from_secs(2), a.events.recv())
        .await
        .expect("no handoff request after the checkpoint")
        .unwrap();
    assert_eq!(
        event,
        LeaseEvent::HandoffRequested {
            key: lease.key.clone(),
            next_owner: "b".to_owned()
        }
    );
    // Announced once: a further checkpoint says nothing more.
    a.coordinator
        .checkpoint(&lease.key, &position(3))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a.events.recv())
            .await
            .is_err(),
        "the handoff was announced twice"
    );
    a.coordinator.shutdown().await;
}
