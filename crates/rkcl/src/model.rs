//! The words of the domain: shards, sequence numbers, hash keys and positions.
//!
//! Everything here is plain data with no IO. Sequence numbers and hash keys are
//! 128-bit numbers and compare as numbers, never as text (`"9" > "10"` as text).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::Error;

/// The identifier of a shard, such as `shardId-000000000001`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(String);

impl ShardId {
    /// Wraps a shard id as Kinesis spells it.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The shard id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ShardId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl From<String> for ShardId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

/// A Kinesis sequence number: a decimal number of up to 129 digits.
///
/// Sequence numbers are far wider than 128 bits (a typical one has 56
/// digits), so the digits are kept, without leading zeros, and compared as
/// numbers: a shorter number is smaller, equal lengths compare digit by
/// digit. The digits are shared, so a clone is cheap.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SequenceNumber(Arc<str>);

impl SequenceNumber {
    /// The most digits Kinesis uses in a sequence number.
    pub const MAX_DIGITS: usize = 129;

    /// The sequence number with the given numeric value.
    pub fn from_u128(value: u128) -> Self {
        Self(Arc::from(value.to_string()))
    }

    /// The decimal digits, without leading zeros.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for SequenceNumber {
    type Err = Error;

    /// Parses a decimal sequence number.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the text is empty, has a character other
    /// than an ASCII digit, or has more than [`MAX_DIGITS`](Self::MAX_DIGITS)
    /// digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > Self::MAX_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidInput(format!("not a sequence number: {s:?}")));
        }
        let digits = s.trim_start_matches('0');
        Ok(Self(Arc::from(if digits.is_empty() {
            "0"
        } else {
            digits
        })))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a non-empty string of ASCII digits as an unsigned 128-bit number.
pub(crate) fn parse_decimal_u128(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u128>().ok()
}

/// A position in a shard as a checkpoint records it: a sequence number and,
/// for a user record inside a KPL aggregate, its sub-sequence number, or one
/// of the sentinels the Java KCL stores in the lease table.
///
/// The order is the Java KCL's: `AT_TIMESTAMP` < `TRIM_HORIZON` < `LATEST` <
/// every real sequence number < `SHARD_END`; equal sequence numbers compare by
/// sub-sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExtendedSequenceNumber {
    /// Start at a point in time given by the configuration.
    AtTimestamp,
    /// Start at the oldest record still in the shard.
    TrimHorizon,
    /// Start after the newest record at the time the shard is opened.
    Latest,
    /// A record, or a user record inside an aggregate.
    Sequence {
        /// The Kinesis sequence number of the (outer) record.
        sequence_number: SequenceNumber,
        /// The index of the user record inside its aggregate; 0 otherwise.
        sub_sequence_number: u64,
    },
    /// Every record of a closed shard has been processed.
    ShardEnd,
}

impl ExtendedSequenceNumber {
    /// The sentinel text stored in the lease table for `AT_TIMESTAMP`.
    pub const AT_TIMESTAMP: &'static str = "AT_TIMESTAMP";
    /// The sentinel text stored in the lease table for `TRIM_HORIZON`.
    pub const TRIM_HORIZON: &'static str = "TRIM_HORIZON";
    /// The sentinel text stored in the lease table for `LATEST`.
    pub const LATEST: &'static str = "LATEST";
    /// The sentinel text stored in the lease table for `SHARD_END`.
    pub const SHARD_END: &'static str = "SHARD_END";

    /// A position at a sequence number and sub-sequence number.
    pub fn new(sequence_number: SequenceNumber, sub_sequence_number: u64) -> Self {
        Self::Sequence {
            sequence_number,
            sub_sequence_number,
        }
    }

    /// Parses the stored form: a sentinel name or a decimal sequence number,
    /// with the sub-sequence number stored beside it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for text that is neither a sentinel nor a
    /// sequence number.
    pub fn parse(checkpoint: &str, sub_sequence_number: u64) -> Result<Self, Error> {
        Ok(match checkpoint {
            Self::AT_TIMESTAMP => Self::AtTimestamp,
            Self::TRIM_HORIZON => Self::TrimHorizon,
            Self::LATEST => Self::Latest,
            Self::SHARD_END => Self::ShardEnd,
            other => Self::new(other.parse()?, sub_sequence_number),
        })
    }

