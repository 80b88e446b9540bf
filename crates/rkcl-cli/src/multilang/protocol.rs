//! The MultiLangDaemon's messages: one JSON object per line, selected by
//! its `action` field, with the field names and null handling of the Java
//! KCL's Jackson mapper (nulls are written, data is standard Base64).

use std::time::SystemTime;

use base64::Engine;
use rkcl::{ExtendedSequenceNumber, UserRecord};
use serde::{Deserialize, Serialize};

/// A message from the daemon to a child.
#[derive(Debug, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub(crate) enum ToChild<'a> {
    /// The first message: the shard and where it resumes.
    #[serde(rename_all = "camelCase")]
    Initialize {
        shard_id: &'a str,
        sequence_number: String,
        sub_sequence_number: u64,
    },
    /// A batch of records.
    #[serde(rename_all = "camelCase")]
    ProcessRecords {
        millis_behind_latest: Option<u64>,
        records: Vec<Record<'a>>,
    },
    /// The lease is gone; checkpoints are refused.
    LeaseLost,
    /// The shard was read to its end; the child must checkpoint.
    ShardEnded,
    /// The worker shuts down; the child may checkpoint.
    ShutdownRequested,
    /// The answer to a child's checkpoint request.
    #[serde(rename_all = "camelCase")]
    Checkpoint {
        sequence_number: Option<String>,
        sub_sequence_number: Option<i64>,
        error: Option<&'static str>,
    },
}

impl ToChild<'_> {
    /// The action name a child's status answers with `responseFor`.
    pub(crate) fn action(&self) -> &'static str {
        match self {
            ToChild::Initialize { .. } => "initialize",
            ToChild::ProcessRecords { .. } => "processRecords",
            ToChild::LeaseLost => "leaseLost",
            ToChild::ShardEnded => "shardEnded",
            ToChild::ShutdownRequested => "shutdownRequested",
            ToChild::Checkpoint { .. } => "checkpoint",
        }
    }

    /// The `initialize` message for a shard resuming at `checkpoint`: a
    /// sentinel is sent by name, as the Java KCL does.
    pub(crate) fn initialize<'a>(
        shard_id: &'a str,
        checkpoint: &ExtendedSequenceNumber,
    ) -> ToChild<'a> {
        let sequence_number = match checkpoint.sequence_number() {
            Some(sequence) => sequence.to_string(),
            None => checkpoint.to_string(),
        };
        ToChild::Initialize {
            shard_id,
            sequence_number,
            sub_sequence_number: checkpoint.sub_sequence_number(),
        }
    }
}

/// One record of a `processRecords` message.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Record<'a> {
    /// Always `"record"`: amazon-kclpy's decoder needs it.
    action: &'static str,
    data: String,
    partition_key: &'a str,
    sequence_number: &'a str,
    sub_sequence_number: u64,
    approximate_arrival_timestamp: Option<u64>,
}

impl<'a> Record<'a> {
    pub(crate) fn new(record: &'a UserRecord) -> Self {
        Self {
            action: "record",
            data: base64::engine::general_purpose::STANDARD.encode(&record.data),
            partition_key: &record.partition_key,
            sequence_number: record.sequence_number.as_str(),
            sub_sequence_number: record.sub_sequence_number.unwrap_or(0),
            approximate_arrival_timestamp: record.approximate_arrival_timestamp.and_then(|at| {
                at.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .and_then(|since| u64::try_from(since.as_millis()).ok())
            }),
        }
    }
}

/// A message from a child.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub(crate) enum FromChild {
    /// A checkpoint request; no sequence number means the last record
    /// delivered. aws-kcl sends no `subSequenceNumber` key at all.
    #[serde(rename_all = "camelCase")]
    Checkpoint {
        #[serde(default)]
        sequence_number: Option<String>,
        #[serde(default)]
        sub_sequence_number: Option<i64>,
    },
    /// The end of the call named by `responseFor`.
    #[serde(rename_all = "camelCase")]
    Status { response_for: String },
}

/// A line of a child's stdout: a message, or noise to skip (a blank line,
/// a `print` of the child, a JSON object of another kind).
pub(crate) fn parse_line(line: &str) -> Option<FromChild> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    serde_json::from_str(line).ok()
}

