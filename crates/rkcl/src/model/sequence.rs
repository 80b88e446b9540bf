//! Positions in a shard: [`SequenceNumber`], compared as a number of up to
//! 129 digits, and [`ExtendedSequenceNumber`], a checkpoint with the Java
//! KCL's sentinels and order.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::Error;

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

    /// The place of each kind of position in the Java KCL's order.
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
}