    /// The sequence number, if this is a real position rather than a sentinel.
    pub fn sequence_number(&self) -> Option<&SequenceNumber> {
        match self {
            Self::Sequence {
                sequence_number, ..
            } => Some(sequence_number),
            _ => None,
        }
    }

    /// The sub-sequence number stored beside the checkpoint (0 for sentinels).
    pub const fn sub_sequence_number(&self) -> u64 {
        match self {
            Self::Sequence {
                sub_sequence_number,
                ..
            } => *sub_sequence_number,
            _ => 0,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Self::AtTimestamp => 0,
            Self::TrimHorizon => 1,
            Self::Latest => 2,
            Self::Sequence { .. } => 3,
            Self::ShardEnd => 4,
        }
    }
}

impl Ord for ExtendedSequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (
                Self::Sequence {
                    sequence_number: a,
                    sub_sequence_number: sa,
                },
                Self::Sequence {
                    sequence_number: b,
                    sub_sequence_number: sb,
                },
            ) => a.cmp(b).then(sa.cmp(sb)),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for ExtendedSequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ExtendedSequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AtTimestamp => f.write_str(Self::AT_TIMESTAMP),
            Self::TrimHorizon => f.write_str(Self::TRIM_HORIZON),
            Self::Latest => f.write_str(Self::LATEST),
            Self::ShardEnd => f.write_str(Self::SHARD_END),
            Self::Sequence {
                sequence_number,
                sub_sequence_number,
            } => write!(f, "{sequence_number}/{sub_sequence_number}"),
        }
    }
}

/// Where a consumer starts reading a shard that has no checkpoint yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest record still in the shard.
    TrimHorizon,
    /// Only records written after the consumer starts.
    Latest,
    /// The first record written at or after the given time.
    AtTimestamp(SystemTime),
}

/// Where a shard iterator starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartingPosition {
    /// The oldest record still in the shard.
    TrimHorizon,
    /// After the newest record at the time the iterator is made.
    Latest,
    /// The first record written at or after the given time.
    AtTimestamp(SystemTime),
    /// The record with this sequence number.
    AtSequenceNumber(SequenceNumber),
    /// The record after the one with this sequence number.
    AfterSequenceNumber(SequenceNumber),
    /// The user record after a checkpoint at (sequence number, sub-sequence
    /// number): the shard is read from the sequence number and user records
    /// at or below the checkpoint are skipped, so a checkpoint inside a KPL
    /// aggregate resumes at the next user record of that aggregate.
    AfterCheckpoint(SequenceNumber, u64),
}

/// A 128-bit hash key. Kinesis routes a record to the shard whose hash-key
/// range holds the record's explicit hash key, or else the MD5 of its
/// partition key read as a big-endian unsigned integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HashKey(u128);

impl HashKey {
    /// The smallest hash key.
    pub const MIN: HashKey = HashKey(0);
    /// The largest hash key, 2^128 - 1.
    pub const MAX: HashKey = HashKey(u128::MAX);

    /// The hash key with the given value.
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The numeric value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The hash key Kinesis routes a partition key to: MD5 of its UTF-8 bytes.
    pub fn of_partition_key(partition_key: &str) -> Self {
        use md5::{Digest, Md5};
        let digest: [u8; 16] = Md5::digest(partition_key.as_bytes()).into();
        Self(u128::from_be_bytes(digest))
    }

    /// The hash key of a record: its explicit hash key when it has one, else
    /// the MD5 of its partition key.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the explicit hash key is not a decimal
    /// number below 2^128.
    pub fn of_record(partition_key: &str, explicit_hash_key: Option<&str>) -> Result<Self, Error> {
        match explicit_hash_key {
            Some(ehk) => ehk.parse(),
            None => Ok(Self::of_partition_key(partition_key)),
        }
    }
}

impl FromStr for HashKey {
    type Err = Error;

    /// Parses a decimal hash key, as Kinesis writes them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the text is not a decimal number below 2^128.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_decimal_u128(s)
            .map(Self)
            .ok_or_else(|| Error::InvalidInput(format!("not a 128-bit hash key: {s:?}")))
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An inclusive range of hash keys, as a shard owns one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashKeyRange {
    start: HashKey,
    end: HashKey,
}

impl HashKeyRange {
    /// Every hash key: the range of a stream with one shard.
    pub const FULL: HashKeyRange = HashKeyRange {
        start: HashKey::MIN,
        end: HashKey::MAX,
    };

