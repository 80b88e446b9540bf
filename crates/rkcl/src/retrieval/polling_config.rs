//! How a [`PollingSource`](super::PollingSource) reads a shard:
//! [`PollingConfig`], its limits and pacing rules, and [`ReadBudget`], the
//! token bucket that keeps a shard's reads within its byte rate. Pure: the
//! reader passes the clock in.

use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::kpl::HashRangePolicy;

/// How a [`PollingSource`](super::PollingSource) reads a shard.
///
/// The defaults leave room for other applications on the same stream: at
/// most two GetRecords calls per second per shard while caught up (Kinesis
/// allows five per shard, shared by every reader), and as many as allowed
/// while behind.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PollingConfig {
    /// The most records one GetRecords call asks for (1 to 10,000).
    /// Default: [`DEFAULT_MAX_RECORDS`](Self::DEFAULT_MAX_RECORDS).
    pub max_records: u32,
    /// The pause between calls while caught up. Default:
    /// [`DEFAULT_IDLE_INTERVAL`](Self::DEFAULT_IDLE_INTERVAL). Each pause
    /// is 90 to 100 % of it, and a reader's first pause at the tip a random
    /// share of it, so that shards do not call in step; it is never less
    /// than [`min_call_interval`](Self::min_call_interval).
    pub idle_interval: Duration,
    /// How long a shard may go without a record before its idle interval
    /// starts to lengthen. Default:
    /// [`DEFAULT_QUIET_AFTER`](Self::DEFAULT_QUIET_AFTER).
    pub quiet_after: Duration,
    /// The longest pause between calls on a quiet shard. A shard without a
    /// record for [`quiet_after`](Self::quiet_after) doubles its idle
    /// interval, and doubles it again after each further `quiet_after`
    /// without a record, up to this cap; the first record brings it back to
    /// [`idle_interval`](Self::idle_interval). A record put on a quiet shard
    /// waits up to this long before it is read. Equal to `idle_interval`,
    /// quiet shards are read at the idle interval. Default:
    /// [`DEFAULT_MAX_QUIET_INTERVAL`](Self::DEFAULT_MAX_QUIET_INTERVAL).
    pub max_quiet_interval: Duration,
    /// The memory every polling reader of one worker may hold at once, in
    /// bytes: GetRecords responses being read and decoded, batches fetched
    /// ahead, and the batch the record processor is handling. A call's
    /// `Limit` is chosen so that its response fits what is left (from the
    /// size of the shard's records so far), and a reader waits while the
    /// worker's readers hold it all. The Stream API lowers it to half of
    /// its in-flight byte limit. Default:
    /// [`DEFAULT_WORKER_READ_BYTES`](Self::DEFAULT_WORKER_READ_BYTES).
    pub worker_read_bytes: usize,
    /// The most GetRecords calls all the polling readers of one worker have
    /// under way at once; a reader waits for a free one. Each call under
    /// way holds a connection and its buffers, so this bounds a worker's
    /// connections to Kinesis. Default:
    /// [`DEFAULT_WORKER_CALLS`](Self::DEFAULT_WORKER_CALLS).
    pub worker_calls: usize,
    /// The shortest time between two calls on a shard; Kinesis allows five
    /// calls per second per shard. Default: 200 ms.
    pub min_call_interval: Duration,
    /// The read budget per shard, as a token bucket holding one second of
    /// budget: a reader may take a burst, then waits until the bucket has
    /// refilled. Default: 2 MiB/s, Kinesis' limit.
    pub bytes_per_second: u64,
    /// The most user records fetched ahead of the consumer. Default: 30,000.
    pub prefetch_records: usize,
    /// The most bytes fetched ahead of the consumer. Default: 16 MiB. One
    /// GetRecords response larger than this still passes, alone.
    pub prefetch_bytes: usize,
    /// The most batches fetched ahead of the consumer. Default: 3.
    pub prefetch_batches: usize,
    /// The first pause after a throttled or failed call; it doubles up to
    /// [`max_backoff`](Self::max_backoff), with full jitter. Default: 200 ms.
    pub base_backoff: Duration,
    /// The longest pause after failed calls. Default: 10 s.
    pub max_backoff: Duration,
    /// What to do with KPL aggregates holding user records outside the
    /// shard's hash-key range. Default: [`HashRangePolicy::DropAggregate`].
    pub hash_range_policy: HashRangePolicy,
}

