//! What rkcl sends to and reads from Kinesis, in domain types: how a
//! stream is named ([`StreamRef`]), which shards to list ([`ShardFilter`]),
//! and what DescribeStreamSummary, GetRecords and PutRecords answer.
//!
//! The client that makes the calls is in `kinesis.rs`.

use aws_sdk_kinesis::primitives::DateTime;
use bytes::Bytes;

use crate::error::{Error, Result, Service};
use crate::model::{HashKey, HashKeyRange, SequenceNumber, ShardId};
use crate::record::KinesisRecord;

/// A stream named by its name or by its ARN.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StreamRef {
    /// The stream's name, in the client's account and region.
    Name(String),
    /// The stream's ARN, `arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`.
    Arn(String),
}

impl StreamRef {
    /// Reads a stream name or, when the text starts with `arn:`, an ARN.
    pub fn parse(text: &str) -> Self {
        if text.starts_with("arn:") {
            Self::Arn(text.to_owned())
        } else {
            Self::Name(text.to_owned())
        }
    }

    /// The stream's name: the name itself, or the last part of the ARN.
    pub fn name(&self) -> &str {
        match self {
            Self::Name(name) => name,
            Self::Arn(arn) => arn.rsplit_once("stream/").map_or(arn.as_str(), |(_, n)| n),
        }
    }

    /// The stream's name or its ARN, as the SDK's requests take them.
    pub(super) fn name_and_arn(&self) -> (Option<String>, Option<String>) {
        match self {
            Self::Name(name) => (Some(name.clone()), None),
            Self::Arn(arn) => (None, Some(arn.clone())),
        }
    }
}

impl std::fmt::Display for StreamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Arn(arn) => f.write_str(arn),
        }
    }
}

/// Which shards ListShards returns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardFilter {
    /// The shards open now.
    AtLatest,
    /// The shards open at the trim horizon and their descendants.
    AtTrimHorizon,
    /// The shards open at a time and their descendants.
    AtTimestamp(std::time::SystemTime),
    /// The shards whose id sorts after this one (children of a shard have
    /// higher ids than their parents).
    AfterShardId(ShardId),
}

impl ShardFilter {
    /// The filter as the SDK's ListShards request takes it.
    pub(super) fn to_sdk(&self) -> Result<aws_sdk_kinesis::types::ShardFilter> {
        use aws_sdk_kinesis::types::ShardFilterType;
        let builder = aws_sdk_kinesis::types::ShardFilter::builder();
        let builder = match self {
            Self::AtLatest => builder.r#type(ShardFilterType::AtLatest),
            Self::AtTrimHorizon => builder.r#type(ShardFilterType::AtTrimHorizon),
            Self::AtTimestamp(time) => builder
                .r#type(ShardFilterType::AtTimestamp)
                .timestamp(DateTime::from(*time)),
            Self::AfterShardId(id) => builder
                .r#type(ShardFilterType::AfterShardId)
                .shard_id(id.as_str()),
        };
        builder
            .build()
            .map_err(|e| Error::InvalidInput(e.to_string()))
    }
}

/// What DescribeStreamSummary says of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    /// The stream's name.
    pub name: String,
    /// The stream's ARN.
    pub arn: String,
    /// `CREATING`, `ACTIVE`, `UPDATING` or `DELETING`.
    pub status: String,
    /// How many shards are open.
    pub open_shard_count: u32,
    /// How long records are kept, in hours.
    pub retention_period_hours: u32,
    /// When the stream was created, in seconds since 1970 (part of its
    /// [`StreamIdentifier`](crate::model::StreamIdentifier)).
    pub creation_epoch: u64,
}

/// What one GetRecords call returned.
#[derive(Clone, Debug, Default)]
pub struct GetRecordsOutput {
    /// The records, in sequence-number order.
    pub records: Vec<KinesisRecord>,
    /// The iterator for the next call; `None` once a closed shard is read to
    /// its end.
    pub next_shard_iterator: Option<String>,
    /// How far behind the tip of the shard the last record is, if said.
    pub millis_behind_latest: Option<u64>,
    /// The children of a closed shard read to its end, when Kinesis says.
    pub child_shards: Vec<ChildShard>,
}

