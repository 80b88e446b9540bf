//! The Stream API: a consumer group's records as an async [`Stream`] of
//! [`CommittableRecord`]s, checkpointed automatically at the commit
//! watermark, with bounded memory and a shutdown that flushes.
//!
//! A [`Consumer`] runs a [`Scheduler`] whose processors feed one stream per
//! held shard. Commits arrive in any order; each shard's checkpoint moves
//! only to the highest point below which every record is committed.

mod batch;
mod budget;
mod committable;
mod config;
mod feeder;
mod watermark;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{SelectAll, Stream, StreamExt};
use tokio::sync::mpsc;

pub use batch::{
    Batch, BatchError, BatchFailure, BatchFailureHandler, BatchOptions, BatchOptionsBuilder,
    FailureReason,
};
pub use committable::{CommitHandle, CommittableBatch, CommittableRecord};
pub use config::{ConsumerConfig, ConsumerConfigBuilder};

use crate::aws::Kinesis;
use crate::error::{Error, Result};
use crate::leases::{Lease, LeaseStore};
use crate::processor::ShardInfo;
use crate::retrieval::{PollingConfig, Retrieval};
use crate::scheduler::{Scheduler, ShutdownReport};
use budget::Budget;
use feeder::{FeedShared, Feeder};

/// The running worker behind a consumer, shared by its streams and
/// shutdown handles.
#[derive(Debug)]
struct Control {
    scheduler: Scheduler,
    timeout: Duration,
}

impl Control {
    /// Starts the shutdown (once); the worker's own task carries it out.
    fn trigger(&self) {
        self.scheduler.request_shutdown(self.timeout);
    }
}

/// Shuts a consumer down from anywhere (a kill switch): stops fetching,
/// waits up to the grace time for records in hand to be committed,
/// checkpoints every shard's watermark and releases the leases. The
/// streams end once that is done. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    control: Arc<Control>,
}

impl ShutdownHandle {
    /// Starts the shutdown and returns at once.
    pub fn trigger(&self) {
        self.control.trigger();
    }

    /// Starts the shutdown (if not started) and waits until it is done.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.control.trigger();
        self.control.scheduler.shutdown_report().await
    }

    /// Shuts down on SIGTERM or Ctrl-C, in the background.
    ///
    /// The handlers are installed before this returns.
    pub fn shutdown_on_signal(&self) -> tokio::task::JoinHandle<()> {
        let handle = self.clone();
        let signals = crate::scheduler::Signals::register();
        tokio::spawn(async move {
            signals.recv().await;
            tracing::info!("signal received; shutting the consumer down");
            handle.trigger();
        })
    }
}

/// Starts the shutdown when the last stream of a consumer is dropped.
#[derive(Debug)]
struct ShutdownOnDrop(Arc<Control>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.trigger();
    }
}

/// One worker of a consumer group, read as streams.
///
/// Take its records one way: [`records`](Self::records) (all shards
/// merged), [`shards`](Self::shards) (one stream per shard),
/// [`chunks`](Self::chunks) (per-shard batches) or
/// [`for_each_batch`](Self::for_each_batch) (Lambda-style). Dropping the
/// stream shuts the consumer down as [`ShutdownHandle::trigger`] does.
#[derive(Debug)]
pub struct Consumer {
    guard: ShutdownOnDrop,
    shards: mpsc::UnboundedReceiver<(ShardInfo, ShardRecords)>,
    failures: mpsc::UnboundedReceiver<Error>,
    worker_id: String,
}

impl Consumer {
    /// Starts the worker; records flow once a stream is taken.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid config; otherwise as
    /// [`Scheduler::start`].
    pub async fn start<S>(config: ConsumerConfig, kinesis: Kinesis, store: S) -> Result<Self>
    where
        S: LeaseStore + std::fmt::Debug + 'static,
    {
        config.validate()?;
        let (shard_sender, shards) = mpsc::unbounded_channel();
        let (failure_sender, failures) = mpsc::unbounded_channel();
        let shared = Arc::new(FeedShared {
            settings: config.feed_settings(),
            total: Arc::new(Budget::new(
                config.max_in_flight_records,
                config.max_in_flight_bytes,
            )),
            shards: shard_sender,
        });
        let factory = move |_: &ShardInfo| Feeder::new(shared.clone());
        // One memory bound for the worker: what the user holds in flight,
        // plus half of it for responses being read and batches not
        // yet delivered.
        let mut scheduler_config = config.scheduler.clone();
        if let Retrieval::Polling(polling) = &mut scheduler_config.retrieval {
            polling.worker_read_bytes = polling
                .worker_read_bytes
                .min(config.max_in_flight_bytes / 2)
                .max(PollingConfig::MIN_WORKER_READ_BYTES);
        }
        let scheduler = Scheduler::start_reporting(
            scheduler_config,
            kinesis,
            store,
            factory,
            Some(failure_sender),
        )
        .await?;
        let worker_id = scheduler.worker_id().to_owned();
        let control = Arc::new(Control {
            scheduler,
            timeout: config.shutdown_grace + Duration::from_secs(10),
        });
        Ok(Self {
            guard: ShutdownOnDrop(control),
            shards,
            failures,
            worker_id,
        })
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// This worker's health (its loops, the lease table, stalled shards),
    /// for liveness and readiness probes; see [`crate::health`].
    pub fn health(&self) -> crate::health::Health {
        self.guard.0.scheduler.health()
    }

    /// The leases this worker holds now (empty once shut down).
    pub fn held_leases(&self) -> Vec<Lease> {
        self.guard.0.scheduler.held_leases()
    }

    /// A handle to shut the consumer down from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            control: self.guard.0.clone(),
        }
    }

    /// One stream per shard, opened when this worker takes the shard's
    /// lease and ended when the lease is lost or handed over, the shard
    /// ends, or the consumer shuts down. Ends after shutdown.
    pub fn shards(self) -> ShardStreams {
        ShardStreams {
            shards: self.shards,
            _guard: self.guard,
        }
    }

    /// Every record of every held shard, merged; each shard's records stay
    /// in shard order. An `Err` item reports a shard this worker had to let
    /// go (for example, access denied); the other shards go on.
    pub fn records(self) -> Records {
        Records(Merge::new(self, |_, records| records))
    }

    /// Records in per-shard batches of up to `max_records`, each yielded
    /// once full or `max_wait` after its first record; merged over shards.
    pub fn chunks(self, max_records: usize, max_wait: Duration) -> Chunks {
        let max_records = max_records.max(1);
        Chunks(Merge::new(self, move |info, records| {
            ShardChunks::new(info, records, max_records, max_wait)
        }))
    }
}

