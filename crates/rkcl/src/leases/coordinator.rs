//! One worker's lease loops: the renewer keeps held leases, the taker takes
//! available ones and steals for balance.
//!
//! All writes to a held lease (renewals, checkpoints, releases) go through
//! the coordinator, one at a time per lease, so they never race each other
//! and every write carries the latest counter.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::taker::{self, Candidate};
use super::{FencingToken, Lease, LeaseStore};
use crate::error::{Error, Result};
use crate::model::ExtendedSequenceNumber;

/// How many renewals (or releases) are in flight at once.
const WRITE_CONCURRENCY: usize = 32;

/// How many calls of shard consumers (checkpoint, release, read) are in
/// flight at once. At a shutdown every shard checkpoints and releases at the
/// same moment; unbounded, a worker of 1,000 shards would open a connection
/// (a socket and its buffers) for each call.
const SHARD_CALL_CONCURRENCY: usize = 64;

/// How a worker's [`LeaseCoordinator`] behaves.
#[derive(Clone, Debug)]
pub struct LeaseCoordinatorConfig {
    /// This worker's id, written as the lease owner.
    pub worker_id: String,
    /// How long a lease lives without renewal before other workers may take
    /// it. Default: [`DEFAULT_LEASE_DURATION`](Self::DEFAULT_LEASE_DURATION).
    pub lease_duration: Duration,
    /// How often held leases are renewed. A lease whose counter a checkpoint
    /// moved within the last half interval is not renewed again. Default: a
    /// third of the lease duration (the Java KCL's rate).
    pub renew_interval: Duration,
    /// A lease not renewed for `lease_duration - safety_margin` is reported
    /// lost, before any other worker can see it expire. Default: a fifth of
    /// the lease duration.
    pub safety_margin: Duration,
    /// The taker's fast cadence, while this worker has something to take,
    /// steal or finish: it then scans every `taker_interval`, and finishes
    /// handoffs to it with single reads. Default: a fifth of the lease
    /// duration.
    pub taker_interval: Duration,
    /// The taker cycle once the fleet is settled: the longest time between
    /// two scans of the whole table. Released leases are found within one
    /// cycle, and a dead worker's leases are taken within
    /// `lease_duration + scan_interval` of their last renewal (the taker also
    /// wakes when a lease it watches could expire, and confirms with a scan).
    /// Default: half the lease duration.
    pub scan_interval: Duration,
    /// The most leases this worker holds. Default: unlimited.
    pub max_leases: usize,
    /// The most leases stolen per taker cycle. Default: 1.
    pub max_steals_per_cycle: usize,
    /// Steal with a graceful handoff: the owner is told
    /// ([`LeaseEvent::HandoffRequested`]), checkpoints and releases, and only
    /// then does this worker start. Default: on. Off, a steal takes the lease
    /// at once and the old owner learns it lost the lease at its next renewal.
    pub graceful_handoff: bool,
    /// How long an owner asked to hand a lease over may take before it lets
    /// go anyway. The next owner takes the lease regardless after this plus
    /// a lease duration. Default: three lease durations (30 s, the Java
    /// KCL 3's figure).
    pub handoff_timeout: Duration,
    /// Seeds the taker's jitter and choices, for reproducible tests and
    /// simulations. Default: `None`, seeded from the operating system.
    pub rng_seed: Option<u64>,
}

impl LeaseCoordinatorConfig {
    /// The default lease duration, 10 s (the Java KCL's failover time).
    pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(10);