/// A child shard as GetRecords reports it at the end of a closed shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildShard {
    /// The child's id.
    pub id: ShardId,
    /// Its parents (one for a split, two for a merge).
    pub parent_shard_ids: Vec<ShardId>,
    /// The hash keys it receives.
    pub hash_key_range: HashKeyRange,
}

/// Records as GetRecords and SubscribeToShard return them, in domain
/// types. The SDK's strings and buffers are moved, not copied.
///
/// # Errors
///
/// A record whose sequence number is not a number is a malformed answer
/// (not retryable: asking again gives the same record).
pub(super) fn records_from_sdk(
    records: Vec<aws_sdk_kinesis::types::Record>,
) -> Result<Vec<KinesisRecord>> {
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let sequence_number = record.sequence_number.parse().map_err(|_| Error::Service {
            service: Service::Kinesis,
            code: "MalformedRecord".into(),
            message: format!("a record has sequence number {:?}", record.sequence_number),
            retryable: false,
        })?;
        out.push(KinesisRecord {
            sequence_number,
            partition_key: record.partition_key,
            data: Bytes::from(record.data.into_inner()),
            approximate_arrival_timestamp: record
                .approximate_arrival_timestamp
                .and_then(|t| std::time::SystemTime::try_from(t).ok()),
        });
    }
    Ok(out)
}

/// Child shards as GetRecords and SubscribeToShard name them. A child
/// without a valid hash-key range is left out (and logged): the next shard
/// sync finds it with ListShards. `call` names the call in the log.
pub(super) fn child_shards_from_sdk(
    children: &[aws_sdk_kinesis::types::ChildShard],
    call: &str,
) -> Vec<ChildShard> {
    children
        .iter()
        .filter_map(|child| {
            let range = child.hash_key_range();
            child_shard(
                call,
                child.shard_id(),
                child.parent_shards().iter().map(String::as_str),
                range.map(|r| r.starting_hash_key()),
                range.map(|r| r.ending_hash_key()),
            )
        })
        .collect()
}

/// One child shard from its parts as an answer names them; `None` (and a
/// warning) without a valid hash-key range. Shared by the SDK's shapes and
/// the direct reading of GetRecords.
pub(super) fn child_shard<'a>(
    call: &str,
    id: &str,
    parents: impl Iterator<Item = &'a str>,
    starting_hash_key: Option<&str>,
    ending_hash_key: Option<&str>,
) -> Option<ChildShard> {
    let start = starting_hash_key.and_then(|k| k.parse::<HashKey>().ok());
    let end = ending_hash_key.and_then(|k| k.parse::<HashKey>().ok());
    let Some(hash_key_range) = start
        .zip(end)
        .and_then(|(start, end)| HashKeyRange::new(start, end).ok())
    else {
        tracing::warn!(
            call,
            child = id,
            "a child shard without a valid hash-key range; \
             the child is left to the next shard sync"
        );
        return None;
    };
    Some(ChildShard {
        id: ShardId::from(id),
        parent_shard_ids: parents.map(ShardId::from).collect(),
        hash_key_range,
    })
}

/// One entry of a PutRecords call.
#[derive(Clone, Debug)]
pub(crate) struct PutEntry {
    /// The partition key.
    pub(crate) partition_key: String,
    /// The explicit hash key, which routes the entry instead of the
    /// partition key.
    pub(crate) explicit_hash_key: Option<String>,
    /// The record's data.
    pub(crate) data: Bytes,
}

/// The outcome of one PutRecords entry.
#[derive(Clone, Debug)]
pub(crate) enum PutOutcome {
    /// The entry was written to this shard.
    Written {
        /// The shard the entry landed in.
        shard_id: ShardId,
        /// The sequence number Kinesis gave it.
        sequence_number: SequenceNumber,
    },
    /// The entry was not written.
    Failed {
        /// Kinesis' error code, such as `ProvisionedThroughputExceededException`.
        code: String,
        /// Kinesis' error message.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_named_by_name_or_arn() {
        let arn = StreamRef::parse("arn:aws:kinesis:eu-west-1:123456789012:stream/orders");
        assert!(matches!(arn, StreamRef::Arn(_)));
        assert_eq!(arn.name(), "orders");
        assert_eq!(arn.name_and_arn().0, None);
        let name = StreamRef::parse("orders");
        assert_eq!(name, StreamRef::Name("orders".into()));
        assert_eq!(name.name_and_arn(), (Some("orders".into()), None));
    }
}
