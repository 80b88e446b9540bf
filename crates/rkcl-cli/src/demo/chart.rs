//! The charts of the report's page: one SVG per measure over the run's
//! time axis, lines per series, every event (and every recovery after a
//! kill) as a vertical line with its label above the first chart, and a
//! band from each event to when the group settled or recovered.

use std::fmt::Write as _;

use super::report::{EventReport, FaultStreak};
use super::session::EventKind;

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

/// Escapes text for HTML and XML.
pub(super) fn escape(text: &str) -> String {
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
pub(super) fn event_colour(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Kill => "#d62728",
        EventKind::Split => "#1f77b4",
        EventKind::Merge => "#9467bd",
        EventKind::Join => "#2ca02c",
        EventKind::Leave => "#ff7f0e",
    }
}

/// The colour of a worker: its slot's (`worker-N`, `worker-N-rK`).
pub(super) fn worker_colour(id: &str) -> &'static str {
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
pub(super) struct Series {
    /// Its name in the legend.
    pub(super) name: String,
    /// Its colour.
    pub(super) colour: &'static str,
    /// Drawn dashed (a restarted worker, or what no worker holds).
    pub(super) dashed: bool,
    /// Held between points (a count), or drawn straight (a rate).
    pub(super) steps: bool,
    /// (seconds, value); `None` breaks the line.
    pub(super) points: Vec<(f64, Option<f64>)>,
    /// Pixels to shift the line up, so that equal counts of different
    /// workers stay visible side by side.
    pub(super) shift: f64,
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
pub(super) struct Chart<'a> {
    /// Its title.
    pub(super) title: &'a str,
    /// What its values measure.
    pub(super) unit: &'a str,
    /// The length of the time axis.
    pub(super) seconds: f64,
    /// Its lines.
    pub(super) series: Vec<Series>,
    /// The events to mark.
    pub(super) events: &'a [EventReport],
    /// Whether to name the events above the plot.
    pub(super) labels: bool,
    /// Whether the values are counts (the value axis steps by whole
    /// numbers).
    pub(super) counts: bool,
    /// Fault streaks to shade.
    pub(super) streaks: &'a [FaultStreak],
}

impl Chart<'_> {
    /// The x coordinate of a time.
    fn x(&self, seconds: f64) -> f64 {
        LEFT + seconds / self.seconds.max(1e-9) * (WIDTH - LEFT - RIGHT)
    }

    /// Appends the chart (an `<svg>`) and its legend to `out`.
    pub(super) fn render(&self, out: &mut String) {
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
        // recovered (not where fault streaks are shaded instead).
        let event_bands = if self.streaks.is_empty() {
            self.events
        } else {
            &[]
        };
        for event in event_bands {
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
        for streak in self.streaks {
            let (from, to) = (self.x(streak.from_seconds), self.x(streak.to_seconds));
            let faults: Vec<String> = streak
                .faults
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            let _ = write!(
                out,
                r##"<rect class="fault-streak" x="{from:.1}" y="{TOP}" width="{:.1}" height="{plot:.1}" fill="#d62728" fill-opacity="0.12"><title>faults from {:.1} s to {:.1} s: {}</title></rect>"##,
                (to - from).max(0.5),
                streak.from_seconds,
                streak.to_seconds,
                escape(&faults.join(", "))
            );
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
