//! OpenTelemetry metrics pushed with OTLP/HTTP in its JSON encoding.
//!
//! Every [`OtlpConfig::interval`] (10 s) the exporter reads the registry and
//! POSTs one `ExportMetricsServiceRequest` to `ENDPOINT/v1/metrics`:
//! counters as cumulative monotonic sums, gauges as gauges, histograms as
//! cumulative explicit-bucket histograms (bounds [`BUCKETS`](super::BUCKETS)),
//! each series' labels as attributes, under a resource naming the service.
//! The endpoint is plain HTTP, as a collector or agent beside the worker
//! serves it (the OpenTelemetry Collector's default is port 4318).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::registry::{MetricsRegistry, Sample, SampleValue};
use crate::backoff::FailureStreak;

/// Where and how often the exporter pushes.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OtlpConfig {
    /// The collector's base URL, `http://HOST:PORT` (the exporter appends
    /// `/v1/metrics`).
    pub endpoint: String,
    /// The `service.name` resource attribute. Default: `rkcl`.
    pub service_name: String,
    /// How often. Default: 10 s.
    pub interval: Duration,
}

impl OtlpConfig {
    /// The defaults, pushing to `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            service_name: "rkcl".into(),
            interval: Duration::from_secs(10),
        }
    }

    /// Sets [`service_name`](Self::service_name).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// Sets [`interval`](Self::interval).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
}

/// Pushes the registry with OTLP/HTTP; give it to
/// [`TelemetryBuilder::otlp`](super::TelemetryBuilder::otlp).
#[derive(Debug)]
pub struct OtlpExporter {
    config: OtlpConfig,
    url: http::Uri,
}

impl OtlpExporter {
    /// An exporter with `config`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::error::Error::Config) when the endpoint is
    /// not an `http://` URL.
    pub fn new(config: OtlpConfig) -> crate::error::Result<Self> {
        let base = config.endpoint.trim_end_matches('/');
        let url: http::Uri = format!("{base}/v1/metrics").parse().map_err(|err| {
            crate::error::Error::Config(format!("OTLP endpoint {:?}: {err}", config.endpoint))
        })?;
        if url.scheme_str() != Some("http") {
            return Err(crate::error::Error::Config(format!(
                "OTLP endpoint {:?}: only http:// is supported (a collector beside the worker)",
                config.endpoint
            )));
        }
        Ok(Self { config, url })
    }

    /// Pushes every `interval` until `cancel`, then once more.
    pub(super) async fn run(self, registry: MetricsRegistry, cancel: CancellationToken) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
        let start = unix_nanos(SystemTime::now());
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut streak = FailureStreak::new("OTLP metrics");
        loop {
            let stopping = tokio::select! {
                () = cancel.cancelled() => true,
                _ = ticker.tick() => false,
            };
            let body = request(
                &registry,
                &self.config.service_name,
                start,
                unix_nanos(SystemTime::now()),
            );
            match self.push(&client, body).await {
                Ok(()) => streak.succeeded(),
                Err(message) => {
                    streak.failed(&message);
                }
            }
            if stopping {
                return;
            }
        }
    }

    async fn push(
        &self,
        client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>,
        body: Value,
    ) -> Result<(), String> {
        let request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .map_err(|err| err.to_string())?;
        let response = client
            .request(request)
            .await
            .map_err(|err| format!("POST {}: {err}", self.url))?;
        let status = response.status();
        // Read the answer so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("POST {}: {status}", self.url))
        }
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The UCUM unit of a described metric.
fn unit(registry: &MetricsRegistry, name: &str) -> &'static str {
    match registry.description(name).and_then(|d| d.unit) {
        Some(metrics::Unit::Seconds) => "s",
        Some(metrics::Unit::Milliseconds) => "ms",
        Some(metrics::Unit::Bytes) => "By",
        _ => "1",
    }
}

fn attributes(sample: &Sample) -> Value {
    Value::Array(
        sample
            .labels
            .iter()
            .map(|(key, value)| json!({"key": key, "value": {"stringValue": value}}))
            .collect(),
    )
}

/// One data point of a series.
fn point(sample: &Sample, start: &str, now: &str) -> Value {
    let mut point = serde_json::Map::new();
    point.insert("attributes".into(), attributes(sample));
    point.insert("startTimeUnixNano".into(), json!(start));
    point.insert("timeUnixNano".into(), json!(now));
    match &sample.value {
        SampleValue::Counter(n) => {
            point.insert("asInt".into(), json!(n.to_string()));
        }
        SampleValue::Gauge(v) => {
            point.insert("asDouble".into(), json!(v));
        }
        SampleValue::Histogram(h) => {
            let mut below = 0;
            let mut counts: Vec<String> = h
                .buckets
                .iter()
                .map(|(_, cumulative)| {
                    let n = cumulative.saturating_sub(below);
                    below = *cumulative;
                    n.to_string()
                })
                .collect();
            counts.push(h.count.saturating_sub(below).to_string());
            point.insert("count".into(), json!(h.count.to_string()));
            point.insert("sum".into(), json!(h.sum));
            point.insert("bucketCounts".into(), json!(counts));
            point.insert(
                "explicitBounds".into(),
                json!(h.buckets.iter().map(|(b, _)| *b).collect::<Vec<f64>>()),
            );
        }
    }
    Value::Object(point)
}

