//! The report as a page: one self-contained HTML file (inline CSS and SVG,
//! no script, nothing fetched) with a timeline of leases per worker,
//! records per second, lag and put-to-delivery latency (drawn by
//! `chart.rs`), every event marked across all four, and the figures and
//! checks as tables.
//!
//! The markup is also well-formed XML (every element closed, every
//! attribute quoted, text escaped), so a test can parse it.

use std::fmt::Write as _;

use super::chart::{Chart, Series, escape, event_colour, worker_colour};
use super::report::Report;
use super::session::{EventKind, TimelinePoint};
use rkcl_local::FaultKind;

/// The page's style sheet.
const STYLE: &str = "
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1000px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin-top: 28px; }
.verdict { font-weight: 600; padding: 6px 10px; border-radius: 4px; display: inline-block; }
.passed { background: #e3f4e3; color: #17622a; }
.failed { background: #fbe3e3; color: #8a1c1c; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { padding: 3px 10px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
svg { display: block; margin: 6px 0 14px; background: #fff; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
svg .title { font-size: 13px; font-weight: 600; fill: #222; }
svg .grid { stroke: #eee; }
svg .axis { stroke: #999; }
.legend span { display: inline-block; margin-right: 14px; }
code { word-break: break-all; }
.swatch { display: inline-block; width: 12px; height: 3px; vertical-align: middle; margin-right: 4px; }
";

/// One series from the timeline.
fn series(
    timeline: &[TimelinePoint],
    name: &str,
    colour: &'static str,
    steps: bool,
    value: impl Fn(&TimelinePoint) -> Option<f64>,
) -> Series {
    Series {
        name: name.to_owned(),
        colour,
        dashed: false,
        steps,
        points: timeline.iter().map(|p| (p.seconds, value(p))).collect(),
        shift: 0.0,
    }
}

/// The kinds of faults drawn, with their colours: those that fail a
/// request (added latency is in the table, not drawn: it would flatten the
/// rest).
const FAULT_COLOURS: [(FaultKind, &str); 4] = [
    (FaultKind::Throttle, "#9467bd"),
    (FaultKind::Error, "#d62728"),
    (FaultKind::Reset, "#8c564b"),
    (FaultKind::Expired, "#e377c2"),
];

/// Faults per second of each kind, from the counts of each timeline
/// interval.
fn fault_series(timeline: &[TimelinePoint]) -> Vec<Series> {
    FAULT_COLOURS
        .into_iter()
        .map(|(kind, colour)| {
            let mut previous = 0.0;
            let points = timeline
                .iter()
                .map(|p| {
                    let interval = (p.seconds - previous).max(1e-3);
                    previous = p.seconds;
                    let n = p.faults.get(kind.name()).copied().unwrap_or(0);
                    (p.seconds, Some(n as f64 / interval))
                })
                .collect();
            Series {
                name: kind.name().to_owned(),
                colour,
                dashed: false,
                steps: false,
                points,
                shift: 0.0,
            }
        })
        .collect()
}

/// The report as a page.
pub(super) fn render(report: &Report) -> String {
    let timeline = &report.timeline;
    let seconds = timeline
        .last()
        .map(|p| p.seconds)
        .into_iter()
        .chain(report.events.iter().map(|e| {
            e.seconds
                + e.recovered_after_seconds
                    .unwrap_or(0.0)
                    .max(e.settled_after_seconds.unwrap_or(0.0))
        }))
        .fold(1.0, f64::max);
    let mut workers: Vec<&str> = report.workers.iter().map(|w| w.id.as_str()).collect();
    workers.dedup();
    let mut lease_series: Vec<Series> = workers
        .iter()
        .enumerate()
        .map(|(i, id)| Series {
            dashed: id.contains("-r"),
            shift: (i % 4) as f64 * 2.0,
            ..series(timeline, id, worker_colour(id), true, |p| {
                p.leases.get(*id).map(|n| *n as f64)
            })
        })
        .collect();
    lease_series.push(Series {
        dashed: true,
        ..series(timeline, "no live holder", "#999", true, |p| {
            Some(p.leases_unheld as f64)
        })
    });
    let mut charts = vec![
        Chart {
            title: "Leases per worker",
            unit: "active leases; dashed: restarted workers",
            seconds,
            series: lease_series,
            events: &report.events,
            labels: true,
            counts: true,
            streaks: &[],
        },
        Chart {
            title: "Records per second",
            unit: "records/s",
            seconds,
            series: vec![
                series(
                    timeline,
                    "consumed (first deliveries)",
                    "#1f77b4",
                    false,
                    |p| Some(p.records_per_second),
                ),
                series(timeline, "produced", "#aaa", false, |p| {
                    Some(p.produced_per_second)
                }),
            ],
            events: &report.events,
            labels: false,
            counts: false,
            streaks: &[],
        },
        Chart {
            title: "Lag",
            unit: "records put and not yet delivered",
            seconds,
            series: vec![series(timeline, "lag", "#d62728", false, |p| {
                Some(p.lag as f64)
            })],
            events: &report.events,
            labels: false,
            counts: false,
            streaks: &[],
        },
        Chart {
            title: "Put-to-delivery latency",
            unit: "ms, per second of first deliveries",
            seconds,
            series: vec![
                series(timeline, "p50", "#2ca02c", false, |p| {
                    p.latency_ms_p50.map(f64::from)
                }),
                series(timeline, "p99", "#ff7f0e", false, |p| {
                    p.latency_ms_p99.map(f64::from)
                }),
            ],
            events: &report.events,
            labels: false,
            counts: false,
            streaks: &[],
        },
    ];

    if let Some(faults) = &report.faults {
        charts.push(Chart {
            title: "Faults injected",
            unit: "requests per second the local services failed; shaded: streaks",
            seconds,
            series: fault_series(timeline),
            events: &report.events,
            labels: false,
            counts: false,
            streaks: &faults.streaks,
        });
    }

    let mut out = String::new();
    let title = format!("rkcl demo ({})", report.mode);
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/><meta name="viewport" content="width=device-width"/><title>{}</title><style>{STYLE}</style></head><body>"#,
        escape(&title)
    );
    let failures = report.failures();
    let _ = write!(
        out,
        r#"<h1>{}</h1><p class="verdict {}">{}</p>"#,
        escape(&title),
        if failures.is_empty() {
            "passed"
        } else {
            "failed"
        },
        escape(&if failures.is_empty() {
            "PASSED: nothing lost, nothing out of order, no checkpoint regression, no double holder"
                .to_owned()
        } else {
            format!("FAILED: {}", failures.join(", "))
        })
    );
    summary(&mut out, report);
    out.push_str("<h2>Timeline</h2>");
    for chart in &charts {
        chart.render(&mut out);
    }
    events(&mut out, report);
    faults_table(&mut out, report);
    workers_table(&mut out, report);
    checks(&mut out, report);
    out.push_str("</body></html>\n");
    out
}

/// A table of (label, value) rows.
fn table(out: &mut String, rows: &[(&str, String)]) {
    out.push_str("<table>");
    for (label, value) in rows {
        let _ = write!(
            out,
            r#"<tr><th>{}</th><td class="n">{}</td></tr>"#,
            escape(label),
            escape(value)
        );
    }
    out.push_str("</table>");
}

/// The table of figures.
fn summary(out: &mut String, report: &Report) {
    out.push_str("<h2>Figures</h2>");
    let leases: Vec<String> = report
        .leases_at_end
        .iter()
        .map(|(w, n)| format!("{w}: {n}"))
        .collect();
    table(
        out,
        &[
            ("produced", report.produced.to_string()),
            ("consumed (unique)", report.consumed.to_string()),
            ("delivered", report.delivered.to_string()),
            ("duplicates", report.duplicates.to_string()),
            ("lost", report.lost.to_string()),
            ("out of order", report.out_of_order.to_string()),
            ("Kinesis records", report.kinesis_records.to_string()),
            (
                "throughput",
                format!(
                    "{:.0} records/s over {:.1} s (peak {:.0}/s)",
                    report.records_per_second, report.seconds, report.peak_records_per_second
                ),
            ),
            (
                "latency",
                format!(
                    "p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
                    report.latency_ms_p50,
                    report.latency_ms_p90,
                    report.latency_ms_p99,
                    report.latency_ms_max
                ),
            ),
            (
                "at the end",
                format!(
                    "{} ({})",
                    if report.balanced_at_end {
                        "balanced"
                    } else {
                        "not balanced"
                    },
                    leases.join(", ")
                ),
            ),
            (
                "settings",
                format!(
                    "{} shards, {} records/s, lease duration {} s, seed {}",
                    report.shards, report.rate, report.lease_duration_seconds, report.seed
                ),
            ),
        ],
    );
}

/// The table of events.
fn events(out: &mut String, report: &Report) {
    let chaos = report.chaos.is_some();
    let _ = write!(
        out,
        "<h2>Events</h2><p>Settled: every live worker within one lease of its fair share, no \
         handoff pending, every shard held and caught up (nothing put more than 2 s ago \
         undelivered).{}</p><table><tr><th>at</th><th>event</th><th>what</th><th>settled after</th>{}</tr>",
        if chaos {
            " Recovered: every shard held by a live worker and caught up."
        } else {
            ""
        },
        if chaos {
            "<th>recovered after</th>"
        } else {
            ""
        }
    );
    let after = |seconds: Option<f64>| {
        seconds.map_or_else(|| "not before the end".to_owned(), |s| format!("{s:.1} s"))
    };
    for event in &report.events {
        let recovered = match (chaos, event.kind) {
            (true, EventKind::Kill) => format!("<td>{}</td>", after(event.recovered_after_seconds)),
            (true, _) => "<td></td>".to_owned(),
            (false, _) => String::new(),
        };
        let _ = write!(
            out,
            r#"<tr><td class="n">{:.1} s</td><td style="color: {}">{}</td><td>{}</td><td>{}</td>{recovered}</tr>"#,
            event.seconds,
            event_colour(event.kind),
            event.kind.name(),
            escape(&event.detail),
            after(event.settled_after_seconds),
        );
    }
    out.push_str("</table>");
}

/// The faults injected: per operation and kind, and every streak.
fn faults_table(out: &mut String, report: &Report) {
    let Some(faults) = &report.faults else {
        return;
    };
    let _ = write!(
        out,
        "<h2>Faults</h2><p>Injected by the local services with <code>--faults {}</code>, seed {} \
         (repeat with <code>--seed {}</code>).</p><table><tr><th>operation</th><th>fault</th><th>count</th></tr>",
        escape(&faults.plan),
        faults.seed,
        faults.seed
    );
    for (what, n) in &faults.by_operation {
        let (operation, kind) = what.split_once(' ').unwrap_or((what.as_str(), ""));
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td>{}</td><td class="n">{n}</td></tr>"#,
            escape(operation),
            escape(kind)
        );
    }
    let _ = write!(
        out,
        "</table><p>{} streaks: stretches in which every second had requests failed.</p>\
         <table><tr><th>from</th><th>to</th><th>failed requests</th></tr>",
        faults.streaks.len()
    );
    for streak in &faults.streaks {
        let kinds: Vec<String> = streak
            .faults
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        let _ = write!(
            out,
            r#"<tr class="fault-streak-row"><td class="n">{:.1} s</td><td class="n">{:.1} s</td><td>{}</td></tr>"#,
            streak.from_seconds,
            streak.to_seconds,
            escape(&kinds.join(", "))
        );
    }
    out.push_str("</table>");
}

/// The table of workers.
fn workers_table(out: &mut String, report: &Report) {
    out.push_str("<h2>Workers</h2><table><tr><th>worker</th><th>records</th><th>from</th><th>to</th><th>end</th><th>leases at the end</th></tr>");
    for worker in &report.workers {
        let _ = write!(
            out,
            r#"<tr><td style="color: {}">{}</td><td class="n">{}</td><td class="n">{:.1} s</td><td class="n">{}</td><td>{}</td><td class="n">{}</td></tr>"#,
            worker_colour(&worker.id),
            escape(&worker.id),
            worker.records,
            worker.started_seconds,
            worker
                .ended_seconds
                .map_or_else(String::new, |s| format!("{s:.1} s")),
            escape(&worker.end),
            worker.leases_at_end
        );
    }
    out.push_str("</table>");
}

/// The table of checks, and examples of what failed.
fn checks(out: &mut String, report: &Report) {
    out.push_str("<h2>Checks</h2>");
    let c = &report.checks;
    let d = &c.duplicates;
    let mut rows = vec![
        (
            "checkpoint regressions",
            c.checkpoint_regressions.to_string(),
        ),
        ("double holders", c.double_holders.to_string()),
        ("duplicates after a kill", d.after_kill.to_string()),
        (
            "duplicates after a lost lease",
            d.after_lease_loss.to_string(),
        ),
        ("duplicates unexplained", d.unexplained.to_string()),
        ("records written twice", d.written_twice.to_string()),
        (
            "lease-table samples",
            format!("{} ({} failed)", c.lease_samples, c.failed_lease_samples),
        ),
    ];
    if let Some(chaos) = &report.chaos {
        rows.push(("restarts after SIGKILL", chaos.restarts.to_string()));
        rows.push(("output lines not records", chaos.unparsed_lines.to_string()));
        rows.push((
            "leases released at the end",
            if chaos.released_at_end { "yes" } else { "no" }.to_owned(),
        ));
    }
    table(out, &rows);
    for regression in &c.regressions {
        let _ = write!(
            out,
            "<p>Regression of {} at {:.1} s: {} to {}</p>",
            escape(&regression.lease),
            regression.seconds,
            escape(&regression.from),
            escape(&regression.to)
        );
    }
    for double in &c.double_holder_examples {
        let _ = write!(
            out,
            "<p>{} delivered {} from {:.1} s to {:.1} s, but {}</p>",
            escape(&double.worker),
            escape(&double.shard),
            double.from_seconds,
            double.to_seconds,
            escape(&double.why)
        );
    }
}