impl PollingConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> PollingConfigBuilder {
        PollingConfigBuilder {
            config: Self::default(),
        }
    }

    /// The default and largest number of records per GetRecords call.
    pub const DEFAULT_MAX_RECORDS: u32 = 10_000;
    /// The default pause between calls while caught up.
    pub const DEFAULT_IDLE_INTERVAL: Duration = Duration::from_millis(500);
    /// The default time without a record after which a shard's idle
    /// interval starts to lengthen.
    pub const DEFAULT_QUIET_AFTER: Duration = Duration::from_secs(10);
    /// The default cap of a quiet shard's pause between calls.
    pub const DEFAULT_MAX_QUIET_INTERVAL: Duration = Duration::from_secs(3);
    /// The default memory of a worker's polling readers: 256 MiB.
    pub const DEFAULT_WORKER_READ_BYTES: usize = 256 << 20;
    /// The default number of GetRecords calls of one worker under way at
    /// once.
    pub const DEFAULT_WORKER_CALLS: usize = 16;
    /// The least memory of a worker's polling readers: 1 MiB.
    pub const MIN_WORKER_READ_BYTES: usize = 1 << 20;

    /// Checks the values against each other and Kinesis' limits.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first value out of range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=10_000).contains(&self.max_records) {
            return Err(Error::Config(format!(
                "max_records must be 1 to 10000, got {}",
                self.max_records
            )));
        }
        if self.min_call_interval < Duration::from_millis(200) {
            return Err(Error::Config(
                "min_call_interval below 200 ms exceeds Kinesis' 5 calls per second per shard"
                    .into(),
            ));
        }
        if self.idle_interval < self.min_call_interval {
            return Err(Error::Config(
                "idle_interval must be at least min_call_interval".into(),
            ));
        }
        if self.quiet_after.is_zero() || self.max_quiet_interval < self.idle_interval {
            return Err(Error::Config(
                "quiet_after must be positive and max_quiet_interval at least idle_interval".into(),
            ));
        }
        if self.worker_read_bytes < Self::MIN_WORKER_READ_BYTES {
            return Err(Error::Config(format!(
                "worker_read_bytes must be at least {}, got {}",
                Self::MIN_WORKER_READ_BYTES,
                self.worker_read_bytes
            )));
        }
        if self.worker_calls == 0 {
            return Err(Error::Config("worker_calls must be at least 1".into()));
        }
        if self.bytes_per_second == 0 || self.prefetch_records == 0 || self.prefetch_bytes == 0 {
            return Err(Error::Config(
                "bytes_per_second, prefetch_records and prefetch_bytes must be positive".into(),
            ));
        }
        if self.prefetch_batches == 0 {
            return Err(Error::Config("prefetch_batches must be at least 1".into()));
        }
        if self.base_backoff.is_zero() || self.base_backoff > self.max_backoff {
            return Err(Error::Config(
                "base_backoff must be positive and at most max_backoff".into(),
            ));
        }
        Ok(())
    }

    /// The pauses between retries of failed calls.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff {
            base: self.base_backoff,
            max: self.max_backoff,
        }
    }

    /// Whether a call that returned `records` Kinesis records found the
    /// reader caught up: the next call may wait the idle interval.
    pub(crate) fn caught_up(&self, records: usize, millis_behind: Option<u64>) -> bool {
        millis_behind.is_none_or(|m| m == 0) && records < self.max_records as usize
    }

    /// `share` (0 to 1) of `interval`, never below the shortest call
    /// interval.
    fn paced_pause(&self, interval: Duration, share: f64) -> Duration {
        interval
            .mul_f64(share.clamp(0.0, 1.0))
            .max(self.min_call_interval)
    }

    /// The interval between calls on a caught-up shard that has had no
    /// record for `quiet_for`: the idle interval until
    /// [`quiet_after`](Self::quiet_after), then twice as long for each
    /// `quiet_after` begun since, up to
    /// [`max_quiet_interval`](Self::max_quiet_interval).
    pub(crate) fn quiet_interval(&self, quiet_for: Duration) -> Duration {
        let Some(beyond) = quiet_for.checked_sub(self.quiet_after) else {
            return self.idle_interval;
        };
        let doublings = (beyond.as_secs_f64() / self.quiet_after.as_secs_f64())
            .floor()
            .min(30.0) as i32
            + 1;
        self.idle_interval
            .mul_f64(2f64.powi(doublings))
            .min(self.max_quiet_interval)
            .max(self.idle_interval)
    }

    /// The pause from the start of one call to the start of the next on a
    /// caught-up shard that has had no record for `quiet_for`: `share` (0
    /// to 1) of its [`quiet_interval`](Self::quiet_interval), never below
    /// the shortest call interval. (Behind, the pause is the shortest call
    /// interval; the byte budget is kept apart, by [`ReadBudget`].)
    pub(crate) fn quiet_pause(&self, quiet_for: Duration, share: f64) -> Duration {
        self.paced_pause(self.quiet_interval(quiet_for), share)
    }
}

