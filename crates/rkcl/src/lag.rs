//! How far behind a consumer group is, seen from outside the group: for each
//! lease, the records and the time between its checkpoint and the tip of its
//! shard; and when each lease was last renewed.
//!
//! Lag is measured with cheap reads, never by reading a shard to its end:
//! one GetShardIterator after the checkpoint and one GetRecords with a
//! bounded limit per shard. Kinesis' own `MillisBehindLatest` is used only
//! where nothing else tells (it is 0 on some local stand-ins), so the time
//! behind is taken from the arrival time of the first record not yet
//! checkpointed.
//!
//! ```no_run
//! use rkcl::{Kinesis, aws::StreamRef, lag, leases::LeaseStore};
//!
//! # #[allow(dead_code)]
//! # async fn example(kinesis: Kinesis, store: rkcl::DynamoDbLeaseStore) -> rkcl::Result<()> {
//! let stream = StreamRef::parse("orders");
//! let leases = store.list().await?;
//! let shards = kinesis.list_shards(&stream).await?;
//! for lag in lag::measure(&kinesis, &stream, &leases, &shards, lag::DEFAULT_RECORD_LIMIT).await {
//!     tracing::info!(shard_id = %lag.shard_id, records = ?lag.behind.records(), "behind");
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;

use crate::aws::{Kinesis, StreamRef};
use crate::error::Error;
use crate::leases::Lease;
use crate::model::{ExtendedSequenceNumber, LeaseKey, ShardId, StartingPosition};
use crate::shards::Shard;

/// The default bound on the records one measurement reads from a shard
/// (the most one GetRecords call returns).
pub const DEFAULT_RECORD_LIMIT: u32 = 10_000;

/// How many shards are measured at once.
const CONCURRENCY: usize = 16;

/// The records between a checkpoint and the tip of its shard, as one
/// bounded read counted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordsBehind {
    /// The Kinesis records counted (a KPL aggregate counts once).
    pub count: u64,
    /// `true` when more records remain past those counted: `count` is then
    /// a lower bound.
    pub more: bool,
}

impl RecordsBehind {
    /// Nothing behind.
    pub const ZERO: Self = Self {
        count: 0,
        more: false,
    };
}

impl std::ops::Add for RecordsBehind {
    type Output = Self;

    /// The sum of two counts (saturating); more remain if they do in either.
    fn add(self, other: Self) -> Self {
        Self {
            count: self.count.saturating_add(other.count),
            more: self.more || other.more,
        }
    }
}

impl fmt::Display for RecordsBehind {
    /// `12`, or `≥10000` when more remain.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.more {
            write!(f, "≥{}", self.count)
        } else {
            write!(f, "{}", self.count)
        }
    }
}

/// How far behind one shard's checkpoint is, or why that was not measured.
#[derive(Debug)]
#[non_exhaustive]
pub enum Behind {
    /// Measured.
    Measured {
        /// The records after the checkpoint.
        records: RecordsBehind,
        /// Now minus the arrival time of the first record after the
        /// checkpoint (zero when there is none); `None` when Kinesis gave no
        /// arrival time.
        time: Option<Duration>,
    },
    /// A shard that has no lease yet.
    NoLease,
    /// A lease whose shard is no longer listed (trimmed, or the stream was
    /// re-created).
    ShardGone,
    /// A lease checkpointed at `AT_TIMESTAMP`: the time is not stored in the
    /// lease, so where the shard will be read from is not known here.
    AtTimestamp,
    /// The reads failed.
    Failed(Error),
}

impl Behind {
    /// The records behind, when measured.
    pub fn records(&self) -> Option<RecordsBehind> {
        match self {
            Self::Measured { records, .. } => Some(*records),
            _ => None,
        }
    }

    /// The time behind, when measured.
    pub fn time(&self) -> Option<Duration> {
        match self {
            Self::Measured { time, .. } => *time,
            _ => None,
        }
    }
}

