//! Reading KPL aggregates: one Kinesis record in, its user records out.

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

use super::proto;
use super::{DIGEST_LEN, MAGIC};
use crate::model::{HashKey, HashKeyRange, SequenceNumber, ShardId};
use crate::record::{KinesisRecord, UserRecord};

/// Why a Kinesis record was delivered whole instead of as user records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PassThroughReason {
    /// The data does not start with the KPL magic bytes: a plain record.
    NotAggregated,
    /// The magic is there but the record is too short to hold a digest.
    TooShort,
    /// The MD5 trailer does not match the protobuf body.
    DigestMismatch,
    /// The body is not a valid `AggregatedRecord` message.
    BadProtobuf,
    /// A user record points outside the partition-key or explicit-hash-key table.
    IndexOutOfRange,
    /// An explicit hash key in the table is not a 128-bit decimal number.
    BadExplicitHashKey,
    /// The aggregate holds no user record; delivering nothing would lose it.
    EmptyAggregate,
}

impl PassThroughReason {
    /// Whether the record looked like an aggregate but could not be read.
    pub fn is_corrupt(self) -> bool {
        self != PassThroughReason::NotAggregated
    }

    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PassThroughReason::NotAggregated => "not_aggregated",
            PassThroughReason::TooShort => "too_short",
            PassThroughReason::DigestMismatch => "digest_mismatch",
            PassThroughReason::BadProtobuf => "bad_protobuf",
            PassThroughReason::IndexOutOfRange => "index_out_of_range",
            PassThroughReason::BadExplicitHashKey => "bad_explicit_hash_key",
            PassThroughReason::EmptyAggregate => "empty_aggregate",
        }
    }
}

/// What to do with an aggregate that holds user records outside the hash-key
/// range of the shard it was read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashRangePolicy {
    /// Drop the whole aggregate, as the Java KCL does. After a reshard the KPL
    /// re-sends every user record of an aggregate that landed in the wrong
    /// shard, so keeping part of it would deliver duplicates. Right for
    /// producers that predict shards (the KPL, `rkcl put --aggregate`).
    #[default]
    DropAggregate,
    /// Keep every user record whatever its hash key. Right for producers that
    /// aggregate keys of several shards without predicting shards (such as
    /// the `aws-kinesis-agg` packages), where dropping would lose records.
    Off,
}

/// One user record read out of an aggregate, before it is given the outer
/// record's sequence number and arrival time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubRecord {
    /// The index inside the aggregate, or `None` for a pass-through record.
    pub sub_sequence_number: Option<u64>,
    /// The user record's partition key.
    pub partition_key: String,
    /// The user record's explicit hash key, if it has one.
    pub explicit_hash_key: Option<String>,
    /// The user record's data (a slice of the outer record, not a copy).
    pub data: Bytes,
}

/// The outcome of [`Deaggregator::decode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The record is delivered as it is, as one user record.
    PassThrough(PassThroughReason),
    /// The aggregate's user records, in order.
    Aggregate(Vec<SubRecord>),
    /// The whole aggregate was dropped under [`HashRangePolicy::DropAggregate`]
    /// because a user record lies outside the shard's range.
    Dropped {
        /// How many user records the aggregate held.
        sub_records: usize,
        /// How many of them lie outside the range.
        outside_range: usize,
    },
}

/// Counters of what a [`Deaggregator`] has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeaggregationStats {
    /// Kinesis records decoded.
    pub records: u64,
    /// Records that were valid aggregates.
    pub aggregates: u64,
    /// User records delivered (sub-records plus pass-through records).
    pub user_records: u64,
    /// Records that were not aggregated and passed through.
    pub not_aggregated: u64,
    /// Records that looked aggregated but were corrupt and passed through.
    pub corrupt: u64,
    /// Aggregates dropped under [`HashRangePolicy::DropAggregate`].
    pub aggregates_dropped: u64,
    /// User records dropped with those aggregates.
    pub sub_records_dropped: u64,
    /// User records outside the shard's range kept under [`HashRangePolicy::Off`].
    pub sub_records_outside_range_kept: u64,
}

