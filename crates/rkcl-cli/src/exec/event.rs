//! The JSON of `rkcl consume --exec`: the Lambda Kinesis event a handler
//! reads, the response it writes, and the on-failure lines. Pure: no IO.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rkcl::stream::{BatchFailure, FailureReason};
use rkcl::{SequenceNumber, UserRecord};
use serde::{Deserialize, Serialize};

/// What every event of one stream names: its ARN and region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EventSource {
    /// The stream's ARN (`eventSourceARN`).
    pub(crate) arn: String,
    /// The stream's region (`awsRegion`), taken from the ARN.
    pub(crate) region: String,
}

impl EventSource {
    /// The source for the stream `arn` (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`).
    pub(crate) fn from_arn(arn: &str) -> Self {
        let region = arn.split(':').nth(3).unwrap_or_default().to_owned();
        Self {
            arn: arn.to_owned(),
            region,
        }
    }
}

/// The Lambda Kinesis event.
#[derive(Debug, Serialize)]
pub(crate) struct Event<'a> {
    #[serde(rename = "Records")]
    records: Vec<EventRecord<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EventRecord<'a> {
    kinesis: KinesisPart<'a>,
    event_source: &'static str,
    event_version: &'static str,
    #[serde(rename = "eventID")]
    event_id: String,
    event_name: &'static str,
    aws_region: &'a str,
    #[serde(rename = "eventSourceARN")]
    event_source_arn: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct KinesisPart<'a> {
    kinesis_schema_version: &'static str,
    partition_key: &'a str,
    sequence_number: String,
    data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    approximate_arrival_timestamp: Option<f64>,
}

/// Seconds since the epoch, with fractions (Lambda's
/// `approximateArrivalTimestamp`).
fn epoch_seconds(time: SystemTime) -> Option<f64> {
    time.duration_since(UNIX_EPOCH)
        .ok()
        .map(|since| since.as_secs_f64())
}

impl<'a> Event<'a> {
    /// The event for `records` of shard `shard_id`.
    pub(crate) fn new(source: &'a EventSource, shard_id: &str, records: &'a [UserRecord]) -> Self {
        let records = records
            .iter()
            .map(|record| {
                let sequence_number = record.sequence_number.to_string();
                EventRecord {
                    event_id: format!("{shard_id}:{sequence_number}"),
                    kinesis: KinesisPart {
                        kinesis_schema_version: "1.0",
                        partition_key: &record.partition_key,
                        sequence_number,
                        data: BASE64.encode(&record.data),
                        approximate_arrival_timestamp: record
                            .approximate_arrival_timestamp
                            .and_then(epoch_seconds),
                    },
                    event_source: "aws:kinesis",
                    event_version: "1.0",
                    event_name: "aws:kinesis:record",
                    aws_region: &source.region,
                    event_source_arn: &source.arn,
                }
            })
            .collect();
        Self { records }
    }

    /// The event as one line of JSON, with its newline.
    pub(crate) fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        Ok(line)
    }
}

/// A handler's response.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    batch_item_failures: Option<Vec<ItemFailure>>,
    /// Lambda's shape of a function error; present means the whole batch
    /// failed.
    #[serde(default)]
    error_message: Option<serde_json::Value>,
    #[serde(default)]
    error_type: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemFailure {
    #[serde(default)]
    item_identifier: Option<serde_json::Value>,
}

/// What a response says of its batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every record was handled.
    Success,
    /// The records before this index were handled; it and those after are
    /// sent again.
    FailedFrom(usize),
    /// The whole batch failed, for this reason (never the handler's own
    /// words, which may quote payloads).
    Failed(&'static str),
}

