//! `rkcl put`: lines from stdin to a stream.

use std::collections::HashSet;
use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use rkcl::{
    kpl::Aggregator,
    producer::{DEFAULT_MAX_OUTSTANDING_RECORDS, Producer, ProducerConfig, Receipt},
    record::ProducerRecord,
};

use crate::aws::{AwsArgs, stream_ref};

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
    /// How long a record may wait for others to fill a request.
    #[arg(long, default_value = "100ms", value_name = "DURATION")]
    linger: humantime::Duration,
    /// The most records read and not yet written; reading stdin waits there.
    #[arg(long, default_value_t = DEFAULT_MAX_OUTSTANDING_RECORDS, value_name = "RECORDS")]
    max_outstanding: usize,
    /// The share of each shard's write limits (1 MiB/s, 1,000 records/s) to
    /// use, in percent (1 to 100).
    #[arg(long, default_value_t = 100, value_name = "PERCENT")]
    rate_limit: u32,
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
        .linger(args.linger.into())
        .max_outstanding_records(args.max_outstanding)
        .rate_limit_percent(args.rate_limit)
        .build()?;
    let kinesis = aws.kinesis().await?;
    let producer = Producer::new(kinesis, stream.clone(), config)?;
    let (mut sink, mut receipts) = producer.sink_with_receipts()?;
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<anyhow::Result<Vec<ProducerRecord>>>(2);
    // Stdin is read on a blocking thread so sending overlaps reading; the
    // producer's outstanding limit holds the reader back.
    let reader = tokio::task::spawn_blocking(move || read_chunks(&args, &sender));
    let feeder = tokio::spawn(async move {
        let mut bad_line = None;
        while let Some(chunk) = receiver.recv().await {
            match chunk {
                Ok(chunk) => {
                    let mut records = futures_util::stream::iter(chunk.into_iter().map(Ok));
                    sink.send_all(&mut records).await?;
                }
                Err(err) => {
                    bad_line = Some(err);
                    break;
                }
            }
        }
        // Closing waits until every record sent is answered.
        sink.close().await?;
        Ok::<_, anyhow::Error>(bad_line)
    });
    let mut summary = ReceiptSummary::default();
    let mut first_error = None;
    while let Some(answer) = receipts.next().await {
        match answer {
            Ok(receipt) => summary.add(&receipt),
            Err(err) => {
                summary.failed += 1;
                first_error.get_or_insert(err);
            }
        }
    }
    let bad_line = feeder
        .await
        .context("the sending task failed")?
        .with_context(|| format!("stream {stream}"))?;
    reader.await.context("the stdin reader failed")?;
    producer.shutdown(Duration::from_secs(10)).await;
    #[allow(clippy::print_stdout)]
    {
        println!("{}", summary.line());
    }
    if let Some(err) = first_error {
        bail!(
            "stream {stream}: {} records were not written; the first: {err}",
            summary.failed
        );
    }
    if let Some(err) = bad_line {
        return Err(err);
    }
    Ok(ExitCode::SUCCESS)
}

/// What the receipts of a run say.
#[derive(Debug, Default)]
struct ReceiptSummary {
    records: u64,
    failed: u64,
    kinesis_records: HashSet<(String, String)>,
    shards: HashSet<String>,
    retries: u64,
    buffer_ms: Vec<u64>,
}

impl ReceiptSummary {
    fn add(&mut self, receipt: &Receipt) {
        self.records += 1;
        self.retries += u64::from(receipt.attempts.saturating_sub(1));
        self.kinesis_records.insert((
            receipt.shard_id.to_string(),
            receipt.sequence_number.to_string(),
        ));
        self.shards.insert(receipt.shard_id.to_string());
        self.buffer_ms
            .push(u64::try_from(receipt.time_in_buffer.as_millis()).unwrap_or(u64::MAX));
    }

    fn line(&mut self) -> String {
        self.buffer_ms.sort_unstable();
        let at = |q: f64| {
            let index = ((self.buffer_ms.len() as f64 - 1.0) * q).round() as usize;
            self.buffer_ms.get(index).copied().unwrap_or(0)
        };
        format!(
            "records: {}, kinesis records: {}, retries: {}, failed: {}, shards: {}, time in buffer p50/p99: {}/{} ms",
            self.records,
            self.kinesis_records.len(),
            self.retries,
            self.failed,
            self.shards.len(),
            at(0.5),
            at(0.99)
        )
    }
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
