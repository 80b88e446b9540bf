//! The Stream API's config and its builder.

use std::time::Duration;

use super::feeder::FeedSettings;
use crate::error::{Error, Result};
use crate::scheduler::SchedulerConfig;

/// How a [`Consumer`](super::Consumer) runs: the scheduler's config plus checkpoints,
/// in-flight limits and shutdown. Made with [`ConsumerConfig::builder`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The worker: application, stream, leases, polling.
    pub scheduler: SchedulerConfig,
    /// Checkpoint a shard after this many commits. Default: 10,000.
    pub checkpoint_every_records: u64,
    /// Checkpoint a shard at least this often while its watermark moves.
    /// Default: 60 s.
    pub checkpoint_interval: Duration,
    /// The most records of one shard in flight (delivered and not yet below
    /// its watermark); at the limit the shard stops fetching. Default:
    /// 10,000.
    pub max_in_flight_records_per_shard: usize,
    /// The most bytes (data and partition keys) of one shard in flight.
    /// Default: 16 MiB.
    pub max_in_flight_bytes_per_shard: usize,
    /// The most records in flight over all shards. Default: 100,000.
    pub max_in_flight_records: usize,
    /// The most bytes in flight over all shards. Default: 64 MiB. With
    /// polling, the worker's read memory
    /// ([`PollingConfig::worker_read_bytes`](crate::retrieval::PollingConfig::worker_read_bytes):
    /// responses being decoded and batches not yet delivered) is lowered to
    /// half of it: what reading holds beside the records in flight
    /// is bounded by it too.
    pub max_in_flight_bytes: usize,
    /// Warn (naming the shard and position) when the oldest uncommitted
    /// record of a shard has waited this long. Default: 60 s.
    pub uncommitted_warning_after: Duration,
    /// At shutdown, how long to wait for records in hand to be committed
    /// before the final checkpoint. Default: 10 s.
    pub shutdown_grace: Duration,
    /// Commit a record whose handle is dropped uncommitted. Default: off (a
    /// dropped record holds the checkpoint back, so it is read again after
    /// a restart).
    pub commit_on_drop: bool,
}

impl ConsumerConfig {
    /// A builder with the defaults around a scheduler config.
    pub fn builder(scheduler: SchedulerConfig) -> ConsumerConfigBuilder {
        ConsumerConfigBuilder {
            config: Self {
                scheduler,
                checkpoint_every_records: 10_000,
                checkpoint_interval: Duration::from_secs(60),
                max_in_flight_records_per_shard: 10_000,
                max_in_flight_bytes_per_shard: 16 << 20,
                max_in_flight_records: 100_000,
                max_in_flight_bytes: 64 << 20,
                uncommitted_warning_after: Duration::from_secs(60),
                shutdown_grace: Duration::from_secs(10),
                commit_on_drop: false,
            },
        }
    }

    /// Checks every value.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first value out of range.
    pub fn validate(&self) -> Result<()> {
        self.scheduler.validate()?;
        if self.checkpoint_every_records == 0 || self.checkpoint_interval.is_zero() {
            return Err(Error::Config(
                "checkpoint_every_records and checkpoint_interval must be positive".into(),
            ));
        }
        if self.max_in_flight_records_per_shard == 0
            || self.max_in_flight_bytes_per_shard == 0
            || self.max_in_flight_records < self.max_in_flight_records_per_shard
            || self.max_in_flight_bytes < self.max_in_flight_bytes_per_shard
        {
            return Err(Error::Config(
                "in-flight limits must be positive and the totals at least the per-shard ones"
                    .into(),
            ));
        }
        if self.uncommitted_warning_after.is_zero() {
            return Err(Error::Config(
                "uncommitted_warning_after must be positive".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn feed_settings(&self) -> FeedSettings {
        FeedSettings {
            checkpoint_every: self.checkpoint_every_records,
            checkpoint_interval: self.checkpoint_interval,
            max_records_per_shard: self.max_in_flight_records_per_shard,
            max_bytes_per_shard: self.max_in_flight_bytes_per_shard,
            max_bytes: self.max_in_flight_bytes,
            warn_after: self.uncommitted_warning_after,
            shutdown_grace: self.shutdown_grace,
            commit_on_drop: self.commit_on_drop,
        }
    }
}

crate::config::config_builder! {
    /// Builds a [`ConsumerConfig`]; [`build`](Self::build) validates it.
    ConsumerConfigBuilder => ConsumerConfig {
        checkpoint_every_records: u64,
        checkpoint_interval: Duration,
        max_in_flight_records_per_shard: usize,
        max_in_flight_bytes_per_shard: usize,
        max_in_flight_records: usize,
        max_in_flight_bytes: usize,
        uncommitted_warning_after: Duration,
        shutdown_grace: Duration,
        commit_on_drop: bool,
    }
}

impl ConsumerConfigBuilder {
    /// Checkpoint after `records` commits or `interval`, whichever comes
    /// first. Default: 10,000 commits or 60 s.
    pub fn checkpoint_every(self, records: u64, interval: Duration) -> Self {
        self.checkpoint_every_records(records)
            .checkpoint_interval(interval)
    }

    /// The in-flight limits of one shard. Default: 10,000 records, 16 MiB.
    pub fn max_in_flight_per_shard(self, records: usize, bytes: usize) -> Self {
        self.max_in_flight_records_per_shard(records)
            .max_in_flight_bytes_per_shard(bytes)
    }

    /// The in-flight limits over all shards. Default: 100,000 records,
    /// 64 MiB.
    pub fn max_in_flight(self, records: usize, bytes: usize) -> Self {
        self.max_in_flight_records(records)
            .max_in_flight_bytes(bytes)
    }
}