/// Reads a handler's response to `records`: empty, `null`, `{}` or no
/// `batchItemFailures` is success; `batchItemFailures` resumes at the
/// earliest record it names (by sequence number; a KPL aggregate's user
/// records share theirs, so it resumes at the first of them); an identifier
/// that is missing, empty or not in the batch fails the whole batch, as in
/// Lambda; so does `errorMessage` or `errorType`, or a response that is not a
/// JSON object.
pub(crate) fn read_response(text: &str, records: &[UserRecord]) -> Outcome {
    let text = text.trim();
    if text.is_empty() {
        return Outcome::Success;
    }
    // `null` is what a handler returning nothing gives: success.
    let Ok(response) = serde_json::from_str::<Option<Response>>(text) else {
        return Outcome::Failed("the handler's response is not a JSON object");
    };
    let response = response.unwrap_or_default();
    if response.error_message.is_some() || response.error_type.is_some() {
        return Outcome::Failed("the handler returned an error");
    }
    let failures = response.batch_item_failures.unwrap_or_default();
    let mut first: Option<usize> = None;
    for failure in &failures {
        let named = match &failure.item_identifier {
            Some(serde_json::Value::String(text)) => text.parse::<SequenceNumber>().ok(),
            Some(serde_json::Value::Number(number)) => number.to_string().parse().ok(),
            _ => None,
        };
        let Some(index) =
            named.and_then(|named| records.iter().position(|r| r.sequence_number == named))
        else {
            return Outcome::Failed(
                "batchItemFailures names an item that is missing or not in the batch",
            );
        };
        first = Some(first.map_or(index, |first| first.min(index)));
    }
    match first {
        None => Outcome::Success,
        Some(index) => Outcome::FailedFrom(index),
    }
}

/// One line of the `--on-failure` file: Lambda's on-failure record for a
/// Kinesis source (`requestContext`, `KinesisBatchInfo`), with the reason.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FailureLine<'a> {
    version: &'static str,
    timestamp: String,
    request_context: RequestContext,
    #[serde(rename = "KinesisBatchInfo")]
    kinesis_batch_info: BatchInfo<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext {
    /// `RetryAttemptsExhausted` or `RecordAgeExceeded`, as Lambda says.
    condition: &'static str,
    approximate_invoke_count: u32,
    /// Why, in rkcl's words.
    reason: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchInfo<'a> {
    shard_id: String,
    start_sequence_number: Option<String>,
    end_sequence_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approximate_arrival_of_first_record: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approximate_arrival_of_last_record: Option<String>,
    batch_size: usize,
    stream_arn: &'a str,
}

fn rfc3339(time: Option<SystemTime>) -> Option<String> {
    time.map(|time| humantime::format_rfc3339_millis(time).to_string())
}

impl<'a> FailureLine<'a> {
    /// The line for records given up on; `now` is when.
    pub(crate) fn new(source: &'a EventSource, failure: &BatchFailure, now: SystemTime) -> Self {
        let shard_id = failure.shard.shard_id.as_str();
        Self::of(source, shard_id, &failure.records, &failure.reason, now)
    }

