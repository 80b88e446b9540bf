//! `rkcl stream create | list | describe`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use rkcl::aws::StreamRef;
use rkcl::retrieval::{FanOutConfig, resolve_consumer};

use crate::aws::{AwsArgs, StreamContext, stream_ref};
use crate::output::{flush, write_json_line, write_line};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum StreamCommand {
    /// Create a stream and wait until it is active.
    Create {
        /// The stream's name.
        name: String,
        /// How many shards.
        #[arg(long, default_value_t = 1)]
        shards: u32,
    },
    /// List the streams of the account and region.
    List,
    /// Show a stream's shards: parents, hash-key ranges, open or closed.
    Describe {
        /// The stream's name or ARN.
        name: String,
        /// One JSON object per shard instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List a stream's consumers (enhanced fan-out), or register or
    /// deregister one.
    Consumers {
        /// The stream's name or ARN.
        name: String,
        /// Register this consumer (if missing) and wait until it is active.
        #[arg(long, value_name = "CONSUMER", conflicts_with = "deregister")]
        register: Option<String>,
        /// Deregister this consumer (by name).
        #[arg(long, value_name = "CONSUMER")]
        deregister: Option<String>,
        /// One JSON object per consumer instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(aws: &AwsArgs, command: StreamCommand) -> anyhow::Result<ExitCode> {
    let kinesis = aws.kinesis().await?;
    let mut out = std::io::stdout().lock();
    match command {
        StreamCommand::Create { name, shards } => {
            if shards == 0 {
                bail!("a stream needs at least one shard");
            }
            let stream = stream_ref(&name)?;
            kinesis
                .create_stream(&name, shards)
                .await
                .for_stream(&stream)?;
            let summary = kinesis
                .wait_until_active(&stream, Duration::from_secs(300))
                .await
                .for_stream(&stream)?;
            write_line(
                &mut out,
                &format!(
                    "created {} with {} shards: {}",
                    summary.name, summary.open_shard_count, summary.arn
                ),
            )?;
        }
        StreamCommand::List => {
            for name in kinesis.list_streams().await? {
                if !write_line(&mut out, &name)? {
                    break;
                }
            }
        }
        StreamCommand::Describe { name, json } => {
            let stream = stream_ref(&name)?;
            let mut shards = kinesis.list_shards(&stream).await.for_stream(&stream)?;
            shards.sort_by(|a, b| a.id.cmp(&b.id));
            if !json {
                write_line(
                    &mut out,
                    &format!(
                        "{:<22} {:<7} {:<22} {:<22} {:>39} {:>39}",
                        "SHARD",
                        "STATE",
                        "PARENT",
                        "ADJACENT PARENT",
                        "START HASH KEY",
                        "END HASH KEY"
                    ),
                )?;
            }
            for shard in shards {
                let state = if shard.is_open() { "open" } else { "closed" };
                let ok = if json {
                    write_json_line(
                        &mut out,
                        &serde_json::json!({
                            "shard_id": shard.id.as_str(),
                            "state": state,
                            "parent_shard_id": shard.parent_shard_id.as_ref().map(|s| s.as_str()),
                            "adjacent_parent_shard_id": shard.adjacent_parent_shard_id.as_ref().map(|s| s.as_str()),
                            "starting_hash_key": shard.hash_key_range.start().to_string(),
                            "ending_hash_key": shard.hash_key_range.end().to_string(),
                            "starting_sequence_number": shard.starting_sequence_number.to_string(),
                            "ending_sequence_number": shard.ending_sequence_number.as_ref().map(|s| s.to_string()),
                        }),
                    )?
                } else {
                    let none = || "-".to_owned();
                    write_line(
                        &mut out,
                        &format!(
                            "{:<22} {:<7} {:<22} {:<22} {:>39} {:>39}",
                            shard.id.as_str(),
                            state,
                            shard
                                .parent_shard_id
                                .as_ref()
                                .map_or_else(none, |s| s.to_string()),
                            shard
                                .adjacent_parent_shard_id
                                .as_ref()
                                .map_or_else(none, |s| s.to_string()),
                            shard.hash_key_range.start(),
                            shard.hash_key_range.end()
                        ),
                    )?
                };
                if !ok {
                    break;
                }
            }
        }
        StreamCommand::Consumers {
            name,
            register,
            deregister,
            json,
        } => {
            let stream = stream_ref(&name)?;
            let stream_arn = match &stream {
                StreamRef::Arn(arn) => arn.clone(),
                StreamRef::Name(_) => {
                    kinesis
                        .describe_stream_summary(&stream)
                        .await
                        .for_stream(&stream)?
                        .arn
                }
            };
            if let Some(consumer) = register {
                let config = FanOutConfig::builder()
                    .consumer_name(Some(consumer.clone()))
                    .build()?;
                let registered = resolve_consumer(&kinesis, &stream, &config, &consumer)
                    .await
                    .with_context(|| format!("could not register consumer {consumer}"))?;
                write_line(
                    &mut out,
                    &format!(
                        "registered {} (active): {}",
                        registered.name, registered.arn
                    ),
                )?;
            } else if let Some(consumer) = deregister {
                let found = kinesis
                    .describe_stream_consumer(&stream_arn, &consumer)
                    .await
                    .with_context(|| format!("stream {stream} has no consumer {consumer}"))?;
                kinesis
                    .deregister_stream_consumer(&found.arn)
                    .await
                    .with_context(|| format!("could not deregister consumer {consumer}"))?;
                write_line(&mut out, &format!("deregistered {consumer}: {}", found.arn))?;
            } else {
                let consumers = kinesis
                    .list_stream_consumers(&stream_arn)
                    .await
                    .for_stream(&stream)?;
                if !json {
                    write_line(
                        &mut out,
                        &format!("{:<32} {:<10} ARN", "CONSUMER", "STATUS"),
                    )?;
                }
                for consumer in consumers {
                    let ok = if json {
                        write_json_line(
                            &mut out,
                            &serde_json::json!({
                                "name": consumer.name,
                                "status": consumer.status.to_string(),
                                "arn": consumer.arn,
                            }),
                        )?
                    } else {
                        write_line(
                            &mut out,
                            &format!(
                                "{:<32} {:<10} {}",
                                consumer.name, consumer.status, consumer.arn
                            ),
                        )?
                    };
                    if !ok {
                        break;
                    }
                }
            }
        }
    }
    flush(&mut out)?;
    Ok(ExitCode::SUCCESS)
}