    /// The defaults for a worker with this id.
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self::with_lease_duration(worker_id, Self::DEFAULT_LEASE_DURATION)
    }

    /// The defaults derived from `lease_duration`.
    pub fn with_lease_duration(worker_id: impl Into<String>, lease_duration: Duration) -> Self {
        Self {
            worker_id: worker_id.into(),
            lease_duration,
            renew_interval: lease_duration / 3,
            safety_margin: lease_duration / 5,
            taker_interval: lease_duration / 5,
            scan_interval: lease_duration / 2,
            max_leases: usize::MAX,
            max_steals_per_cycle: 1,
            graceful_handoff: true,
            handoff_timeout: lease_duration * 3,
            rng_seed: None,
        }
    }

    /// Checks the timings against each other.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the worker id is empty, the renew interval
    /// leaves no time for two renewals before a lease would be reported
    /// lost, or an interval or limit is zero.
    pub fn validate(&self) -> Result<()> {
        if self.worker_id.is_empty() {
            return Err(Error::Config("the worker id is empty".into()));
        }
        if self.safety_margin >= self.lease_duration {
            return Err(Error::Config(
                "safety_margin must be below lease_duration".into(),
            ));
        }
        if self.renew_interval.is_zero()
            || self.renew_interval * 2 > self.lease_duration - self.safety_margin
        {
            return Err(Error::Config(
                "renew_interval must allow two renewals within lease_duration - safety_margin"
                    .into(),
            ));
        }
        if self.taker_interval.is_zero() || self.max_leases == 0 {
            return Err(Error::Config(
                "taker_interval and max_leases must be positive".into(),
            ));
        }
        if self.scan_interval < self.taker_interval {
            return Err(Error::Config(
                "scan_interval must be at least taker_interval".into(),
            ));
        }
        if self.handoff_timeout.is_zero() {
            return Err(Error::Config("handoff_timeout must be positive".into()));
        }
        Ok(())
    }
}

/// A change in the leases this worker holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The worker now holds the lease; the token fences its writes.
    Acquired {
        /// The lease as taken.
        lease: Box<Lease>,
        /// The counter at acquisition, for downstream fencing.
        token: FencingToken,
    },
    /// Another worker asked for the lease to balance the fleet. The worker
    /// still holds it: finish the work in hand, checkpoint, then call
    /// [`LeaseCoordinator::release`]. Without a release within the handoff
    /// timeout the lease is let go anyway and [`LeaseEvent::Lost`] follows.
    HandoffRequested {
        /// The lease key.
        key: String,
        /// The worker that takes over.
        next_owner: String,
    },
    /// The worker no longer holds the lease (taken by another, or not
    /// renewed in time). Stop its work; do not checkpoint.
    Lost {
        /// The lease key.
        key: String,
    },
}

/// A held lease: the latest copy, when it was last renewed, whether a
/// handoff was asked for, and the lock that keeps its writes one at a time.
#[derive(Clone, Debug)]
struct Held {
    lease: Lease,
    renewed: Instant,
    handoff_since: Option<Instant>,
    write: Arc<tokio::sync::Mutex<()>>,
}

/// The shared state of a worker's loops.
#[derive(Debug)]
struct Shared<S> {
    store: S,
    config: LeaseCoordinatorConfig,
    held: Mutex<BTreeMap<String, Held>>,
    events: mpsc::UnboundedSender<LeaseEvent>,
    /// Permits for the calls of shard consumers ([`LeaseAccess`]).
    shard_calls: tokio::sync::Semaphore,
}

impl<S> Shared<S> {
    fn held_copy(&self, key: &str) -> Option<Held> {
        self.held.lock().ok()?.get(key).cloned()
    }

