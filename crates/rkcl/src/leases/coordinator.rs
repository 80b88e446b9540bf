//! One worker's lease loops: the renewer keeps held leases, the taker takes
//! available ones and steals for balance.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// How a worker's [`LeaseCoordinator`] behaves.
#[derive(Clone, Debug)]
pub struct LeaseCoordinatorConfig {
    /// This worker's id, written as the lease owner.
    pub worker_id: String,
    /// How long a lease lives without renewal before other workers may take
    /// it. Default: [`DEFAULT_LEASE_DURATION`](Self::DEFAULT_LEASE_DURATION).
    pub lease_duration: Duration,
    /// How often held leases are renewed. Default: a quarter of the lease
    /// duration.
    pub renew_interval: Duration,
    /// A lease not renewed for `lease_duration - safety_margin` is reported
    /// lost, before any other worker can see it expire. Default: a fifth of
    /// the lease duration.
    pub safety_margin: Duration,
    /// How often the taker looks for leases to take. Default: a fifth of the
    /// lease duration, so a dead worker's leases move within
    /// `lease_duration + taker_interval` and released ones within one cycle.
    pub taker_interval: Duration,
    /// The most leases this worker holds. Default: unlimited.
    pub max_leases: usize,
    /// The most leases stolen per taker cycle. Default: 1.
    pub max_steals_per_cycle: usize,
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
            renew_interval: lease_duration / 4,
            safety_margin: lease_duration / 5,
            taker_interval: lease_duration / 5,
            max_leases: usize::MAX,
            max_steals_per_cycle: 1,
        }
    }

    /// Checks the timings against each other.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the worker id is empty, or the renew interval
    /// leaves no time for two renewals before a lease would be reported lost.
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
    /// The worker no longer holds the lease (taken by another, or not
    /// renewed in time). Stop its work; do not checkpoint.
    Lost {
        /// The lease key.
        key: String,
    },
}

/// A held lease: the latest copy and when it was last renewed.
#[derive(Clone, Debug)]
struct Held {
    lease: Lease,
    renewed: Instant,
}

/// What the taker knows of a lease between cycles: the counter it saw and
/// when it last saw it change, on this worker's monotonic clock.
#[derive(Clone, Copy, Debug)]
struct Seen {
    counter: u64,
    changed: Instant,
}

/// The shared state of a worker's loops.
#[derive(Debug)]
struct Shared<S> {
    store: S,
    config: LeaseCoordinatorConfig,
    held: Mutex<BTreeMap<String, Held>>,
    events: mpsc::UnboundedSender<LeaseEvent>,
}

/// One worker's lease loops.
///
/// The renewer renews every held lease each `renew_interval` and reports a
/// lease lost when a renewal loses, or when it has not been renewed for
/// `lease_duration - safety_margin` (before any other worker, which waits a
/// full `lease_duration` since it saw the counter change, could take it).
/// The taker lists the table each `taker_interval` (with jitter), judges
/// expiry on the local monotonic clock (no clock sync), and takes and
/// steals as [`taker`](super::taker) decides.
///
/// Shutdown releases every held lease so other workers take them within one
/// taker cycle.
#[derive(Debug)]
pub struct LeaseCoordinator<S> {
    shared: Arc<Shared<S>>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
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
        });
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let span = tracing::info_span!("leases", worker_id = %shared.config.worker_id);
        for looped in [Loop::Renewer, Loop::Taker] {
            let (shared, cancel) = (shared.clone(), cancel.clone());
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = looped.run(&shared) => {}
                    }
                },
                span.clone(),
            ));
        }
        Ok((
            Self {
                shared,
                cancel,
                tasks,
            },
            receiver,
        ))
    }

    /// The leases held now, as last renewed.
    pub fn held(&self) -> Vec<Lease> {
        self.shared
            .held
            .lock()
            .map(|held| held.values().map(|h| h.lease.clone()).collect())
            .unwrap_or_default()
    }

    /// Replaces the held copy of a lease after a write elsewhere (such as a
    /// checkpoint) bumped its counter.
    pub fn update_held(&self, lease: Lease) {
        if let Ok(mut held) = self.shared.held.lock()
            && let Some(entry) = held.get_mut(&lease.key)
            && lease.counter >= entry.lease.counter
        {
            entry.lease = lease;
            entry.renewed = Instant::now();
        }
    }

    /// Stops the loops and releases every held lease for immediate pick-up.
    /// Returns the keys that could not be released (they expire instead).
    pub async fn shutdown(mut self) -> Vec<String> {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        let held: Vec<Lease> = self.held();
        let mut failed = Vec::new();
        for lease in held {
            match self.shared.store.release(&lease).await {
                Ok(Some(_)) => tracing::info!(lease_key = %lease.key, "released the lease"),
                Ok(None) => tracing::info!(lease_key = %lease.key, "the lease was already gone"),
                Err(err) => {
                    tracing::warn!(lease_key = %lease.key, error = %err, "could not release the lease");
                    failed.push(lease.key.clone());
                }
            }
        }
        if let Ok(mut held) = self.shared.held.lock() {
            held.clear();
        }
        failed
    }
}

