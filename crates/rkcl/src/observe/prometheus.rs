//! The Prometheus text exposition format (version 0.0.4) of a snapshot.

use std::fmt::Write as _;

use super::registry::{MetricsRegistry, Sample, SampleValue};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every series of `registry` in the Prometheus text format: counters get
/// the `_total` suffix, histograms their `_bucket`, `_sum` and `_count`
/// series, and every metric its `# HELP` and `# TYPE` lines.
pub fn render(registry: &MetricsRegistry) -> String {
    let samples = registry.snapshot();
    let mut out = String::with_capacity(samples.len() * 96);
    let mut current: Option<&str> = None;
    for sample in &samples {
        let name = exposed_name(sample);
        if current != Some(sample.name.as_str()) {
            current = Some(sample.name.as_str());
            if let Some(description) = registry.description(&sample.name) {
                let _ = writeln!(out, "# HELP {name} {}", escape_help(&description.text));
            }
            let kind = match sample.value {
                SampleValue::Counter(_) => "counter",
                SampleValue::Gauge(_) => "gauge",
                SampleValue::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
        }
        match &sample.value {
            SampleValue::Counter(n) => {
                let _ = writeln!(out, "{name}{} {n}", labels(&sample.labels, None));
            }
            SampleValue::Gauge(v) => {
                let _ = writeln!(out, "{name}{} {}", labels(&sample.labels, None), number(*v));
            }
            SampleValue::Histogram(h) => {
                for (bound, n) in &h.buckets {
                    let le = number(*bound);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {n}",
                        labels(&sample.labels, Some(&le))
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    labels(&sample.labels, Some("+Inf")),
                    h.count
                );
                let plain = labels(&sample.labels, None);
                let _ = writeln!(out, "{name}_sum{plain} {}", number(h.sum));
                let _ = writeln!(out, "{name}_count{plain} {}", h.count);
            }
        }
    }
    out
}

/// The name a series is exposed under.
fn exposed_name(sample: &Sample) -> String {
    let name: String = sample
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    match sample.value {
        SampleValue::Counter(_) if !name.ends_with("_total") => format!("{name}_total"),
        _ => name,
    }
}

/// `{a="1",b="2"}` (with `le` last when given), or nothing without labels.
fn labels(labels: &[(String, String)], le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut out = String::from("{");
    let le = le.map(|le| ("le", le));
    for (i, (name, value)) in labels
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain(le)
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape_value(value));
    }
    out.push('}');
    out
}

fn escape_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A value as Prometheus writes it (`+Inf`, `-Inf`, `NaN`).
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_in_the_text_format() {
        let registry = MetricsRegistry::with_labels([("worker".to_owned(), "w\"1".to_owned())]);
        metrics::with_local_recorder(&registry, || {
            metrics::describe_counter!("rkcl_records_processed", "User records processed.");
            metrics::counter!("rkcl_records_processed", "shard" => "s-1").increment(7);
            metrics::gauge!("rkcl_leases_held").set(3.0);
            metrics::histogram!("rkcl_process_seconds").record(0.003);
        });
        let text = render(&registry);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"# HELP rkcl_records_processed_total User records processed."));
        assert!(lines.contains(&"# TYPE rkcl_records_processed_total counter"));
        assert!(lines.contains(&r#"rkcl_records_processed_total{shard="s-1",worker="w\"1"} 7"#));
        assert!(lines.contains(&r#"rkcl_leases_held{worker="w\"1"} 3"#));
        assert!(lines.contains(&"# TYPE rkcl_process_seconds histogram"));
        assert!(lines.contains(&r#"rkcl_process_seconds_bucket{worker="w\"1",le="0.0025"} 0"#));
        assert!(lines.contains(&r#"rkcl_process_seconds_bucket{worker="w\"1",le="0.005"} 1"#));
        assert!(lines.contains(&r#"rkcl_process_seconds_bucket{worker="w\"1",le="+Inf"} 1"#));
        assert!(lines.contains(&r#"rkcl_process_seconds_count{worker="w\"1"} 1"#));
    }
}