    fn held_keys(&self) -> HashSet<String> {
        self.held
            .lock()
            .map(|held| held.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Stores a newer copy of a held lease, written at `written`.
    fn refresh(&self, lease: Lease, written: Instant) {
        if let Ok(mut held) = self.held.lock()
            && let Some(entry) = held.get_mut(&lease.key)
            && lease.counter >= entry.lease.counter
        {
            entry.lease = lease;
            entry.renewed = written;
        }
    }

    fn insert(&self, lease: Lease) {
        if let Ok(mut held) = self.held.lock() {
            held.insert(
                lease.key.clone(),
                Held {
                    lease,
                    renewed: Instant::now(),
                    handoff_since: None,
                    write: Arc::default(),
                },
            );
        }
    }

    fn remove(&self, key: &str) -> bool {
        self.held
            .lock()
            .map(|mut held| held.remove(key).is_some())
            .unwrap_or(false)
    }

    /// Drops a lease and tells the caller, once.
    fn lose(&self, key: &str, why: &str) {
        if self.remove(key) {
            tracing::info!(lease_key = %key, why, "lost the lease");
            let _ = self.events.send(LeaseEvent::Lost {
                key: key.to_owned(),
            });
        }
    }
}

/// One worker's lease loops.
///
/// The renewer renews every held lease each `renew_interval` and reports a
/// lease lost when a renewal loses, or when it has not been renewed for
/// `lease_duration - safety_margin` (before any other worker, which waits a
/// full `lease_duration` since it saw the counter change, could take it).
/// The taker judges expiry on the local monotonic clock (no clock sync),
/// and takes and steals as [`taker`](super::taker) decides; it scans the
/// table only when a scan can change something (see
/// [`LeaseCoordinatorConfig::scan_interval`]).
///
/// Shutdown releases every held lease so other workers take them within one
/// scan interval. Clones share the same loops; the loops stop when the last
/// clone is dropped (the leases then expire) or at [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct LeaseCoordinator<S> {
    shared: Arc<Shared<S>>,
    running: Arc<Running>,
}

impl<S> Clone for LeaseCoordinator<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            running: self.running.clone(),
        }
    }
}

/// The loops' tasks; dropping the last handle stops them.
#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl<S: LeaseStore + 'static> LeaseCoordinator<S> {
    /// Starts the loops; lease changes arrive on the returned receiver.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `config` does not validate.
    pub fn start(
        store: S,
        config: LeaseCoordinatorConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<LeaseEvent>)> {
        config.validate()?;
        let (events, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            store,
            config,
            held: Mutex::new(BTreeMap::new()),
            events,
            shard_calls: tokio::sync::Semaphore::new(SHARD_CALL_CONCURRENCY),
        });
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let span = tracing::info_span!("leases", worker_id = %shared.config.worker_id);
        for looped in [Loop::Renewer, Loop::Taker] {
            let (shared, cancel) = (shared.clone(), cancel.clone());
            tasks.spawn(tracing::Instrument::instrument(
                async move { looped.run(&shared, &cancel).await },
                span.clone(),
            ));
        }
        Ok((
            Self {
                shared,
                running: Arc::new(Running {
                    cancel,
                    tasks: Mutex::new(Some(tasks)),
                }),
            },
            receiver,
        ))
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.shared.config.worker_id
    }

    /// The leases held now, as last written.
    pub fn held(&self) -> Vec<Lease> {
        self.shared
            .held
            .lock()
            .map(|held| held.values().map(|h| h.lease.clone()).collect())
            .unwrap_or_default()
    }

    /// The held copy of one lease.
    pub fn lease(&self, key: &str) -> Option<Lease> {
        self.shared.held_copy(key).map(|held| held.lease)
    }

    /// Stores a checkpoint in a held lease, fenced by its counter. Also
    /// counts as a renewal.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when this worker no longer holds the lease (the
    /// lease is then dropped and [`LeaseEvent::Lost`] sent);
    /// [`Error::InvalidCheckpoint`] when the checkpoint would move backwards; the
    /// store's error when the write failed (retry it).
    pub async fn checkpoint(&self, key: &str, position: &ExtendedSequenceNumber) -> Result<Lease> {
        let shared = &self.shared;
        let lost = || Error::LeaseLost {
            lease_key: key.to_owned(),
        };
        let write = shared.held_copy(key).ok_or_else(lost)?.write;
        let _one_at_a_time = write.lock().await;
        let held = shared.held_copy(key).ok_or_else(lost)?;
        if position < &held.lease.checkpoint {
            return Err(Error::InvalidCheckpoint {
                lease_key: key.to_owned(),
                message: format!("{position} is before the stored {}", held.lease.checkpoint),
            });
        }
        let started = Instant::now();
        if let Some(lease) = shared
            .store
            .update_checkpoint(&held.lease, position)
            .await?
        {
            shared.refresh(lease.clone(), started);
            return Ok(lease);
        }
        // The counter moved under us: a handoff began (this worker still
        // holds the lease), or an earlier attempt landed and its answer was
        // lost. Anything else means the lease is gone.
        let me = Some(shared.config.worker_id.as_str());
        match shared.store.get(key).await? {
            Some(stored) if stored.holder() == me && &stored.checkpoint == position => {
                shared.refresh(stored.clone(), started);
                Ok(stored)
            }
            Some(stored) if stored.holder() == me && stored.counter > held.lease.counter => {
                shared.refresh(stored.clone(), started);
                match shared.store.update_checkpoint(&stored, position).await? {
                    Some(lease) => {
                        shared.refresh(lease.clone(), started);
                        Ok(lease)
                    }
                    None => {
                        shared.lose(key, "a checkpoint found the lease taken");
                        Err(lost())
                    }
                }
            }
            _ => {
                shared.lose(key, "a checkpoint found the lease taken");
                Err(lost())
            }
        }
    }

    /// Lets go of a held lease: during a handoff the next owner starts,
    /// otherwise the lease becomes available to every worker. No
    /// [`LeaseEvent`] follows. `false` when it was not held (any more).
    ///
    /// # Errors
    ///
    /// The store's error when the write failed; the lease stays held (and
    /// renewed) so the release can be retried.
    pub async fn release(&self, key: &str) -> Result<bool> {
        release_one(&self.shared, key).await
    }

    /// The lease store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// Stops the loops (of every clone) and releases every held lease for
    /// immediate pick-up. Leases this worker claimed but had not started
    /// (handoffs to it still pending, leases stolen and waiting for the old
    /// owner to notice) are given back too: a pending handoff is withdrawn,
    /// so the old owner keeps the lease. Returns the keys that could not be
    /// let go (they expire instead).
    pub async fn shutdown(&self) -> Vec<String> {
        self.running.cancel.cancel();
        let tasks = self.running.tasks.lock().ok().and_then(|mut t| t.take());
        if let Some(mut tasks) = tasks {
            while tasks.join_next().await.is_some() {}
        }
        let shared = &self.shared;
        let failed = Mutex::new(Vec::new());
        futures_util::stream::iter(shared.held_keys())
            .for_each_concurrent(WRITE_CONCURRENCY, |key| {
                let failed = &failed;
                async move {
                    if let Err(err) = release_one(shared, &key).await {
                        tracing::warn!(lease_key = %key, error = %err, "could not release the lease");
                        shared.remove(&key);
                        if let Ok(mut failed) = failed.lock() {
                            failed.push(key);
                        }
                    }
                }
            })
            .await;
        let mut failed = failed.into_inner().unwrap_or_default();
        if let Err(err) = give_back_claims(shared, &failed).await {
            tracing::warn!(error = %err, "could not give back the leases claimed but not started");
        }
        failed.sort();
        failed
    }
}

