//! `rkcl status`: a consumer group at a glance: every lease with its owner,
//! how long since it was renewed, its checkpoint and how far behind the tip
//! of its shard that checkpoint is; shards without a lease, leases of shards
//! that are gone, and per-worker totals.
//!
//! How it is measured:
//! - *Renewed*: the lease table stores no renewal time, but every renewal,
//!   take and checkpoint raises a lease's counter. The table is read every
//!   half second for `--sample` (default 4 s, above the renew interval of
//!   the default 10 s lease); `≤T` means the counter moved, so the lease was
//!   renewed at most T ago; `≥T` means it did not move since it was first
//!   read, at least T ago. With `--watch` the table is read once per refresh
//!   after the first, so the bounds are as close as the interval.
//! - *Behind*: per lease, one GetShardIterator after the checkpoint (at the
//!   start of the shard for `TRIM_HORIZON`) and one GetRecords of at most
//!   `--max-records` records: the Kinesis records after the checkpoint
//!   (`≥N` when more remain; a KPL aggregate counts once), and the time
//!   since the first of them arrived. `SHARD_END` and `LATEST` are 0 behind.
//!   These reads count against each shard's read limits, shared with the
//!   consumers.
//!
//! With `--json`, one object per line: a `"type": "shard"` object per lease
//! and per shard without a lease, then a `"type": "summary"` object (see
//! [`shard_json`] and [`summary_json`] for the fields).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use rkcl::{
    Error,
    aws::StreamRef,
    lag::{self, Behind, RecordsBehind, RenewalAge, RenewalWatch, ShardLag, WorkerLag},
    leases::{Lease, LeaseStore},
    model::LeaseKey,
};

use crate::aws::{AwsArgs, stream_ref};
use crate::output::{flush, write_json_line, write_line};

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The application name, which names the lease table.
    #[arg(long)]
    app: String,
    /// The stream's name or ARN. Default: the application name. In a
    /// multi-stream table, the stream whose leases to show (required).
    #[arg(long)]
    stream: Option<String>,
    /// One JSON object per lease and per shard without a lease, then a
    /// summary object, instead of a table.
    #[arg(long)]
    json: bool,
    /// Refresh every INTERVAL (default 5s) until Ctrl-C or SIGTERM: on a
    /// terminal the screen is redrawn, otherwise refreshes are separated by
    /// a blank line (JSON: each ends with its summary object).
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "5s")]
    watch: Option<humantime::Duration>,
    /// How long the lease table is watched for renewals before the first
    /// report (0s: read once, so every renewal age is `≥0.0s`).
    #[arg(long, default_value = "4s")]
    sample: humantime::Duration,
    /// The most records read from each shard to count what is behind (1 to
    /// 10000); beyond it the count is shown as `≥N`.
    #[arg(long, default_value_t = lag::DEFAULT_RECORD_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_records: u32,
}

/// How often the lease table is read while sampling renewals.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Width of the lag bars of `--watch`.
const BAR_WIDTH: usize = 20;

