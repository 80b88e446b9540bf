//! `rkcl tail`: every user record of a stream as JSON lines, without leases
//! or checkpoints.

use std::borrow::Cow;
use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rkcl::{
    ShardId, UserRecord,
    model::StartingPosition,
    retrieval::{StreamEvent, StreamReader},
};
use serde::Serialize;

use crate::aws::{AwsArgs, StreamContext, stream_ref};
use crate::output::{flush, write_json_line};
use crate::retrieval::RetrievalArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// The stream's name or ARN.
    #[arg(long)]
    stream: String,
    /// Where to start: `trim-horizon`, `latest`, `at-timestamp:RFC3339` or
    /// `at-sequence:SHARD=SEQ` (that shard only, then its children).
    #[arg(long, default_value = "latest")]
    from: String,
    /// Exit after this many user records.
    #[arg(long)]
    max_records: Option<u64>,
    /// Exit once every shard has been read to its tip or its end.
    #[arg(long)]
    exit_at_end: bool,
    /// How to write each record's data: as UTF-8 text (base64, with
    /// `"data_encoding":"base64"`, when it is not valid UTF-8) or as base64.
    #[arg(long, value_enum, default_value_t = DataFormat::Utf8)]
    data: DataFormat,
    #[command(flatten)]
    reading: RetrievalArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DataFormat {
    Utf8,
    Base64,
}

/// The line written for each user record.
#[derive(Debug, Serialize)]
pub(crate) struct RecordLine<'a> {
    stream: &'a str,
    shard_id: &'a str,
    sequence_number: &'a str,
    sub_sequence_number: Option<u64>,
    partition_key: &'a str,
    explicit_hash_key: Option<&'a str>,
    #[serde(serialize_with = "display_or_null")]
    approximate_arrival_timestamp: Option<humantime::Rfc3339Timestamp>,
    data: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_encoding: Option<&'static str>,
}

impl<'a> RecordLine<'a> {
    pub(crate) fn new(
        stream: &'a str,
        shard_id: &'a ShardId,
        record: &'a UserRecord,
        format: DataFormat,
    ) -> Self {
        let (data, data_encoding) = match (format, std::str::from_utf8(&record.data)) {
            (DataFormat::Utf8, Ok(text)) => (Cow::Borrowed(text), None),
            (DataFormat::Utf8, Err(_)) => (Cow::Owned(BASE64.encode(&record.data)), Some("base64")),
            (DataFormat::Base64, _) => (Cow::Owned(BASE64.encode(&record.data)), None),
        };
        Self {
            stream,
            shard_id: shard_id.as_str(),
            sequence_number: record.sequence_number.as_str(),
            sub_sequence_number: record.sub_sequence_number,
            partition_key: &record.partition_key,
            explicit_hash_key: record.explicit_hash_key.as_deref(),
            approximate_arrival_timestamp: record
                .approximate_arrival_timestamp
                .map(humantime::format_rfc3339_millis),
            data,
            data_encoding,
        }
    }
}

