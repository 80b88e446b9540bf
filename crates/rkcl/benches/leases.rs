//! Lease-table cost and rebalancing times on the local DynamoDB.
//!
//! For `w` workers over `n` leases: the DynamoDB requests per lease per hour
//! in steady state, and the time to rebalance after a worker joins, after
//! one dies without a word, and after one shuts down gracefully. Every
//! interval of the lease loops is a fixed fraction of the lease duration,
//! so the run uses a 2 s lease duration and scales counts and times to the
//! default 10 s: request rates × 1/5, times × 5. Processors answer handoff
//! requests at once. The Java KCL 2.x figure comes from its algorithm: one
//! renewal per lease every 3.3 s and one full scan per worker every 20 s.
//!
//! Run with `cargo bench -p rkcl --bench leases`. It prints its figures.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rkcl::{
    DynamoDbLeaseStore, ExtendedSequenceNumber,
    aws::LeaseTableRequests,
    leases::{Lease, LeaseCoordinator, LeaseCoordinatorConfig, LeaseEvent, LeaseStore},
};
use rkcl_local::Local;
use rkcl_local::testkit::lease_key;
use rkcl_local::testkit::{eventually_every, lease_table};
use tokio::task::JoinHandle;

const LEASE_DURATION: Duration = Duration::from_secs(2);
/// From the run's lease duration to the default 10 s.
const SCALE: f64 = 5.0;
const STEADY_WINDOW: Duration = Duration::from_secs(30);

struct Worker {
    coordinator: LeaseCoordinator<DynamoDbLeaseStore>,
    answering: JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.answering.abort();
    }
}

fn start(store: &DynamoDbLeaseStore, id: &str) -> Worker {
    let config = LeaseCoordinatorConfig::with_lease_duration(id, LEASE_DURATION);
    let (coordinator, mut events) = LeaseCoordinator::start(store.clone(), config).unwrap();
    let handle = coordinator.clone();
    let answering = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let LeaseEvent::HandoffRequested { key, .. } = event {
                let _ = handle.release(&key).await;
            }
        }
    });
    Worker {
        coordinator,
        answering,
    }
}

/// Whether the live workers hold every lease once, in fair shares.
fn balanced(workers: &BTreeMap<String, Worker>, leases: usize) -> bool {
    let counts: Vec<usize> = workers
        .values()
        .map(|w| w.coordinator.held().len())
        .collect();
    let (low, high) = (leases / workers.len(), leases.div_ceil(workers.len()));
    counts.iter().sum::<usize>() == leases && counts.iter().all(|c| (low..=high).contains(c))
}

async fn until_balanced(workers: &BTreeMap<String, Worker>, leases: usize) -> Duration {
    eventually_every(
        "balanced",
        Duration::from_secs(120),
        Duration::from_millis(20),
        || balanced(workers, leases),
    )
    .await
}

fn per_lease_hour(before: LeaseTableRequests, after: LeaseTableRequests, leases: usize) -> f64 {
    let requests = (after.total() - before.total()) as f64;
    requests / leases as f64 * 3600.0 / STEADY_WINDOW.as_secs_f64() / SCALE
}

async fn scenario(local: &Local, workers_count: usize, leases: usize) {
    let table = format!("bench-{workers_count}-{leases}");
    let store = lease_table(local, &table).await;
    for i in 0..leases {
        let lease = Lease::new(
            lease_key(&format!("shardId-{i:012}")),
            ExtendedSequenceNumber::TrimHorizon,
        );
        store.create_if_absent(&lease).await.unwrap();
    }
    let mut workers: BTreeMap<String, Worker> = (0..workers_count)
        .map(|i| {
            let id = format!("worker-{i}");
            (id.clone(), start(&store, &id))
        })
        .collect();
    let initial = until_balanced(&workers, leases).await;
    // Let handoffs and scans settle before measuring the steady state.
    tokio::time::sleep(LEASE_DURATION * 2).await;

    let before = store.requests();
    tokio::time::sleep(STEADY_WINDOW).await;
    let after = store.requests();
    let ours = per_lease_hour(before, after, leases);
    let updates = (after.update_item - before.update_item) as f64 / leases as f64 * 3600.0
        / STEADY_WINDOW.as_secs_f64()
        / SCALE;
    let scans = (after.scan - before.scan) as f64 / workers_count as f64 * 3600.0
        / STEADY_WINDOW.as_secs_f64()
        / SCALE;
    let gets = after.get_item - before.get_item;
    let kcl_renewals = 3600.0 / 3.3;
    let kcl_scans = 3600.0 / 20.0;
    let kcl = kcl_renewals + kcl_scans * workers_count as f64 / leases as f64;

    let joiner = format!("worker-{workers_count}");
    workers.insert(joiner.clone(), start(&store, &joiner));
    let join = until_balanced(&workers, leases).await;

    let victim = workers.keys().next().cloned().unwrap();
    drop(workers.remove(&victim));
    let death = until_balanced(&workers, leases).await;

    let leaving = workers.keys().next().cloned().unwrap();
    let worker = workers.remove(&leaving).unwrap();
    let shutdown_started = Instant::now();
    worker.coordinator.shutdown().await;
    drop(worker);
    until_balanced(&workers, leases).await;
    let graceful = shutdown_started.elapsed();

    let at_default = |d: Duration| Duration::from_secs_f64(d.as_secs_f64() * SCALE);
    println!("{workers_count} workers x {leases} leases");
    println!(
        "  steady state, requests per lease per hour at default settings: rkcl {ours:.0} \
         (UpdateItem {updates:.0}/lease, Scan {scans:.0}/worker, GetItem {gets} in the window) \
         vs Java KCL 2.x {kcl:.0} ({kcl_renewals:.0} renewals/lease + {kcl_scans:.0} scans/worker)"
    );
    println!(
        "  time to balance (run at 2 s leases / scaled to 10 s): start {:.1?}/{:.1?}, \
         join {:.1?}/{:.1?}, dead worker {:.1?}/{:.1?}, graceful shutdown {:.1?}/{:.1?}",
        initial,
        at_default(initial),
        join,
        at_default(join),
        death,
        at_default(death),
        graceful,
        at_default(graceful),
    );
    for worker in workers.values() {
        worker.coordinator.shutdown().await;
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let local = Local::start().await.unwrap();
        for (workers, leases) in [(2, 8), (4, 32), (8, 100)] {
            scenario(&local, workers, leases).await;
        }
        local.shutdown().await;
    });
}