/// Lets go of every lease the table names this worker for that it does not
/// hold, except `skip`: withdraws handoffs to it, releases the rest.
async fn give_back_claims<S: LeaseStore>(shared: &Shared<S>, skip: &[String]) -> Result<()> {
    let me = Some(shared.config.worker_id.as_str());
    for lease in shared.store.list().await? {
        if skip.contains(&lease.key) {
            continue;
        }
        let given_back = if lease.is_handing_off() && lease.owner.as_deref() == me {
            shared.store.withdraw_handoff(&lease).await?
        } else if lease.holder() == me {
            shared.store.release(&lease).await?
        } else {
            continue;
        };
        tracing::info!(lease_key = %lease.key, done = given_back.is_some(), "gave back a lease claimed but not started");
    }
    Ok(())
}

async fn release_one<S: LeaseStore>(shared: &Shared<S>, key: &str) -> Result<bool> {
    let Some(held) = shared.held_copy(key) else {
        return Ok(false);
    };
    let _one_at_a_time = held.write.lock().await;
    let Some(held) = shared.held_copy(key) else {
        return Ok(false);
    };
    // Dropped here first, so no moment exists where this worker and the
    // next both believe they hold it; put back if the write fails.
    shared.remove(key);
    let released = match shared.store.release(&held.lease).await {
        Ok(released) => released,
        Err(err) => {
            if let Ok(mut all) = shared.held.lock() {
                all.insert(key.to_owned(), held);
            }
            return Err(err);
        }
    };
    match &released {
        Some(lease) => {
            tracing::info!(lease_key = %key, next_owner = ?lease.owner, "released the lease");
        }
        None => tracing::info!(lease_key = %key, "the lease was already gone"),
    }
    Ok(released.is_some())
}

