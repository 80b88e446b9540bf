//! `rkcl consume --exec CMD`: Lambda-style handlers. Each batch goes to
//! the command as the Lambda Kinesis event; its exit status and response
//! (`batchItemFailures`) drive the library's batch failure policy
//! ([`rkcl::stream::BatchOptions`]: retries, bisect on error, maximum record
//! age), and records given up on are written to the `--on-failure` file.
//!
//! - `event`: the event, the response and the on-failure lines (pure).
//! - `handler`: the handler's processes, per batch or per lane.
//!
//! The batching, lanes, retries and commits are the library's
//! [`Consumer::for_each_batch`](rkcl::Consumer::for_each_batch); this module
//! only turns batches into processes and back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rkcl::stream::{BatchFailure, BatchOptions};
use rkcl::{Consumer, ConsumerConfig, DynamoDbLeaseStore, Kinesis, SchedulerConfig};

mod event;
mod handler;

use event::{EventSource, FailureLine};
pub(crate) use handler::ExecMode;
use handler::Handlers;

/// The flags of `rkcl consume --exec`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExecArgs {
    /// Run this shell command (`sh -c`) as a Lambda-style handler of each
    /// batch instead of writing records to stdout: the Lambda Kinesis event
    /// on its stdin; exit 0 (optionally printing `{"batchItemFailures":
    /// [...]}`) for success.
    #[arg(long, value_name = "CMD")]
    pub(crate) exec: Option<String>,
    /// `per-batch` starts the command for each batch (as Lambda invokes a
    /// function); `per-lane` keeps one process per lane running, one event
    /// per line on its stdin, one response per line on its stdout.
    #[arg(long, value_enum, default_value_t = ExecMode::PerBatch, requires = "exec")]
    exec_mode: ExecMode,
    /// Kill a handler that takes longer than this on one batch; the batch
    /// fails. Default: no limit.
    #[arg(long, requires = "exec")]
    exec_timeout: Option<humantime::Duration>,
    /// The most records in one batch. Default: 100.
    #[arg(long, requires = "exec")]
    batch_size: Option<usize>,
    /// How long a batch waits for more records after its first. Default:
    /// 500ms.
    #[arg(long, requires = "exec")]
    batching_window: Option<humantime::Duration>,
    /// Batches of one shard handled at once, 1 to 10; records of one
    /// partition key stay in one lane, in order. Default: 1.
    #[arg(long, requires = "exec")]
    parallelization_factor: Option<usize>,
    /// Retry a failed batch at most this often, then write it to
    /// `--on-failure` and go on. Default: retry until it succeeds.
    #[arg(long, requires = "on_failure")]
    retries: Option<u32>,
    /// Split a failed batch in halves, down to the record that fails.
    #[arg(long, requires = "exec")]
    bisect_on_error: bool,
    /// Do not hand records older than this to the handler: write them to
    /// `--on-failure`. Default: no limit.
    #[arg(long, requires = "on_failure")]
    max_record_age: Option<humantime::Duration>,
    /// Append a JSON line per batch given up on (by `--retries` or
    /// `--max-record-age`): Lambda's on-failure record, no payloads.
    #[arg(long, value_name = "FILE", requires = "exec")]
    on_failure: Option<PathBuf>,
}

impl ExecArgs {
    /// The library's batch options for these flags.
    fn batch_options(&self, source: &EventSource) -> anyhow::Result<BatchOptions> {
        let defaults = BatchOptions::default();
        let mut builder = BatchOptions::builder()
            .batch_size(self.batch_size.unwrap_or(defaults.batch_size))
            .max_batching_window(
                self.batching_window
                    .map_or(defaults.max_batching_window, Into::into),
            )
            .parallelization_factor(
                self.parallelization_factor
                    .unwrap_or(defaults.parallelization_factor),
            )
            .max_retries(self.retries)
            .bisect_on_error(self.bisect_on_error)
            .max_record_age(self.max_record_age.map(Into::into));
        if let Some(path) = &self.on_failure {
            let (path, source) = (Arc::new(path.clone()), Arc::new(source.clone()));
            builder = builder.on_failure(move |failure: BatchFailure| {
                let (path, source) = (path.clone(), source.clone());
                async move { write_failure(&path, &source, &failure).await }
            });
        }
        builder.build().context("invalid batch options")
    }
}

