//! The report of a run: built from the session once the workers are gone,
//! printed as text for people or as one JSON line, and drawn by `html.rs`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::checks::{Checks, check};
use super::session::{EventKind, Session, TimelinePoint, WorkerEnd};
use super::tally::quantile;
use crate::output::{write_json_line, write_line};
use rkcl_local::FaultKind;

/// One worker (one process, in the chaos run).
#[derive(Clone, Debug, Serialize)]
pub(super) struct WorkerReport {
    /// Its worker id.
    pub(super) id: String,
    /// Records it delivered, duplicates included.
    pub(super) records: usize,
    /// Whether it was killed without a shutdown.
    pub(super) killed: bool,
    /// `killed`, `left`, `stopped` or why it failed.
    pub(super) end: String,
    /// When it started, in seconds of the run.
    pub(super) started_seconds: f64,
    /// When it was gone.
    pub(super) ended_seconds: Option<f64>,
    /// Leases it held when the run ended.
    pub(super) leases_at_end: usize,
}

/// One event.
#[derive(Clone, Debug, Serialize)]
pub(super) struct EventReport {
    /// When, in seconds of the run.
    pub(super) seconds: f64,
    /// What.
    pub(super) kind: EventKind,
    /// The worker it happened to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) worker: Option<String>,
    /// In words.
    pub(super) detail: String,
    /// How long until the group was balanced, free of handoffs and caught
    /// up again (the story).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) settled_after_seconds: Option<f64>,
    /// How long until every shard was held and caught up again (after a
    /// chaos kill).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) recovered_after_seconds: Option<f64>,
}

/// What only the chaos run reports.
#[derive(Clone, Debug, Serialize)]
pub(super) struct ChaosReport {
    /// How often a worker was killed.
    pub(super) kill_every_seconds: f64,
    /// How many killed workers were restarted.
    pub(super) restarts: usize,
    /// Output lines that were not records.
    pub(super) unparsed_lines: usize,
    /// Whether every lease was released once the workers stopped.
    pub(super) released_at_end: bool,
}

/// Everything a run found.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Report {
    /// `story` or `chaos`.
    pub(super) mode: &'static str,
    /// The seed of the run's random choices.
    pub(super) seed: u64,
    /// Records put.
    pub(super) produced: usize,
    /// Records delivered at least once.
    pub(super) consumed: usize,
    /// Every delivery.
    pub(super) delivered: usize,
    /// Deliveries after the first.
    pub(super) duplicates: usize,
    /// Records never delivered.
    pub(super) lost: usize,
    /// First deliveries after a later record of the same key.
    pub(super) out_of_order: usize,
    /// Deliveries that were not demo records.
    pub(super) unknown_records: usize,
    /// Kinesis records written (an aggregate counts once).
    pub(super) kinesis_records: u64,
    /// The production rate asked for, records per second.
    pub(super) rate: u64,
    /// Shards at the start.
    pub(super) shards: u32,
    /// The workers' lease duration.
    pub(super) lease_duration_seconds: f64,
    /// Every worker.
    pub(super) workers: Vec<WorkerReport>,
    /// Every event.
    pub(super) events: Vec<EventReport>,
    /// Whether the group was balanced, free of handoffs and caught up when
    /// the run ended.
    pub(super) balanced_at_end: bool,
    /// Active leases per live worker when the run ended.
    pub(super) leases_at_end: BTreeMap<String, usize>,
    /// How long the run took.
    pub(super) seconds: f64,
    /// Records delivered (unique) per second over the run.
    pub(super) records_per_second: f64,
    /// The highest rate of a timeline point.
    pub(super) peak_records_per_second: f64,
    /// Put-to-delivery latency of first deliveries, in milliseconds.
    pub(super) latency_ms_p50: u32,
    /// See `latency_ms_p50`.
    pub(super) latency_ms_p90: u32,
    /// See `latency_ms_p50`.
    pub(super) latency_ms_p99: u32,
    /// See `latency_ms_p50`.
    pub(super) latency_ms_max: u32,
    /// The checks of what came out and of the lease table.
    pub(super) checks: Checks,
    /// What only the chaos run reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) chaos: Option<ChaosReport>,
    /// The faults the local services injected, with a fault layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) faults: Option<FaultsReport>,
    /// The run second by second.
    pub(super) timeline: Vec<TimelinePoint>,
}

