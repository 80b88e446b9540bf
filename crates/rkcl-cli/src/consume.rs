//! `rkcl consume`: one worker of a consumer group, writing every user record
//! of the shards it holds to stdout as JSON lines (the lines of `rkcl tail`)
//! and checkpointing only what has been written and flushed.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use rkcl::{
    Checkpointer, ExtendedSequenceNumber, InitialPosition, ProcessRecordsInput, ProcessorError,
    RecordProcessor, Scheduler, SchedulerConfig, ShardId, ShardInfo,
};
use tokio::sync::Notify;

use rkcl::tracker::{FormerStreams, MultiStreamConfig, StaticStreams, StreamConfig, StreamsFile};

use crate::aws::{AwsArgs, stream_ref};
use crate::exec::{ExecArgs, Worker};
use crate::observe::{FLUSH_TIMEOUT, ObserveArgs};
use crate::output::{flush, write_bytes};
use crate::retrieval::RetrievalArgs;
use crate::tail::{DataFormat, RecordLine};

#[derive(Debug, clap::Args)]
pub(crate) struct ConsumeArgs {
    /// The application name: the lease table shared by the group's workers
    /// (created if missing).
    #[arg(long)]
    app: String,
    /// The stream's name or ARN. Repeat it to read several streams with one
    /// lease table (multi-stream mode; each may also be an identifier
    /// `account:name:creationEpoch`).
    #[arg(long = "stream", required_unless_present = "streams_file")]
    streams: Vec<String>,
    /// Multi-stream mode over the streams listed in FILE (one identifier,
    /// ARN or name per line; `#` starts a comment), read again every
    /// `--streams-refresh`, so streams are added and removed by editing it.
    #[arg(long, value_name = "FILE")]
    streams_file: Option<std::path::PathBuf>,
    /// Multi-stream mode even with one `--stream` (lease keys
    /// `account:name:creationEpoch:shardId`, the Java KCL's format).
    #[arg(long)]
    multi_stream: bool,
    /// Multi-stream mode: how often the streams are read again.
    #[arg(long, default_value = "60s")]
    streams_refresh: humantime::Duration,
    /// Multi-stream mode: where streams added while running start when
    /// their shards have no checkpoint (`latest` or `trim-horizon`).
    #[arg(long, default_value = "latest")]
    new_streams_from: String,
    /// Multi-stream mode: delete the leases of streams no longer listed
    /// once unlisted for this long (a stream listed again starts over).
    /// Default: keep them, so a stream listed again resumes at its
    /// checkpoints.
    #[arg(long, value_name = "DURATION")]
    delete_former_streams_after: Option<humantime::Duration>,
    /// This worker's id. Default: the host name and a random suffix.
    #[arg(long)]
    worker_id: Option<String>,
    /// Where shards without a checkpoint start: `trim-horizon`, `latest` or
    /// `at-timestamp:RFC3339`.
    #[arg(long, default_value = "trim-horizon")]
    from: String,
    /// Checkpoint every N records written (a number) or every DURATION
    /// (such as `5s`), and always at shutdown.
    #[arg(long, default_value = "10s")]
    checkpoint_every: String,
    /// How to write each record's data.
    #[arg(long, value_enum, default_value_t = DataFormat::Utf8)]
    data: DataFormat,
    /// The lease duration (the lease loops' intervals follow from it).
    #[arg(long, default_value = "10s")]
    lease_duration: humantime::Duration,
    /// How long processors may take to finish at shutdown.
    #[arg(long, default_value = "10s")]
    shutdown_timeout: humantime::Duration,
    #[command(flatten)]
    reading: RetrievalArgs,
    #[command(flatten)]
    observe: ObserveArgs,
    #[command(flatten)]
    exec: ExecArgs,
}

/// With `--exec` and `--checkpoint-every N`, a shard whose watermark moves
/// is also checkpointed at least this often.
const EXEC_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// When to checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Every {
    Records(u64),
    Time(Duration),
}

fn parse_every(text: &str) -> anyhow::Result<Every> {
    if let Ok(records) = text.parse::<u64>() {
        if records == 0 {
            bail!("--checkpoint-every must be at least 1 record");
        }
        return Ok(Every::Records(records));
    }
    let every: Duration = humantime::parse_duration(text).with_context(|| {
        format!("--checkpoint-every takes a number or a duration, got {text:?}")
    })?;
    if every.is_zero() {
        bail!("--checkpoint-every must be positive");
    }
    Ok(Every::Time(every))
}