/// The streams of the shards a consumer holds, as they are taken.
#[derive(Debug)]
pub struct ShardStreams {
    shards: mpsc::UnboundedReceiver<(ShardInfo, ShardRecords)>,
    _guard: ShutdownOnDrop,
}

impl Stream for ShardStreams {
    type Item = (ShardInfo, ShardRecords);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.shards.poll_recv(cx)
    }
}

/// One shard's records, in shard order, while this worker holds its lease.
///
/// Keep polling it until it ends: dropped early, the shard's reading stops
/// and its batches are retried with backoff until the lease is handed over
/// or the consumer shuts down (nothing is skipped).
#[derive(Debug)]
pub struct ShardRecords {
    info: ShardInfo,
    receiver: mpsc::UnboundedReceiver<CommittableRecord>,
}

impl ShardRecords {
    /// The shard.
    pub fn shard(&self) -> &ShardInfo {
        &self.info
    }

    /// Batches of up to `max_records`, each yielded once full or
    /// `max_wait` after its first record.
    pub fn chunks(self, max_records: usize, max_wait: Duration) -> ShardChunks {
        let info = self.info.clone();
        ShardChunks::new(info, self, max_records.max(1), max_wait)
    }
}

impl Stream for ShardRecords {
    type Item = CommittableRecord;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

/// One shard's records in batches.
#[derive(Debug)]
pub struct ShardChunks {
    info: ShardInfo,
    records: ShardRecords,
    max_records: usize,
    max_wait: Duration,
    buffer: Vec<CommittableRecord>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ShardChunks {
    fn new(info: ShardInfo, records: ShardRecords, max_records: usize, max_wait: Duration) -> Self {
        Self {
            info,
            records,
            max_records,
            max_wait,
            buffer: Vec::new(),
            deadline: None,
        }
    }

    fn flush(&mut self) -> Option<CommittableBatch> {
        self.deadline = None;
        if self.buffer.is_empty() {
            return None;
        }
        let records = std::mem::take(&mut self.buffer);
        Some(CommittableBatch::new(self.info.clone(), records))
    }
}

impl Stream for ShardChunks {
    type Item = CommittableBatch;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match this.records.poll_next_unpin(cx) {
                Poll::Ready(Some(record)) => {
                    if this.buffer.is_empty() {
                        this.deadline = Some(Box::pin(tokio::time::sleep(this.max_wait)));
                    }
                    this.buffer.push(record);
                    if this.buffer.len() >= this.max_records {
                        return Poll::Ready(this.flush());
                    }
                }
                Poll::Ready(None) => return Poll::Ready(this.flush()),
                Poll::Pending => break,
            }
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(this.flush());
        }
        Poll::Pending
    }
}

/// Per-shard streams merged as shards are taken, with shard failures.
struct Merge<S> {
    shards: Option<mpsc::UnboundedReceiver<(ShardInfo, ShardRecords)>>,
    failures: Option<mpsc::UnboundedReceiver<Error>>,
    open: SelectAll<S>,
    make: Box<dyn Fn(ShardInfo, ShardRecords) -> S + Send + Sync>,
    _guard: ShutdownOnDrop,
}

impl<S> std::fmt::Debug for Merge<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merge")
            .field("shards_open", &self.shards.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Stream + Unpin> Merge<S> {
    fn new(
        consumer: Consumer,
        make: impl Fn(ShardInfo, ShardRecords) -> S + Send + Sync + 'static,
    ) -> Self {
        Self {
            shards: Some(consumer.shards),
            failures: Some(consumer.failures),
            open: SelectAll::new(),
            make: Box::new(make),
            _guard: consumer.guard,
        }
    }

    fn poll_merged(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<S::Item>>> {
        while let Some(shards) = &mut self.shards {
            match shards.poll_recv(cx) {
                Poll::Ready(Some((info, records))) => self.open.push((self.make)(info, records)),
                Poll::Ready(None) => self.shards = None,
                Poll::Pending => break,
            }
        }
        if let Some(failures) = &mut self.failures {
            match failures.poll_recv(cx) {
                Poll::Ready(Some(err)) => return Poll::Ready(Some(Err(err))),
                Poll::Ready(None) => self.failures = None,
                Poll::Pending => {}
            }
        }
        match self.open.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(Ok(item))),
            Poll::Ready(None) if self.shards.is_none() && self.failures.is_none() => {
                Poll::Ready(None)
            }
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// Every record of every held shard, merged (see [`Consumer::records`]).
#[derive(Debug)]
pub struct Records(Merge<ShardRecords>);

impl Stream for Records {
    type Item = Result<CommittableRecord>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_merged(cx)
    }
}

/// Per-shard batches, merged (see [`Consumer::chunks`]).
#[derive(Debug)]
pub struct Chunks(Merge<ShardChunks>);

impl Stream for Chunks {
    type Item = Result<CommittableBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_merged(cx)
    }
}
