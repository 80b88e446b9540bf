//! The words of the domain: shards, sequence numbers, hash keys and positions.
//!
//! Everything here is plain data with no IO. Sequence numbers and hash keys are
//! 128-bit numbers and compare as numbers, never as text (`"9" > "10"` as text).
//!
//! Sequence numbers and checkpoint positions are in `sequence.rs`.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use crate::error::Error;

mod lease_key;
mod sequence;
mod stream_identifier;

pub use lease_key::LeaseKey;
pub use sequence::{ExtendedSequenceNumber, SequenceNumber};
pub use stream_identifier::StreamIdentifier;

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

/// Parses a non-empty string of ASCII digits as an unsigned 128-bit number.
pub(crate) fn parse_decimal_u128(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u128>().ok()
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
    /// The hash key half-way through the range: where a split into two
    /// equal halves starts its second child.
    pub fn middle(&self) -> HashKey {
        HashKey::from_u128(self.start.as_u128() / 2 + self.end.as_u128() / 2)
    }

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