/// The faults the local services injected during a run.
#[derive(Clone, Debug, Serialize)]
pub(super) struct FaultsReport {
    /// The fault plan, as `--faults` takes it.
    pub(super) plan: String,
    /// The seed of the fault layer (the run's seed).
    pub(super) seed: u64,
    /// Faults per kind over the whole run.
    pub(super) totals: BTreeMap<&'static str, u64>,
    /// Faults per `service.Operation kind`.
    pub(super) by_operation: BTreeMap<String, u64>,
    /// Every streak: a stretch of the timeline in which every point saw
    /// requests failed by the fault layer.
    pub(super) streaks: Vec<FaultStreak>,
}

/// A stretch of the run in which the fault layer failed requests in every
/// timeline interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct FaultStreak {
    /// Its start, in seconds of the run.
    pub(super) from_seconds: f64,
    /// Its end.
    pub(super) to_seconds: f64,
    /// Failed requests per kind in it (added latency not counted).
    pub(super) faults: BTreeMap<&'static str, u64>,
}

impl FaultStreak {
    /// Failed requests in the streak.
    pub(super) fn total(&self) -> u64 {
        self.faults.values().sum()
    }
}

/// The fault streaks of a timeline: each maximal run of points with at
/// least one failed request, from the point before its first to its last.
pub(super) fn fault_streaks(timeline: &[TimelinePoint]) -> Vec<FaultStreak> {
    let mut streaks: Vec<FaultStreak> = Vec::new();
    let mut previous_seconds = 0.0;
    let mut open = false;
    for point in timeline {
        if point.failing_faults() == 0 {
            open = false;
        } else {
            if !open {
                streaks.push(FaultStreak {
                    from_seconds: previous_seconds,
                    to_seconds: point.seconds,
                    faults: BTreeMap::new(),
                });
                open = true;
            }
            if let Some(streak) = streaks.last_mut() {
                streak.to_seconds = point.seconds;
                for (kind, n) in &point.faults {
                    if *kind != FaultKind::Latency.name() && *n > 0 {
                        *streak.faults.entry(kind).or_default() += n;
                    }
                }
            }
        }
        previous_seconds = point.seconds;
    }
    streaks
}

/// Milliseconds as seconds.
fn seconds(ms: u32) -> f64 {
    f64::from(ms) / 1000.0
}

