//! The scheduler's config and its builder.

use std::time::{Duration, SystemTime};

use crate::aws::StreamRef;
use crate::error::{Error, Result};
use crate::leases::LeaseCoordinatorConfig;
use crate::model::InitialPosition;
use crate::processor::FailurePolicy;
use crate::retrieval::{FanOutConfig, PollingConfig, Retrieval};
use crate::tracker::MultiStreamConfig;
use crate::watchdog::WatchdogConfig;

/// How a [`Scheduler`](super::Scheduler) runs. Made with [`SchedulerConfig::builder`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// The application name: the lease table's name, shared by every worker
    /// of the group.
    pub application_name: String,
    /// The stream, by name or ARN.
    pub stream: StreamRef,
    /// Where shards without a checkpoint start.
    pub initial_position: InitialPosition,
    /// The lease loops' settings (its `worker_id` is this worker's id).
    pub leases: LeaseCoordinatorConfig,
    /// How shards are read. Default: polling with GetRecords. With
    /// enhanced fan-out, the stream consumer is named after the
    /// application unless the [`FanOutConfig`] names one.
    pub retrieval: Retrieval,
    /// How often the shard list is compared with the lease table (also
    /// done at once when a shard ends). Default: 60 s.
    pub shard_sync_interval: Duration,
    /// What happens when a batch fails. Default: retry, never skip.
    pub failure_policy: FailurePolicy,
    /// How often a child shard's consumer checks whether its parents are
    /// finished. Default: 1 s.
    pub parent_poll_interval: Duration,
    /// When a shard counts as stalled and what is done about it. Default:
    /// [`WatchdogConfig::default`].
    pub watchdog: WatchdogConfig,
    /// Multi-stream mode: the streams come from a tracker and `stream` is
    /// not used. `None` (the default): the one stream `stream` names.
    pub multi_stream: Option<MultiStreamConfig>,
}

impl SchedulerConfig {
    /// A builder with the defaults for `application_name` and `stream`.
    pub fn builder(
        application_name: impl Into<String>,
        stream: impl Into<String>,
    ) -> SchedulerConfigBuilder {
        let stream: String = stream.into();
        SchedulerConfigBuilder {
            config: SchedulerConfig {
                application_name: application_name.into(),
                stream: StreamRef::parse(&stream),
                initial_position: InitialPosition::TrimHorizon,
                leases: LeaseCoordinatorConfig::new(default_worker_id()),
                retrieval: Retrieval::default(),
                shard_sync_interval: Duration::from_secs(60),
                failure_policy: FailurePolicy::default(),
                parent_poll_interval: Duration::from_secs(1),
                watchdog: WatchdogConfig::default(),
                multi_stream: None,
            },
        }
    }

    /// A builder with the defaults for an application reading every stream
    /// `streams` lists, in one lease table (the Java KCL's multi-stream
    /// format). The initial position set on the builder applies to streams
    /// read from start-up that do not set their own; see
    /// [`crate::tracker`].
    pub fn builder_for_streams(
        application_name: impl Into<String>,
        streams: MultiStreamConfig,
    ) -> SchedulerConfigBuilder {
        let mut builder = Self::builder(application_name, "");
        builder.config.multi_stream = Some(streams);
        builder
    }