crate::config::config_builder! {
    /// Builds a [`PollingConfig`]; [`build`](Self::build) validates it.
    PollingConfigBuilder => PollingConfig {
        max_records: u32,
        idle_interval: Duration,
        min_call_interval: Duration,
        quiet_after: Duration,
        max_quiet_interval: Duration,
        worker_read_bytes: usize,
        worker_calls: usize,
        bytes_per_second: u64,
        prefetch_records: usize,
        prefetch_batches: usize,
        prefetch_bytes: usize,
        base_backoff: Duration,
        max_backoff: Duration,
        hash_range_policy: HashRangePolicy,
    }
}

impl Default for PollingConfig {
    fn default() -> Self {
        Self {
            max_records: Self::DEFAULT_MAX_RECORDS,
            idle_interval: Self::DEFAULT_IDLE_INTERVAL,
            min_call_interval: Duration::from_millis(200),
            quiet_after: Self::DEFAULT_QUIET_AFTER,
            max_quiet_interval: Self::DEFAULT_MAX_QUIET_INTERVAL,
            worker_read_bytes: Self::DEFAULT_WORKER_READ_BYTES,
            worker_calls: Self::DEFAULT_WORKER_CALLS,
            bytes_per_second: 2 * 1024 * 1024,
            prefetch_records: 30_000,
            prefetch_bytes: 16 * 1024 * 1024,
            prefetch_batches: 3,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            hash_range_policy: HashRangePolicy::DropAggregate,
        }
    }
}

/// A shard's read budget in bytes: a token bucket that holds one second of
/// budget and refills at `bytes_per_second`. A call may overdraw it; the next
/// call then waits until it is back to zero.
#[derive(Debug)]
pub(crate) struct ReadBudget {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl ReadBudget {
    /// A full bucket at `now`, refilling at `bytes_per_second`.
    pub(crate) fn new(bytes_per_second: u64, now: Instant) -> Self {
        let rate = bytes_per_second as f64;
        Self {
            rate,
            tokens: rate,
            updated: now,
        }
    }

    /// Spends `bytes` at `now` and says from when the next call may run.
    pub(crate) fn spend(&mut self, bytes: usize, now: Instant) -> Instant {
        let refill = now.saturating_duration_since(self.updated).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate) - bytes as f64;
        self.updated = now;
        if self.tokens >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_at_once_while_behind_and_idles_when_caught_up() {
        let config = PollingConfig::default();
        assert!(!config.caught_up(10, Some(5_000)));
        assert!(!config.caught_up(10_000, Some(0)));
        assert!(config.caught_up(3, Some(0)));
        assert!(config.caught_up(0, None));
        let fresh = Duration::ZERO;
        assert_eq!(config.quiet_pause(fresh, 1.0), Duration::from_millis(500));
        assert_eq!(config.quiet_pause(fresh, 0.9), Duration::from_millis(450));
        // Never more than the idle interval, never less than the shortest
        // call interval.
        assert_eq!(config.quiet_pause(fresh, 1.5), Duration::from_millis(500));
        assert_eq!(config.quiet_pause(fresh, 0.1), Duration::from_millis(200));
    }