impl Report {
    /// The report of `session`, whose workers are gone.
    pub(super) fn build(
        session: &Session,
        balanced_at_end: bool,
        leases_at_end: BTreeMap<String, usize>,
    ) -> Self {
        let empty = super::tally::Tally::new(0);
        let guard = session.tally.lock();
        let tally = guard.as_deref().unwrap_or(&empty);
        let (lost, duplicates) = tally.lost_and_duplicates();
        let per_worker = tally.per_worker();
        let workers = session
            .workers
            .iter()
            .map(|w| WorkerReport {
                id: w.id.clone(),
                records: per_worker.get(&w.id).copied().unwrap_or(0),
                killed: w.end == Some(WorkerEnd::Killed),
                end: match &w.end {
                    None => "running".into(),
                    Some(WorkerEnd::Killed) => "killed".into(),
                    Some(WorkerEnd::Left) => "left".into(),
                    Some(WorkerEnd::Stopped) => "stopped".into(),
                    Some(WorkerEnd::Failed(why)) => format!("failed: {why}"),
                },
                started_seconds: seconds(w.started_ms),
                ended_seconds: w.ended_ms.map(seconds),
                leases_at_end: leases_at_end.get(&w.id).copied().unwrap_or(0),
            })
            .collect();
        let events = session
            .events
            .iter()
            .map(|e| EventReport {
                seconds: seconds(e.at_ms),
                kind: e.kind,
                worker: e.worker.clone(),
                detail: e.detail.clone(),
                settled_after_seconds: e.settled_ms.map(|ms| seconds(ms.saturating_sub(e.at_ms))),
                recovered_after_seconds: e
                    .recovered_ms
                    .map(|ms| seconds(ms.saturating_sub(e.at_ms))),
            })
            .collect();
        let mut latencies = tally.latencies_ms().to_vec();
        latencies.sort_unstable();
        let run_seconds = session.clock.elapsed().as_secs_f64();
        let consumed = tally.unique();
        Self {
            mode: if session.settings.chaos {
                "chaos"
            } else {
                "story"
            },
            seed: session.settings.seed,
            produced: tally.produced_count(),
            consumed,
            delivered: tally.deliveries(),
            duplicates,
            lost,
            out_of_order: tally.out_of_order(),
            unknown_records: tally.unknown(),
            kinesis_records: session.produced().kinesis_records,
            rate: session.settings.rate,
            shards: session.settings.shards,
            lease_duration_seconds: session.settings.lease_duration.as_secs_f64(),
            workers,
            events,
            balanced_at_end,
            leases_at_end,
            seconds: run_seconds,
            records_per_second: consumed as f64 / run_seconds.max(1e-9),
            peak_records_per_second: session
                .timeline
                .iter()
                .map(|p| p.records_per_second)
                .fold(0.0, f64::max),
            latency_ms_p50: quantile(&latencies, 0.5),
            latency_ms_p90: quantile(&latencies, 0.9),
            latency_ms_p99: quantile(&latencies, 0.99),
            latency_ms_max: latencies.last().copied().unwrap_or(0),
            checks: check(tally, &session.watch, &session.workers),
            chaos: None,
            faults: session.settings.faults.as_ref().map(|plan| {
                let counts = session.faults.counts();
                FaultsReport {
                    plan: plan.to_string(),
                    seed: session.settings.seed,
                    totals: FaultKind::ALL
                        .into_iter()
                        .map(|kind| (kind.name(), counts.total(kind)))
                        .collect(),
                    by_operation: counts
                        .iter()
                        .map(|(service, operation, kind, n)| {
                            (format!("{service}.{operation} {kind}"), n)
                        })
                        .collect(),
                    streaks: fault_streaks(&session.timeline),
                }
            }),
            timeline: session.timeline.clone(),
        }
    }

    /// Workers that failed (exited on their own, or did not stop).
    fn failed_workers(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.end.starts_with("failed"))
            .count()
    }

    /// Why the run failed; empty when it passed.
    pub(super) fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let mut fail = |count: usize, what: &str| {
            if count > 0 {
                failures.push(format!("{count} {what}"));
            }
        };
        fail(self.lost, "lost");
        fail(self.out_of_order, "out of order");
        fail(self.unknown_records, "unknown records");
        fail(self.checks.checkpoint_regressions, "checkpoint regressions");
        fail(self.checks.double_holders, "double holders");
        fail(self.failed_workers(), "failed workers");
        failures
    }

    /// Whether nothing was lost, out of order, regressed or double-held,
    /// and no worker failed.
    pub(super) fn passed(&self) -> bool {
        self.failures().is_empty()
    }
}

/// Prints `report` to stdout: as text, or as one JSON line.
pub(super) fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        write_json_line(&mut out, report)?;
        return Ok(());
    }
    for line in text(report) {
        if !write_line(&mut out, &line)? {
            break;
        }
    }
    Ok(())
}