/// One `ExportMetricsServiceRequest` of everything in `registry`, in the
/// OTLP JSON encoding (64-bit integers as strings).
pub(super) fn request(registry: &MetricsRegistry, service: &str, start: u64, now: u64) -> Value {
    let samples = registry.snapshot();
    let (start, now) = (start.to_string(), now.to_string());
    let metrics: Vec<Value> = samples
        .chunk_by(|a, b| a.name == b.name)
        .filter_map(|series| {
            let first = series.first()?;
            let points: Vec<Value> = series.iter().map(|s| point(s, &start, &now)).collect();
            let data = match first.value {
                SampleValue::Counter(_) => (
                    "sum",
                    json!({"dataPoints": points, "aggregationTemporality": 2, "isMonotonic": true}),
                ),
                SampleValue::Gauge(_) => ("gauge", json!({"dataPoints": points})),
                SampleValue::Histogram(_) => (
                    "histogram",
                    json!({"dataPoints": points, "aggregationTemporality": 2}),
                ),
            };
            let mut metric = serde_json::Map::new();
            metric.insert("name".into(), json!(first.name));
            metric.insert("unit".into(), json!(unit(registry, &first.name)));
            metric.insert(
                "description".into(),
                json!(
                    registry
                        .description(&first.name)
                        .map(|d| d.text)
                        .unwrap_or_default()
                ),
            );
            metric.insert(data.0.into(), data.1);
            Some(Value::Object(metric))
        })
        .collect();
    json!({
        "resourceMetrics": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": service}},
                {"key": "telemetry.sdk.name", "value": {"stringValue": "rkcl"}},
            ]},
            "scopeMetrics": [{
                "scope": {"name": "rkcl", "version": env!("CARGO_PKG_VERSION")},
                "metrics": metrics,
            }],
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_gauges_and_histograms_in_the_otlp_json_encoding() {
        let registry = MetricsRegistry::with_labels([("worker".into(), "w-1".into())]);
        ::metrics::with_local_recorder(&registry, || {
            crate::metrics::describe_all();
            crate::metrics::RECORDS_PROCESSED
                .counter(&["", "shardId-000000000000"])
                .increment(4);
            crate::metrics::LEASES_HELD.gauge(&["w-1"]).set(1.0);
            crate::metrics::PROCESS_SECONDS
                .histogram(&["", "shardId-000000000000"])
                .record(0.3);
        });
        let body = request(&registry, "orders", 1, 2);
        let resource = &body["resourceMetrics"][0];
        assert_eq!(
            resource["resource"]["attributes"][0]["value"]["stringValue"],
            "orders"
        );
        let metrics = resource["scopeMetrics"][0]["metrics"].as_array().unwrap();
        let find = |name: &str| metrics.iter().find(|m| m["name"] == name).unwrap();
        let records = find("rkcl_records_processed");
        assert_eq!(records["unit"], "1");
        assert_eq!(records["sum"]["isMonotonic"], true);
        assert_eq!(records["sum"]["aggregationTemporality"], 2);
        let point = &records["sum"]["dataPoints"][0];
        assert_eq!(point["asInt"], "4");
        assert_eq!(point["startTimeUnixNano"], "1");
        let attributes = point["attributes"].as_array().unwrap();
        assert!(
            attributes.contains(
                &json!({"key": "shard", "value": {"stringValue": "shardId-000000000000"}})
            )
        );
        assert!(attributes.contains(&json!({"key": "worker", "value": {"stringValue": "w-1"}})));
        assert_eq!(
            find("rkcl_leases_held")["gauge"]["dataPoints"][0]["asDouble"],
            1.0
        );
        let histogram = &find("rkcl_process_seconds")["histogram"]["dataPoints"][0];
        assert_eq!(find("rkcl_process_seconds")["unit"], "s");
        assert_eq!(histogram["count"], "1");
        let counts = histogram["bucketCounts"].as_array().unwrap();
        assert_eq!(
            counts.len(),
            histogram["explicitBounds"].as_array().unwrap().len() + 1
        );
        assert_eq!(
            counts.iter().filter(|c| **c == "1").count(),
            1,
            "{counts:?}"
        );
    }

    #[test]
    fn only_plain_http_endpoints() {
        assert!(OtlpExporter::new(OtlpConfig::new("http://127.0.0.1:4318")).is_ok());
        assert!(OtlpExporter::new(OtlpConfig::new("https://collector:4318")).is_err());
        assert!(OtlpExporter::new(OtlpConfig::new("not a url")).is_err());
    }
}
