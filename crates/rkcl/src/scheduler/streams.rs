//! The streams a worker reads: opening each one (its record sources, its
//! stream consumer for fan-out), shard syncs over all of them, and, in
//! multi-stream mode, the tracker's refreshes and the deletion of former
//! streams' leases.

use std::collections::HashSet;
use std::sync::Arc;

use super::SchedulerConfig;
use super::worker::Worker;
use crate::aws::{Kinesis, StreamRef};
use crate::error::{Error, Result};
use crate::leases::{Lease, LeaseStore};
use crate::lifecycle::StreamContext;
use crate::model::{InitialPosition, LeaseKey, ShardId, StreamIdentifier};
use crate::processor::RecordProcessorFactory;
use crate::retrieval::{KinesisSources, ReadMemory, Retrieval, resolve_consumer};
use crate::shard_sync::SyncTarget;
use crate::stop::StopReason;
use crate::tracker::{FormerStreams, TrackedStream};

/// One stream a worker reads.
#[derive(Clone, Debug)]
pub(super) struct ReadTarget {
    /// Its identifier in multi-stream mode; `None` for the one stream of a
    /// single-stream application.
    pub(super) id: Option<StreamIdentifier>,
    /// How calls name it.
    pub(super) stream: StreamRef,
    /// Where its shards without a lease start.
    pub(super) initial_position: InitialPosition,
    /// A stream consumer given for it (fan-out).
    pub(super) consumer_arn: Option<String>,
}

impl From<TrackedStream> for ReadTarget {
    fn from(tracked: TrackedStream) -> Self {
        Self {
            id: Some(tracked.id),
            stream: tracked.stream,
            initial_position: tracked.initial_position,
            consumer_arn: tracked.consumer_arn,
        }
    }
}

impl ReadTarget {
    /// Its key among the worker's streams.
    pub(super) fn key(&self) -> Option<String> {
        self.id.as_ref().map(ToString::to_string)
    }

    /// The lease key of its shard `shard`.
    pub(super) fn lease_key(&self, shard: &ShardId) -> LeaseKey {
        match &self.id {
            Some(id) => LeaseKey::for_stream_shard(id, shard),
            None => LeaseKey::for_shard(shard),
        }
    }

    /// What a shard sync of it needs.
    pub(super) fn sync_target(&self) -> SyncTarget<'_> {
        SyncTarget {
            stream: &self.stream,
            key_space: self.id.as_ref(),
            initial: &self.initial_position,
        }
    }
}

/// Refuses a table whose leases are of the other mode: single-stream keys
/// (shard ids) in a multi-stream application or the reverse. The two cannot
/// share a table: their keys would not tell streams apart.
///
/// # Errors
///
/// [`Error::Config`] naming a lease of the other mode.
pub(super) fn check_table_mode(leases: &[Lease], multi_stream: bool, table: &str) -> Result<()> {
    let Some(lease) = leases
        .iter()
        .find(|lease| lease.key.stream_identifier().is_some() != multi_stream)
    else {
        return Ok(());
    };
    let (found, wanted) = if multi_stream {
        ("single-stream", "multi-stream")
    } else {
        ("multi-stream", "single-stream")
    };
    Err(Error::Config(format!(
        "the lease table {table} holds {found} leases (such as {}) and this worker runs in \
         {wanted} mode; the two cannot share a table: give this application another name, or \
         run it in the table's mode",
        lease.key
    )))
}

/// The record sources of one stream, its stream consumer found or
/// registered first when shards are read with enhanced fan-out; its polling
/// readers share `read_memory` with every other stream of the worker.
///
/// # Errors
///
/// The errors of [`resolve_consumer`].
pub(super) async fn open_stream(
    kinesis: &Kinesis,
    config: &SchedulerConfig,
    read: &ReadTarget,
    read_memory: Arc<ReadMemory>,
) -> Result<StreamContext> {
    let consumer_arn = match &config.retrieval {
        Retrieval::FanOut(fanout) => match &read.consumer_arn {
            Some(arn) => Some(arn.clone()),
            None => Some(
                resolve_consumer(kinesis, &read.stream, fanout, &config.application_name)
                    .await?
                    .arn,
            ),
        },
        Retrieval::Polling(_) => None,
    };
    Ok(StreamContext {
        sources: Arc::new(KinesisSources::sharing(
            kinesis.clone(),
            read.stream.clone(),
            config.retrieval.clone(),
            consumer_arn,
            read_memory,
        )),
        initial_timestamp: match read.initial_position {
            InitialPosition::AtTimestamp(at) => Some(at),
            _ => None,
        },
    })
}

