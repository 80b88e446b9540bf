//! Records as Kinesis stores them and as a consumer receives them.

use std::time::SystemTime;

use bytes::Bytes;

use crate::model::{ExtendedSequenceNumber, SequenceNumber};

/// A record as GetRecords returns it: possibly a KPL aggregate of many user
/// records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisRecord {
    /// The record's sequence number in its shard.
    pub sequence_number: SequenceNumber,
    /// The partition key the record was written with.
    pub partition_key: String,
    /// The record's data blob.
    pub data: Bytes,
    /// When Kinesis accepted the record, if it said.
    pub approximate_arrival_timestamp: Option<SystemTime>,
}

/// One record as the producer's user wrote it: a plain Kinesis record, or one
/// user record out of a KPL aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// The sequence number of the Kinesis record that carried this one.
    pub sequence_number: SequenceNumber,
    /// The index inside the aggregate, or `None` when the Kinesis record was
    /// not an aggregate (it then counts as sub-sequence number 0 for
    /// checkpoints, as in the Java KCL).
    pub sub_sequence_number: Option<u64>,
    /// The user record's partition key.
    pub partition_key: String,
    /// The user record's explicit hash key, when the producer gave one.
    pub explicit_hash_key: Option<String>,
    /// The user record's data.
    pub data: Bytes,
    /// When Kinesis accepted the carrying record, if it said.
    pub approximate_arrival_timestamp: Option<SystemTime>,
}

impl UserRecord {
    /// The position of this record for checkpoints.
    pub fn extended_sequence_number(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::new(
            self.sequence_number.clone(),
            self.sub_sequence_number.unwrap_or(0),
        )
    }

    /// Whether this record came out of a KPL aggregate.
    pub fn is_aggregated(&self) -> bool {
        self.sub_sequence_number.is_some()
    }
}

/// A record to write to Kinesis: the input of the [`Aggregator`](crate::kpl::Aggregator)
/// and the [`Producer`](crate::producer::Producer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The partition key (1 to 256 characters for a plain Kinesis record; any
    /// string inside an aggregate).
    pub partition_key: String,
    /// An explicit hash key (decimal, below 2^128) that overrides the hash of
    /// the partition key for routing.
    pub explicit_hash_key: Option<String>,
    /// The data.
    pub data: Bytes,
}

impl ProducerRecord {
    /// A record with a partition key and data and no explicit hash key.
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            data: data.into(),
        }
    }
}
