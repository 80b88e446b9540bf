//! The Grafana dashboard in `dashboards/grafana/rkcl.json` queries only
//! metrics of the catalogue (`rkcl::metrics::ALL`), with the names a
//! Prometheus exporter gives them (`_total` for counters; `_bucket`, `_sum`,
//! `_count` for histograms), groups only by labels they have, and takes its
//! data source from the `DS_PROMETHEUS` input.

use std::collections::BTreeSet;
use std::path::Path;

use rkcl::metrics::{ALL, MetricKind};
use serde_json::Value;

/// Labels every series has beside its own: the exporter adds `worker`, and
/// histogram buckets have `le`.
const ADDED_LABELS: &[&str] = &["worker", "le"];

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards/grafana/rkcl.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every string under a key named `key`, anywhere in `value`.
fn strings_under(value: &Value, key: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if k == key => out.push(s.clone()),
                    _ => strings_under(v, key, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| strings_under(v, key, out)),
        _ => {}
    }
}

/// The identifiers in a query that start with `rkcl_`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("rkcl_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

/// The labels of every `by (...)` in a query.
fn grouping_labels(expr: &str) -> Vec<String> {
    expr.split("by (")
        .skip(1)
        .flat_map(|group| {
            let inside = group.split(')').next().unwrap_or_default();
            inside
                .split(',')
                .map(|l| l.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The labels of the series an exported name belongs to, or why it is not
/// one of the catalogue's.
fn labels_of(exported: &str) -> Result<Vec<String>, String> {
    for metric in ALL {
        let allowed: &[&str] = match metric.kind {
            MetricKind::Counter => &["_total"],
            MetricKind::Gauge => &[""],
            MetricKind::Histogram => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        if let Some(suffix) = exported.strip_prefix(metric.name) {
            if allowed.contains(&suffix) {
                return Ok(metric.labels.iter().map(|l| (*l).to_owned()).collect());
            }
            if suffix.is_empty() || suffix.starts_with('_') {
                return Err(format!(
                    "{exported}: a {:?} is exported as {} + one of {allowed:?}",
                    metric.kind, metric.name
                ));
            }
        }
    }
    Err(format!("{exported} is not in rkcl::metrics::ALL"))
}

#[test]
fn queries_use_only_catalogued_metrics_and_their_labels() {
    let dashboard = dashboard();
    let mut exprs = Vec::new();
    strings_under(&dashboard, "expr", &mut exprs);
    strings_under(&dashboard, "definition", &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "a query without an rkcl metric: {expr}");
        let mut labels: BTreeSet<String> = ADDED_LABELS.iter().map(|l| (*l).to_owned()).collect();
        for name in &names {
            labels.extend(labels_of(name).unwrap_or_else(|e| panic!("{e} (in {expr})")));
            used.insert(name.trim_end_matches("_total").to_owned());
        }
        for label in grouping_labels(expr) {
            assert!(
                labels.contains(&label),
                "{expr} groups by {label}, which its metrics do not have"
            );
        }
    }
    // The panels the dashboard promises are there.
    for needed in [
        "rkcl_records_processed",
        "rkcl_millis_behind_latest",
        "rkcl_leases_held",
        "rkcl_leases_lost",
        "rkcl_checkpoint_seconds_bucket",
        "rkcl_shards_stalled",
    ] {
        assert!(used.contains(needed), "no panel queries {needed}");
    }
}

#[test]
fn the_checks_refuse_what_an_exporter_would_not_name() {
    assert!(
        labels_of("rkcl_records_processed").is_err(),
        "a counter needs _total"
    );
    assert!(labels_of("rkcl_leases_held_total").is_err());
    assert!(labels_of("rkcl_process_seconds").is_err());
    assert!(labels_of("rkcl_no_such_metric").is_err());
    assert_eq!(
        labels_of("rkcl_resubscriptions_total").unwrap(),
        ["shard", "cause"]
    );
    assert_eq!(
        grouping_labels("sum by (le, worker) (rate(x[1m])) / sum by (shard) (y)"),
        ["le", "worker", "shard"]
    );
}

#[test]
fn every_panel_uses_the_imported_data_source() {
    let dashboard = dashboard();
    let inputs = dashboard["__inputs"].as_array().unwrap();
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus")
    );
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap() >= 38,
        "Grafana 10+"
    );
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id: {panel}"
        );
        assert!(panel["gridPos"]["w"].as_u64().unwrap() <= 24);
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}");
        }
    }
}
