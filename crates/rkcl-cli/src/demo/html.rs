//! The report as a page: one self-contained HTML file (inline CSS and SVG,
//! no script, nothing fetched) with a timeline of leases per worker,
//! records per second, lag and put-to-delivery latency, every event marked
//! across all four, and the figures and checks as tables.
//!
//! The markup is also well-formed XML (every element closed, every
//! attribute quoted, text escaped), so a test can parse it.

use std::fmt::Write as _;

use super::report::{EventReport, Report};
use super::session::{EventKind, TimelinePoint};

/// Chart size, in pixels.
const WIDTH: f64 = 960.0;
/// See [`WIDTH`].
const HEIGHT: f64 = 210.0;
/// Margins around a chart's plot, in pixels: room for the value axis.
const LEFT: f64 = 64.0;
/// Room on the right of the plot.
const RIGHT: f64 = 20.0;
/// Room above the plot: the title and the event labels.
const TOP: f64 = 44.0;
/// Room below the plot: the time axis.
const BOTTOM: f64 = 30.0;

/// Colours of the workers' slots (a restarted worker keeps its slot's).
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
];

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
.swatch { display: inline-block; width: 12px; height: 3px; vertical-align: middle; margin-right: 4px; }
";

/// Escapes text for HTML and XML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The colour of an event kind.
fn event_colour(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Kill => "#d62728",
        EventKind::Split => "#1f77b4",
        EventKind::Merge => "#9467bd",
        EventKind::Join => "#2ca02c",
        EventKind::Leave => "#ff7f0e",
    }
}

/// The colour of a worker: its slot's (`worker-N`, `worker-N-rK`).
fn worker_colour(id: &str) -> &'static str {
    let slot = id
        .strip_prefix("worker-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    PALETTE
        .get(slot.saturating_sub(1) % PALETTE.len())
        .copied()
        .unwrap_or("#444")
}

/// A step of 1, 2 or 5 times a power of ten giving about `count` ticks up
/// to `max`.
fn nice_step(max: f64, count: f64) -> f64 {
    let raw = (max / count).max(1e-9);
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    step.max(f64::MIN_POSITIVE)
}

/// One line of a chart.
struct Series {
    /// Its name in the legend.
    name: String,
    /// Its colour.
    colour: &'static str,
    /// Drawn dashed (a restarted worker, or what no worker holds).
    dashed: bool,
    /// Held between points (a count), or drawn straight (a rate).
    steps: bool,
    /// (seconds, value); `None` breaks the line.
    points: Vec<(f64, Option<f64>)>,
    /// Pixels to shift the line up, so that equal counts of different
    /// workers stay visible side by side.
    shift: f64,
}

/// A vertical line across a chart: an event, or a recovery.
struct Marker {
    /// When, in seconds of the run.
    seconds: f64,
    /// Its class (`event event-kill`, `recovery`).
    class: String,
    /// Its colour.
    colour: &'static str,
    /// Dashed (an event) or solid (a recovery).
    dashed: bool,
    /// Its label above the first chart.
    label: String,
    /// Its tooltip.
    title: String,
}

/// A chart over the run's time axis.
struct Chart<'a> {
    /// Its title.
    title: &'a str,
    /// What its values measure.
    unit: &'a str,
    /// The length of the time axis.
    seconds: f64,
    /// Its lines.
    series: Vec<Series>,
    /// The events to mark.
    events: &'a [EventReport],
    /// Whether to name the events above the plot.
    labels: bool,
    /// Whether the values are counts (the value axis steps by whole
    /// numbers).
    counts: bool,
}