/// Checks the framing of a KPL aggregate and parses its body, without
/// filtering.
///
/// # Errors
///
/// The reason the data must pass through whole.
pub(super) fn parse(data: &Bytes) -> Result<proto::AggregatedRecord, PassThroughReason> {
    if !data.starts_with(&MAGIC) {
        return Err(PassThroughReason::NotAggregated);
    }
    if data.len() <= MAGIC.len() + DIGEST_LEN {
        return Err(PassThroughReason::TooShort);
    }
    let body_end = data.len() - DIGEST_LEN;
    let body = data.slice(MAGIC.len()..body_end);
    let digest: [u8; DIGEST_LEN] = Md5::digest(&body).into();
    if data.get(body_end..) != Some(&digest[..]) {
        return Err(PassThroughReason::DigestMismatch);
    }
    let message =
        proto::AggregatedRecord::decode(body).map_err(|_| PassThroughReason::BadProtobuf)?;
    if message.records.is_empty() {
        return Err(PassThroughReason::EmptyAggregate);
    }
    let pk_len = message.partition_key_table.len() as u64;
    let ehk_len = message.explicit_hash_key_table.len() as u64;
    for record in &message.records {
        let pk_ok = record.partition_key_index.is_some_and(|i| i < pk_len);
        let ehk_ok = record.explicit_hash_key_index.is_none_or(|i| i < ehk_len);
        if !pk_ok || !ehk_ok {
            return Err(PassThroughReason::IndexOutOfRange);
        }
        if record.data.is_none() || record.tags.iter().any(|tag| tag.key.is_none()) {
            return Err(PassThroughReason::BadProtobuf);
        }
    }
    Ok(message)
}

/// Turns Kinesis records into user records for one shard: de-aggregates KPL
/// aggregates, passes other records through whole, and applies the shard's
/// hash-key range under a [`HashRangePolicy`].
///
/// Nothing is ever dropped silently: every drop is counted in
/// [`DeaggregationStats`] and logged at `warn` with the shard, the sequence
/// number and the number of user records. Record data is never logged.
///
/// ```
/// use rkcl::{kpl::{Aggregator, Deaggregator, Decoded}, record::ProducerRecord};
///
/// let mut aggregator = Aggregator::new();
/// aggregator.add(ProducerRecord::new("key-1", "a"))?;
/// aggregator.add(ProducerRecord::new("key-2", "b"))?;
/// let aggregate = aggregator.flush().expect("two records wait");
///
/// let mut deaggregator = Deaggregator::new();
/// match deaggregator.decode(&aggregate.data, None) {
///     Decoded::Aggregate(records) => assert_eq!(records.len(), 2),
///     other => panic!("not an aggregate: {other:?}"),
/// }
/// # Ok::<(), rkcl::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct Deaggregator {
    shard_id: Option<ShardId>,
    hash_range: Option<HashKeyRange>,
    policy: HashRangePolicy,
    stats: DeaggregationStats,
}

impl Deaggregator {
    /// A de-aggregator that keeps every user record (no shard range known).
    pub fn new() -> Self {
        Self::default()
    }

    /// A de-aggregator for records read from `shard_id`, whose hash keys lie
    /// in `hash_range`.
    pub fn for_shard(shard_id: ShardId, hash_range: HashKeyRange, policy: HashRangePolicy) -> Self {
        Self {
            shard_id: Some(shard_id),
            hash_range: Some(hash_range),
            policy,
            stats: DeaggregationStats::default(),
        }
    }

    /// A de-aggregator that filters by `hash_range` with no shard to name.
    pub fn for_hash_range(hash_range: HashKeyRange, policy: HashRangePolicy) -> Self {
        Self {
            shard_id: None,
            hash_range: Some(hash_range),
            policy,
            stats: DeaggregationStats::default(),
        }
    }