    /// Checks every value.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first value out of range.
    pub fn validate(&self) -> Result<()> {
        let name = &self.application_name;
        if !(3..=255).contains(&name.len())
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(Error::Config(format!(
                "the application name {name:?} is not a valid DynamoDB table name \
                 (3 to 255 of a-z, A-Z, 0-9, '_', '-', '.')"
            )));
        }
        match &self.multi_stream {
            Some(streams) => streams.validate()?,
            None if self.stream.name().is_empty() => {
                return Err(Error::Config("the stream name is empty".into()));
            }
            None => {}
        }
        if let InitialPosition::AtTimestamp(at) = self.initial_position {
            validate_start_time(at, SystemTime::now())?;
        }
        self.leases.validate()?;
        self.retrieval.validate()?;
        if let Retrieval::FanOut(fanout) = &self.retrieval
            && let Some(consumer) = fanout.consumer_name_or(name)
            && consumer.len() > 128
        {
            return Err(Error::Config(format!(
                "retrieval: the application name {name:?} is too long for a stream consumer's \
                 name (at most 128 characters); set the FanOutConfig's consumer_name"
            )));
        }
        self.failure_policy.validate()?;
        self.watchdog.validate()?;
        if self.shard_sync_interval < Duration::from_secs(1) {
            return Err(Error::Config(
                "shard_sync_interval must be at least 1 s".into(),
            ));
        }
        if self.parent_poll_interval.is_zero() {
            return Err(Error::Config(
                "parent_poll_interval must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// How far in the future an `AT_TIMESTAMP` start may be: clocks differ a
/// little; more is a mistake (seconds taken for milliseconds, say).
const MAX_START_TIME_AHEAD: Duration = Duration::from_secs(300);

/// Checks an `AT_TIMESTAMP` start against the clock `now`.
fn validate_start_time(at: SystemTime, now: SystemTime) -> Result<()> {
    if at < SystemTime::UNIX_EPOCH {
        return Err(Error::Config(
            "initial_position: the AT_TIMESTAMP time is before 1970".into(),
        ));
    }
    if at
        .duration_since(now)
        .is_ok_and(|ahead| ahead > MAX_START_TIME_AHEAD)
    {
        let ahead = at.duration_since(now).unwrap_or_default().as_secs();
        return Err(Error::Config(format!(
            "initial_position: the AT_TIMESTAMP time is {ahead} s in the future"
        )));
    }
    Ok(())
}

/// A host name and a random suffix, so two workers on one host differ.
fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{:016x}", rand::random::<u64>())
}

/// Builds a [`SchedulerConfig`]; [`build`](Self::build) validates it.
#[derive(Clone, Debug)]
pub struct SchedulerConfigBuilder {
    config: SchedulerConfig,
}

impl SchedulerConfigBuilder {
    /// This worker's id. Default: the host name and a random suffix.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.config.leases.worker_id = id.into();
        self
    }

    /// Where shards without a checkpoint start. Default: `TRIM_HORIZON`.
    pub fn initial_position(mut self, position: InitialPosition) -> Self {
        self.config.initial_position = position;
        self
    }

    /// The lease duration; the lease loops' intervals follow from it.
    /// Default: 10 s.
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        // Only the intervals derived from the lease duration change; every
        // other lease setting (worker id, limits, seed) is kept.
        self.config.leases.derive_from_lease_duration(duration);
        self
    }

    /// Every lease setting at once.
    pub fn leases(mut self, leases: LeaseCoordinatorConfig) -> Self {
        self.config.leases = leases;
        self
    }

    /// The most leases this worker holds. Default: unlimited.
    pub fn max_leases_per_worker(mut self, max: usize) -> Self {
        self.config.leases.max_leases = max;
        self
    }

    /// How shards are read. Default: polling with the default
    /// [`PollingConfig`].
    pub fn retrieval(mut self, retrieval: Retrieval) -> Self {
        self.config.retrieval = retrieval;
        self
    }

    /// Reads shards by polling with these settings (shorthand for
    /// [`retrieval`](Self::retrieval)).
    pub fn polling(self, polling: PollingConfig) -> Self {
        self.retrieval(Retrieval::Polling(polling))
    }

    /// Reads shards with enhanced fan-out with these settings (shorthand
    /// for [`retrieval`](Self::retrieval)).
    pub fn fan_out(self, fan_out: FanOutConfig) -> Self {
        self.retrieval(Retrieval::FanOut(fan_out))
    }

    /// When a shard counts as stalled and what is done about it. Default:
    /// [`WatchdogConfig::default`].
    pub fn watchdog(mut self, watchdog: WatchdogConfig) -> Self {
        self.config.watchdog = watchdog;
        self
    }

    /// How often shards and leases are compared. Default: 60 s.
    pub fn shard_sync_interval(mut self, interval: Duration) -> Self {
        self.config.shard_sync_interval = interval;
        self
    }

    /// What happens when a batch fails. Default: retry, never skip.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.config.failure_policy = policy;
        self
    }