    /// The range from `start` to `end`, both included.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `start` is above `end`.
    pub fn new(start: HashKey, end: HashKey) -> Result<Self, Error> {
        if start > end {
            return Err(Error::InvalidInput(format!(
                "hash-key range starts at {start}, after its end {end}"
            )));
        }
        Ok(Self { start, end })
    }

    /// The first hash key in the range.
    pub const fn start(&self) -> HashKey {
        self.start
    }

    /// The last hash key in the range.
    pub const fn end(&self) -> HashKey {
        self.end
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: HashKey) -> bool {
        self.start <= key && key <= self.end
    }

    /// Whether the range holds every hash key.
    pub fn is_full(&self) -> bool {
        *self == Self::FULL
    }
}

impl FromStr for HashKeyRange {
    type Err = Error;

    /// Parses `START:END`, two decimal hash keys.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the text is not of that form or the start
    /// is above the end.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (start, end) = s.split_once(':').ok_or_else(|| {
            Error::InvalidInput(format!("a hash-key range is START:END, got {s:?}"))
        })?;
        Self::new(start.trim().parse()?, end.trim().parse()?)
    }
}

impl fmt::Display for HashKeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str) -> SequenceNumber {
        s.parse().unwrap()
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert!(seq("9") < seq("10"));
        assert!(
            seq("49590338271490256608559692538361571095921575989136654311")
                > seq("4959033827149025660855969253836157109592157598913665431")
        );
        assert_eq!(
            seq("49590338271490256608559692538361571095921575989136654311").to_string(),
            "49590338271490256608559692538361571095921575989136654311"
        );
    }

    #[test]
    fn bad_sequence_numbers_are_errors() {
        assert_eq!(seq("007"), seq("7"));
        assert_eq!(seq("000").to_string(), "0");
        assert!(seq(&"9".repeat(129)) > seq(&"9".repeat(128)));
        for bad in ["", "-1", "12a", " 1", "1e9", &"1".repeat(130)] {
            assert!(bad.parse::<SequenceNumber>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn extended_order_follows_the_java_kcl() {
        let low = ExtendedSequenceNumber::new(seq("5"), 7);
        let high = ExtendedSequenceNumber::new(seq("5"), 8);
        let order = [
            ExtendedSequenceNumber::AtTimestamp,
            ExtendedSequenceNumber::TrimHorizon,
            ExtendedSequenceNumber::Latest,
            ExtendedSequenceNumber::new(seq("1"), 99),
            low,
            high,
            ExtendedSequenceNumber::new(seq("10"), 0),
            ExtendedSequenceNumber::ShardEnd,
        ];
        for pair in order.windows(2) {
            assert!(pair[0] < pair[1], "{:?} < {:?}", pair[0], pair[1]);
        }
    }

    #[test]
    fn sentinels_round_trip() {
        for text in ["AT_TIMESTAMP", "TRIM_HORIZON", "LATEST", "SHARD_END"] {
            assert_eq!(
                ExtendedSequenceNumber::parse(text, 0).unwrap().to_string(),
                text
            );
        }
        assert_eq!(
            ExtendedSequenceNumber::parse("123", 4).unwrap(),
            ExtendedSequenceNumber::new(seq("123"), 4)
        );
        assert!(ExtendedSequenceNumber::parse("latest", 0).is_err());
    }

    #[test]
    fn partition_key_hash_is_md5_big_endian() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(
            HashKey::of_partition_key("").as_u128(),
            0xd41d8cd98f00b204e9800998ecf8427e
        );
    }

    #[test]
    fn ranges_are_inclusive() {
        let range: HashKeyRange = "10:20".parse().unwrap();
        assert!(range.contains(HashKey::from_u128(10)));
        assert!(range.contains(HashKey::from_u128(20)));
        assert!(!range.contains(HashKey::from_u128(21)));
        assert!(!range.contains(HashKey::from_u128(9)));
        assert!("20:10".parse::<HashKeyRange>().is_err());
        assert!(
            "0:340282366920938463463374607431768211455"
                .parse::<HashKeyRange>()
                .unwrap()
                .is_full()
        );
    }
}
