//! Reading a whole stream in shard-hierarchy order, without leases.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use super::{
    KinesisSources, OpenRecordSource, Retrieval, ShardBatch, ShardEnd, ShardEvent, ShardGraph,
    resolve_consumer,
};
use crate::aws::{Kinesis, ShardFilter, StreamRef};
use crate::backoff::{Backoff, retry};
use crate::error::{Error, Result};
use crate::model::{ShardId, StartingPosition};

/// What a [`StreamReader`] yields.
#[derive(Clone, Debug)]
pub enum StreamEvent {
    /// Records of one shard.
    Records(ShardBatch),
    /// A shard was read to its end; its children start once all their
    /// parents have ended.
    ShardEnded(ShardEnd),
    /// Every shard being read is at its tip and no child waits to start.
    /// Sent again after the reader falls behind and catches up once more.
    CaughtUp,
}

/// How much the reader buffers between its tasks, in events.
const EVENT_BUFFER: usize = 16;

/// The stream consumer a reader with fan-out reads through when its config
/// names none. Two readers reading at once through one consumer would take
/// each other's subscriptions: give each its own name.
pub const DEFAULT_CONSUMER_NAME: &str = "rkcl-reader";

/// The pauses between tries of ListShards when it is throttled or fails.
const LIST_SHARDS_BACKOFF: Backoff = Backoff {
    base: std::time::Duration::from_millis(100),
    max: std::time::Duration::from_secs(5),
};

/// Reads every shard of a stream: from the oldest shards down through their
/// children (or from the open shards, for `LATEST`), each child only after
/// all its parents have been read to their end, so the records of a
/// partition key come out in the order they were written across splits and
/// merges. No leases and no checkpoints: every reader sees everything.
///
/// ```no_run
/// # #[allow(dead_code)]
/// # async fn example(kinesis: rkcl::Kinesis) -> rkcl::Result<()> {
/// use rkcl::{aws::StreamRef, model::StartingPosition, retrieval::{PollingConfig, StreamEvent, StreamReader}};
///
/// let stream = StreamRef::parse("orders");
/// let mut reader =
///     StreamReader::start(kinesis, stream, StartingPosition::TrimHorizon, PollingConfig::default())
///         .await?;
/// let mut records = 0;
/// while let Some(event) = reader.next().await {
///     match event? {
///         StreamEvent::Records(batch) => records += batch.records.len(),
///         StreamEvent::ShardEnded(end) => tracing::info!(shard_id = %end.shard_id, "shard ended"),
///         StreamEvent::CaughtUp => break,
///     }
/// }
/// tracing::info!(records, "read the stream to its tip");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct StreamReader {
    receiver: mpsc::Receiver<Result<StreamEvent>>,
    cancel: CancellationToken,
}

impl StreamReader {
    /// Lists the stream's shards and starts reading at `start`, by polling
    /// or through enhanced fan-out as `retrieval` says (fan-out reads through
    /// the configured stream consumer, or [`DEFAULT_CONSUMER_NAME`],
    /// registered if missing):
    /// `TRIM_HORIZON` and `AT_TIMESTAMP` begin with the oldest shards,
    /// `LATEST` with the open ones, and a sequence number with its shard
    /// only (and then its descendants). Children are read from
    /// `TRIM_HORIZON` (or the same timestamp).
    ///
    /// # Errors
    ///
    /// [`Error::ResourceNotFound`] for a missing stream or shard,
    /// [`Error::Config`] for an invalid `config`; any error of ListShards.
    pub async fn start(
        kinesis: Kinesis,
        stream: StreamRef,
        start: StartingPosition,
        retrieval: impl Into<Retrieval>,
    ) -> Result<Self> {
        Self::start_at(kinesis, stream, start, None, retrieval.into()).await
    }

