//! How a worker's lease loops behave: [`LeaseCoordinatorConfig`], its
//! defaults derived from the lease duration, and the checks of its timings
//! against each other.

use std::time::Duration;

use crate::error::{Error, Result};

/// How a worker's [`LeaseCoordinator`](super::LeaseCoordinator) behaves.
/// Made with [`LeaseCoordinatorConfig::builder`] (or
/// [`new`](LeaseCoordinatorConfig::new) for the defaults).
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// ([`LeaseEvent::HandoffRequested`](super::LeaseEvent::HandoffRequested)),
    /// checkpoints and releases, and only then does this worker start.
    /// Default: on. Off, a steal takes the lease at once and the old owner
    /// learns it lost the lease at its next renewal.
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
    /// A builder with the defaults for a worker with this id.
    pub fn builder(worker_id: impl Into<String>) -> LeaseCoordinatorConfigBuilder {
        LeaseCoordinatorConfigBuilder {
            config: Self::new(worker_id),
        }
    }

    /// Sets the lease duration and the intervals derived from it (renew
    /// interval, safety margin, taker and scan intervals, handoff timeout);
    /// every other setting stays.
    pub(crate) fn derive_from_lease_duration(&mut self, lease_duration: Duration) {
        let derived = Self::with_lease_duration(String::new(), lease_duration);
        self.lease_duration = derived.lease_duration;
        self.renew_interval = derived.renew_interval;
        self.safety_margin = derived.safety_margin;
        self.taker_interval = derived.taker_interval;
        self.scan_interval = derived.scan_interval;
        self.handoff_timeout = derived.handoff_timeout;
    }

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

crate::config::config_builder! {
    /// Builds a [`LeaseCoordinatorConfig`]; [`build`](Self::build) validates
    /// it. Set [`lease_duration`](Self::lease_duration) first: it derives the
    /// intervals, which later setters may then change one by one.
    LeaseCoordinatorConfigBuilder => LeaseCoordinatorConfig {
        worker_id: String,
        renew_interval: Duration,
        safety_margin: Duration,
        taker_interval: Duration,
        scan_interval: Duration,
        max_leases: usize,
        max_steals_per_cycle: usize,
        graceful_handoff: bool,
        handoff_timeout: Duration,
        rng_seed: Option<u64>,
    }
}

impl LeaseCoordinatorConfigBuilder {
    /// The lease duration, and the intervals derived from it (a third, a
    /// fifth, a half, three times; see the fields). Default:
    /// [`DEFAULT_LEASE_DURATION`](LeaseCoordinatorConfig::DEFAULT_LEASE_DURATION).
    pub fn lease_duration(mut self, lease_duration: Duration) -> Self {
        self.config.derive_from_lease_duration(lease_duration);
        self
    }
}
