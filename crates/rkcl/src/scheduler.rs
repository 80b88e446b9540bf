//! The scheduler: one worker of a consumer group. It runs the lease
//! coordinator, keeps the lease table in line with the stream's shards, and
//! runs one shard consumer task per held lease on the caller's runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::aws::{Kinesis, StreamRef};
use crate::error::{Error, Result};
use crate::leases::{
    Lease, LeaseAccess, LeaseCoordinator, LeaseCoordinatorConfig, LeaseEvent, LeaseStore,
};
use crate::lifecycle::{self, Outcome, WorkerContext};
use crate::metrics;
use crate::model::{InitialPosition, LeaseKey};
use crate::processor::{FailurePolicy, RecordProcessorFactory};
use crate::retrieval::{KinesisSources, PollingConfig, Retrieval};
use crate::stop::{StopReason, StopSender};

/// How a [`Scheduler`] runs. Made with [`SchedulerConfig::builder`].
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
    /// How shards are read. Default: polling with GetRecords.
    pub retrieval: Retrieval,
    /// How often the shard list is compared with the lease table (also
    /// done at once when a shard ends). Default: 60 s.
    pub shard_sync_interval: Duration,
    /// What happens when a batch fails. Default: retry, never skip.
    pub failure_policy: FailurePolicy,
    /// How often a child shard's consumer checks whether its parents are
    /// finished. Default: 1 s.
    pub parent_poll_interval: Duration,
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
            },
        }
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
        if self.stream.name().is_empty() {
            return Err(Error::Config("the stream name is empty".into()));
        }
        if let InitialPosition::AtTimestamp(at) = self.initial_position {
            validate_start_time(at, SystemTime::now())?;
        }
        self.leases.validate()?;
        self.retrieval.validate()?;
        self.failure_policy.validate()?;
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
        let derived = LeaseCoordinatorConfig::with_lease_duration(String::new(), duration);
        let leases = &mut self.config.leases;
        leases.lease_duration = derived.lease_duration;
        leases.renew_interval = derived.renew_interval;
        leases.safety_margin = derived.safety_margin;
        leases.taker_interval = derived.taker_interval;
        leases.scan_interval = derived.scan_interval;
        leases.handoff_timeout = derived.handoff_timeout;
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

/// What a shutdown did, by lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Leases whose processors finished (final checkpoint, lease released).
    pub finished_leases: Vec<LeaseKey>,
    /// Leases whose processors did not finish in time; they were stopped
    /// and the leases expire.
    pub unfinished_leases: Vec<LeaseKey>,
    /// Leases that could not be released (they expire instead).
    pub unreleased_leases: Vec<LeaseKey>,
}

/// One worker of a consumer group.
///
/// [`start`](Self::start) it with a config, a Kinesis client, a lease store
/// and a processor factory; [`shutdown`](Self::shutdown) it to finish every
/// shard cleanly. Dropping it without a shutdown stops everything at once:
/// acknowledged checkpoints are already stored, the leases expire and other
/// workers resume from those checkpoints. Dropping it after a shutdown was
/// requested lets that shutdown finish.
#[derive(Debug)]
pub struct Scheduler {
    worker_id: String,
    leases: Arc<dyn LeaseAccess>,
    shutdown: Arc<ShutdownRequest>,
    report: watch::Receiver<Option<ShutdownReport>>,
    task: Option<JoinHandle<()>>,
}

/// The root of the worker's cancellation tree, and the time its shutdown
/// may take.
#[derive(Debug, Default)]
struct ShutdownRequest {
    stop: CancellationToken,
    timeout: OnceLock<Duration>,
}

impl Scheduler {
    /// Checks the stream and the lease table, syncs shards and leases once,
    /// and starts the worker. Create a DynamoDB lease table first with
    /// [`DynamoDbLeaseStore::ensure_table`](crate::DynamoDbLeaseStore::ensure_table).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid config; [`Error::ResourceNotFound`]
    /// when the stream or the lease table does not exist;
    /// [`Error::AccessDenied`] without the permissions; other errors of the
    /// first calls.
    pub async fn start<S, F>(
        config: SchedulerConfig,
        kinesis: Kinesis,
        store: S,
        factory: F,
    ) -> Result<Self>
    where
        S: LeaseStore + std::fmt::Debug + 'static,
        F: RecordProcessorFactory,
    {
        Self::start_reporting(config, kinesis, store, factory, None).await
    }

