//! The scheduler: one worker of a consumer group. It runs the lease
//! coordinator, keeps the lease table in line with the stream's shards, and
//! runs one shard consumer task per held lease on the caller's runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::Kinesis;
use crate::aws::StreamRef;
use crate::error::{Error, Result};
use crate::leases::{
    Lease, LeaseAccess, LeaseCoordinator, LeaseCoordinatorConfig, LeaseEvent, LeaseStore,
};
use crate::lifecycle::{self, Outcome, Stop, WorkerContext};
use crate::model::InitialPosition;
use crate::processor::{FailurePolicy, RecordProcessorFactory};
use crate::retrieval::PollingConfig;

/// How a [`Scheduler`] runs. Made with [`SchedulerConfig::builder`].
#[derive(Clone, Debug)]
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
    /// How shards are read.
    pub polling: PollingConfig,
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
                polling: PollingConfig::default(),
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
        self.leases.validate()?;
        self.polling.validate()?;
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
        let worker_id = std::mem::take(&mut self.config.leases.worker_id);
        let LeaseCoordinatorConfig {
            max_leases,
            max_steals_per_cycle,
            graceful_handoff,
            ..
        } = self.config.leases;
        self.config.leases = LeaseCoordinatorConfig::with_lease_duration(worker_id, duration);
        self.config.leases.max_leases = max_leases;
        self.config.leases.max_steals_per_cycle = max_steals_per_cycle;
        self.config.leases.graceful_handoff = graceful_handoff;
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

    /// How shards are read.
    pub fn polling(mut self, polling: PollingConfig) -> Self {
        self.config.polling = polling;
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

/// What a shutdown did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Shards whose processors finished (final checkpoint, lease released).
    pub finished_shards: Vec<String>,
    /// Shards whose processors did not finish in time; they were stopped
    /// and their leases expire.
    pub unfinished_shards: Vec<String>,
    /// Leases that could not be released (they expire instead).
    pub unreleased_leases: Vec<String>,
}

/// One worker of a consumer group.
///
/// [`start`](Self::start) it with a config, a Kinesis client, a lease store
/// and a processor factory; [`shutdown`](Self::shutdown) it to finish every
/// shard cleanly. Dropping it without a shutdown stops everything at once:
/// acknowledged checkpoints are already stored, the leases expire and other
/// workers resume from those checkpoints.
#[derive(Debug)]
pub struct Scheduler {
    worker_id: String,
    leases: Arc<dyn LeaseAccess>,
    shutdown: Option<oneshot::Sender<Duration>>,
    task: Option<JoinHandle<ShutdownReport>>,
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
        let context = Arc::new(WorkerContext {
            kinesis,
            stream: config.stream.clone(),
            polling: config.polling.clone(),
            initial_timestamp: match config.initial_position {
                InitialPosition::AtTimestamp(at) => Some(at),
                _ => None,
            },
            leases: Arc::new(coordinator.clone()),
            failure: config.failure_policy.clone(),
            parent_poll_interval: config.parent_poll_interval,
            shards: Mutex::new(shards.into_iter().map(|s| (s.id.clone(), s)).collect()),
            sync_now: tokio::sync::Notify::new(),
        });
        let leases: Arc<dyn LeaseAccess> = Arc::new(coordinator.clone());
        let (shutdown, shutdown_requested) = oneshot::channel();
        let worker = Worker {
            config,
            coordinator,
            context,
            factory: Arc::new(factory),
            consumers: HashMap::new(),
            tasks: JoinSet::new(),
            failures,
        };
        let span = tracing::info_span!("worker", worker_id = %worker_id);
        let task = tokio::spawn(tracing::Instrument::instrument(
            worker.run(events, shutdown_requested),
            span,
        ));
        Ok(Self {
            worker_id,
            leases,
            shutdown: Some(shutdown),
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

    /// Shuts down gracefully: every processor gets `shutdown_requested`
    /// (and checkpoints), leases are released for immediate pick-up by
    /// other workers, tasks are joined. Processors still running after
    /// `timeout` are stopped and reported.
    pub async fn shutdown(mut self, timeout: Duration) -> ShutdownReport {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(timeout);
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => ShutdownReport::default(),
        }
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
        if let Some(task) = self.task.take() {
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
    coordinator: LeaseCoordinator<S>,
    context: Arc<WorkerContext>,
    factory: Arc<F>,
    consumers: HashMap<String, watch::Sender<Stop>>,
    tasks: JoinSet<(String, Outcome)>,
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
        mut shutdown: oneshot::Receiver<Duration>,
    ) -> ShutdownReport {
        let mut sync = tokio::time::interval(self.config.shard_sync_interval);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sync.tick().await;
        let context = self.context.clone();
        let timeout = loop {
            tokio::select! {
                requested = &mut shutdown => break requested.unwrap_or(Duration::ZERO),
                Some(event) = events.recv() => self.on_lease_event(event),
                Some(done) = self.tasks.join_next() => self.on_consumer_done(done),
                _ = sync.tick() => self.sync().await,
                () = context.sync_now.notified() => self.sync().await,
            }
        };
        self.shut_down(timeout).await
    }

    fn on_lease_event(&mut self, event: LeaseEvent) {
        let worker = self.coordinator.worker_id().to_owned();
        match event {
            LeaseEvent::Acquired { lease, token } => {
                metrics::counter!("rkcl_leases_taken", "worker" => worker.clone()).increment(1);
                let key = lease.key.clone();
                let (stop, stopped) = watch::channel(Stop::Running);
                let (context, factory) = (self.context.clone(), self.factory.clone());
                let span = tracing::info_span!("shard", shard_id = %lease.shard_id());
                self.consumers.insert(key.clone(), stop);
                self.tasks.spawn(tracing::Instrument::instrument(
                    async move {
                        let outcome =
                            lifecycle::run(context, factory, *lease, token, stopped).await;
                        (key, outcome)
                    },
                    span,
                ));
            }
            LeaseEvent::HandoffRequested { key, .. } => self.signal(&key, Stop::Handoff),
            LeaseEvent::Lost { key } => {
                metrics::counter!("rkcl_leases_lost", "worker" => worker.clone()).increment(1);
                self.signal(&key, Stop::LeaseLost);
            }
        }
        metrics::gauge!("rkcl_leases_held", "worker" => worker)
            .set(self.coordinator.held().len() as f64);
    }

    fn signal(&self, key: &str, stop: Stop) {
        if let Some(sender) = self.consumers.get(key) {
            // A lost lease overrides a request to finish.
            sender.send_if_modified(|current| {
                let change = *current == Stop::Running || stop == Stop::LeaseLost;
                if change {
                    *current = stop;
                }
                change
            });
        }
    }

    fn on_consumer_done(
        &mut self,
        done: std::result::Result<(String, Outcome), tokio::task::JoinError>,
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
            &self.context.kinesis,
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
        let mut report = ShutdownReport::default();
        for sender in self.consumers.values() {
            let _ = sender.send(Stop::Shutdown);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.consumers.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok((key, outcome)))) => {
                    self.consumers.remove(&key);
                    if matches!(outcome, Outcome::Released | Outcome::Ended) {
                        report.finished_shards.push(key);
                    } else {
                        report.unfinished_shards.push(key);
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
                        .unfinished_shards
                        .extend(self.consumers.keys().cloned());
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        report.unreleased_leases = self.coordinator.shutdown().await;
        metrics::gauge!("rkcl_leases_held", "worker" => self.coordinator.worker_id().to_owned())
            .set(0.0);
        report.finished_shards.sort();
        report.unfinished_shards.sort();
        report
    }
}
