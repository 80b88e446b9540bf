//! The KPL aggregation format: many user records in one Kinesis record.
//!
//! An aggregated record is the magic bytes `F3 89 9A C2`, a protobuf
//! `AggregatedRecord` body, and the 16-byte MD5 of that body. Its user
//! records share the outer record's sequence number and are told apart by
//! their sub-sequence number, their index in the aggregate.
//!
//! This module is pure: no IO, no clock. [`Deaggregator`] reads aggregates
//! (and passes anything else through whole, never dropping it silently);
//! [`Aggregator`] writes them.

mod aggregate;
mod deaggregate;
mod proto;

pub use aggregate::{Aggregate, Aggregator, MAX_KINESIS_RECORD_SIZE};
pub use deaggregate::{
    DeaggregationStats, Deaggregator, Decoded, HashRangePolicy, PassThroughReason, SubRecord,
};

/// The four bytes that open every KPL aggregate.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// The length of the MD5 trailer.
const DIGEST_LEN: usize = 16;

/// Whether `data` starts with the KPL magic bytes (it may still be corrupt).
pub fn has_magic(data: &[u8]) -> bool {
    data.starts_with(&MAGIC)
}

#[cfg(test)]
mod tests;
