//! The scheduler: one worker of a consumer group. It runs the lease
//! coordinator, keeps the lease table in line with the stream's shards, and
//! runs one shard consumer task per held lease on the caller's runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::aws::Kinesis;
use crate::error::{Error, Result};
use crate::health::Health;
use crate::leases::{Lease, LeaseAccess, LeaseCoordinator, LeaseStore};
use crate::lifecycle::WorkerContext;
use crate::model::LeaseKey;
use crate::processor::RecordProcessorFactory;
use crate::tracker::Tracking;

mod config;
mod signals;
mod streams;
mod worker;

pub use config::{SchedulerConfig, SchedulerConfigBuilder};
pub use signals::{Signals, wait_for_signal};
use streams::{ReadTarget, check_table_mode, open_stream};
use worker::Worker;

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
    health: Health,
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
    /// Checks the stream (in multi-stream mode, asks the tracker for the
    /// streams and looks them up) and the lease table, finds or registers
    /// the stream consumer when shards are read with enhanced fan-out, syncs
    /// shards and leases once, and starts the worker. Create a DynamoDB
    /// lease table first with
    /// [`DynamoDbLeaseStore::ensure_table`](crate::DynamoDbLeaseStore::ensure_table).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid config (with fan-out, also a
    /// configured consumer ARN that names no consumer of the stream), or a
    /// lease table holding leases of the other mode (single-stream keys in
    /// a multi-stream application, or the reverse);
    /// [`Error::ResourceNotFound`] when the stream or the lease table does
    /// not exist; [`Error::AccessDenied`] without the permissions; with
    /// fan-out, the errors of
    /// [`resolve_consumer`](crate::retrieval::resolve_consumer); the
    /// tracker's error; other errors of the first calls. In multi-stream
    /// mode a stream that cannot be looked up, opened or synced is left out
    /// (logged) and tried again at the next refresh.
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
        let table = store.list().await?;
        check_table_mode(
            &table,
            config.multi_stream.is_some(),
            &config.application_name,
        )?;
        // The streams read from start-up: the one configured, or those the
        // tracker lists now.
        let mut tracking = None;
        let reads = match &config.multi_stream {
            None => {
                kinesis.describe_stream_summary(&config.stream).await?;
                vec![ReadTarget {
                    id: None,
                    stream: config.stream.clone(),
                    initial_position: config.initial_position,
                    consumer_arn: None,
                }]
            }
            Some(multi) => {
                let listed = multi.tracker.streams().await?;
                let mut tracked = Tracking::default();
                let changes = tracked
                    .update(&kinesis, &listed, &config.initial_position)
                    .await;
                tracing::info!(
                    streams = changes.added.len(),
                    "multi-stream mode: reading the streams the tracker lists"
                );
                tracking = Some(tracked);
                changes.added.into_iter().map(ReadTarget::from).collect()
            }
        };
        let mut streams = HashMap::new();
        // Streams are opened and synced all at once: a worker of many
        // streams starts as soon as one of one stream.
        let read_memory = crate::retrieval::KinesisSources::read_memory_for(&config.retrieval);
        let opened = futures_util::future::join_all(
            reads
                .iter()
                .map(|read| open_stream(&kinesis, &config, read, read_memory.clone())),
        )
        .await;
        for (read, opened) in reads.iter().zip(opened) {
            match opened {
                Ok(context) => {
                    streams.insert(read.key(), Arc::new(context));
                }
                // One stream of many that cannot be read is left out (and
                // retried at the next refresh); the one stream of a
                // single-stream application is an error.
                Err(err) if tracking.is_some() => {
                    tracing::warn!(stream = %read.stream, error = %err, "cannot read a listed stream; leaving it out until the next refresh");
                    if let (Some(tracked), Some(id)) = (tracking.as_mut(), &read.id) {
                        tracked.active.remove(&id.to_string());
                    }
                }
                Err(err) => return Err(err),
            }
        }
        let mut shards = HashMap::new();
        let syncing: Vec<&ReadTarget> = reads
            .iter()
            .filter(|r| streams.contains_key(&r.key()))
            .collect();
        let synced = futures_util::future::join_all(
            syncing
                .iter()
                .map(|read| crate::shard_sync::sync(&kinesis, read.sync_target(), &store, &table)),
        )
        .await;
        for (read, synced) in syncing.into_iter().zip(synced) {
            match synced {
                Ok((listed, _)) => shards.extend(
                    listed
                        .into_iter()
                        .map(|shard| (read.lease_key(&shard.id), shard)),
                ),
                Err(err) if tracking.is_some() => {
                    tracing::warn!(stream = %read.stream, error = %err, "the first shard sync of a stream failed; it is retried at the next one");
                }
                Err(err) => return Err(err),
            }
        }
        let worker_id = config.leases.worker_id.clone();
        let scope = tracking.as_ref().map(Tracking::scope);
        if let Some(tracking) = &tracking {
            crate::metrics::STREAMS_READ
                .gauge(&[&config.leases.worker_id])
                .set(tracking.active.len() as f64);
        }
        let (coordinator, events) =
            LeaseCoordinator::start_scoped(store, config.leases.clone(), scope)?;
        let health = coordinator.health();
        health.started(config.leases.lease_duration, true);
        let leases: Arc<dyn LeaseAccess> = Arc::new(coordinator.clone());
        let context = Arc::new(WorkerContext {
            streams: RwLock::new(streams),
            leases: leases.clone(),
            failure: config.failure_policy.clone(),
            parent_poll_interval: config.parent_poll_interval,
            shards: Mutex::new(shards),
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
            sync_streak: crate::backoff::FailureStreak::new("shard sync"),
            health: health.clone(),
            progress: HashMap::new(),
            stalled: HashMap::new(),
            tracking,
            read_memory,
        };
        let span = tracing::info_span!("worker", worker_id = %worker_id);
        let task = tokio::spawn(tracing::Instrument::instrument(
            worker.run(events, shutdown.clone(), report),
            span,
        ));
        Ok(Self {
            worker_id,
            health,
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

    /// This worker's health (its loops, the lease table, stalled shards),
    /// for liveness and readiness probes; see [`crate::health`].
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The leases this worker holds now.
    pub fn held_leases(&self) -> Vec<Lease> {
        self.leases.held()
    }

    /// Starts a graceful shutdown that may take `timeout`, and returns at
    /// once. A second request changes nothing.
    pub(crate) fn request_shutdown(&self, timeout: Duration) {
        self.health.stopping();
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