#[derive(Clone, Copy, Debug)]
enum Loop {
    Renewer,
    Taker,
}

impl Loop {
    /// Runs the loop until `cancel`. Cancellation is seen only between
    /// rounds, never inside a write, so a take or renewal that reached the
    /// store is always known to the coordinator.
    async fn run<S: LeaseStore>(self, shared: &Shared<S>, cancel: &CancellationToken) {
        match self {
            Loop::Renewer => renew_loop(shared, cancel).await,
            Loop::Taker => take_loop(shared, cancel).await,
        }
    }
}

/// Sleeps until `deadline`; `false` when cancelled first.
async fn pause(cancel: &CancellationToken, deadline: Instant) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep_until(deadline) => true,
    }
}

async fn renew_loop<S: LeaseStore>(shared: &Shared<S>, cancel: &CancellationToken) {
    while pause(cancel, Instant::now() + shared.config.renew_interval).await {
        futures_util::stream::iter(shared.held_keys())
            .for_each_concurrent(WRITE_CONCURRENCY, |key| renew_one(shared, key))
            .await;
    }
}

async fn renew_one<S: LeaseStore>(shared: &Shared<S>, key: String) {
    let config = &shared.config;
    let Some(held) = shared.held_copy(&key) else {
        return;
    };
    let _one_at_a_time = held.write.lock().await;
    let Some(held) = shared.held_copy(&key) else {
        return;
    };
    let now = Instant::now();
    if now.duration_since(held.renewed) < config.renew_interval / 2 {
        // A checkpoint just moved the counter: that was a renewal.
        return;
    }
    if let Some(since) = held.handoff_since
        && now.duration_since(since) >= config.handoff_timeout
    {
        shared.lose(&key, "the handoff was not finished in time");
        if let Err(err) = shared.store.release(&held.lease).await {
            tracing::warn!(lease_key = %key, error = %err, "could not release the lease");
        }
        return;
    }
    match shared.store.renew(&held.lease).await {
        Ok(Some(renewed)) => {
            let handing_off = renewed.is_handing_off();
            let handoff = held.handoff_since.is_none() && handing_off;
            let next_owner = renewed.owner.clone().unwrap_or_default();
            shared.refresh(renewed, now);
            if let Ok(mut all) = shared.held.lock()
                && let Some(entry) = all.get_mut(&key)
            {
                // A handoff the next owner withdrew no longer runs out.
                entry.handoff_since = handing_off.then(|| entry.handoff_since.unwrap_or(now));
            }
            if handoff {
                tracing::info!(lease_key = %key, next_owner = %next_owner, "asked to hand the lease over");
                let _ = shared
                    .events
                    .send(LeaseEvent::HandoffRequested { key, next_owner });
            }
        }
        Ok(None) => shared.lose(&key, "another worker has the lease"),
        Err(err) => {
            if now.duration_since(held.renewed) >= config.lease_duration - config.safety_margin {
                shared.lose(
                    &key,
                    "not renewed within the lease duration less the safety margin",
                );
            } else {
                tracing::warn!(lease_key = %key, error = %err, "could not renew the lease; will retry");
            }
        }
    }
}

/// What the taker knows of a lease between cycles: the counter it saw, when
/// it last saw it change (on this worker's monotonic clock), and whether it
/// is another worker's unfinished lease, whose expiry the taker watches.
#[derive(Clone, Copy, Debug)]
struct Seen {
    counter: u64,
    changed: Instant,
    watched: bool,
}