    /// As [`start`](Self::start); errors that made a shard's consumer let
    /// its lease go are also sent to `failures`.
    pub(crate) async fn start_reporting<S, F>(
        config: SchedulerConfig,
        kinesis: Kinesis,
        store: S,
        factory: F,
        failures: Option<mpsc::UnboundedSender<Error>>,
    ) -> Result<Self>
    where
        S: LeaseStore + std::fmt::Debug + 'static,
        F: RecordProcessorFactory,
    {
        config.validate()?;
        kinesis.describe_stream_summary(&config.stream).await?;
        store.list().await?;
        let (shards, _) =
            crate::shard_sync::sync(&kinesis, &config.stream, &store, &config.initial_position)
                .await?;
        let worker_id = config.leases.worker_id.clone();
        let (coordinator, events) = LeaseCoordinator::start(store, config.leases.clone())?;
        let leases: Arc<dyn LeaseAccess> = Arc::new(coordinator.clone());
        let context = Arc::new(WorkerContext {
            sources: Arc::new(KinesisSources {
                kinesis: kinesis.clone(),
                stream: config.stream.clone(),
                retrieval: config.retrieval.clone(),
            }),
            initial_timestamp: match config.initial_position {
                InitialPosition::AtTimestamp(at) => Some(at),
                _ => None,
            },
            leases: leases.clone(),
            failure: config.failure_policy.clone(),
            parent_poll_interval: config.parent_poll_interval,
            shards: Mutex::new(shards.into_iter().map(|s| (s.id.clone(), s)).collect()),
            sync_now: tokio::sync::Notify::new(),
        });
        let shutdown = Arc::new(ShutdownRequest::default());
        let (report, report_receiver) = watch::channel(None);
        let worker = Worker {
            config,
            kinesis,
            coordinator,
            context,
            factory: Arc::new(factory),
            stop: shutdown.stop.clone(),
            consumers: HashMap::new(),
            tasks: JoinSet::new(),
            failures,
        };
        let span = tracing::info_span!("worker", worker_id = %worker_id);
        let task = tokio::spawn(tracing::Instrument::instrument(
            worker.run(events, shutdown.clone(), report),
            span,
        ));
        Ok(Self {
            worker_id,
            leases,
            shutdown,
            report: report_receiver,
            task: Some(task),
        })
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The leases this worker holds now.
    pub fn held_leases(&self) -> Vec<Lease> {
        self.leases.held()
    }

    /// Starts a graceful shutdown that may take `timeout`, and returns at
    /// once. A second request changes nothing.
    pub(crate) fn request_shutdown(&self, timeout: Duration) {
        let _ = self.shutdown.timeout.set(timeout);
        self.shutdown.stop.cancel();
    }

    /// Resolves with the report once a requested shutdown is done.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub(crate) fn shutdown_report(
        &self,
    ) -> impl std::future::Future<Output = ShutdownReport> + Send + 'static {
        let mut report = self.report.clone();
        async move {
            match report.wait_for(Option::is_some).await {
                Ok(done) => done.clone().unwrap_or_default(),
                Err(_) => ShutdownReport::default(),
            }
        }
    }

    /// Shuts down gracefully: every processor gets `shutdown_requested`
    /// (and checkpoints), leases are released for immediate pick-up by
    /// other workers, tasks are joined. Processors still running after
    /// `timeout` are stopped and reported.
    pub async fn shutdown(self, timeout: Duration) -> ShutdownReport {
        self.request_shutdown(timeout);
        self.shutdown_report().await
    }

    /// Runs until SIGTERM or Ctrl-C, then shuts down with `timeout`.
    pub async fn run_until_signal(self, timeout: Duration) -> ShutdownReport {
        wait_for_signal().await;
        tracing::info!("signal received; shutting down");
        self.shutdown(timeout).await
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if let Some(task) = self.task.take()
            && !self.shutdown.stop.is_cancelled()
        {
            task.abort();
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    Signals::register().recv().await;
}

/// SIGTERM and Ctrl-C handlers, installed when made (so a signal sent
/// right after is not missed), awaited later.
#[derive(Debug)]
pub(crate) struct Signals {
    #[cfg(unix)]
    handlers: Vec<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers; needs a tokio runtime.
    pub(crate) fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let handlers = [SignalKind::terminate(), SignalKind::interrupt()]
                .into_iter()
                .filter_map(|kind| match signal(kind) {
                    Ok(handler) => Some(handler),
                    Err(err) => {
                        tracing::warn!(error = %err, "could not install a signal handler");
                        None
                    }
                })
                .collect();
            Self { handlers }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolves on the first signal.
    pub(crate) async fn recv(self) {
        #[cfg(unix)]
        {
            let waits = self.handlers.into_iter().map(|mut handler| {
                Box::pin(async move {
                    handler.recv().await;
                })
            });
            let waits: Vec<_> = waits.collect();
            if waits.is_empty() {
                let _ = tokio::signal::ctrl_c().await;
            } else {
                futures_util::future::select_all(waits).await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The worker's task: lease events in, shard consumers out.
struct Worker<S, F> {
    config: SchedulerConfig,
    kinesis: Kinesis,
    coordinator: LeaseCoordinator<S>,
    context: Arc<WorkerContext>,
    factory: Arc<F>,
    /// The root of the cancellation tree: every shard's stop is a child.
    stop: CancellationToken,
    consumers: HashMap<LeaseKey, StopSender>,
    tasks: JoinSet<(LeaseKey, Outcome)>,
    failures: Option<mpsc::UnboundedSender<Error>>,
}

impl<S, F> Worker<S, F>
where
    S: LeaseStore + std::fmt::Debug + 'static,
    F: RecordProcessorFactory,
{
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<LeaseEvent>,
        shutdown: Arc<ShutdownRequest>,
        report: watch::Sender<Option<ShutdownReport>>,
    ) {
        let mut sync = tokio::time::interval(self.config.shard_sync_interval);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sync.tick().await;
        let context = self.context.clone();
        loop {
            tokio::select! {
                () = shutdown.stop.cancelled() => break,
                Some(event) = events.recv() => self.on_lease_event(event),
                Some(done) = self.tasks.join_next() => self.on_consumer_done(done),
                _ = sync.tick() => self.sync().await,
                () = context.sync_now.notified() => self.sync().await,
            }
        }
        let timeout = shutdown.timeout.get().copied().unwrap_or(Duration::ZERO);
        report.send_replace(Some(self.shut_down(timeout).await));
    }

    fn on_lease_event(&mut self, event: LeaseEvent) {
        let worker = [self.coordinator.worker_id()];
        match event {
            LeaseEvent::Acquired { lease, token } => {
                metrics::LEASES_TAKEN.counter(&worker).increment(1);
                let key = lease.key.clone();
                let stop = StopSender::child_of(&self.stop);
                let signal = stop.signal();
                let (context, factory) = (self.context.clone(), self.factory.clone());
                let span = tracing::info_span!("shard", shard_id = %lease.shard_id());
                self.consumers.insert(key.clone(), stop);
                self.tasks.spawn(tracing::Instrument::instrument(
                    async move {
                        let outcome = lifecycle::run(context, factory, *lease, token, signal).await;
                        (key, outcome)
                    },
                    span,
                ));
            }
            LeaseEvent::HandoffRequested { key, .. } => self.signal(&key, StopReason::Handoff),
            LeaseEvent::Lost { key } => {
                metrics::LEASES_LOST.counter(&worker).increment(1);
                self.signal(&key, StopReason::LeaseLost);
            }
        }
        metrics::LEASES_HELD
            .gauge(&worker)
            .set(self.coordinator.held().len() as f64);
    }

    fn signal(&self, key: &LeaseKey, reason: StopReason) {
        if let Some(stop) = self.consumers.get(key) {
            stop.request(reason);
        }
    }

    fn on_consumer_done(
        &mut self,
        done: std::result::Result<(LeaseKey, Outcome), tokio::task::JoinError>,
    ) {
        match done {
            Ok((key, outcome)) => {
                tracing::info!(lease_key = %key, ?outcome, "the shard's consumer ended");
                self.consumers.remove(&key);
                if let (Outcome::Failed(err), Some(failures)) = (outcome, &self.failures) {
                    let _ = failures.send(err);
                }
            }
            Err(err) => tracing::error!(error = %err, "a shard's consumer task failed"),
        }
    }

    async fn sync(&mut self) {
        match crate::shard_sync::sync(
            &self.kinesis,
            &self.config.stream,
            self.coordinator.store(),
            &self.config.initial_position,
        )
        .await
        {
            Ok((shards, summary)) => {
                if let Ok(mut known) = self.context.shards.lock() {
                    known.extend(shards.into_iter().map(|s| (s.id.clone(), s)));
                }
                tracing::debug!(?summary, "shard sync");
            }
            Err(err) => tracing::warn!(error = %err, "shard sync failed; will retry"),
        }
    }

    async fn shut_down(mut self, timeout: Duration) -> ShutdownReport {
        // Every shard's stop is a child of the worker's, cancelled by now.
        let mut report = ShutdownReport::default();
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.consumers.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok((key, outcome)))) => {
                    self.consumers.remove(&key);
                    if matches!(outcome, Outcome::Released | Outcome::Ended) {
                        report.finished_leases.push(key);
                    } else {
                        report.unfinished_leases.push(key);
                    }
                }
                Ok(Some(Err(err))) => {
                    tracing::error!(error = %err, "a shard's consumer task failed")
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        shards = self.consumers.len(),
                        "shutdown timed out; stopping the rest"
                    );
                    report
                        .unfinished_leases
                        .extend(self.consumers.keys().cloned());
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        report.unreleased_leases = self.coordinator.shutdown().await;
        metrics::LEASES_HELD
            .gauge(&[self.coordinator.worker_id()])
            .set(0.0);
        report.finished_leases.sort();
        report.unfinished_leases.sort();
        report
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