/// One shard of a consumer group: its lease, its shard, and how far behind
/// the lease's checkpoint is.
#[derive(Debug)]
pub struct ShardLag {
    /// The shard.
    pub shard_id: ShardId,
    /// Its lease; `None` for a shard without a lease.
    pub lease: Option<Lease>,
    /// The shard as ListShards describes it; `None` when it is no longer
    /// listed.
    pub shard: Option<Shard>,
    /// How far behind the checkpoint is.
    pub behind: Behind,
}

impl ShardLag {
    /// The shard's parents, from the shard listing or else the lease.
    pub fn parents(&self) -> Vec<ShardId> {
        match (&self.shard, &self.lease) {
            (Some(shard), _) => shard.parents().cloned().collect(),
            (None, Some(lease)) => lease.parent_shard_ids.clone(),
            (None, None) => Vec::new(),
        }
    }
}

/// Measures how far behind every lease's checkpoint is, and lists the shards
/// without a lease and the leases whose shard is gone, in shard-id order.
///
/// Each lease costs one GetShardIterator (after the checkpoint; at the start
/// of the shard for `TRIM_HORIZON`) and one GetRecords of at most
/// `record_limit` records (1 to 10,000), which count against the shard's
/// read limits (5 calls and 2 MiB per second, shared with the consumers).
/// Leases at `SHARD_END` or `LATEST` are 0 behind without a call. Shards
/// are measured up to 16 at once.
///
/// A lease checkpointed inside a KPL aggregate counts from the next Kinesis
/// record: the rest of that aggregate is not counted.
///
/// # Cancel safety
///
/// Cancel safe: it only reads.
pub async fn measure(
    kinesis: &Kinesis,
    stream: &StreamRef,
    leases: &[Lease],
    shards: &[Shard],
    record_limit: u32,
) -> Vec<ShardLag> {
    let listed: HashMap<&ShardId, &Shard> = shards.iter().map(|s| (&s.id, s)).collect();
    let leased: HashSet<ShardId> = leases.iter().map(Lease::shard_id).collect();
    let measured: Vec<ShardLag> = futures_util::stream::iter(leases)
        .map(|lease| {
            let shard_id = lease.shard_id();
            let shard = listed.get(&shard_id).map(|s| (*s).clone());
            async move {
                let behind = match &shard {
                    None => Behind::ShardGone,
                    Some(_) => {
                        measure_one(kinesis, stream, &shard_id, &lease.checkpoint, record_limit)
                            .await
                    }
                };
                ShardLag {
                    shard_id,
                    lease: Some(lease.clone()),
                    shard,
                    behind,
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let unleased = shards
        .iter()
        .filter(|s| !leased.contains(&s.id))
        .map(|s| ShardLag {
            shard_id: s.id.clone(),
            lease: None,
            shard: Some(s.clone()),
            behind: Behind::NoLease,
        });
    let mut all: Vec<ShardLag> = measured.into_iter().chain(unleased).collect();
    all.sort_by(|a, b| {
        let key = |l: &ShardLag| l.lease.as_ref().map(|l| l.key.clone());
        (a.shard_id.as_str(), key(a)).cmp(&(b.shard_id.as_str(), key(b)))
    });
    all
}

/// How far behind one checkpoint in one listed shard is.
async fn measure_one(
    kinesis: &Kinesis,
    stream: &StreamRef,
    shard_id: &ShardId,
    checkpoint: &ExtendedSequenceNumber,
    record_limit: u32,
) -> Behind {
    let position = match checkpoint {
        ExtendedSequenceNumber::ShardEnd | ExtendedSequenceNumber::Latest => {
            return Behind::Measured {
                records: RecordsBehind::ZERO,
                time: Some(Duration::ZERO),
            };
        }
        ExtendedSequenceNumber::AtTimestamp => return Behind::AtTimestamp,
        ExtendedSequenceNumber::TrimHorizon => StartingPosition::TrimHorizon,
        ExtendedSequenceNumber::Sequence {
            sequence_number, ..
        } => StartingPosition::AfterSequenceNumber(sequence_number.clone()),
    };
    let iterator = match kinesis
        .get_shard_iterator(stream, shard_id, &position)
        .await
    {
        Ok(Some(iterator)) => iterator,
        // No iterator: a closed shard with nothing after the checkpoint.
        Ok(None) => {
            return Behind::Measured {
                records: RecordsBehind::ZERO,
                time: Some(Duration::ZERO),
            };
        }
        Err(err) => return Behind::Failed(err),
    };
    let limit = record_limit.clamp(1, DEFAULT_RECORD_LIMIT);
    match kinesis.get_records(&iterator, limit).await {
        Ok(out) => {
            let read = Read {
                count: u64::try_from(out.records.len()).unwrap_or(u64::MAX),
                first_arrival: out
                    .records
                    .first()
                    .and_then(|r| r.approximate_arrival_timestamp),
                shard_ended: out.next_shard_iterator.is_none(),
                millis_behind_latest: out.millis_behind_latest,
            };
            let (records, time) = read.behind(limit, SystemTime::now());
            tracing::debug!(shard_id = %shard_id, %records, ?time, "measured lag");
            Behind::Measured { records, time }
        }
        Err(err) => Behind::Failed(err),
    }
}

/// What one bounded GetRecords after a checkpoint said.
#[derive(Clone, Copy, Debug)]
struct Read {
    count: u64,
    first_arrival: Option<SystemTime>,
    shard_ended: bool,
    millis_behind_latest: Option<u64>,
}

impl Read {
    /// The records and time behind that this read shows, at `now`.
    ///
    /// More records remain when the read was full, or when Kinesis says the
    /// last record read is behind the tip (it may return fewer records than
    /// it has). A read that reached the end of a closed shard counted
    /// everything.
    fn behind(&self, limit: u32, now: SystemTime) -> (RecordsBehind, Option<Duration>) {
        let more = !self.shard_ended
            && (self.count >= u64::from(limit) || self.millis_behind_latest.is_some_and(|m| m > 0));
        let records = RecordsBehind {
            count: self.count,
            more,
        };
        let time = match (self.count, self.first_arrival) {
            (0, _) if !more => Some(Duration::ZERO),
            (0, _) => self.millis_behind_latest.map(Duration::from_millis),
            (_, Some(arrival)) => Some(now.duration_since(arrival).unwrap_or(Duration::ZERO)),
            (_, None) => None,
        };
        (records, time)
    }
}

/// How long ago a lease was last renewed, as far as the observations tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewalAge {
    /// The counter moved between two observations: the last renewal (or
    /// checkpoint, or take) was at most this long ago.
    AtMost(Duration),
    /// The counter has not moved since it was first observed: the last
    /// renewal was at least this long ago.
    AtLeast(Duration),
}

impl fmt::Display for RenewalAge {
    /// `≤1.5s` or `≥4.0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AtMost(age) => write!(f, "≤{:.1}s", age.as_secs_f64()),
            Self::AtLeast(age) => write!(f, "≥{:.1}s", age.as_secs_f64()),
        }
    }
}

/// When each lease's counter last moved, from reads of the lease table.
///
/// The lease table stores no renewal time (the Java KCL keeps it in memory
/// only), but every renewal, take and checkpoint raises the counter. So
/// the table is read more than once: a counter that moved between two reads
/// was renewed after the earlier one; a counter that never moved was not
/// renewed since the first read that saw it. The more often the table is
/// read, the closer the bounds.
#[derive(Debug, Default)]
pub struct RenewalWatch {
    seen: HashMap<LeaseKey, Seen>,
    last_observed: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    counter: u64,
    /// For a counter seen to move: the last read before it moved; otherwise
    /// the first read that saw it.
    since: Instant,
    moved: bool,
}

impl RenewalWatch {
    /// A watch that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one read of the lease table, made at `at`. Leases no longer
    /// in the table are forgotten.
    pub fn observe(&mut self, leases: &[Lease], at: Instant) {
        let previous = self.last_observed.replace(at);
        let mut seen = HashMap::with_capacity(leases.len());
        for lease in leases {
            let entry = match (self.seen.get(&lease.key), previous) {
                (Some(old), _) if old.counter == lease.counter => *old,
                (Some(_), Some(before)) => Seen {
                    counter: lease.counter,
                    since: before,
                    moved: true,
                },
                _ => Seen {
                    counter: lease.counter,
                    since: at,
                    moved: false,
                },
            };
            seen.insert(lease.key.clone(), entry);
        }
        self.seen = seen;
    }

    /// How long ago the lease with `key` was last renewed, at `now`; `None`
    /// for a lease never observed.
    pub fn age(&self, key: &LeaseKey, now: Instant) -> Option<RenewalAge> {
        let seen = self.seen.get(key)?;
        let age = now.saturating_duration_since(seen.since);
        Some(if seen.moved {
            RenewalAge::AtMost(age)
        } else {
            RenewalAge::AtLeast(age)
        })
    }
}

/// The leases, records and time behind of one worker, summed over its
/// leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerLag {
    /// The leases the worker owns.
    pub leases: usize,
    /// The records behind over its measured leases.
    pub records: RecordsBehind,
    /// The most time behind of its leases, when any was measured.
    pub max_time: Option<Duration>,
}