/// The taker's memory between cycles.
#[derive(Debug, Default)]
struct TakerState {
    seen: HashMap<String, Seen>,
    last_scan: Option<Instant>,
    /// Nothing to take, steal or finish at the last scan.
    settled: bool,
    /// Handoffs to this worker not finished yet, with when they were seen
    /// first.
    pending: HashMap<String, Instant>,
    /// Leases stolen without a handoff, started only once the old owner has
    /// had a renewal to notice (so the two never both believe they hold it).
    starting: HashMap<String, (Lease, Instant)>,
}

impl TakerState {
    fn observe(&mut self, lease: &Lease, worker_id: &str, now: Instant) {
        let watched = lease.holder().is_some_and(|holder| holder != worker_id)
            && lease.checkpoint != ExtendedSequenceNumber::ShardEnd;
        let entry = self.seen.entry(lease.key.clone()).or_insert(Seen {
            counter: lease.counter,
            changed: now,
            watched,
        });
        if entry.counter != lease.counter {
            entry.counter = lease.counter;
            entry.changed = now;
        }
        entry.watched = watched;
    }

    fn expired(&self, key: &str, now: Instant, lease_duration: Duration) -> bool {
        self.seen
            .get(key)
            .is_some_and(|seen| now.duration_since(seen.changed) > lease_duration)
    }

    /// Whether this cycle must read the whole table.
    fn scan_due(&self, now: Instant, config: &LeaseCoordinatorConfig) -> bool {
        !self.settled
            || self
                .last_scan
                .is_none_or(|scan| now.duration_since(scan) >= config.scan_interval)
            || self.seen.values().any(|seen| {
                seen.watched && now.duration_since(seen.changed) > config.lease_duration
            })
    }

    /// When the taker must run next: at the next due scan, when a watched
    /// lease could expire, or after `taker_interval` while the fleet is not
    /// settled or a handoff is pending.
    fn next_cycle(&self, now: Instant, config: &LeaseCoordinatorConfig, jitter: f64) -> Instant {
        let scan = self.last_scan.unwrap_or(now) + config.scan_interval.mul_f64(1.0 + jitter);
        let expiry = self
            .seen
            .values()
            .filter(|seen| seen.watched)
            .map(|seen| seen.changed + config.lease_duration + EXPIRY_SLACK)
            .min();
        let mut next = expiry.map_or(scan, |expiry| expiry.min(scan));
        if !self.settled || !self.pending.is_empty() {
            next = next.min(now + config.taker_interval.mul_f64(1.0 + jitter));
        }
        if let Some(start) = self.starting.values().map(|(_, start)| *start).min() {
            next = next.min(start);
        }
        next.max(now + EXPIRY_SLACK)
    }
}

/// How long after a watched lease could expire the taker looks at it, so
/// the check lands after the expiry, not on it.
const EXPIRY_SLACK: Duration = Duration::from_millis(10);

async fn take_loop<S: LeaseStore>(shared: &Shared<S>, cancel: &CancellationToken) {
    let config = &shared.config;
    let mut rng = config
        .rng_seed
        .map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64);
    let mut state = TakerState::default();
    loop {
        let now = Instant::now();
        let cycle = if state.scan_due(now, config) {
            scan_and_take(shared, &mut state, &mut rng).await
        } else {
            finish_handoffs(shared, &mut state).await
        };
        let cycle = match cycle {
            Ok(()) => start_stolen(shared, &mut state).await,
            failed => failed,
        };
        if let Err(err) = cycle {
            state.settled = false;
            tracing::warn!(error = %err, "the taker cycle failed; trying again next cycle");
        }
        // Up to a tenth of jitter so workers do not stampede.
        let jitter = rng.random_range(0.0..0.1);
        if !pause(cancel, state.next_cycle(Instant::now(), config, jitter)).await {
            return;
        }
    }
}

/// Takes `lease` for this worker; `true` if taken.
async fn acquire<S: LeaseStore>(shared: &Shared<S>, lease: &Lease, how: &str) -> Result<bool> {
    let Some(taken) = shared.store.take(lease, &shared.config.worker_id).await? else {
        return Ok(false);
    };
    tracing::info!(lease_key = %taken.key, counter = taken.counter, how, "took the lease");
    let token = taken.fencing_token();
    shared.insert(taken.clone());
    let _ = shared.events.send(LeaseEvent::Acquired {
        lease: Box::new(taken),
        token,
    });
    Ok(true)
}

