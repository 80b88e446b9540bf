//! The worker's task: lease events in, shard consumers out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{SchedulerConfig, ShutdownReport, ShutdownRequest};
use crate::aws::Kinesis;
use crate::backoff::FailureStreak;
use crate::error::Error;
use crate::health::Health;
use crate::leases::{LeaseCoordinator, LeaseEvent, LeaseStore};
use crate::lifecycle::{self, Outcome, WorkerContext};
use crate::metrics;
use crate::model::LeaseKey;
use crate::processor::RecordProcessorFactory;
use crate::stop::{StopReason, StopSender};
use crate::tracker::Tracking;
use crate::watchdog::{ShardProgress, StallAction, StallCause};

/// The worker loop's name in health checks.
const WORKER_LOOP: &str = "worker";

/// The worker's task: lease events in, shard consumers out.
pub(super) struct Worker<S, F> {
    pub(super) config: SchedulerConfig,
    pub(super) kinesis: Kinesis,
    pub(super) coordinator: LeaseCoordinator<S>,
    pub(super) context: Arc<WorkerContext>,
    pub(super) factory: Arc<F>,
    /// The root of the cancellation tree: every shard's stop is a child.
    pub(super) stop: CancellationToken,
    pub(super) consumers: HashMap<LeaseKey, StopSender>,
    pub(super) tasks: JoinSet<(LeaseKey, Outcome)>,
    pub(super) failures: Option<mpsc::UnboundedSender<Error>>,
    /// Shard syncs that failed in a row (retried at the next one).
    pub(super) sync_streak: FailureStreak,
    /// Where the worker reports its rounds and stalled shards.
    pub(super) health: Health,
    /// What each shard's consumer is doing, and how to stop its task.
    pub(super) progress: HashMap<LeaseKey, (Arc<ShardProgress>, AbortHandle)>,
    /// The shards stalled at the last check, and why.
    pub(super) stalled: HashMap<LeaseKey, StallCause>,
    /// Multi-stream mode: the streams read and the tracker's memory.
    pub(super) tracking: Option<Tracking>,
    /// The read memory all the worker's polling readers share, of every
    /// stream.
    pub(super) read_memory: Arc<crate::retrieval::ReadMemory>,
}

impl<S, F> Worker<S, F>
where
    S: LeaseStore + std::fmt::Debug + 'static,
    F: RecordProcessorFactory,
{
    pub(super) async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<LeaseEvent>,
        shutdown: Arc<ShutdownRequest>,
        report: watch::Sender<Option<ShutdownReport>>,
    ) {
        let mut sync = tokio::time::interval(self.config.shard_sync_interval);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sync.tick().await;
        let refresh_every = self
            .config
            .multi_stream
            .as_ref()
            .map_or(Duration::from_secs(3_600), |multi| multi.refresh_interval);
        let mut refresh = tokio::time::interval(refresh_every);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        let mut watchdog = tokio::time::interval(self.config.watchdog.check_interval);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let context = self.context.clone();
        loop {
            tokio::select! {
                () = shutdown.stop.cancelled() => break,
                _ = watchdog.tick() => self.check_stalls().await,
                Some(event) = events.recv() => self.on_lease_event(event),
                Some(done) = self.tasks.join_next() => self.on_consumer_done(done),
                _ = sync.tick() => self.sync().await,
                _ = refresh.tick() => self.refresh_streams().await,
                () = context.sync_now.notified() => self.sync().await,
            }
        }
        self.health.loop_ended(WORKER_LOOP);
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
                let progress = Arc::new(ShardProgress::default());
                let watched = progress.clone();
                let task_key = key.clone();
                let abort = self.tasks.spawn(tracing::Instrument::instrument(
                    async move {
                        let outcome =
                            lifecycle::run(context, factory, *lease, token, signal, watched).await;
                        (task_key, outcome)
                    },
                    span,
                ));
                self.progress.insert(key, (progress, abort));
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
                self.progress.remove(&key);
                self.stalled.remove(&key);
                if let (Outcome::Failed(err), Some(failures)) = (outcome, &self.failures) {
                    let _ = failures.send(err);
                }
            }
            // A consumer the watchdog stopped.
            Err(err) if err.is_cancelled() => {}
            Err(err) => tracing::error!(error = %err, "a shard's consumer task failed"),
        }
    }

    /// The watchdog's round: judges every shard's progress, warns once when
    /// a stall starts, sets the stall gauges and health, and acts as
    /// configured.
    async fn check_stalls(&mut self) {
        let config = self.config.watchdog.clone();
        self.health.beat(WORKER_LOOP, config.check_interval);
        let now = std::time::Instant::now();
        let worker = self.coordinator.worker_id().to_owned();
        let mut per_cause = [0_usize; StallCause::ALL.len()];
        let mut to_release = Vec::new();
        for (key, (progress, _)) in &self.progress {
            let Some(stall) = progress.stall(now, &config) else {
                if let Some(cause) = self.stalled.remove(key) {
                    tracing::info!(lease_key = %key, %cause, "the shard is no longer stalled");
                }
                continue;
            };
            if let Some(n) = StallCause::ALL
                .iter()
                .position(|c| *c == stall.cause)
                .and_then(|i| per_cause.get_mut(i))
            {
                *n += 1;
            }
            if self.stalled.insert(key.clone(), stall.cause) == Some(stall.cause) {
                continue;
            }
            let action = match stall.cause {
                StallCause::Processor => config.on_stalled_processor,
                StallCause::Reader => config.on_stalled_reader,
                StallCause::Parents => StallAction::Warn,
            };
            tracing::warn!(
                lease_key = %key,
                shard_id = %key.shard_id(),
                cause = %stall.cause,
                state = stall.doing,
                stalled_secs = stall.for_how_long.as_secs(),
                ?action,
                "the shard is stalled"
            );
            match action {
                StallAction::RestartReader if stall.cause == StallCause::Reader => {
                    metrics::STALL_ACTIONS
                        .counter(&[&worker, "restart_reader"])
                        .increment(1);
                    progress.request_reader_restart();
                }
                StallAction::ReleaseLease => to_release.push(key.clone()),
                _ => {}
            }
            if stall.cause == StallCause::Parents {
                // The parents may have ended without this worker hearing.
                self.context.sync_now.notify_one();
            }
        }
        for (cause, n) in StallCause::ALL.iter().zip(per_cause) {
            metrics::SHARDS_STALLED
                .gauge(&[&worker, cause.name()])
                .set(n as f64);
        }
        self.health.stalled(per_cause.iter().sum());
        self.health.held(self.consumers.len());
        for key in to_release {
            self.release_stalled(&key, &worker).await;
        }
    }

    /// Stops a stalled shard's consumer without waiting for it and releases
    /// its lease (conditional on the counter, like every lease write).
    async fn release_stalled(&mut self, key: &LeaseKey, worker: &str) {
        if let Some((_, abort)) = self.progress.remove(key) {
            abort.abort();
        }
        self.consumers.remove(key);
        self.stalled.remove(key);
        metrics::STALL_ACTIONS
            .counter(&[worker, "release_lease"])
            .increment(1);
        match self.coordinator.release(key).await {
            Ok(released) => {
                tracing::warn!(lease_key = %key, released, "stopped the stalled shard's consumer and released its lease")
            }
            Err(err) => {
                tracing::warn!(lease_key = %key, error = %err, "stopped the stalled shard's consumer; its lease could not be released and will expire")
            }
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