    /// What has been seen so far.
    pub fn stats(&self) -> DeaggregationStats {
        self.stats
    }

    /// Decodes one record's data. `sequence_number` only names the record in
    /// warnings.
    pub fn decode(&mut self, data: &Bytes, sequence_number: Option<&SequenceNumber>) -> Decoded {
        self.stats.records += 1;
        let message = match parse(data) {
            Ok(message) => message,
            Err(reason) => {
                self.pass_through(reason, sequence_number);
                return Decoded::PassThrough(reason);
            }
        };
        let ehk_table = match self.hash_keys_of_ehk_table(&message) {
            Ok(table) => table,
            Err(reason) => {
                self.pass_through(reason, sequence_number);
                return Decoded::PassThrough(reason);
            }
        };
        let outside_range = self.count_outside_range(&message, &ehk_table);
        let total = message.records.len();
        if outside_range > 0 {
            match self.policy {
                HashRangePolicy::DropAggregate => {
                    self.stats.aggregates_dropped += 1;
                    self.stats.sub_records_dropped += total as u64;
                    tracing::warn!(
                        shard_id = self.shard_name(),
                        sequence_number = %DisplayOption(sequence_number),
                        sub_records = total,
                        outside_range,
                        "dropped a KPL aggregate with user records outside the shard's hash-key range \
                         (the producer re-sends them after a reshard; set the hash-range policy to Off \
                         for producers that do not predict shards)"
                    );
                    return Decoded::Dropped {
                        sub_records: total,
                        outside_range,
                    };
                }
                HashRangePolicy::Off => {
                    self.stats.sub_records_outside_range_kept += outside_range as u64;
                    tracing::debug!(
                        shard_id = self.shard_name(),
                        sequence_number = %DisplayOption(sequence_number),
                        outside_range,
                        "kept user records outside the shard's hash-key range"
                    );
                }
            }
        }
        self.stats.aggregates += 1;
        self.stats.user_records += total as u64;
        Decoded::Aggregate(into_sub_records(message))
    }

    /// De-aggregates one Kinesis record, appending its user records to `out`.
    pub fn deaggregate_into(&mut self, record: KinesisRecord, out: &mut Vec<UserRecord>) {
        match self.decode(&record.data, Some(&record.sequence_number)) {
            Decoded::PassThrough(_) => out.push(UserRecord {
                sequence_number: record.sequence_number,
                sub_sequence_number: None,
                partition_key: record.partition_key,
                explicit_hash_key: None,
                data: record.data,
                approximate_arrival_timestamp: record.approximate_arrival_timestamp,
            }),
            Decoded::Aggregate(sub_records) => {
                out.extend(sub_records.into_iter().map(|sub| UserRecord {
                    sequence_number: record.sequence_number.clone(),
                    sub_sequence_number: sub.sub_sequence_number,
                    partition_key: sub.partition_key,
                    explicit_hash_key: sub.explicit_hash_key,
                    data: sub.data,
                    approximate_arrival_timestamp: record.approximate_arrival_timestamp,
                }))
            }
            Decoded::Dropped { .. } => {}
        }
    }

    /// De-aggregates one Kinesis record into its user records.
    pub fn deaggregate(&mut self, record: KinesisRecord) -> Vec<UserRecord> {
        let mut out = Vec::new();
        self.deaggregate_into(record, &mut out);
        out
    }

    fn pass_through(
        &mut self,
        reason: PassThroughReason,
        sequence_number: Option<&SequenceNumber>,
    ) {
        self.stats.user_records += 1;
        if reason.is_corrupt() {
            self.stats.corrupt += 1;
            tracing::warn!(
                shard_id = self.shard_name(),
                sequence_number = %DisplayOption(sequence_number),
                reason = reason.as_str(),
                "a record with the KPL magic could not be read as an aggregate; delivering it whole"
            );
        } else {
            self.stats.not_aggregated += 1;
        }
    }