/// A value written as its `Display` text (no copy in between), or `null`.
fn display_or_null<S: serde::Serializer>(
    value: &Option<impl std::fmt::Display>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

/// Parses `--from`.
fn parse_from(text: &str) -> anyhow::Result<(StartingPosition, Option<ShardId>)> {
    Ok(match text {
        "trim-horizon" => (StartingPosition::TrimHorizon, None),
        "latest" => (StartingPosition::Latest, None),
        other => {
            if let Some(time) = other.strip_prefix("at-timestamp:") {
                let time: SystemTime = humantime::parse_rfc3339_weak(time)
                    .with_context(|| format!("not an RFC 3339 time: {time:?}"))?;
                (StartingPosition::AtTimestamp(time), None)
            } else if let Some(spec) = other.strip_prefix("at-sequence:") {
                let (shard, seq) = spec
                    .split_once('=')
                    .context("at-sequence takes SHARD=SEQUENCE_NUMBER")?;
                let seq = seq.parse().context("bad sequence number")?;
                (
                    StartingPosition::AtSequenceNumber(seq),
                    Some(ShardId::from(shard)),
                )
            } else {
                bail!(
                    "--from takes trim-horizon, latest, at-timestamp:RFC3339 or at-sequence:SHARD=SEQ, got {other:?}"
                );
            }
        }
    })
}

pub(crate) async fn run(aws: &AwsArgs, args: TailArgs) -> anyhow::Result<ExitCode> {
    let stream = stream_ref(&args.stream)?;
    let (start, shard) = parse_from(&args.from)?;
    let config = args.reading.retrieval()?;
    let kinesis = aws.kinesis().await?;
    let mut reader = match shard {
        Some(shard) => {
            StreamReader::start_shard(kinesis, stream.clone(), shard, start, config).await
        }
        None => StreamReader::start(kinesis, stream.clone(), start, config).await,
    }
    .for_stream(&stream)?;
    let stream_name = stream.name().to_owned();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut written = 0u64;
    while let Some(event) = reader.next().await {
        match event.for_stream(&stream)? {
            StreamEvent::Records(batch) => {
                for record in &batch.records {
                    if args.max_records.is_some_and(|max| written >= max) {
                        break;
                    }
                    let line = RecordLine::new(&stream_name, &batch.shard_id, record, args.data);
                    if !write_json_line(&mut out, &line)? {
                        return Ok(ExitCode::SUCCESS);
                    }
                    written += 1;
                }
                if !flush(&mut out)? {
                    return Ok(ExitCode::SUCCESS);
                }
                if args.max_records.is_some_and(|max| written >= max) {
                    break;
                }
            }
            StreamEvent::ShardEnded(_) => {}
            StreamEvent::CaughtUp => {
                if args.exit_at_end {
                    break;
                }
            }
        }
    }
    flush(&mut out)?;
    out.flush().ok();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_values_parse() {
        assert!(matches!(
            parse_from("trim-horizon").unwrap().0,
            StartingPosition::TrimHorizon
        ));
        assert!(matches!(
            parse_from("latest").unwrap().0,
            StartingPosition::Latest
        ));
        assert!(matches!(
            parse_from("at-timestamp:2026-11-22T10:00:00Z").unwrap().0,
            StartingPosition::AtTimestamp(_)
        ));
        let (position, shard) = parse_from("at-sequence:shardId-000000000001=123").unwrap();
        assert_eq!(
            position,
            StartingPosition::AtSequenceNumber("123".parse().unwrap())
        );
        assert_eq!(shard.unwrap().as_str(), "shardId-000000000001");
        assert!(parse_from("at-sequence:shardId-1").is_err());
        assert!(parse_from("at-timestamp:yesterday").is_err());
        assert!(parse_from("oldest").is_err());
    }

    #[test]
    fn record_lines_keep_their_format() {
        let record = |data: &[u8], at: Option<SystemTime>| UserRecord {
            sequence_number: "42".parse().unwrap(),
            sub_sequence_number: Some(3),
            partition_key: "key \"q\"".into(),
            explicit_hash_key: None,
            data: bytes::Bytes::copy_from_slice(data),
            approximate_arrival_timestamp: at,
        };
        let shard = ShardId::from("shardId-000000000001");
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let line = |record: &UserRecord, format| {
            serde_json::to_string(&RecordLine::new("s", &shard, record, format)).unwrap()
        };
        assert_eq!(
            line(&record(b"text \n", Some(at)), DataFormat::Utf8),
            r#"{"stream":"s","shard_id":"shardId-000000000001","sequence_number":"42","sub_sequence_number":3,"partition_key":"key \"q\"","explicit_hash_key":null,"approximate_arrival_timestamp":"2023-11-14T22:13:20.123Z","data":"text \n"}"#
        );
        assert_eq!(
            line(&record(&[0xff, 0], None), DataFormat::Utf8),
            r#"{"stream":"s","shard_id":"shardId-000000000001","sequence_number":"42","sub_sequence_number":3,"partition_key":"key \"q\"","explicit_hash_key":null,"approximate_arrival_timestamp":null,"data":"/wA=","data_encoding":"base64"}"#
        );
        assert_eq!(
            line(&record(b"ab", None), DataFormat::Base64),
            r#"{"stream":"s","shard_id":"shardId-000000000001","sequence_number":"42","sub_sequence_number":3,"partition_key":"key \"q\"","explicit_hash_key":null,"approximate_arrival_timestamp":null,"data":"YWI="}"#
        );
    }
}