impl<S, F> Worker<S, F>
where
    S: LeaseStore + std::fmt::Debug + 'static,
    F: RecordProcessorFactory,
{
    /// The streams read now.
    fn reads(&self) -> Vec<ReadTarget> {
        match &self.tracking {
            Some(tracking) => tracking
                .active
                .values()
                .cloned()
                .map(ReadTarget::from)
                .collect(),
            None => vec![ReadTarget {
                id: None,
                stream: self.config.stream.clone(),
                initial_position: self.config.initial_position,
                consumer_arn: None,
            }],
        }
    }

    /// A shard sync of every stream read, over one read of the table. A
    /// stream whose sync fails is retried at the next one; the others go on.
    pub(super) async fn sync(&mut self) {
        let table = match self.coordinator.store().list().await {
            Ok(table) => table,
            Err(err) => {
                self.sync_streak.failed(&err);
                return;
            }
        };
        let mut failed = None;
        let reads = self.reads();
        let synced = futures_util::future::join_all(reads.iter().map(|read| {
            crate::shard_sync::sync(
                &self.kinesis,
                read.sync_target(),
                self.coordinator.store(),
                &table,
            )
        }))
        .await;
        for (read, synced) in reads.into_iter().zip(synced) {
            match synced {
                Ok((shards, summary)) => {
                    if let Ok(mut known) = self.context.shards.lock() {
                        known.extend(
                            shards
                                .into_iter()
                                .map(|shard| (read.lease_key(&shard.id), shard)),
                        );
                    }
                    tracing::debug!(stream = %read.stream, ?summary, "shard sync");
                }
                Err(err) => {
                    if read.id.is_some() {
                        tracing::warn!(stream = %read.stream, error = %err, "the shard sync of a stream failed");
                    }
                    failed = Some(err);
                }
            }
        }
        match failed {
            Some(err) => {
                self.sync_streak.failed(&err);
            }
            None => self.sync_streak.succeeded(),
        }
    }

    /// Multi-stream mode: asks the tracker for the streams, starts reading
    /// new ones, stops reading those no longer listed (their consumers
    /// finish as on a shutdown and release their leases), and deletes
    /// former streams' leases as the strategy says.
    pub(super) async fn refresh_streams(&mut self) {
        let Some(multi) = self.config.multi_stream.clone() else {
            return;
        };
        let listed = match multi.tracker.streams().await {
            Ok(listed) => listed,
            Err(err) => {
                tracing::warn!(error = %err, "the stream tracker failed; the streams read stay as they are");
                return;
            }
        };
        let Some(tracking) = self.tracking.as_mut() else {
            return;
        };
        let changes = tracking
            .update(&self.kinesis, &listed, &multi.new_stream_position)
            .await;
        let mut opened = Vec::new();
        for added in changes.added {
            let read = ReadTarget::from(added);
            match open_stream(&self.kinesis, &self.config, &read, self.read_memory.clone()).await {
                Ok(context) => {
                    tracing::info!(stream = %read.stream, stream_identifier = ?read.key(), initial_position = ?read.initial_position, "a new stream is read");
                    opened.push((read.key(), Arc::new(context)));
                }
                Err(err) => {
                    tracing::warn!(stream = %read.stream, error = %err, "cannot read a new stream; trying again at the next refresh");
                    if let (Some(tracking), Some(id)) = (self.tracking.as_mut(), &read.id) {
                        tracking.active.remove(&id.to_string());
                    }
                }
            }
        }
        let removed: HashSet<String> = changes
            .removed
            .iter()
            .map(|gone| gone.id.to_string())
            .collect();
        if let Ok(mut streams) = self.context.streams.write() {
            for (key, context) in &opened {
                streams.insert(key.clone(), context.clone());
            }
        }
        if let Some(tracking) = &self.tracking {
            self.coordinator.set_scope(tracking.scope());
            crate::metrics::STREAMS_READ
                .gauge(&[self.coordinator.worker_id()])
                .set(tracking.active.len() as f64);
        }
        for gone in &changes.removed {
            tracing::info!(stream_identifier = %gone.id, "a stream is no longer listed; its shards' consumers finish and release their leases");
        }
        let leaving: Vec<LeaseKey> = self
            .consumers
            .keys()
            .filter(|key| {
                key.stream_identifier()
                    .is_some_and(|id| removed.contains(id))
            })
            .cloned()
            .collect();
        for key in leaving {
            if let Some(stop) = self.consumers.get(&key) {
                stop.request(StopReason::Shutdown);
            }
        }
        if !opened.is_empty() {
            self.sync().await;
        }
        self.delete_former_streams(multi.former_streams).await;
    }

    /// Deletes the leases of former streams whose time has come under
    /// `strategy`: only leases no worker holds, each conditional on the
    /// counter read (so a lease taken meanwhile is left alone).
    async fn delete_former_streams(&mut self, strategy: FormerStreams) {
        if strategy == FormerStreams::Keep {
            return;
        }
        let named: HashSet<String> = match (&strategy, &self.config.multi_stream) {
            (FormerStreams::DeleteNamed { .. }, Some(multi)) => {
                match multi.tracker.streams_to_delete().await {
                    Ok(ids) => ids.iter().map(ToString::to_string).collect(),
                    Err(err) => {
                        tracing::warn!(error = %err, "the stream tracker could not name the streams to delete");
                        return;
                    }
                }
            }
            _ => HashSet::new(),
        };
        let table = match self.coordinator.store().list().await {
            Ok(table) => table,
            Err(err) => {
                tracing::warn!(error = %err, "could not read the lease table to clean up former streams");
                return;
            }
        };
        let in_table: HashSet<String> = table
            .iter()
            .filter_map(|lease| lease.key.stream_identifier().map(str::to_owned))
            .collect();
        let Some(tracking) = self.tracking.as_mut() else {
            return;
        };
        let due =
            tracking.due_for_deletion(strategy, &in_table, &named, tokio::time::Instant::now());
        for lease in &table {
            let Some(stream) = lease.key.stream_identifier() else {
                continue;
            };
            if !due.iter().any(|id| id == stream) {
                continue;
            }
            if let Some(owner) = &lease.owner {
                tracing::debug!(lease_key = %lease.key, owner, "a former stream's lease is still held; deleting it later");
                continue;
            }
            match self.coordinator.store().delete(lease).await {
                Ok(true) => {
                    tracing::info!(lease_key = %lease.key, "deleted a lease of a former stream")
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(lease_key = %lease.key, error = %err, "could not delete a lease of a former stream")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ExtendedSequenceNumber;

    fn lease(key: &str) -> Lease {
        Lease::new(
            LeaseKey::parse(key).unwrap(),
            ExtendedSequenceNumber::TrimHorizon,
        )
    }

    #[test]
    fn a_table_of_the_other_mode_is_refused_naming_a_lease() {
        let single = [lease("shardId-000000000000")];
        let multi = [lease("1:orders:5:shardId-000000000000")];
        assert!(check_table_mode(&single, false, "app").is_ok());
        assert!(check_table_mode(&multi, true, "app").is_ok());
        assert!(check_table_mode(&[], true, "app").is_ok());
        for (leases, multi_stream, named) in [
            (&single, true, "shardId-000000000000"),
            (&multi, false, "1:orders:5:shardId-000000000000"),
        ] {
            match check_table_mode(leases, multi_stream, "app") {
                Err(Error::Config(message)) => {
                    assert!(message.contains(named), "{message}");
                    assert!(message.contains("app"), "{message}");
                }
                other => panic!("expected a config error, got {other:?}"),
            }
        }
        let mixed = [single[0].clone(), multi[0].clone()];
        assert!(check_table_mode(&mixed, true, "app").is_err());
        assert!(check_table_mode(&mixed, false, "app").is_err());
    }
}