impl<S> Drop for LeaseCoordinator<S> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Clone, Copy, Debug)]
enum Loop {
    Renewer,
    Taker,
}

impl Loop {
    async fn run<S: LeaseStore>(self, shared: &Shared<S>) {
        match self {
            Loop::Renewer => renew_loop(shared).await,
            Loop::Taker => take_loop(shared).await,
        }
    }
}

async fn renew_loop<S: LeaseStore>(shared: &Shared<S>) {
    let config = &shared.config;
    loop {
        tokio::time::sleep(config.renew_interval).await;
        let held: Vec<Held> = match shared.held.lock() {
            Ok(held) => held.values().cloned().collect(),
            Err(_) => return,
        };
        for entry in held {
            let key = entry.lease.key.clone();
            match shared.store.renew(&entry.lease).await {
                Ok(Some(renewed)) => {
                    if let Ok(mut held) = shared.held.lock()
                        && let Some(current) = held.get_mut(&key)
                    {
                        current.lease = renewed;
                        current.renewed = Instant::now();
                    }
                }
                Ok(None) => lose(shared, &key, "another worker has the lease"),
                Err(err) => {
                    let deadline = entry.renewed + (config.lease_duration - config.safety_margin);
                    if Instant::now() >= deadline {
                        lose(
                            shared,
                            &key,
                            "not renewed within the lease duration less the safety margin",
                        );
                    } else {
                        tracing::warn!(lease_key = %key, error = %err, "could not renew the lease; will retry");
                    }
                }
            }
        }
    }
}

fn lose<S>(shared: &Shared<S>, key: &str, why: &str) {
    let removed = shared
        .held
        .lock()
        .map(|mut held| held.remove(key).is_some())
        .unwrap_or(false);
    if removed {
        tracing::info!(lease_key = %key, why, "lost the lease");
        let _ = shared.events.send(LeaseEvent::Lost {
            key: key.to_owned(),
        });
    }
}

async fn take_loop<S: LeaseStore>(shared: &Shared<S>) {
    let config = &shared.config;
    let mut rng = StdRng::from_os_rng();
    let mut seen: HashMap<String, Seen> = HashMap::new();
    loop {
        if let Err(err) = take_once(shared, &mut seen, &mut rng).await {
            tracing::warn!(error = %err, "the taker cycle failed; trying again next cycle");
        }
        // Up to a tenth of jitter so workers do not stampede.
        let jitter = config.taker_interval.mul_f64(rng.random_range(0.0..0.1));
        tokio::time::sleep(config.taker_interval + jitter).await;
    }
}

async fn take_once<S: LeaseStore>(
    shared: &Shared<S>,
    seen: &mut HashMap<String, Seen>,
    rng: &mut StdRng,
) -> Result<()> {
    let config = &shared.config;
    let leases = shared.store.list().await?;
    let now = Instant::now();
    seen.retain(|key, _| leases.iter().any(|l| &l.key == key));
    for lease in &leases {
        let entry = seen.entry(lease.key.clone()).or_insert(Seen {
            counter: lease.counter,
            changed: now,
        });
        if entry.counter != lease.counter {
            *entry = Seen {
                counter: lease.counter,
                changed: now,
            };
        }
    }
    let held_keys: Vec<String> = shared
        .held
        .lock()
        .map(|held| held.keys().cloned().collect())
        .unwrap_or_default();
    let candidates: Vec<Candidate<'_>> = leases
        .iter()
        .map(|lease| {
            let mine = held_keys.contains(&lease.key);
            let expired = !mine
                && lease.owner.is_some()
                && seen
                    .get(&lease.key)
                    .is_some_and(|s| now.duration_since(s.changed) > config.lease_duration);
            // A lease the table says is ours but we do not hold (a restart
            // with the same id) is taken back like an available one.
            let orphaned = !mine && lease.owner.as_deref() == Some(&config.worker_id);
            Candidate {
                lease,
                expired: expired || orphaned,
            }
        })
        .collect();
    let plan = taker::plan(
        &config.worker_id,
        &candidates,
        config.max_leases,
        config.max_steals_per_cycle,
        rng,
    );
    for key in plan.take.iter().chain(&plan.steal) {
        let Some(lease) = leases.iter().find(|l| &l.key == key) else {
            continue;
        };
        if let Some(taken) = shared.store.take(lease, &config.worker_id).await? {
            tracing::info!(lease_key = %key, counter = taken.counter, stolen = plan.steal.contains(key), "took the lease");
            let token = taken.fencing_token();
            if let Ok(mut held) = shared.held.lock() {
                held.insert(
                    key.clone(),
                    Held {
                        lease: taken.clone(),
                        renewed: Instant::now(),
                    },
                );
            }
            let _ = shared.events.send(LeaseEvent::Acquired {
                lease: Box::new(taken),
                token,
            });
        }
    }
    Ok(())
}