    /// How often a child checks its parents. Default: 1 s.
    pub fn parent_poll_interval(mut self, interval: Duration) -> Self {
        self.config.parent_poll_interval = interval;
        self
    }

    /// The validated config.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first value out of range.
    pub fn build(self) -> Result<SchedulerConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(result: Result<SchedulerConfig>) -> String {
        match result {
            Err(Error::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn build_refuses_a_start_time_in_the_future_or_before_1970() {
        let ahead = SystemTime::now() + Duration::from_secs(3_600);
        let message = config_error(
            SchedulerConfig::builder("app", "orders")
                .initial_position(InitialPosition::AtTimestamp(ahead))
                .build(),
        );
        assert!(message.starts_with("initial_position"), "{message}");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        let message = config_error(
            SchedulerConfig::builder("app", "orders")
                .initial_position(InitialPosition::AtTimestamp(before))
                .build(),
        );
        assert!(message.starts_with("initial_position"), "{message}");
        let past = SystemTime::now() - Duration::from_secs(3_600);
        assert!(
            SchedulerConfig::builder("app", "orders")
                .initial_position(InitialPosition::AtTimestamp(past))
                .build()
                .is_ok()
        );
    }

    #[test]
    fn build_refuses_zero_intervals_naming_the_field() {
        let message = config_error(
            SchedulerConfig::builder("app", "orders")
                .parent_poll_interval(Duration::ZERO)
                .build(),
        );
        assert!(message.contains("parent_poll_interval"), "{message}");
        let message = config_error(
            SchedulerConfig::builder("app", "orders")
                .shard_sync_interval(Duration::ZERO)
                .build(),
        );
        assert!(message.contains("shard_sync_interval"), "{message}");
        let mut leases = LeaseCoordinatorConfig::new("worker");
        leases.renew_interval = leases.lease_duration * 2;
        assert!(matches!(
            SchedulerConfig::builder("app", "orders")
                .leases(leases)
                .build(),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn fan_out_needs_a_consumer_name_kinesis_accepts() {
        let long = "a".repeat(200);
        let message = config_error(
            SchedulerConfig::builder(long.as_str(), "orders")
                .fan_out(FanOutConfig::default())
                .build(),
        );
        assert!(message.contains("consumer_name"), "{message}");
        let named = FanOutConfig::builder()
            .consumer_name(Some("short".into()))
            .build()
            .unwrap();
        assert!(
            SchedulerConfig::builder(long.as_str(), "orders")
                .fan_out(named)
                .build()
                .is_ok()
        );
    }

    #[test]
    fn a_lease_duration_rederives_the_intervals_and_keeps_the_rest() {
        let mut leases = LeaseCoordinatorConfig::new("worker-7");
        leases.rng_seed = Some(42);
        leases.max_leases = 3;
        leases.graceful_handoff = false;
        let config = SchedulerConfig::builder("app", "orders")
            .leases(leases)
            .lease_duration(Duration::from_secs(4))
            .build()
            .unwrap();
        let leases = &config.leases;
        assert_eq!(leases.worker_id, "worker-7");
        assert_eq!(leases.rng_seed, Some(42));
        assert_eq!(leases.max_leases, 3);
        assert!(!leases.graceful_handoff);
        let derived = LeaseCoordinatorConfig::with_lease_duration("x", Duration::from_secs(4));
        assert_eq!(leases.lease_duration, derived.lease_duration);
        assert_eq!(leases.renew_interval, derived.renew_interval);
        assert_eq!(leases.scan_interval, derived.scan_interval);
        assert_eq!(leases.handoff_timeout, derived.handoff_timeout);
    }
}
