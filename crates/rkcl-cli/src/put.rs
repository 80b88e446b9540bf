//! `rkcl put`: lines from stdin to a stream.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, bail};
use rand::Rng;
use rkcl::{
    kpl::Aggregator,
    producer::{Producer, ProducerConfig, PutSummary},
    record::ProducerRecord,
};

use crate::aws::{AwsArgs, StreamContext, stream_ref};

/// How many records are read from stdin before they are sent.
const CHUNK_RECORDS: usize = 10_000;
/// How many bytes are read from stdin before they are sent.
const CHUNK_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub(crate) struct PutArgs {
    /// The stream's name or ARN.
    #[arg(long)]
    stream: String,
    /// Pack the records into KPL aggregates, one per predicted shard, like
    /// the KPL.
    #[arg(long)]
    aggregate: bool,
    /// The largest aggregate in bytes (64 to 1048576).
    #[arg(long, default_value_t = Aggregator::DEFAULT_MAX_SIZE, value_name = "BYTES")]
    max_size: usize,
    /// Write every record with this partition key.
    #[arg(long, conflicts_with = "partition_key_random")]
    partition_key: Option<String>,
    /// Give every record a random partition key (the default for `lines`).
    #[arg(long)]
    partition_key_random: bool,
    /// Keep per-key order even when entries fail and are retried (a request
    /// then carries at most one record per key, or one aggregate per shard).
    #[arg(long)]
    strict_order: bool,
    /// `lines`: each line is a record's data. `json`: each line is a user
    /// record `{"partition_key", "explicit_hash_key", "data" (base64)}`.
    #[arg(long, value_enum, default_value_t = InputFormat::Lines)]
    format: InputFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum InputFormat {
    Lines,
    Json,
}

pub(crate) async fn run(aws: &AwsArgs, args: PutArgs) -> anyhow::Result<ExitCode> {
    let stream = stream_ref(&args.stream)?;
    if let Some(key) = &args.partition_key
        && !(1..=256).contains(&key.chars().count())
    {
        bail!("--partition-key must have 1 to 256 characters");
    }
    let config = ProducerConfig::builder()
        .aggregate(args.aggregate)
        .aggregate_max_size(args.max_size)
        .strict_order(args.strict_order)
        .build()?;
    let kinesis = aws.kinesis().await?;
    let mut producer = Producer::new(kinesis, stream.clone(), config)?;
    let mut total = PutSummary::default();
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<anyhow::Result<Vec<ProducerRecord>>>(2);
    // Stdin is read on a blocking thread so sending overlaps reading.
    let reader = tokio::task::spawn_blocking(move || read_chunks(&args, &sender));
    while let Some(chunk) = receiver.recv().await {
        let chunk = chunk?;
        let summary = producer.put(chunk).await.for_stream(&stream)?;
        total += summary;
    }
    reader.await.context("the stdin reader failed")?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "records: {}, kinesis records: {}, retries: {}, re-sent after reshard: {}, requests: {}",
            total.user_records,
            total.kinesis_records,
            total.retried_entries,
            total.resent_after_reshard,
            total.requests
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read_chunks(
    args: &PutArgs,
    sender: &tokio::sync::mpsc::Sender<anyhow::Result<Vec<ProducerRecord>>>,
) {
    let stdin = std::io::stdin().lock();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    let mut rng = rand::rng();
    for (index, line) in stdin.lines().enumerate() {
        let record = line
            .context("could not read stdin")
            .and_then(|line| to_record(args, &line, &mut rng))
            .with_context(|| format!("line {}", index + 1));
        let record = match record {
            Ok(record) => record,
            Err(err) => {
                // Records read so far are sent; the bad line stops the run.
                if !chunk.is_empty() {
                    let _ = sender.blocking_send(Ok(std::mem::take(&mut chunk)));
                }
                let _ = sender.blocking_send(Err(err));
                return;
            }
        };
        bytes += record.data.len() + record.partition_key.len();
        chunk.push(record);
        if chunk.len() >= CHUNK_RECORDS || bytes >= CHUNK_BYTES {
            bytes = 0;
            if sender
                .blocking_send(Ok(std::mem::take(&mut chunk)))
                .is_err()
            {
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = sender.blocking_send(Ok(chunk));
    }
}

fn to_record(args: &PutArgs, line: &str, rng: &mut impl Rng) -> anyhow::Result<ProducerRecord> {
    match args.format {
        InputFormat::Json => {
            let mut record = crate::kpl::parse_user_record(line)?;
            if let Some(key) = &args.partition_key {
                record.partition_key = key.clone();
            }
            Ok(record)
        }
        InputFormat::Lines => {
            let partition_key = match &args.partition_key {
                Some(key) => key.clone(),
                None => format!("{:032x}", rng.random::<u128>()),
            };
            Ok(ProducerRecord::new(partition_key, line.as_bytes().to_vec()))
        }
    }
}