    #[test]
    fn a_quiet_shard_backs_off_gradually_up_to_the_cap() {
        let config = PollingConfig::default();
        let secs = Duration::from_secs;
        // Full speed until quiet for 10 s.
        assert_eq!(config.quiet_interval(secs(0)), Duration::from_millis(500));
        assert_eq!(
            config.quiet_interval(Duration::from_millis(9_999)),
            Duration::from_millis(500)
        );
        // Then twice as long for each 10 s begun, up to the 3 s cap.
        assert_eq!(config.quiet_interval(secs(10)), secs(1));
        assert_eq!(config.quiet_interval(secs(19)), secs(1));
        assert_eq!(config.quiet_interval(secs(20)), secs(2));
        assert_eq!(config.quiet_interval(secs(29)), secs(2));
        assert_eq!(config.quiet_interval(secs(30)), secs(3));
        assert_eq!(config.quiet_interval(secs(86_400 * 365)), secs(3));
        // The pause is a share of it, as at the idle interval.
        assert_eq!(
            config.quiet_pause(secs(20), 0.9),
            Duration::from_millis(1_800)
        );
        assert_eq!(config.quiet_pause(secs(0), 0.1), Duration::from_millis(200));
        // A cap equal to the idle interval turns the back-off off.
        let off = PollingConfig {
            max_quiet_interval: config.idle_interval,
            ..PollingConfig::default()
        };
        assert_eq!(off.quiet_interval(secs(3_600)), off.idle_interval);
    }

    #[test]
    fn the_byte_budget_allows_a_burst_then_keeps_the_rate() {
        let start = Instant::now();
        let mut budget = ReadBudget::new(2_000_000, start);
        // One second of budget may be spent at once.
        assert_eq!(budget.spend(1_500_000, start), start);
        assert_eq!(budget.spend(500_000, start), start);
        // Overdrawn by 4 MB: two seconds until the next call.
        assert_eq!(
            budget.spend(4_000_000, start),
            start + Duration::from_secs(2)
        );
        // Two seconds later the debt is paid and nothing is saved beyond it.
        let later = start + Duration::from_secs(2);
        assert_eq!(budget.spend(0, later), later);
        // Idle time refills at most one second of budget.
        let much_later = later + Duration::from_secs(60);
        assert_eq!(budget.spend(2_000_000, much_later), much_later);
        assert_eq!(
            budget.spend(1_000_000, much_later),
            much_later + Duration::from_millis(500)
        );
    }

    #[test]
    fn config_is_checked() {
        assert!(PollingConfig::default().validate().is_ok());
        let too_fast = PollingConfig {
            min_call_interval: Duration::from_millis(100),
            ..PollingConfig::default()
        };
        assert!(too_fast.validate().is_err());
        let idle_too_short = PollingConfig {
            idle_interval: Duration::from_millis(150),
            ..PollingConfig::default()
        };
        assert!(idle_too_short.validate().is_err());
        let too_many = PollingConfig {
            max_records: 10_001,
            ..PollingConfig::default()
        };
        assert!(too_many.validate().is_err());
        let cap_below_idle = PollingConfig {
            max_quiet_interval: Duration::from_millis(300),
            ..PollingConfig::default()
        };
        assert!(cap_below_idle.validate().is_err());
        let no_quiet_time = PollingConfig {
            quiet_after: Duration::ZERO,
            ..PollingConfig::default()
        };
        assert!(no_quiet_time.validate().is_err());
        let tiny_worker = PollingConfig {
            worker_read_bytes: 1_000,
            ..PollingConfig::default()
        };
        assert!(tiny_worker.validate().is_err());
        let no_calls = PollingConfig {
            worker_calls: 0,
            ..PollingConfig::default()
        };
        assert!(no_calls.validate().is_err());
    }
}
