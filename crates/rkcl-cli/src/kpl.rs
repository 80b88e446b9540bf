//! `rkcl kpl decode` and `rkcl kpl encode`.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rkcl::{
    kpl::{Aggregator, Deaggregator, Decoded, HashRangePolicy},
    model::HashKeyRange,
    record::ProducerRecord,
};
use serde::{Deserialize, Serialize};

use crate::output::{flush, write_json_line, write_line};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum KplCommand {
    /// Read one Kinesis record per line (bare base64, or a JSON object with
    /// `data` in base64 and optional `partition_key`, `explicit_hash_key`,
    /// `sequence_number`) and write one JSON object per user record.
    Decode(DecodeArgs),
    /// Read JSON user records (`partition_key`, optional `explicit_hash_key`,
    /// `data` in base64) and write aggregated records in base64, one per line.
    Encode(EncodeArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct DecodeArgs {
    /// Keep only aggregates whose user records all lie in this inclusive
    /// range of 128-bit hash keys, as a consumer of that shard would.
    #[arg(long, value_name = "START:END")]
    hash_range: Option<HashKeyRange>,
    /// What to do with an aggregate that has user records outside the range:
    /// drop it whole like the Java KCL, or keep everything.
    #[arg(long, value_enum, default_value_t = PolicyArg::DropAggregate)]
    hash_range_policy: PolicyArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PolicyArg {
    DropAggregate,
    Off,
}

#[derive(Debug, clap::Args)]
pub(crate) struct EncodeArgs {
    /// The largest aggregate in bytes (64 to 1048576).
    #[arg(long, default_value_t = Aggregator::DEFAULT_MAX_SIZE, value_name = "BYTES")]
    max_size: usize,
    /// Write each aggregate as a JSON object with the `partition_key` and
    /// `explicit_hash_key` to send it with, instead of bare base64.
    #[arg(long)]
    json: bool,
}

/// A Kinesis record given to `decode` as a JSON object.
#[derive(Debug, Deserialize)]
struct InputRecord {
    data: String,
    #[serde(default)]
    partition_key: Option<String>,
    #[serde(default)]
    explicit_hash_key: Option<String>,
    #[serde(default)]
    sequence_number: Option<String>,
}

/// A user record, as `decode` writes it and `encode` reads it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct UserRecordJson {
    pub(crate) partition_key: Option<String>,
    #[serde(default)]
    pub(crate) explicit_hash_key: Option<String>,
    #[serde(default)]
    pub(crate) sub_sequence_number: Option<u64>,
    pub(crate) data: String,
}

pub(crate) fn run(command: KplCommand) -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    match command {
        KplCommand::Decode(args) => decode(args, stdin, stdout),
        KplCommand::Encode(args) => encode(args, stdin, stdout),
    }
}

fn decode(args: DecodeArgs, input: impl BufRead, mut out: impl Write) -> anyhow::Result<ExitCode> {
    let policy = match args.hash_range_policy {
        PolicyArg::DropAggregate => HashRangePolicy::DropAggregate,
        PolicyArg::Off => HashRangePolicy::Off,
    };
    let mut deaggregator = match args.hash_range {
        Some(range) => Deaggregator::for_hash_range(range, policy),
        None => Deaggregator::new(),
    };
    let mut bad_lines = 0usize;
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.context("could not read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let record = match parse_decode_line(&line) {
            Ok(record) => record,
            Err(err) => {
                bad_lines += 1;
                warn_line(number, &err);
                continue;
            }
        };
        let sequence_number = match record.sequence_number.as_deref().map(str::parse) {
            None => None,
            Some(Ok(seq)) => Some(seq),
            Some(Err(err)) => {
                // The sequence number only names the record in warnings.
                warn_line(number, &anyhow::Error::new(err));
                None
            }
        };
        let data = bytes::Bytes::from(record.data);
        let users: Vec<UserRecordJson> = match deaggregator.decode(&data, sequence_number.as_ref())
        {
            Decoded::PassThrough(_) => vec![UserRecordJson {
                partition_key: record.partition_key,
                explicit_hash_key: record.explicit_hash_key,
                sub_sequence_number: None,
                data: BASE64.encode(&data),
            }],
            Decoded::Aggregate(subs) => subs
                .into_iter()
                .map(|sub| UserRecordJson {
                    partition_key: Some(sub.partition_key),
                    explicit_hash_key: sub.explicit_hash_key,
                    sub_sequence_number: sub.sub_sequence_number,
                    data: BASE64.encode(&sub.data),
                })
                .collect(),
            Decoded::Dropped { sub_records, .. } => {
                warn_text(&format!(
                    "line {number}: dropped an aggregate of {sub_records} user records with hash keys \
                     outside the range (--hash-range-policy off keeps them)"
                ));
                Vec::new()
            }
        };
        for user in users {
            if !write_json_line(&mut out, &user)? {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    if !flush(&mut out)? {
        return Ok(ExitCode::SUCCESS);
    }
    let stats = deaggregator.stats();
    if stats.corrupt > 0 {
        warn_text(&format!(
            "{} records looked aggregated but were corrupt and were written whole",
            stats.corrupt
        ));
    }
    if bad_lines > 0 {
        warn_text(&format!("{bad_lines} lines could not be read"));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

struct DecodeLine {
    data: Vec<u8>,
    partition_key: Option<String>,
    explicit_hash_key: Option<String>,
    sequence_number: Option<String>,
}

fn parse_decode_line(line: &str) -> anyhow::Result<DecodeLine> {
    let trimmed = line.trim();
    if trimmed.starts_with('{') {
        let record: InputRecord =
            serde_json::from_str(trimmed).context("not a JSON record with a `data` field")?;
        let data = BASE64
            .decode(record.data.trim())
            .context("`data` is not base64")?;
        return Ok(DecodeLine {
            data,
            partition_key: record.partition_key,
            explicit_hash_key: record.explicit_hash_key,
            sequence_number: record.sequence_number,
        });
    }
    let data = BASE64.decode(trimmed).context("not base64")?;
    Ok(DecodeLine {
        data,
        partition_key: None,
        explicit_hash_key: None,
        sequence_number: None,
    })
}

fn encode(args: EncodeArgs, input: impl BufRead, mut out: impl Write) -> anyhow::Result<ExitCode> {
    let mut aggregator = Aggregator::with_max_size(args.max_size)?;
    let mut bad_lines = 0usize;
    let write = |out: &mut dyn Write, aggregate: rkcl::kpl::Aggregate| -> anyhow::Result<bool> {
        if args.json {
            let json = serde_json::json!({
                "partition_key": aggregate.partition_key,
                "explicit_hash_key": aggregate.explicit_hash_key,
                "data": BASE64.encode(&aggregate.data),
            });
            write_json_line(out, &json)
        } else {
            write_line(out, &BASE64.encode(&aggregate.data))
        }
    };
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.context("could not read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let record = match parse_user_record(&line) {
            Ok(record) => record,
            Err(err) => {
                bad_lines += 1;
                warn_line(number, &err);
                continue;
            }
        };
        match aggregator.add(record) {
            Ok(Some(full)) => {
                if !write(&mut out, full)? {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Ok(None) => {}
            Err(err) => {
                bad_lines += 1;
                warn_line(number, &anyhow::Error::new(err));
            }
        }
    }
    if let Some(last) = aggregator.flush()
        && !write(&mut out, last)?
    {
        return Ok(ExitCode::SUCCESS);
    }
    if !flush(&mut out)? {
        return Ok(ExitCode::SUCCESS);
    }
    if bad_lines > 0 {
        warn_text(&format!("{bad_lines} lines could not be encoded"));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a JSON user record (`data` in base64).
pub(crate) fn parse_user_record(line: &str) -> anyhow::Result<ProducerRecord> {
    let json: UserRecordJson = serde_json::from_str(line.trim())
        .context("not a JSON user record with `partition_key` and `data`")?;
    let partition_key = json
        .partition_key
        .context("the user record has no `partition_key`")?;
    let data = BASE64
        .decode(json.data.trim())
        .context("`data` is not base64")?;
    Ok(ProducerRecord {
        partition_key,
        explicit_hash_key: json.explicit_hash_key,
        data: data.into(),
    })
}

fn warn_line(number: usize, err: &anyhow::Error) {
    warn_text(&format!("line {number}: {err:#}"));
}

fn warn_text(text: &str) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("rkcl: {text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_text(input: &str, args: DecodeArgs) -> (String, ExitCode) {
        let mut out = Vec::new();
        let code = decode(args, input.as_bytes(), &mut out).unwrap();
        (String::from_utf8(out).unwrap(), code)
    }

    fn encode_text(input: &str) -> String {
        let mut out = Vec::new();
        let args = EncodeArgs {
            max_size: 200,
            json: false,
        };
        encode(args, input.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn no_filter() -> DecodeArgs {
        DecodeArgs {
            hash_range: None,
            hash_range_policy: PolicyArg::DropAggregate,
        }
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let input: String = (0..20)
            .map(|i| {
                format!(
                    "{{\"partition_key\":\"k{}\",\"data\":\"{}\"}}\n",
                    i % 3,
                    BASE64.encode(format!("payload {i}"))
                )
            })
            .collect();
        let encoded = encode_text(&input);
        assert!(
            encoded.lines().count() > 1,
            "200-byte aggregates split the input"
        );
        let (decoded, code) = decode_text(&encoded, no_filter());
        assert_eq!(code, ExitCode::SUCCESS);
        let records: Vec<UserRecordJson> = decoded
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), 20);
        for (i, record) in records.iter().enumerate() {
            assert_eq!(
                record.partition_key.as_deref(),
                Some(format!("k{}", i % 3).as_str())
            );
            assert_eq!(
                BASE64.decode(&record.data).unwrap(),
                format!("payload {i}").as_bytes()
            );
            assert!(record.sub_sequence_number.is_some());
            assert!(record.explicit_hash_key.is_none());
        }
    }

    #[test]
    fn bad_lines_are_named_and_the_rest_decoded() {
        let plain = BASE64.encode("not aggregated");
        let json = format!(
            "{{\"data\":\"{plain}\",\"partition_key\":\"outer\",\"sequence_number\":\"12\"}}"
        );
        let input = format!("{plain}\n!!! not base64 !!!\n{json}\n");
        let (decoded, code) = decode_text(&input, no_filter());
        assert_eq!(code, ExitCode::FAILURE);
        let lines: Vec<serde_json::Value> = decoded
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["partition_key"], serde_json::Value::Null);
        assert_eq!(lines[0]["sub_sequence_number"], serde_json::Value::Null);
        assert_eq!(lines[0]["explicit_hash_key"], serde_json::Value::Null);
        assert_eq!(lines[1]["partition_key"], "outer");
        assert_eq!(lines[1]["data"], plain);
    }
}