/// The Java exception names a checkpoint answer carries.
pub(crate) mod errors {
    /// The lease is no longer held.
    pub(crate) const SHUTDOWN: &str = "ShutdownException";
    /// DynamoDB throttled the write.
    pub(crate) const THROTTLING: &str = "ThrottlingException";
    /// A checkpoint where none is possible (during `initialize` or
    /// `leaseLost`).
    pub(crate) const INVALID_STATE: &str = "InvalidStateException";
    /// The lease table failed.
    pub(crate) const DEPENDENCY: &str = "KinesisClientLibDependencyException";
    /// A position behind the checkpoint, beyond what was delivered, or not
    /// a sequence number.
    pub(crate) const ILLEGAL_ARGUMENT: &str = "IllegalArgumentException";
}

/// The Java exception name for a failed checkpoint.
pub(crate) fn error_name(err: &rkcl::Error) -> &'static str {
    match err {
        rkcl::Error::LeaseLost { .. } => errors::SHUTDOWN,
        rkcl::Error::Throttled { .. } => errors::THROTTLING,
        rkcl::Error::InvalidCheckpoint { .. } | rkcl::Error::InvalidInput(_) => {
            errors::ILLEGAL_ARGUMENT
        }
        _ => errors::DEPENDENCY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    #[test]
    fn messages_to_the_child_have_the_java_field_names() {
        let record = UserRecord {
            sequence_number: "49590338271490256608559692538361571095921575989136588898"
                .parse()
                .unwrap(),
            sub_sequence_number: Some(2),
            partition_key: "key-1".into(),
            explicit_hash_key: None,
            data: Bytes::from_static(b"hello"),
            approximate_arrival_timestamp: Some(
                SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            ),
        };
        let message = ToChild::ProcessRecords {
            millis_behind_latest: Some(5),
            records: vec![Record::new(&record)],
        };
        assert_eq!(
            serde_json::to_value(&message).unwrap(),
            serde_json::json!({
                "action": "processRecords",
                "millisBehindLatest": 5,
                "records": [{
                    "action": "record",
                    "data": "aGVsbG8=",
                    "partitionKey": "key-1",
                    "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
                    "subSequenceNumber": 2,
                    "approximateArrivalTimestamp": 1_700_000_000_123_u64,
                }],
            })
        );
        let initialize = ToChild::initialize("shardId-000", &ExtendedSequenceNumber::TrimHorizon);
        assert_eq!(
            serde_json::to_string(&initialize).unwrap(),
            r#"{"action":"initialize","shardId":"shardId-000","sequenceNumber":"TRIM_HORIZON","subSequenceNumber":0}"#
        );
        let answer = ToChild::Checkpoint {
            sequence_number: None,
            sub_sequence_number: None,
            error: Some(errors::INVALID_STATE),
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null,"error":"InvalidStateException"}"#
        );
        assert_eq!(
            serde_json::to_string(&ToChild::LeaseLost).unwrap(),
            r#"{"action":"leaseLost"}"#
        );
    }

    #[test]
    fn refused_checkpoints_carry_the_java_exception_names() {
        let lost = rkcl::Error::LeaseLost {
            lease_key: "shardId-0".into(),
        };
        assert_eq!(error_name(&lost), "ShutdownException");
        let throttled = rkcl::Error::Throttled {
            service: rkcl::error::Service::DynamoDb,
            message: "slow down".into(),
        };
        assert_eq!(error_name(&throttled), "ThrottlingException");
        let behind = rkcl::Error::InvalidCheckpoint {
            lease_key: "shardId-0".into(),
            message: "before the stored".into(),
        };
        assert_eq!(error_name(&behind), "IllegalArgumentException");
        let failed = rkcl::Error::Transport {
            service: rkcl::error::Service::DynamoDb,
            message: "connection reset".into(),
        };
        assert_eq!(error_name(&failed), "KinesisClientLibDependencyException");
    }

    #[test]
    fn lines_from_the_child_are_messages_or_noise() {
        assert_eq!(
            parse_line(r#"{"action":"status","responseFor":"initialize"}"#),
            Some(FromChild::Status {
                response_for: "initialize".into()
            })
        );
        assert_eq!(
            parse_line(r#"{"action":"checkpoint","sequenceNumber":"12"}"#),
            Some(FromChild::Checkpoint {
                sequence_number: Some("12".into()),
                sub_sequence_number: None
            })
        );
        assert_eq!(
            parse_line(
                r#" {"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null}"#
            ),
            Some(FromChild::Checkpoint {
                sequence_number: None,
                sub_sequence_number: None
            })
        );
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("Record processed: 12"), None);
        assert_eq!(parse_line(r#"{"action":"dance"}"#), None);
        assert_eq!(parse_line("{not json"), None);
    }
}