impl Chart<'_> {
    /// The x coordinate of a time.
    fn x(&self, seconds: f64) -> f64 {
        LEFT + seconds / self.seconds.max(1e-9) * (WIDTH - LEFT - RIGHT)
    }

    /// Appends the chart (an `<svg>`) and its legend to `out`.
    fn render(&self, out: &mut String) {
        let max = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().filter_map(|(_, v)| *v))
            .fold(0.0, f64::max)
            .max(1.0);
        let step = nice_step(max, 4.0);
        let step = if self.counts { step.max(1.0) } else { step };
        let top = (max / step).ceil() * step;
        let plot = HEIGHT - TOP - BOTTOM;
        let y = |v: f64| TOP + plot - v / top * plot;
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}">"#,
            escape(self.title)
        );
        let _ = write!(
            out,
            r#"<text class="title" x="{LEFT}" y="14">{} <tspan>({})</tspan></text>"#,
            escape(self.title),
            escape(self.unit)
        );
        // Bands from each event to the moment the group settled or
        // recovered.
        for event in self.events {
            let until = event
                .recovered_after_seconds
                .or(event.settled_after_seconds);
            if let Some(after) = until {
                let (from, to) = (self.x(event.seconds), self.x(event.seconds + after));
                let _ = write!(
                    out,
                    r#"<rect class="band band-{}" x="{from:.1}" y="{TOP}" width="{:.1}" height="{plot:.1}" fill="{}" fill-opacity="0.07"><title>{} until {:.1} s later</title></rect>"#,
                    event.kind_name(),
                    (to - from).max(0.5),
                    event_colour(event.kind),
                    escape(&event.detail),
                    after
                );
            }
        }
        let mut value = 0.0;
        while value <= top + step / 2.0 {
            let _ = write!(
                out,
                r#"<line class="grid" x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                WIDTH - RIGHT,
                LEFT - 6.0,
                y(value) + 4.0,
                format_number(value),
                y = y(value),
            );
            value += step;
        }
        let time_step = nice_step(self.seconds, 10.0);
        let mut t = 0.0;
        while t <= self.seconds + time_step / 100.0 {
            let _ = write!(
                out,
                r#"<line class="axis" x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{} s</text>"#,
                TOP + plot,
                TOP + plot + 4.0,
                TOP + plot + 16.0,
                format_number(t),
                x = self.x(t),
            );
            t += time_step;
        }
        let _ = write!(
            out,
            r#"<line class="axis" x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}"/>"#,
            WIDTH - RIGHT,
            TOP + plot,
            TOP + plot
        );
        for series in &self.series {
            let path = self.path(series, &y);
            if path.is_empty() {
                continue;
            }
            let _ = write!(
                out,
                r#"<path class="series" d="{path}" fill="none" stroke="{}" stroke-width="2"{}><title>{}</title></path>"#,
                series.colour,
                if series.dashed {
                    r#" stroke-dasharray="5 3""#
                } else {
                    ""
                },
                escape(&series.name)
            );
        }
        // Each event, and each recovery after a kill, as a vertical line.
        let mut markers: Vec<Marker> = Vec::new();
        for event in self.events {
            markers.push(Marker {
                seconds: event.seconds,
                class: format!("event event-{}", event.kind_name()),
                colour: event_colour(event.kind),
                dashed: true,
                label: event.label(),
                title: format!("{:.1} s: {}", event.seconds, event.detail),
            });
            if let Some(after) = event.recovered_after_seconds {
                markers.push(Marker {
                    seconds: event.seconds + after,
                    class: "recovery".to_owned(),
                    colour: "#555",
                    dashed: false,
                    label: format!("recovered ({after:.1} s)"),
                    title: format!("recovered {after:.1} s after: {}", event.detail),
                });
            }
        }
        markers.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        let mut last_label: Option<(f64, usize)> = None;
        for marker in &markers {
            let x = self.x(marker.seconds);
            let _ = write!(
                out,
                r#"<g class="{}"><line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}" stroke="{}" stroke-width="1.5"{}/><title>{}</title></g>"#,
                marker.class,
                TOP + plot,
                marker.colour,
                if marker.dashed {
                    r#" stroke-dasharray="4 3""#
                } else {
                    ""
                },
                escape(&marker.title),
            );
            if self.labels {
                // Labels close together go on alternate rows.
                let row = match last_label {
                    Some((previous, row)) if x - previous < 90.0 => (row + 1) % 2,
                    _ => 0,
                };
                last_label = Some((x, row));
                // Near the right edge, the label ends at the line.
                let (label_x, anchor) = if x > WIDTH - RIGHT - 90.0 {
                    (x - 3.0, "end")
                } else {
                    (x + 3.0, "start")
                };
                let _ = write!(
                    out,
                    r#"<text class="event-label" x="{label_x:.1}" y="{:.1}" text-anchor="{anchor}" fill="{}">{}</text>"#,
                    TOP - 16.0 + row as f64 * 11.0,
                    marker.colour,
                    escape(&marker.label),
                );
            }
        }
        out.push_str("</svg>");
        out.push_str(r#"<div class="legend">"#);
        for series in &self.series {
            let _ = write!(
                out,
                r#"<span><span class="swatch" style="background: {}"></span>{}</span>"#,
                series.colour,
                escape(&series.name)
            );
        }
        out.push_str("</div>");
    }

    /// The SVG path of a series, broken where a value is missing.
    fn path(&self, series: &Series, y: &impl Fn(f64) -> f64) -> String {
        let mut path = String::new();
        let mut previous: Option<f64> = None;
        for (t, value) in &series.points {
            let Some(value) = value else {
                previous = None;
                continue;
            };
            let (x, y) = (self.x(*t), y(*value) - series.shift);
            match previous {
                None => {
                    let _ = write!(path, "M{x:.1} {y:.1}");
                }
                Some(_) if series.steps => {
                    let _ = write!(path, "H{x:.1}V{y:.1}");
                }
                Some(_) => {
                    let _ = write!(path, "L{x:.1} {y:.1}");
                }
            }
            previous = Some(*value);
        }
        path
    }
}

impl EventReport {
    /// The kind's lowercase name.
    fn kind_name(&self) -> &'static str {
        self.kind.name()
    }

    /// A short label: the kind and the worker.
    fn label(&self) -> String {
        match &self.worker {
            Some(worker) => format!("{} {worker}", self.kind.name()),
            None => self.kind.name().to_owned(),
        }
    }
}

/// A number without needless decimals.
fn format_number(value: f64) -> String {
    if (value - value.round()).abs() < 1e-6 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

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
    let charts = [
        Chart {
            title: "Leases per worker",
            unit: "active leases; dashed: restarted workers",
            seconds,
            series: lease_series,
            events: &report.events,
            labels: true,
            counts: true,
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
        },
    ];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_steps_are_nice() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(nice_step(100.0, 4.0), 50.0);
        assert_eq!(nice_step(7.0, 4.0), 2.0);
        assert_eq!(nice_step(30.0, 10.0), 5.0);
        assert_eq!(worker_colour("worker-2-r3"), worker_colour("worker-2"));
        assert_ne!(worker_colour("worker-1"), worker_colour("worker-2"));
    }
}