/// The multi-stream settings the arguments ask for; `None` for one stream.
fn multi_stream(args: &ConsumeArgs) -> anyhow::Result<Option<MultiStreamConfig>> {
    if args.streams_file.is_none() && args.streams.len() <= 1 && !args.multi_stream {
        return Ok(None);
    }
    if args.streams_file.is_some() && !args.streams.is_empty() {
        bail!("name the streams with --stream or with --streams-file, not both");
    }
    let mut multi = match &args.streams_file {
        Some(path) => MultiStreamConfig::new(StreamsFile::new(path)),
        None => MultiStreamConfig::new(StaticStreams(
            args.streams.iter().map(|s| StreamConfig::new(s)).collect(),
        )),
    };
    multi = multi
        .refresh_interval(args.streams_refresh.into())
        .new_stream_position(match parse_initial(&args.new_streams_from)? {
            InitialPosition::AtTimestamp(_) => {
                bail!("--new-streams-from takes latest or trim-horizon")
            }
            position => position,
        });
    if let Some(wait) = args.delete_former_streams_after {
        multi = multi.former_streams(FormerStreams::DeleteUnlisted { wait: wait.into() });
    }
    multi.validate()?;
    Ok(Some(multi))
}

fn parse_initial(text: &str) -> anyhow::Result<InitialPosition> {
    Ok(match text {
        "trim-horizon" => InitialPosition::TrimHorizon,
        "latest" => InitialPosition::Latest,
        other => match other.strip_prefix("at-timestamp:") {
            Some(time) => {
                let at: SystemTime = humantime::parse_rfc3339_weak(time)
                    .with_context(|| format!("not an RFC 3339 time: {time:?}"))?;
                InitialPosition::AtTimestamp(at)
            }
            None => {
                bail!("--from takes trim-horizon, latest or at-timestamp:RFC3339, got {other:?}")
            }
        },
    })
}

/// Writes one shard's records to stdout and checkpoints what was written.
struct StdoutWriter {
    stream: String,
    shard_id: ShardId,
    format: DataFormat,
    every: Every,
    /// The last record written and flushed.
    written: Option<ExtendedSequenceNumber>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    closed: Arc<Notify>,
    /// Lines waiting to be written to stdout: written [`WRITE_CHUNK`] at a
    /// time, not one write per line (stdout is line-buffered), and kept
    /// between batches (allocated at the first record, so an idle shard
    /// holds none).
    lines: Vec<u8>,
}

/// How many bytes of lines `rkcl consume` gathers before writing them: a
/// batch of aggregated records can hold 100,000 user records, which must
/// not all wait in memory as text.
const WRITE_CHUNK: usize = 64 * 1024;

impl StdoutWriter {
    /// Writes and flushes the batch; `false` when stdout was closed.
    fn write(&mut self, input: &ProcessRecordsInput) -> anyhow::Result<bool> {
        self.lines.clear();
        for record in &input.records {
            let line = RecordLine::new(&self.stream, &self.shard_id, record, self.format);
            serde_json::to_writer(&mut self.lines, &line).context("could not encode JSON")?;
            self.lines.push(b'\n');
            if self.lines.len() >= WRITE_CHUNK {
                if !write_bytes(&mut std::io::stdout().lock(), &self.lines)? {
                    return Ok(false);
                }
                self.lines.clear();
            }
        }
        let mut out = std::io::stdout().lock();
        Ok(write_bytes(&mut out, &self.lines)? && flush(&mut out)?)
    }