    fn of(
        source: &'a EventSource,
        shard_id: &str,
        records: &[UserRecord],
        reason: &FailureReason,
        now: SystemTime,
    ) -> Self {
        let (condition, invokes, reason) = match reason {
            FailureReason::RetriesExhausted { error, attempts } => (
                "RetryAttemptsExhausted",
                *attempts,
                format!("the handler failed {attempts} times; the last time: {error}"),
            ),
            FailureReason::TooOld { max_age } => (
                "RecordAgeExceeded",
                0,
                format!(
                    "older than the maximum record age of {}",
                    humantime::format_duration(*max_age)
                ),
            ),
        };
        let (first, last) = (records.first(), records.last());
        Self {
            version: "1.0",
            timestamp: humantime::format_rfc3339_millis(now).to_string(),
            request_context: RequestContext {
                condition,
                approximate_invoke_count: invokes,
                reason,
            },
            kinesis_batch_info: BatchInfo {
                shard_id: shard_id.to_owned(),
                start_sequence_number: first.map(|r| r.sequence_number.to_string()),
                end_sequence_number: last.map(|r| r.sequence_number.to_string()),
                approximate_arrival_of_first_record: rfc3339(
                    first.and_then(|r| r.approximate_arrival_timestamp),
                ),
                approximate_arrival_of_last_record: rfc3339(
                    last.and_then(|r| r.approximate_arrival_timestamp),
                ),
                batch_size: records.len(),
                stream_arn: &source.arn,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(sequence: &str, key: &str, data: &str) -> UserRecord {
        UserRecord {
            sequence_number: sequence.parse().unwrap(),
            sub_sequence_number: None,
            partition_key: key.to_owned(),
            explicit_hash_key: None,
            data: data.as_bytes().to_vec().into(),
            approximate_arrival_timestamp: Some(
                UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            ),
        }
    }

    fn source() -> EventSource {
        EventSource::from_arn("arn:aws:kinesis:eu-west-1:123456789012:stream/orders")
    }

    #[test]
    fn the_event_has_lambdas_shape() {
        let source = source();
        assert_eq!(source.region, "eu-west-1");
        let records = [record(
            "49590338271490256608559692538361571095921575989136588898",
            "k",
            "hi",
        )];
        let line = Event::new(&source, "shardId-000000000000", &records)
            .to_line()
            .unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        let event: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let expected = serde_json::json!({"Records": [{
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": "k",
                "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
                "data": "aGk=",
                "approximateArrivalTimestamp": 1_700_000_000.25,
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": "shardId-000000000000:49590338271490256608559692538361571095921575989136588898",
            "eventName": "aws:kinesis:record",
            "awsRegion": "eu-west-1",
            "eventSourceARN": "arn:aws:kinesis:eu-west-1:123456789012:stream/orders",
        }]});
        assert_eq!(event, expected);
    }

    #[test]
    fn responses_follow_lambdas_rules() {
        let records = [
            record("100", "a", "1"),
            record("200", "a", "2"),
            record("300", "a", "3"),
        ];
        assert_eq!(read_response("", &records), Outcome::Success);
        assert_eq!(read_response(" {}\n", &records), Outcome::Success);
        assert_eq!(read_response("null", &records), Outcome::Success);
        assert_eq!(
            read_response(r#"{"batchItemFailures":[]}"#, &records),
            Outcome::Success
        );
        let two = r#"{"batchItemFailures":[{"itemIdentifier":"300"},{"itemIdentifier":"200"}]}"#;
        assert_eq!(read_response(two, &records), Outcome::FailedFrom(1));
        // Compared as numbers, not text.
        let padded = r#"{"batchItemFailures":[{"itemIdentifier":"0300"}]}"#;
        assert_eq!(read_response(padded, &records), Outcome::FailedFrom(2));
        for whole in [
            r#"{"batchItemFailures":[{"itemIdentifier":"999"}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#,
            r#"{"batchItemFailures":[{}]}"#,
            r#"{"errorMessage":"boom","errorType":"Error"}"#,
            "not json",
            "[1]",
        ] {
            assert!(
                matches!(read_response(whole, &records), Outcome::Failed(_)),
                "{whole}"
            );
        }
    }

    #[test]
    fn failure_lines_name_the_batch_and_the_reason() {
        let source = source();
        let records = [record("100", "a", "1"), record("300", "b", "3")];
        let reason = FailureReason::RetriesExhausted {
            error: "the handler exited with exit status: 1".into(),
            attempts: 3,
        };
        let line = FailureLine::of(
            &source,
            "shardId-000000000001",
            &records,
            &reason,
            UNIX_EPOCH,
        );
        let line = serde_json::to_value(&line).unwrap();
        assert_eq!(
            line["requestContext"]["condition"],
            "RetryAttemptsExhausted"
        );
        assert_eq!(line["requestContext"]["approximateInvokeCount"], 3);
        let info = &line["KinesisBatchInfo"];
        assert_eq!(info["shardId"], "shardId-000000000001");
        assert_eq!(info["startSequenceNumber"], "100");
        assert_eq!(info["endSequenceNumber"], "300");
        assert_eq!(info["batchSize"], 2);
        assert_eq!(
            info["approximateArrivalOfFirstRecord"],
            "2023-11-14T22:13:20.250Z"
        );
        assert_eq!(info["streamArn"], source.arn);
    }
}