pub(crate) async fn run(aws: &AwsArgs, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let stream = stream_ref(args.stream.as_deref().unwrap_or(&args.app))?;
    if args.watch.is_some_and(|every| every.is_zero()) {
        bail!("--watch takes a positive interval");
    }
    let group = Group {
        app: args.app.clone(),
        stream,
        stream_given: args.stream.is_some(),
        store: aws.lease_store(&args.app).await?,
        kinesis: aws.kinesis().await?,
        max_records: args.max_records,
    };
    let mut renewals = RenewalWatch::new();
    let Some(every) = args.watch else {
        let report = group.report(&mut renewals, *args.sample).await?;
        let mut out = std::io::stdout().lock();
        if write_report(&mut out, &report, args.json, false)? {
            flush(&mut out)?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let stop = rkcl::scheduler::Signals::register().recv();
    tokio::pin!(stop);
    let redraw = !args.json && std::io::stdout().is_terminal();
    let mut sample = *args.sample;
    let mut first = true;
    loop {
        let report = tokio::select! {
            () = &mut stop => return Ok(ExitCode::SUCCESS),
            report = group.report(&mut renewals, sample) => report,
        };
        match report {
            Ok(report) => {
                let mut out = std::io::stdout().lock();
                let mut frame = Vec::new();
                if redraw {
                    frame.extend_from_slice(b"\x1b[H\x1b[2J");
                } else if !first && !args.json {
                    frame.push(b'\n');
                }
                write_report(&mut frame, &report, args.json, true)?;
                if !write_frame(&mut out, &frame)? {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Err(err) if first => return Err(err),
            // A refresh that fails (a throttled scan, a network blip) is
            // reported and the next one tried.
            Err(err) => tracing::warn!(error = format!("{err:#}"), "refresh failed"),
        }
        first = false;
        sample = Duration::ZERO;
        tokio::select! {
            () = &mut stop => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(*every) => {}
        }
    }
}

/// Writes one refresh at once (so a redraw does not flicker); `false` when
/// the reader has gone.
fn write_frame(out: &mut dyn std::io::Write, frame: &[u8]) -> anyhow::Result<bool> {
    match out.write_all(frame) {
        Ok(()) => flush(out),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(err).context("could not write to stdout"),
    }
}

/// What a report is made from.
struct Group {
    app: String,
    stream: StreamRef,
    /// Whether `--stream` named it (a multi-stream table needs it).
    stream_given: bool,
    store: rkcl::DynamoDbLeaseStore,
    kinesis: rkcl::Kinesis,
    max_records: u32,
}

/// One look at the group.
struct Report {
    app: String,
    stream: String,
    at: SystemTime,
    shards: usize,
    lags: Vec<ShardLag>,
    ages: HashMap<LeaseKey, RenewalAge>,
}

impl Group {
    async fn leases(&self) -> anyhow::Result<Vec<Lease>> {
        match self.store.list().await {
            Ok(leases) => self.of_the_stream(leases),
            Err(Error::ResourceNotFound { .. }) => bail!(
                "there is no lease table {:?}: no worker of application {:?} has started yet, \
                 or --app is wrong",
                self.store.table(),
                self.app
            ),
            Err(err) => Err(err).with_context(|| format!("lease table {}", self.store.table())),
        }
    }

    /// The leases of the stream shown: all of a single-stream table; in a
    /// multi-stream table, those of the stream `--stream` names.
    fn of_the_stream(&self, mut leases: Vec<Lease>) -> anyhow::Result<Vec<Lease>> {
        let streams: std::collections::BTreeSet<String> = leases
            .iter()
            .filter_map(|l| l.key.stream().map(|s| s.name().to_owned()))
            .collect();
        if streams.is_empty() {
            return Ok(leases);
        }
        if !self.stream_given {
            bail!(
                "lease table {:?} is a multi-stream table: name one of its streams with --stream ({})",
                self.store.table(),
                streams.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        leases.retain(|l| {
            l.key
                .stream()
                .is_some_and(|s| s.name() == self.stream.name())
        });
        Ok(leases)
    }

    /// Reads the lease table (for `sample`, every half second), lists the
    /// shards and measures the lag.
    async fn report(
        &self,
        renewals: &mut RenewalWatch,
        sample: Duration,
    ) -> anyhow::Result<Report> {
        let shards = match self.kinesis.list_shards(&self.stream).await {
            Ok(shards) => shards,
            Err(Error::ResourceNotFound { .. }) => {
                // A multi-stream table without --stream is answered with
                // its streams.
                if let Ok(leases) = self.store.list().await {
                    self.of_the_stream(leases)?;
                }
                bail!(
                    "there is no stream {:?} (pass --stream when it is not named after the application)",
                    self.stream.to_string()
                )
            }
            Err(err) => return Err(err).with_context(|| format!("stream {}", self.stream)),
        };
        let started = Instant::now();
        let mut leases = self.leases().await?;
        renewals.observe(&leases, Instant::now());
        while started.elapsed() < sample {
            tokio::time::sleep(SAMPLE_EVERY.min(sample.saturating_sub(started.elapsed()))).await;
            leases = self.leases().await?;
            renewals.observe(&leases, Instant::now());
        }
        let lags = lag::measure(
            &self.kinesis,
            &self.stream,
            &leases,
            &shards,
            self.max_records,
        )
        .await;
        let now = Instant::now();
        let ages = leases
            .iter()
            .filter_map(|l| Some((l.key.clone(), renewals.age(&l.key, now)?)))
            .collect();
        Ok(Report {
            app: self.app.clone(),
            stream: self.stream.to_string(),
            at: SystemTime::now(),
            shards: shards.len(),
            lags,
            ages,
        })
    }
}

/// The state of a lease, or of a shard without one.
fn state(lag: &ShardLag) -> &'static str {
    let Some(lease) = &lag.lease else {
        return "no-lease";
    };
    if lag.shard.is_none() {
        return "shard-gone";
    }
    crate::leases::state(lease)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A duration in a few characters: `0s`, `4.2s`, `5m03s`, `2h04m`, `3d04h`.
fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 if duration.is_zero() => "0s".to_owned(),
        0..60 => format!("{:.1}s", duration.as_secs_f64()),
        60..3_600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3_600..86_400 => format!("{}h{:02}m", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3_600),
    }
}

/// A bar of `width` cells for `count` out of `max`: at least one cell for
/// anything behind, full at `max`.
fn bar(count: u64, max: u64, width: usize) -> String {
    let filled = if count == 0 || max == 0 {
        0
    } else {
        let cells = u128::from(count.min(max)) * width as u128;
        usize::try_from(cells.div_ceil(u128::from(max))).unwrap_or(width)
    };
    format!("{}{}", "█".repeat(filled), "·".repeat(width - filled))
}

fn records_json(records: Option<RecordsBehind>) -> (serde_json::Value, serde_json::Value) {
    match records {
        Some(r) => (r.count.into(), r.more.into()),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    }
}

/// One lease, or one shard without a lease, as JSON:
///
/// - `type`: `"shard"`;
/// - `shard_id`, `lease_key` (`null` without a lease), `parent_shard_ids`;
/// - `owner`, `counter`, `checkpoint` (a sequence number or `TRIM_HORIZON`,
///   `LATEST`, `AT_TIMESTAMP`, `SHARD_END`), `checkpoint_sub_sequence_number`
///   (all `null` without a lease);
/// - `state`: `owned`, `unowned`, `handing-off`, `finished`, `no-lease`
///   (a shard without a lease) or `shard-gone` (a lease whose shard is no
///   longer listed);
/// - `shard_open`: whether the shard is open (`null` when gone);
/// - `renewed_ago_ms` and `renewed_ago_bound` (`"at_most"`: the counter was
///   seen to move; `"at_least"`: it was not);
/// - `records_behind` (Kinesis records after the checkpoint),
///   `records_behind_more` (`true`: more remain, the count is a lower
///   bound), `time_behind_ms` (now minus the arrival of the first record
///   after the checkpoint), each `null` when not measured;
/// - `error`: why the lag could not be measured, or `null`.
fn shard_json(lag: &ShardLag, ages: &HashMap<LeaseKey, RenewalAge>) -> serde_json::Value {
    let lease = lag.lease.as_ref();
    let (records, more) = records_json(lag.behind.records());
    let age = lease.and_then(|l| ages.get(&l.key));
    let (renewed_ms, bound) = match age {
        Some(RenewalAge::AtMost(age)) => (Some(millis(*age)), Some("at_most")),
        Some(RenewalAge::AtLeast(age)) => (Some(millis(*age)), Some("at_least")),
        None => (None, None),
    };
    serde_json::json!({
        "type": "shard",
        "shard_id": lag.shard_id.as_str(),
        "lease_key": lease.map(|l| l.key.as_str()),
        "parent_shard_ids": lag.parents().iter().map(rkcl::ShardId::as_str).collect::<Vec<_>>(),
        "owner": lease.and_then(|l| l.owner.as_deref()),
        "counter": lease.map(|l| l.counter),
        "checkpoint": lease.map(|l| crate::leases::checkpoint_text(&l.checkpoint)),
        "checkpoint_sub_sequence_number": lease.map(|l| l.checkpoint.sub_sequence_number()),
        "state": state(lag),
        "shard_open": lag.shard.as_ref().map(rkcl::shards::Shard::is_open),
        "renewed_ago_ms": renewed_ms,
        "renewed_ago_bound": bound,
        "records_behind": records,
        "records_behind_more": more,
        "time_behind_ms": lag.behind.time().map(millis),
        "error": error_text(&lag.behind),
    })
}

fn error_text(behind: &Behind) -> Option<String> {
    match behind {
        Behind::Failed(err) => Some(err.to_string()),
        Behind::AtTimestamp => {
            Some("checkpoint AT_TIMESTAMP: the time is not in the lease".to_owned())
        }
        _ => None,
    }
}

/// Counts over the whole group.
struct Totals {
    leases: usize,
    without_lease: usize,
    gone: usize,
    failed: usize,
    records: RecordsBehind,
    max_time: Option<Duration>,
}

fn totals(report: &Report) -> Totals {
    let mut totals = Totals {
        leases: 0,
        without_lease: 0,
        gone: 0,
        failed: 0,
        records: RecordsBehind::ZERO,
        max_time: None,
    };
    for lag in &report.lags {
        match &lag.behind {
            Behind::NoLease => totals.without_lease += 1,
            Behind::ShardGone => totals.gone += 1,
            Behind::Failed(_) | Behind::AtTimestamp => totals.failed += 1,
            _ => {}
        }
        totals.leases += usize::from(lag.lease.is_some());
        if let Some(records) = lag.behind.records() {
            totals.records = totals.records + records;
        }
        totals.max_time = totals.max_time.max(lag.behind.time());
    }
    totals
}

/// The summary object that ends a report:
///
/// - `type`: `"summary"`; `app`, `stream`;
/// - `shards` (listed, open and closed), `leases`, `shards_without_lease`,
///   `leases_of_gone_shards`, `unmeasured` (leases whose lag could not be
///   measured);
/// - `records_behind`, `records_behind_more`, `max_time_behind_ms` over every
///   measured lease;
/// - `workers`: per owner (`worker` is `null` for unowned leases) `leases`,
///   `records_behind`, `records_behind_more`, `max_time_behind_ms`.
fn summary_json(report: &Report) -> serde_json::Value {
    let totals = totals(report);
    let workers: Vec<serde_json::Value> = lag::per_worker(&report.lags)
        .into_iter()
        .map(|(worker, total)| {
            serde_json::json!({
                "worker": worker,
                "leases": total.leases,
                "records_behind": total.records.count,
                "records_behind_more": total.records.more,
                "max_time_behind_ms": total.max_time.map(millis),
            })
        })
        .collect();
    serde_json::json!({
        "type": "summary",
        "app": report.app,
        "stream": report.stream,
        "shards": report.shards,
        "leases": totals.leases,
        "shards_without_lease": totals.without_lease,
        "leases_of_gone_shards": totals.gone,
        "unmeasured": totals.failed,
        "records_behind": totals.records.count,
        "records_behind_more": totals.records.more,
        "max_time_behind_ms": totals.max_time.map(millis),
        "workers": workers,
    })
}

/// Writes a report as a table (with lag bars when `bars`) or as JSON lines;
/// `false` when the reader has gone.
fn write_report(
    out: &mut dyn std::io::Write,
    report: &Report,
    json: bool,
    bars: bool,
) -> anyhow::Result<bool> {
    if json {
        for lag in &report.lags {
            if !write_json_line(out, &shard_json(lag, &report.ages))? {
                return Ok(false);
            }
        }
        return write_json_line(out, &summary_json(report));
    }
    for line in &table(report, bars) {
        if !write_line(out, line)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn or_dash(text: Option<String>) -> String {
    text.unwrap_or_else(|| "-".to_owned())
}

/// The report as lines of text.
fn table(report: &Report, bars: bool) -> Vec<String> {
    let at = humantime::format_rfc3339_seconds(report.at);
    let mut lines = vec![
        format!("app {}, stream {}, at {at}", report.app, report.stream),
        String::new(),
        format!(
            "{:<24} {:<24} {:<24} {:>8} {:<58} {:>9} {:>8} {:<12}{}",
            "SHARD",
            "PARENTS",
            "OWNER",
            "RENEWED",
            "CHECKPOINT",
            "BEHIND",
            "TIME",
            "STATE",
            if bars { " LAG" } else { "" }
        ),
    ];
    let max = report
        .lags
        .iter()
        .filter_map(|l| l.behind.records())
        .map(|r| r.count)
        .max()
        .unwrap_or(0);
    let mut errors = Vec::new();
    for lag in &report.lags {
        let lease = lag.lease.as_ref();
        let records = lag.behind.records();
        let bar = match (bars, records) {
            (true, Some(r)) => format!(" {}", bar(r.count, max, BAR_WIDTH)),
            _ => String::new(),
        };
        lines.push(format!(
            "{:<24} {:<24} {:<24} {:>8} {:<58} {:>9} {:>8} {:<12}{bar}",
            lag.shard_id.as_str(),
            or_dash(
                Some(
                    lag.parents()
                        .iter()
                        .map(rkcl::ShardId::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                )
                .filter(|p| !p.is_empty())
            ),
            or_dash(lease.and_then(|l| l.owner.clone())),
            or_dash(
                lease
                    .and_then(|l| report.ages.get(&l.key))
                    .map(ToString::to_string)
            ),
            or_dash(lease.map(|l| crate::leases::checkpoint_text(&l.checkpoint))),
            or_dash(records.map(|r| r.to_string())),
            or_dash(lag.behind.time().map(short_duration)),
            state(lag),
        ));
        if let Some(error) = error_text(&lag.behind) {
            errors.push(format!("{}: not measured: {error}", lag.shard_id));
        }
    }
    lines.push(String::new());
    lines.push(format!(
        "{:<24} {:>6} {:>9} {:>8}",
        "WORKER", "LEASES", "BEHIND", "MAX-TIME"
    ));
    for (
        worker,
        WorkerLag {
            leases,
            records,
            max_time,
        },
    ) in lag::per_worker(&report.lags)
    {
        lines.push(format!(
            "{:<24} {:>6} {:>9} {:>8}",
            worker.as_deref().unwrap_or("(unowned)"),
            leases,
            records.to_string(),
            or_dash(max_time.map(short_duration)),
        ));
    }
    let totals = totals(report);
    lines.push(String::new());
    lines.push(format!(
        "{} shards, {} leases, {} behind; {} shards without a lease, {} leases of gone shards",
        report.shards, totals.leases, totals.records, totals.without_lease, totals.gone
    ));
    lines.extend(errors);
    lines
        .into_iter()
        .map(|line| line.trim_end().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fit_a_column() {
        assert_eq!(short_duration(Duration::ZERO), "0s");
        assert_eq!(short_duration(Duration::from_millis(4_250)), "4.2s");
        assert_eq!(short_duration(Duration::from_secs(303)), "5m03s");
        assert_eq!(short_duration(Duration::from_secs(7_440)), "2h04m");
        assert_eq!(
            short_duration(Duration::from_secs(3 * 86_400 + 4 * 3_600)),
            "3d04h"
        );
    }

    #[test]
    fn bars_scale_to_the_most_behind() {
        assert_eq!(bar(0, 100, 4), "····");
        assert_eq!(bar(100, 100, 4), "████");
        assert_eq!(bar(50, 100, 4), "██··");
        // Anything behind shows.
        assert_eq!(bar(1, 1_000_000, 4), "█···");
        assert_eq!(bar(0, 0, 3), "···");
        assert_eq!(bar(u64::MAX, u64::MAX, 20).chars().count(), 20);
    }
}