    async fn checkpoint_written(&mut self, checkpointer: &Checkpointer) -> rkcl::Result<()> {
        if let Some(ExtendedSequenceNumber::Sequence {
            sequence_number,
            sub_sequence_number,
        }) = &self.written
        {
            checkpointer
                .checkpoint_at(sequence_number, *sub_sequence_number)
                .await?;
        }
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

impl RecordProcessor for StdoutWriter {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        if !self.write(input)? {
            self.closed.notify_one();
            return Err("stdout was closed".into());
        }
        self.written = input.records.last().map(|r| r.extended_sequence_number());
        self.since_checkpoint += input.records.len() as u64;
        let due = match self.every {
            Every::Records(n) => self.since_checkpoint >= n,
            Every::Time(every) => self.last_checkpoint.elapsed() >= every,
        };
        if due {
            self.checkpoint_written(checkpointer).await?;
        }
        Ok(())
    }

    async fn shutdown_requested(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        Ok(self.checkpoint_written(checkpointer).await?)
    }
}

pub(crate) async fn run(aws: &AwsArgs, args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    // Installed first: a SIGTERM during start-up is answered with a clean
    // shutdown once the worker runs, instead of ending the process at once.
    let signals = rkcl::scheduler::Signals::register();
    let every = parse_every(&args.checkpoint_every)?;
    let multi = multi_stream(&args)?;
    let single = match (&multi, args.streams.first()) {
        (None, Some(stream)) => Some(stream_ref(stream)?),
        _ => None,
    };
    let mut builder = match (multi, &single) {
        (Some(multi), _) => SchedulerConfig::builder_for_streams(&args.app, multi),
        (None, Some(stream)) => SchedulerConfig::builder(&args.app, stream.to_string()),
        (None, None) => bail!("name a stream with --stream or --streams-file"),
    };
    builder = builder
        .initial_position(parse_initial(&args.from)?)
        .lease_duration(args.lease_duration.into())
        .retrieval(args.reading.retrieval()?)
        .watchdog(args.observe.watchdog()?);
    if let Some(id) = &args.worker_id {
        builder = builder.worker_id(id);
    }
    let config = builder.build()?;
    let telemetry = args
        .observe
        .start(aws, &args.app, &config.leases.worker_id)
        .await?;
    let kinesis = aws.kinesis().await?;
    let store = aws.lease_store(&args.app).await?;
    store
        .ensure_table(Duration::from_secs(60))
        .await
        .context("could not prepare the lease table")?;
    if let Some(command) = &args.exec.exec {
        if single.is_none() {
            bail!(
                "--exec reads one stream: name one --stream without --streams-file or --multi-stream"
            );
        }
        let worker = Worker {
            scheduler: config,
            checkpoint_every: match every {
                Every::Records(records) => (records, EXEC_CHECKPOINT_INTERVAL),
                Every::Time(interval) => (u64::MAX, interval),
            },
            shutdown_grace: args.shutdown_timeout.into(),
            kinesis,
            store,
        };
        crate::exec::run(worker, &args.exec, command, signals, telemetry.as_ref()).await?;
        if let Some(telemetry) = telemetry {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, telemetry.shutdown()).await;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let closed = Arc::new(Notify::new());
    let (stream_name, format, stdout_closed) = (
        single
            .as_ref()
            .map(|s| s.name().to_owned())
            .unwrap_or_default(),
        args.data,
        closed.clone(),
    );
    let scheduler = Scheduler::start(config, kinesis, store, move |shard: &ShardInfo| {
        StdoutWriter {
            stream: shard
                .stream
                .as_ref()
                .map_or_else(|| stream_name.clone(), |id| id.name().to_owned()),
            shard_id: shard.shard_id.clone(),
            format,
            every,
            written: None,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            closed: stdout_closed.clone(),
            lines: Vec::new(),
        }
    })
    .await
    .with_context(|| format!("could not start consuming {}", args.streams.join(", ")))?;
    tracing::info!(worker_id = scheduler.worker_id(), "consuming");
    if let Some(telemetry) = &telemetry {
        telemetry.watch(scheduler.health());
    }
    tokio::select! {
        () = signals.recv() => tracing::info!("signal received; shutting down"),
        () = closed.notified() => tracing::info!("stdout was closed; shutting down"),
    }
    let report = scheduler.shutdown(args.shutdown_timeout.into()).await;
    tracing::info!(
        finished = report.finished_leases.len(),
        unfinished = ?report.unfinished_leases,
        unreleased = ?report.unreleased_leases,
        "stopped"
    );
    if let Some(telemetry) = telemetry {
        // The exporters publish what they hold; a collector that does not
        // answer does not hold up the exit.
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, telemetry.shutdown()).await;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_every_takes_records_or_a_duration() {
        assert_eq!(parse_every("500").unwrap(), Every::Records(500));
        assert_eq!(
            parse_every("5s").unwrap(),
            Every::Time(Duration::from_secs(5))
        );
        assert!(parse_every("0").is_err());
        assert!(parse_every("soon").is_err());
        assert!(parse_initial("latest").is_ok());
        assert!(parse_initial("yesterday").is_err());
    }
}