    fn shard_name(&self) -> &str {
        self.shard_id.as_ref().map_or("-", ShardId::as_str)
    }

    /// Parses the explicit-hash-key table when filtering needs it.
    fn hash_keys_of_ehk_table(
        &self,
        message: &proto::AggregatedRecord,
    ) -> Result<Vec<HashKey>, PassThroughReason> {
        message
            .explicit_hash_key_table
            .iter()
            .map(|key| {
                key.parse()
                    .map_err(|_| PassThroughReason::BadExplicitHashKey)
            })
            .collect()
    }

    fn count_outside_range(
        &self,
        message: &proto::AggregatedRecord,
        ehk_table: &[HashKey],
    ) -> usize {
        let Some(range) = self.hash_range.filter(|range| !range.is_full()) else {
            return 0;
        };
        // Hash each partition key of the table once, on first use.
        let mut pk_hashes: Vec<Option<HashKey>> = vec![None; message.partition_key_table.len()];
        let mut outside = 0;
        for record in &message.records {
            let hash = match record.explicit_hash_key_index {
                Some(index) => usize::try_from(index)
                    .ok()
                    .and_then(|i| ehk_table.get(i))
                    .copied(),
                None => usize::try_from(record.partition_key_index.unwrap_or(0))
                    .ok()
                    .and_then(|i| {
                        let key = message.partition_key_table.get(i)?;
                        let slot = pk_hashes.get_mut(i)?;
                        Some(*slot.get_or_insert_with(|| HashKey::of_partition_key(key)))
                    }),
            };
            // `parse` checked every index, so `hash` is always known here.
            if hash.is_some_and(|hash| !range.contains(hash)) {
                outside += 1;
            }
        }
        outside
    }
}

fn into_sub_records(message: proto::AggregatedRecord) -> Vec<SubRecord> {
    let proto::AggregatedRecord {
        partition_key_table,
        explicit_hash_key_table,
        records,
    } = message;
    let mut partition_keys = KeyTable::new(
        partition_key_table,
        records.iter().map(|r| r.partition_key_index),
    );
    let mut explicit_hash_keys = KeyTable::new(
        explicit_hash_key_table,
        records.iter().map(|r| r.explicit_hash_key_index),
    );
    records
        .into_iter()
        .zip(0u64..)
        .map(|(record, index)| SubRecord {
            sub_sequence_number: Some(index),
            partition_key: partition_keys
                .take(record.partition_key_index)
                .unwrap_or_default(),
            explicit_hash_key: explicit_hash_keys.take(record.explicit_hash_key_index),
            data: record.data.unwrap_or_default(),
        })
        .collect()
}

/// A key table that hands out its strings, moving each one out on its last
/// use instead of cloning it.
struct KeyTable {
    keys: Vec<Option<String>>,
    uses_left: Vec<u32>,
}

impl KeyTable {
    fn new(keys: Vec<String>, uses: impl Iterator<Item = Option<u64>>) -> Self {
        let mut uses_left = vec![0u32; keys.len()];
        for index in uses.flatten() {
            if let Some(count) = usize::try_from(index)
                .ok()
                .and_then(|i| uses_left.get_mut(i))
            {
                *count += 1;
            }
        }
        Self {
            keys: keys.into_iter().map(Some).collect(),
            uses_left,
        }
    }

    fn take(&mut self, index: Option<u64>) -> Option<String> {
        let i = usize::try_from(index?).ok()?;
        let count = self.uses_left.get_mut(i)?;
        *count = count.saturating_sub(1);
        let slot = self.keys.get_mut(i)?;
        if *count == 0 {
            slot.take()
        } else {
            slot.clone()
        }
    }
}

/// Shows `-` for a missing value in log fields.
struct DisplayOption<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for DisplayOption<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}
