//! Workers' lease loops: balance, failover after a crash, fast handoff
//! after a graceful shutdown, and fencing of a stale owner. Timing runs on
//! tokio's paused clock with the in-memory store; one test runs in real time
//! on the local DynamoDB.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rkcl::{
    DynamoDbLeaseStore, ExtendedSequenceNumber, InMemoryLeaseStore, Lease, LeaseCoordinator,
    LeaseCoordinatorConfig, LeaseEvent, LeaseStore,
};
use tokio::sync::mpsc::UnboundedReceiver;

const DURATION: Duration = Duration::from_secs(10);

async fn table(leases: usize) -> Arc<InMemoryLeaseStore> {
    let store = Arc::new(InMemoryLeaseStore::new());
    for i in 0..leases {
        let lease = Lease::new(
            format!("shardId-{i:012}"),
            ExtendedSequenceNumber::TrimHorizon,
        );
        store.create_if_absent(&lease).await.unwrap();
    }
    store
}

type Worker<S> = (LeaseCoordinator<S>, UnboundedReceiver<LeaseEvent>);

fn worker<S: LeaseStore + 'static>(store: S, id: &str, duration: Duration) -> Worker<S> {
    LeaseCoordinator::start(
        store,
        LeaseCoordinatorConfig::with_lease_duration(id, duration),
    )
    .unwrap()
}

fn keys<S: LeaseStore + 'static>(worker: &Worker<S>) -> BTreeSet<String> {
    worker.0.held().into_iter().map(|l| l.key).collect()
}

/// Held sets are disjoint and their sizes are fair shares.
fn assert_balanced<S: LeaseStore + 'static>(workers: &[&Worker<S>], leases: usize) {
    let sets: Vec<BTreeSet<String>> = workers.iter().map(|w| keys(w)).collect();
    let all: BTreeSet<&String> = sets.iter().flatten().collect();
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

#[tokio::test(start_paused = true)]
async fn workers_share_the_leases_fairly_and_rebalance_when_one_joins() {
    let store = table(12).await;
    let a = worker(store.clone(), "a", DURATION);
    let b = worker(store.clone(), "b", DURATION);
    let c = worker(store.clone(), "c", DURATION);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_balanced(&[&a, &b, &c], 12);
    let d = worker(store.clone(), "d", DURATION);
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_balanced(&[&a, &b, &c, &d], 12);
}

#[tokio::test(start_paused = true)]
async fn a_crashed_workers_leases_move_after_expiry_and_its_checkpoints_are_fenced() {
    let store = table(8).await;
    let a = worker(store.clone(), "a", DURATION);
    let b = worker(store.clone(), "b", DURATION);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_balanced(&[&a, &b], 8);
    let dead_copies = a.0.held();
    let mut b = b;
    while b.1.try_recv().is_ok() {}
    // The worker dies: its loops stop, nothing is released.
    drop(a);
    let died = tokio::time::Instant::now();
    let mut taken = 0;
    while taken < dead_copies.len() {
        match tokio::time::timeout(Duration::from_secs(60), b.1.recv())
            .await
            .unwrap()
            .unwrap()
        {
            LeaseEvent::Acquired { .. } => taken += 1,
            LeaseEvent::Lost { key } => panic!("b lost {key}"),
        }
    }
    let failover = died.elapsed();
    // Expiry is judged from when b last saw the counter change (up to one
    // renew interval before the crash), then one taker cycle with jitter.
    let bound = DURATION + DURATION / 5 * 2 + DURATION / 4;
    assert!(
        failover >= DURATION - DURATION / 4,
        "taken before expiry: {failover:?}"
    );
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
    let released = a.0.held().len();
    assert!(released >= 3);
    while b.1.try_recv().is_ok() {}
    assert!(a.0.shutdown().await.is_empty());
    let stopped = tokio::time::Instant::now();
    let mut taken = 0;
    while taken < released {
        if let LeaseEvent::Acquired { .. } = b.1.recv().await.unwrap() {
            taken += 1;
        }
    }
    let handoff = stopped.elapsed();
    let cycle = DURATION / 5;
    assert!(handoff <= cycle + cycle / 10, "handoff took {handoff:?}");
    assert_eq!(keys(&b).len(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_by_another_is_reported_lost_at_the_next_renewal() {
    let store = table(1).await;
    let mut a = worker(store.clone(), "a", DURATION);
    let Some(LeaseEvent::Acquired { lease, token }) = a.1.recv().await else {
        panic!("a took nothing");
    };
    assert_eq!(token, lease.fencing_token());
    // An operator (or a leader) takes it away.
    let current = store.get(&lease.key).await.unwrap().unwrap();
    store.take(&current, "someone-else").await.unwrap().unwrap();
    let taken_at = tokio::time::Instant::now();
    assert_eq!(
        a.1.recv().await.unwrap(),
        LeaseEvent::Lost {
            key: lease.key.clone()
        }
    );
    assert!(taken_at.elapsed() <= DURATION / 4 + Duration::from_millis(1));
    assert!(a.0.held().is_empty());
    // The new owner's token is above the old one: downstream can fence.
    let newer = store
        .get(&lease.key)
        .await
        .unwrap()
        .unwrap()
        .fencing_token();
    assert!(newer > token);
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_time_on_dynamodb_two_workers_balance_and_fail_over() {
    let local = rkcl_local::Local::start().await.unwrap();
    let store = DynamoDbLeaseStore::new(local.dynamodb_client(), "coordinated");
    store.ensure_table(Duration::from_secs(10)).await.unwrap();
    for i in 0..6 {
        let lease = Lease::new(
            format!("shardId-{i:012}"),
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