    /// Like [`start`](Self::start), reading only `shard_id` from `start` and
    /// then its descendants.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub async fn start_shard(
        kinesis: Kinesis,
        stream: StreamRef,
        shard_id: ShardId,
        start: StartingPosition,
        retrieval: impl Into<Retrieval>,
    ) -> Result<Self> {
        Self::start_at(kinesis, stream, start, Some(shard_id), retrieval.into()).await
    }

    async fn start_at(
        kinesis: Kinesis,
        stream: StreamRef,
        start: StartingPosition,
        only: Option<ShardId>,
        retrieval: Retrieval,
    ) -> Result<Self> {
        retrieval.validate()?;
        // From LATEST only the open shards matter; Kinesis can leave out the
        // closed ones.
        let filter = matches!(start, StartingPosition::Latest).then_some(ShardFilter::AtLatest);
        let shards = retry(LIST_SHARDS_BACKOFF, "ListShards", || {
            kinesis.list_shards_with(&stream, filter.as_ref())
        })
        .await?;
        let graph = ShardGraph::new(shards);
        let first: Vec<(ShardId, StartingPosition)> = match &only {
            Some(id) => {
                if graph.get(id).is_none() {
                    return Err(Error::ResourceNotFound {
                        service: crate::error::Service::Kinesis,
                        message: format!("stream {stream} has no shard {id}"),
                    });
                }
                vec![(id.clone(), start.clone())]
            }
            None => {
                let shards: Vec<_> = match start {
                    StartingPosition::Latest => graph.open_shards().collect(),
                    _ => graph.roots().collect(),
                };
                shards
                    .into_iter()
                    .map(|s| (s.id.clone(), start.clone()))
                    .collect()
            }
        };
        let child_start = match start {
            StartingPosition::AtTimestamp(time) => StartingPosition::AtTimestamp(time),
            _ => StartingPosition::TrimHorizon,
        };
        let (sender, receiver) = mpsc::channel(EVENT_BUFFER);
        let cancel = CancellationToken::new();
        // Fan-out reads through a stream consumer, registered if missing.
        let consumer_arn = match &retrieval {
            Retrieval::FanOut(config) => Some(
                resolve_consumer(&kinesis, &stream, config, DEFAULT_CONSUMER_NAME)
                    .await?
                    .arn,
            ),
            _ => None,
        };
        let sources: Arc<dyn OpenRecordSource> = Arc::new(KinesisSources::new(
            kinesis.clone(),
            stream.clone(),
            retrieval,
            consumer_arn,
        ));
        let mut coordinator = Coordinator {
            kinesis,
            stream,
            sources,
            cancel: cancel.clone(),
            graph,
            child_start,
            finished: BTreeSet::new(),
            started: BTreeSet::new(),
            at_tip: BTreeMap::new(),
            caught_up_sent: false,
            forwarders: JoinSet::new(),
            output: sender,
        };
        let token = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = coordinator.run(first) => {}
            }
        });
        Ok(Self { receiver, cancel })
    }

    /// The next event, or `None` when every shard has ended (or after an
    /// error).
    ///
    /// # Errors
    ///
    /// An error of a shard that retrying cannot fix; reading stops.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event not yet returned stays queued.
    pub async fn next(&mut self) -> Option<Result<StreamEvent>> {
        self.receiver.recv().await
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts shards when their parents end and merges their events.
struct Coordinator {
    kinesis: Kinesis,
    stream: StreamRef,
    /// Opens each shard's source, as the reader's retrieval setting says.
    sources: Arc<dyn OpenRecordSource>,
    /// The reader's token: every shard's source stops under it.
    cancel: CancellationToken,
    graph: ShardGraph,
    child_start: StartingPosition,
    finished: BTreeSet<ShardId>,
    started: BTreeSet<ShardId>,
    /// The shards being read, and whether each is at its tip.
    at_tip: BTreeMap<ShardId, bool>,
    caught_up_sent: bool,
    forwarders: JoinSet<()>,
    output: mpsc::Sender<Result<StreamEvent>>,
}

impl Coordinator {
    async fn run(&mut self, first: Vec<(ShardId, StartingPosition)>) {
        let (events, mut inbox) = mpsc::channel::<Result<ShardEvent>>(EVENT_BUFFER);
        for (shard_id, position) in first {
            if let Err(err) = self.start_shard(&shard_id, position, &events) {
                let _ = self.output.send(Err(err)).await;
                return;
            }
        }
        while !self.at_tip.is_empty() {
            let Some(event) = inbox.recv().await else {
                return;
            };
            let forward = match event {
                Ok(ShardEvent::Records(batch)) => {
                    self.at_tip
                        .insert(batch.shard_id.clone(), batch.is_at_tip());
                    StreamEvent::Records(batch)
                }
                Ok(ShardEvent::End(end)) => {
                    self.at_tip.remove(&end.shard_id);
                    self.finished.insert(end.shard_id.clone());
                    if let Err(err) = self.start_children(&end, &events).await {
                        let _ = self.output.send(Err(err)).await;
                        return;
                    }
                    StreamEvent::ShardEnded(end)
                }
                Err(err) => {
                    let _ = self.output.send(Err(err)).await;
                    return;
                }
            };
            if self.output.send(Ok(forward)).await.is_err() {
                return;
            }
            let caught_up = self.at_tip.values().all(|&tip| tip);
            if caught_up && !self.caught_up_sent {
                self.caught_up_sent = true;
                if self.output.send(Ok(StreamEvent::CaughtUp)).await.is_err() {
                    return;
                }
            } else if !caught_up {
                self.caught_up_sent = false;
            }
        }
    }

    fn start_shard(
        &mut self,
        shard_id: &ShardId,
        position: StartingPosition,
        events: &mpsc::Sender<Result<ShardEvent>>,
    ) -> Result<()> {
        let Some(shard) = self.graph.get(shard_id) else {
            return Ok(());
        };
        let mut source = self
            .sources
            .open(shard, position, self.cancel.child_token())?;
        tracing::debug!(shard_id = %shard_id, "reading shard");
        self.started.insert(shard_id.clone());
        self.at_tip.insert(shard_id.clone(), false);
        let events = events.clone();
        self.forwarders.spawn(async move {
            while let Some(event) = source.next_event().await {
                if events.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    /// Starts each child of `end` whose parents have all ended.
    async fn start_children(
        &mut self,
        end: &ShardEnd,
        events: &mpsc::Sender<Result<ShardEvent>>,
    ) -> Result<()> {
        let unknown = end.children.iter().any(|c| self.graph.get(c).is_none());
        if unknown {
            self.graph
                .extend(self.kinesis.list_shards(&self.stream).await?);
        }
        let mut children: Vec<ShardId> = end.children.clone();
        children.extend(self.graph.children(&end.shard_id).cloned());
        children.sort();
        children.dedup();
        for child in children {
            let ready = self
                .graph
                .get(&child)
                .is_some_and(|shard| self.graph.parents_finished(shard, &self.finished));
            if ready && !self.started.contains(&child) {
                self.start_shard(&child, self.child_start.clone(), events)?;
            }
        }
        Ok(())
    }
}