/// Whether a handoff to this worker may finish: the old owner let go, or it
/// had its time and more.
fn handoff_done(
    lease: &Lease,
    since: Instant,
    now: Instant,
    config: &LeaseCoordinatorConfig,
) -> bool {
    !lease.is_handing_off()
        || now.duration_since(since) > config.handoff_timeout + config.lease_duration
}

/// Between scans: one read per pending handoff, no scan.
async fn finish_handoffs<S: LeaseStore>(shared: &Shared<S>, state: &mut TakerState) -> Result<()> {
    let config = &shared.config;
    let pending: Vec<(String, Instant)> =
        state.pending.iter().map(|(k, t)| (k.clone(), *t)).collect();
    for (key, since) in pending {
        let now = Instant::now();
        match shared.store.get(&key).await? {
            Some(lease) if lease.owner.as_deref() == Some(config.worker_id.as_str()) => {
                state.observe(&lease, &config.worker_id, now);
                if handoff_done(&lease, since, now, config) {
                    state.pending.remove(&key);
                    acquire(shared, &lease, "handed over").await?;
                }
            }
            _ => {
                state.pending.remove(&key);
            }
        }
    }
    Ok(())
}

/// Starts the leases stolen without a handoff whose wait is over, if
/// nobody changed them meanwhile.
async fn start_stolen<S: LeaseStore>(shared: &Shared<S>, state: &mut TakerState) -> Result<()> {
    let now = Instant::now();
    let due: Vec<String> = state
        .starting
        .iter()
        .filter(|(_, (_, start))| *start <= now)
        .map(|(key, _)| key.clone())
        .collect();
    for key in due {
        let Some((taken, _)) = state.starting.remove(&key) else {
            continue;
        };
        match shared.store.get(&key).await? {
            Some(stored) if stored.counter == taken.counter && stored.owner == taken.owner => {
                let token = stored.fencing_token();
                shared.insert(stored.clone());
                tracing::info!(lease_key = %key, counter = stored.counter, "started the stolen lease");
                let _ = shared.events.send(LeaseEvent::Acquired {
                    lease: Box::new(stored),
                    token,
                });
            }
            _ => {
                tracing::info!(lease_key = %key, "the stolen lease changed hands before it started")
            }
        }
    }
    Ok(())
}