/// Per-worker totals of `lags`, keyed by owner; unowned leases are under
/// `None`, and shards without a lease are left out.
pub fn per_worker(lags: &[ShardLag]) -> BTreeMap<Option<String>, WorkerLag> {
    let mut totals: BTreeMap<Option<String>, WorkerLag> = BTreeMap::new();
    for lag in lags {
        let Some(lease) = &lag.lease else { continue };
        let total = totals.entry(lease.owner.clone()).or_insert(WorkerLag {
            leases: 0,
            records: RecordsBehind::ZERO,
            max_time: None,
        });
        total.leases += 1;
        if let Some(records) = lag.behind.records() {
            total.records = total.records + records;
        }
        total.max_time = total.max_time.max(lag.behind.time());
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u32 = 100;

    fn read(count: u64, ended: bool, millis: Option<u64>) -> Read {
        Read {
            count,
            first_arrival: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100)),
            shard_ended: ended,
            millis_behind_latest: millis,
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(130)
    }

    #[test]
    fn a_short_read_at_the_tip_counts_everything() {
        let (records, time) = read(12, false, Some(0)).behind(LIMIT, now());
        assert_eq!(
            records,
            RecordsBehind {
                count: 12,
                more: false
            }
        );
        assert_eq!(time, Some(Duration::from_secs(30)));
        assert_eq!(records.to_string(), "12");
    }

    #[test]
    fn a_full_read_is_a_lower_bound() {
        let (records, _) = read(100, false, Some(0)).behind(LIMIT, now());
        assert_eq!(
            records,
            RecordsBehind {
                count: 100,
                more: true
            }
        );
        assert_eq!(records.to_string(), "≥100");
    }

    #[test]
    fn kinesis_saying_behind_means_more_even_when_short() {
        let (records, time) = read(0, false, Some(5_000)).behind(LIMIT, now());
        assert_eq!(
            records,
            RecordsBehind {
                count: 0,
                more: true
            }
        );
        assert_eq!(time, Some(Duration::from_secs(5)));
    }

    #[test]
    fn the_end_of_a_closed_shard_counts_everything_even_when_full() {
        let (records, _) = read(100, true, None).behind(LIMIT, now());
        assert_eq!(
            records,
            RecordsBehind {
                count: 100,
                more: false
            }
        );
        let (records, time) = read(0, true, None).behind(LIMIT, now());
        assert_eq!((records, time), (RecordsBehind::ZERO, Some(Duration::ZERO)));
    }

    #[test]
    fn arrivals_in_the_future_are_zero_behind() {
        let mut ahead = read(1, false, Some(0));
        ahead.first_arrival = Some(now() + Duration::from_secs(2));
        assert_eq!(ahead.behind(LIMIT, now()).1, Some(Duration::ZERO));
        ahead.first_arrival = None;
        assert_eq!(ahead.behind(LIMIT, now()).1, None);
    }

    #[test]
    fn sums_keep_the_lower_bound() {
        let exact = RecordsBehind {
            count: 3,
            more: false,
        };
        let bound = RecordsBehind {
            count: 7,
            more: true,
        };
        assert_eq!(
            exact + exact,
            RecordsBehind {
                count: 6,
                more: false
            }
        );
        assert_eq!(
            exact + bound,
            RecordsBehind {
                count: 10,
                more: true
            }
        );
        let max = RecordsBehind {
            count: u64::MAX,
            more: false,
        };
        assert_eq!((max + exact).count, u64::MAX);
    }

    fn lease(key: &str, counter: u64, owner: Option<&str>) -> Lease {
        Lease {
            counter,
            owner: owner.map(str::to_owned),
            ..Lease::new(
                LeaseKey::parse(key).unwrap(),
                ExtendedSequenceNumber::TrimHorizon,
            )
        }
    }

    #[test]
    fn renewal_ages_are_bounded_by_the_reads() {
        let start = Instant::now();
        let s = Duration::from_secs;
        let mut watch = RenewalWatch::new();
        watch.observe(&[lease("a", 1, None), lease("b", 1, None)], start);
        watch.observe(&[lease("a", 2, None), lease("b", 1, None)], start + s(2));
        watch.observe(&[lease("a", 2, None), lease("b", 1, None)], start + s(4));
        let key = |k: &str| LeaseKey::parse(k).unwrap();
        // "a" moved between the reads at 0 s and 2 s.
        assert_eq!(
            watch.age(&key("a"), start + s(5)),
            Some(RenewalAge::AtMost(s(5)))
        );
        assert_eq!(
            watch.age(&key("b"), start + s(5)),
            Some(RenewalAge::AtLeast(s(5)))
        );
        assert_eq!(
            RenewalAge::AtMost(Duration::from_millis(1_500)).to_string(),
            "≤1.5s"
        );
        // A lease gone from the table is forgotten; a new one starts a bound.
        watch.observe(&[lease("c", 9, None)], start + s(6));
        assert_eq!(watch.age(&key("a"), start + s(6)), None);
        assert_eq!(
            watch.age(&key("c"), start + s(7)),
            Some(RenewalAge::AtLeast(s(1)))
        );
    }

    fn measured(owner: Option<&str>, key: &str, count: u64, more: bool, secs: u64) -> ShardLag {
        ShardLag {
            shard_id: ShardId::from(key),
            lease: Some(lease(key, 1, owner)),
            shard: None,
            behind: Behind::Measured {
                records: RecordsBehind { count, more },
                time: Some(Duration::from_secs(secs)),
            },
        }
    }

    #[test]
    fn workers_sum_their_leases_only() {
        let lags = vec![
            measured(Some("w1"), "s0", 5, false, 3),
            measured(Some("w1"), "s1", 10, true, 9),
            measured(Some("w2"), "s2", 0, false, 0),
            measured(None, "s3", 4, false, 1),
            ShardLag {
                shard_id: ShardId::from("s4"),
                lease: None,
                shard: None,
                behind: Behind::NoLease,
            },
        ];
        let totals = per_worker(&lags);
        assert_eq!(totals.len(), 3);
        assert_eq!(
            totals[&Some("w1".to_owned())],
            WorkerLag {
                leases: 2,
                records: RecordsBehind {
                    count: 15,
                    more: true
                },
                max_time: Some(Duration::from_secs(9)),
            }
        );
        assert_eq!(totals[&Some("w2".to_owned())].records, RecordsBehind::ZERO);
        assert_eq!(totals[&None].leases, 1);
    }
}