/// Appends the on-failure line of `failure`; logs when it cannot (the
/// records are committed either way, as the library's callback contract
/// says).
async fn write_failure(path: &std::path::Path, source: &EventSource, failure: &BatchFailure) {
    let line = FailureLine::new(source, failure, SystemTime::now());
    let mut text = match serde_json::to_vec(&line) {
        Ok(text) => text,
        Err(err) => {
            tracing::error!(error = %err, "could not write an on-failure line");
            return;
        }
    };
    text.push(b'\n');
    let written = async {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        file.write_all(&text).await?;
        file.sync_data().await
    };
    if let Err(err) = written.await {
        tracing::error!(
            shard_id = %failure.shard.shard_id,
            path = %path.display(),
            error = %err,
            records = failure.records.len(),
            "could not write the on-failure line; the records are given up on"
        );
    }
}

/// What `rkcl consume` hands over when `--exec` is given.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) scheduler: SchedulerConfig,
    pub(crate) checkpoint_every: (u64, Duration),
    pub(crate) shutdown_grace: Duration,
    pub(crate) kinesis: Kinesis,
    pub(crate) store: DynamoDbLeaseStore,
}

/// How many batches of each lane are read ahead of the handler.
const BATCHES_AHEAD: usize = 2;

/// The in-flight limits over all shards and per shard (bytes): the
/// library's defaults.
const MAX_IN_FLIGHT_RECORDS: usize = 100_000;
const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
const MAX_IN_FLIGHT_BYTES_PER_SHARD: usize = 16 << 20;

/// The records of one shard in flight: a few batches per lane. Kept small
/// so that a shutdown waits for a few batches only, not for everything read
/// ahead: a batch whose handler finishes after the shutdown grace time is
/// handled again by the next owner.
fn read_ahead(options: &BatchOptions) -> usize {
    options
        .batch_size
        .saturating_mul(options.parallelization_factor)
        .saturating_mul(BATCHES_AHEAD)
        .clamp(1, MAX_IN_FLIGHT_RECORDS)
}

/// The stream's ARN: the argument when it is one, else DescribeStreamSummary's.
async fn stream_arn(kinesis: &Kinesis, stream: &rkcl::aws::StreamRef) -> anyhow::Result<String> {
    match stream {
        rkcl::aws::StreamRef::Arn(arn) => Ok(arn.clone()),
        rkcl::aws::StreamRef::Name(name) => Ok(kinesis
            .describe_stream_summary(stream)
            .await
            .with_context(|| format!("could not describe stream {name}"))?
            .arn),
    }
}

/// Runs the consumer with the handler until `signals`; returns once the
/// shutdown is done (final checkpoints, leases released).
pub(crate) async fn run(
    worker: Worker,
    args: &ExecArgs,
    command: &str,
    signals: rkcl::scheduler::Signals,
    telemetry: Option<&rkcl::observe::Telemetry>,
) -> anyhow::Result<()> {
    let stream = worker.scheduler.stream.clone();
    let source = EventSource::from_arn(&stream_arn(&worker.kinesis, &stream).await?);
    let options = args.batch_options(&source)?;
    let (records, interval) = worker.checkpoint_every;
    let config = ConsumerConfig::builder(worker.scheduler)
        .checkpoint_every(records, interval)
        .max_in_flight_per_shard(read_ahead(&options), MAX_IN_FLIGHT_BYTES_PER_SHARD)
        .max_in_flight(MAX_IN_FLIGHT_RECORDS, MAX_IN_FLIGHT_BYTES)
        .shutdown_grace(worker.shutdown_grace)
        .build()?;
    let consumer = Consumer::start(config, worker.kinesis, worker.store)
        .await
        .with_context(|| format!("could not start consuming {stream}"))?;
    tracing::info!(
        worker_id = consumer.worker_id(),
        mode = ?args.exec_mode,
        ?options,
        "consuming with a handler"
    );
    if let Some(telemetry) = telemetry {
        telemetry.watch(consumer.health());
    }
    let shutdown = consumer.shutdown_handle();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("signal received; shutting down");
        shutdown.trigger();
    });
    let handlers = Arc::new(Handlers::new(
        vec!["sh".to_owned(), "-c".to_owned(), command.to_owned()],
        args.exec_mode,
        args.exec_timeout.map(Into::into),
        source,
    ));
    let each = handlers.clone();
    let report = consumer
        .for_each_batch(options, move |batch| {
            let handlers = each.clone();
            async move { handlers.handle(batch).await }
        })
        .await?;
    handlers.close().await;
    tracing::info!(
        finished = report.finished_leases.len(),
        unfinished = ?report.unfinished_leases,
        unreleased = ?report.unreleased_leases,
        "stopped"
    );
    Ok(())
}