/// One full cycle: scan, finish handoffs, take and steal as planned.
async fn scan_and_take<S: LeaseStore>(
    shared: &Shared<S>,
    state: &mut TakerState,
    rng: &mut StdRng,
) -> Result<()> {
    let config = &shared.config;
    let me = config.worker_id.as_str();
    let leases = shared.store.list().await?;
    let now = Instant::now();
    state.last_scan = Some(now);
    state
        .seen
        .retain(|key, _| leases.iter().any(|l| &l.key == key));
    for lease in &leases {
        state.observe(lease, me, now);
    }

    // Handoffs to this worker: the ones it started and any it finds.
    let held = shared.held_keys();
    state.pending.retain(|key, _| {
        leases
            .iter()
            .any(|l| &l.key == key && l.owner.as_deref() == Some(me))
    });
    for lease in &leases {
        if lease.owner.as_deref() == Some(me)
            && lease.is_handing_off()
            && !held.contains(&lease.key)
        {
            state.pending.entry(lease.key.clone()).or_insert(now);
        }
    }
    for lease in &leases {
        if let Some(since) = state.pending.get(&lease.key).copied()
            && (handoff_done(lease, since, now, config)
                || state.expired(&lease.key, now, config.lease_duration))
        {
            state.pending.remove(&lease.key);
            acquire(shared, lease, "handed over").await?;
        }
    }

    let held = shared.held_keys();
    let candidates: Vec<Candidate<'_>> = leases
        .iter()
        .map(|lease| {
            let mine = held.contains(&lease.key);
            let pending =
                state.pending.contains_key(&lease.key) || state.starting.contains_key(&lease.key);
            let expired = !mine
                && lease.holder().is_some()
                && state.expired(&lease.key, now, config.lease_duration);
            // A lease the table says is ours but we do not hold (a restart
            // with the same id) is taken back like an available one.
            let orphaned = !mine && !pending && lease.holder() == Some(me);
            Candidate {
                lease,
                expired: expired || orphaned,
            }
        })
        .collect();
    let plan = taker::plan(
        me,
        &candidates,
        config.max_leases,
        config.max_steals_per_cycle,
        rng,
    );
    for key in &plan.take {
        if let Some(lease) = leases.iter().find(|l| &l.key == key) {
            acquire(shared, lease, "available").await?;
        }
    }
    for key in &plan.steal {
        let Some(lease) = leases.iter().find(|l| &l.key == key) else {
            continue;
        };
        if !config.graceful_handoff {
            // The old owner learns at its next renewal attempt, at most one
            // and a half renew intervals away (a lease a checkpoint just
            // wrote skips one tick); start after that.
            if let Some(taken) = shared.store.take(lease, me).await? {
                tracing::info!(lease_key = %key, counter = taken.counter, "stole the lease");
                state.observe(&taken, me, now);
                let start = now + config.renew_interval.mul_f64(1.5) + EXPIRY_SLACK;
                state.starting.insert(key.clone(), (taken, start));
            }
        } else if let Some(handed) = shared.store.hand_off(lease, me).await? {
            tracing::info!(lease_key = %key, from = ?handed.checkpoint_owner, "asked for the lease");
            state.observe(&handed, me, now);
            state.pending.insert(key.clone(), now);
        }
    }
    state.settled = plan.take.is_empty()
        && plan.steal.is_empty()
        && state.pending.is_empty()
        && state.starting.is_empty();
    Ok(())
}

/// What a shard's consumer needs of the lease layer, without naming the
/// store type: checkpoint and release a held lease, read any lease.
pub(crate) trait LeaseAccess: Send + Sync + std::fmt::Debug {
    fn checkpoint<'a>(
        &'a self,
        key: &'a str,
        position: &'a ExtendedSequenceNumber,
    ) -> futures_util::future::BoxFuture<'a, Result<Lease>>;

    fn release<'a>(&'a self, key: &'a str) -> futures_util::future::BoxFuture<'a, Result<bool>>;

    fn read<'a>(
        &'a self,
        key: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<Lease>>>;

    fn held(&self) -> Vec<Lease>;
}

impl<S: LeaseStore + std::fmt::Debug + 'static> LeaseAccess for LeaseCoordinator<S> {
    fn checkpoint<'a>(
        &'a self,
        key: &'a str,
        position: &'a ExtendedSequenceNumber,
    ) -> futures_util::future::BoxFuture<'a, Result<Lease>> {
        Box::pin(async move {
            let _permit = self.shared.shard_calls.acquire().await;
            LeaseCoordinator::checkpoint(self, key, position).await
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> futures_util::future::BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let _permit = self.shared.shard_calls.acquire().await;
            LeaseCoordinator::release(self, key).await
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<Lease>>> {
        Box::pin(async move {
            let _permit = self.shared.shard_calls.acquire().await;
            self.shared.store.get(key).await
        })
    }

    fn held(&self) -> Vec<Lease> {
        LeaseCoordinator::held(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::InMemoryLeaseStore;

    #[tokio::test(start_paused = true)]
    async fn shard_consumer_calls_wait_for_a_permit() {
        let (coordinator, _events) = LeaseCoordinator::start(
            InMemoryLeaseStore::new(),
            LeaseCoordinatorConfig::new("worker"),
        )
        .unwrap();
        let access: &dyn LeaseAccess = &coordinator;
        let all = coordinator
            .shared
            .shard_calls
            .acquire_many(SHARD_CALL_CONCURRENCY as u32)
            .await
            .unwrap();
        let mut read = access.read("shardId-0");
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut read)
                .await
                .is_err(),
            "a read ran without a permit"
        );
        drop(all);
        assert!(read.await.unwrap().is_none());
        coordinator.shutdown().await;
    }
}