/// The report as lines of text.
fn text(report: &Report) -> Vec<String> {
    let mut lines = Vec::new();
    for worker in &report.workers {
        lines.push(format!(
            "{}: {} records, {}; {} leases at the end",
            worker.id, worker.records, worker.end, worker.leases_at_end
        ));
    }
    for event in &report.events {
        let after = match (event.recovered_after_seconds, event.settled_after_seconds) {
            (Some(r), Some(s)) => format!(" (recovered after {r:.1} s, settled after {s:.1} s)"),
            (Some(r), None) => format!(" (recovered after {r:.1} s)"),
            (None, Some(s)) => format!(" (settled after {s:.1} s)"),
            (None, None) => String::new(),
        };
        lines.push(format!("{:6.1} s  {}{after}", event.seconds, event.detail));
    }
    lines.push(format!(
        "produced {}, consumed {} (unique), delivered {}, duplicates {}, lost {}, out of order {}; \
         {:.0} records/s over {:.1} s (peak {:.0}/s); latency p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        report.produced,
        report.consumed,
        report.delivered,
        report.duplicates,
        report.lost,
        report.out_of_order,
        report.records_per_second,
        report.seconds,
        report.peak_records_per_second,
        report.latency_ms_p50,
        report.latency_ms_p90,
        report.latency_ms_p99,
        report.latency_ms_max,
    ));
    let d = &report.checks.duplicates;
    lines.push(format!(
        "duplicates: {} after a kill, {} after a lost lease, {} unexplained, {} written twice; \
         checkpoint regressions {}, double holders {} ({} lease-table samples)",
        d.after_kill,
        d.after_lease_loss,
        d.unexplained,
        d.written_twice,
        report.checks.checkpoint_regressions,
        report.checks.double_holders,
        report.checks.lease_samples,
    ));
    if let Some(faults) = &report.faults {
        let failed: Vec<String> = faults
            .totals
            .iter()
            .filter(|(kind, n)| **kind != FaultKind::Latency.name() && **n > 0)
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        let longest = faults
            .streaks
            .iter()
            .map(|s| s.to_seconds - s.from_seconds)
            .fold(0.0, f64::max);
        lines.push(format!(
            "faults (seed {}): {} failed requests ({}), {} delayed; {} streaks, the longest {longest:.1} s",
            faults.seed,
            faults.streaks.iter().map(FaultStreak::total).sum::<u64>(),
            if failed.is_empty() {
                "none".to_owned()
            } else {
                failed.join(", ")
            },
            faults
                .totals
                .get(FaultKind::Latency.name())
                .copied()
                .unwrap_or(0),
            faults.streaks.len(),
        ));
    }
    let leases: Vec<String> = report
        .leases_at_end
        .iter()
        .map(|(w, n)| format!("{w}:{n}"))
        .collect();
    lines.push(format!(
        "{} at the end: {}",
        if report.balanced_at_end {
            "balanced"
        } else {
            "NOT balanced"
        },
        leases.join(" ")
    ));
    if let Some(chaos) = &report.chaos {
        lines.push(format!(
            "chaos: {} restarts after SIGKILL every {:.0} s; leases released at the end: {}",
            chaos.restarts,
            chaos.kill_every_seconds,
            if chaos.released_at_end { "yes" } else { "no" }
        ));
    }
    let failures = report.failures();
    lines.push(if failures.is_empty() {
        "PASSED".into()
    } else {
        format!("FAILED: {}", failures.join(", "))
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(seconds: f64, throttle: u64, latency: u64) -> TimelinePoint {
        TimelinePoint {
            seconds,
            produced: 0,
            consumed: 0,
            records_per_second: 0.0,
            produced_per_second: 0.0,
            lag: 0,
            oldest_undelivered_ms: None,
            latency_ms_p50: None,
            latency_ms_p99: None,
            leases: BTreeMap::new(),
            leases_unheld: 0,
            faults: [("throttle", throttle), ("latency", latency)]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn a_streak_spans_the_points_with_failed_requests() {
        let timeline = [
            point(1.0, 0, 5),
            point(2.0, 2, 5),
            point(3.0, 1, 0),
            point(4.0, 0, 9),
            point(5.0, 3, 0),
        ];
        let streaks = fault_streaks(&timeline);
        assert_eq!(streaks.len(), 2, "{streaks:?}");
        assert_eq!((streaks[0].from_seconds, streaks[0].to_seconds), (1.0, 3.0));
        assert_eq!(streaks[0].total(), 3);
        assert_eq!(streaks[0].faults.get("latency"), None);
        assert_eq!((streaks[1].from_seconds, streaks[1].to_seconds), (4.0, 5.0));
        assert_eq!(streaks[1].total(), 3);
        assert!(fault_streaks(&[point(1.0, 0, 7)]).is_empty());
    }
}
