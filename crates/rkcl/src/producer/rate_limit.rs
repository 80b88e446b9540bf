//! Pacing of one shard's writes: a token bucket of records and one of bytes,
//! each holding at most one second of its rate.
//!
//! Pure: the caller passes the time, so the tests need no clock.

use std::time::{Duration, Instant};

/// Kinesis' write limit of one shard, in Kinesis records per second.
pub(crate) const SHARD_RECORDS_PER_SECOND: f64 = 1_000.0;
/// Kinesis' write limit of one shard, in bytes (data and partition keys)
/// per second.
pub(crate) const SHARD_BYTES_PER_SECOND: f64 = 1024.0 * 1024.0;

/// One shard's budget of records and bytes. A bucket holds at most one
/// second of its rate and refills continuously. A write is allowed when the
/// bucket holds its cost, or when the bucket is full (so a write larger than
/// one second's budget still goes, and leaves a debt to pay back first).
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    records_per_second: f64,
    bytes_per_second: f64,
    records: f64,
    bytes: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket at `percent` of a shard's write limits.
    pub(crate) fn for_shard(percent: u32, now: Instant) -> Self {
        let share = f64::from(percent) / 100.0;
        Self::new(
            SHARD_RECORDS_PER_SECOND * share,
            SHARD_BYTES_PER_SECOND * share,
            now,
        )
    }

    /// A full bucket with these rates (each above zero).
    pub(crate) fn new(records_per_second: f64, bytes_per_second: f64, now: Instant) -> Self {
        Self {
            records_per_second,
            bytes_per_second,
            records: records_per_second,
            bytes: bytes_per_second,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = self.updated.max(now);
        self.records =
            (self.records + elapsed * self.records_per_second).min(self.records_per_second);
        self.bytes = (self.bytes + elapsed * self.bytes_per_second).min(self.bytes_per_second);
    }

    fn allows(&self, records: f64, bytes: f64) -> bool {
        let records_ok = self.records >= records || self.records >= self.records_per_second;
        let bytes_ok = self.bytes >= bytes || self.bytes >= self.bytes_per_second;
        records_ok && bytes_ok
    }

    /// Takes `records` Kinesis records of `bytes` bytes if the bucket allows
    /// them now; whether it did.
    pub(crate) fn try_take(&mut self, records: usize, bytes: usize, now: Instant) -> bool {
        self.refill(now);
        let (records, bytes) = (records as f64, bytes as f64);
        if !self.allows(records, bytes) {
            return false;
        }
        self.records -= records;
        self.bytes -= bytes;
        true
    }

    /// How long until the bucket allows `records` records of `bytes` bytes
    /// (zero if it does now).
    pub(crate) fn wait_for(&mut self, records: usize, bytes: usize, now: Instant) -> Duration {
        self.refill(now);
        let wait = |have: f64, need: f64, rate: f64| {
            // A cost above the capacity waits until the bucket is full.
            let need = need.min(rate);
            if have >= need {
                0.0
            } else {
                (need - have) / rate
            }
        };
        let seconds = wait(self.records, records as f64, self.records_per_second).max(wait(
            self.bytes,
            bytes as f64,
            self.bytes_per_second,
        ));
        Duration::from_secs_f64(seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_bucket_paces_at_its_share_of_the_write_limits() {
        let start = Instant::now();
        let mut bucket = TokenBucket::for_shard(50, start);
        // A full bucket holds one second: 500 records at 50 %.
        let mut taken = 0;
        while bucket.try_take(1, 100, start) {
            taken += 1;
        }
        assert_eq!(taken, 500);
        assert!(bucket.wait_for(1, 100, start) > Duration::ZERO);
        // 100 ms later, 50 more.
        let later = start + Duration::from_millis(100);
        let mut more = 0;
        while bucket.try_take(1, 100, later) {
            more += 1;
        }
        assert_eq!(more, 50);
        assert!(bucket.wait_for(10, 100, later) >= Duration::from_millis(19));
    }

    #[test]
    fn bytes_limit_as_well_as_records() {
        let start = Instant::now();
        let mut bucket = TokenBucket::for_shard(100, start);
        // 100 KiB writes: ten fill the one MiB second, whatever the count.
        let mut taken = 0;
        while bucket.try_take(1, 100 * 1024, start) {
            taken += 1;
        }
        assert_eq!(taken, 10, "the byte budget, not the record budget, ran out");
    }

    #[test]
    fn a_write_above_one_second_goes_from_a_full_bucket_and_leaves_a_debt() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 1000.0, start);
        assert!(bucket.try_take(1, 5000, start), "a full bucket lets it go");
        assert!(!bucket.try_take(1, 1, start));
        // The debt of 4,000 bytes plus one byte takes four seconds to pay.
        let wait = bucket.wait_for(1, 1, start);
        assert!(wait >= Duration::from_secs(4), "{wait:?}");
        assert!(!bucket.try_take(1, 1, start + Duration::from_secs(3)));
        assert!(bucket.try_take(1, 1, start + Duration::from_secs(5)));
    }
}
