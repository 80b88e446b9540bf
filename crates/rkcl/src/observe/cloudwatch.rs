//! CloudWatch metrics with the Java KCL's names, dimensions and levels, so
//! its dashboards and alarms keep working.
//!
//! Every [`CloudWatchConfig::buffer_time`] (10 s, like the KCL's
//! `metricsBufferTimeMillis`) the publisher reads the registry and sends
//! PutMetricData under namespace = the application name: counters as what
//! they grew by in the interval, gauges as their value, times as the
//! statistics (count, sum, least, greatest) of the interval in
//! milliseconds. Each catalogue metric with a KCL equivalent is published
//! under the KCL's operation and name ([`kcl_name`]); the others under
//! `Operation = rkcl` and their catalogue name. Dimensions are `Operation`,
//! and `ShardId` or `WorkerIdentifier` as the series has. The level
//! decides what is sent: `NONE` nothing, `SUMMARY` the KCL's summary
//! metrics, `DETAILED` (the default) everything.

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::registry::{MetricsRegistry, Sample, SampleValue, Window};
use crate::aws::{CloudWatch, Datum, DatumUnit, DatumValue};
use crate::backoff::FailureStreak;
use crate::metrics;

/// Which metrics are published, as the Java KCL's `MetricsLevel`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum MetricsLevel {
    /// Nothing.
    None,
    /// The KCL's summary metrics only.
    Summary,
    /// Everything (the KCL's default).
    #[default]
    Detailed,
}

impl std::str::FromStr for MetricsLevel {
    type Err = crate::error::Error;

    /// `NONE`, `SUMMARY` or `DETAILED` (any case).
    fn from_str(text: &str) -> crate::error::Result<Self> {
        match text.to_ascii_uppercase().as_str() {
            "NONE" => Ok(Self::None),
            "SUMMARY" => Ok(Self::Summary),
            "DETAILED" => Ok(Self::Detailed),
            _ => Err(crate::error::Error::Config(format!(
                "metrics level {text:?}: expected NONE, SUMMARY or DETAILED"
            ))),
        }
    }
}

/// Where and how often the publisher sends.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CloudWatchConfig {
    /// The namespace: the application name, as the Java KCL uses.
    pub namespace: String,
    /// What is published. Default: [`MetricsLevel::Detailed`].
    pub level: MetricsLevel,
    /// How often. Default: 10 s.
    pub buffer_time: Duration,
}

impl CloudWatchConfig {
    /// The defaults, under `namespace` (the application name).
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            level: MetricsLevel::Detailed,
            buffer_time: Duration::from_secs(10),
        }
    }

    /// Sets [`level`](Self::level).
    pub fn level(mut self, level: MetricsLevel) -> Self {
        self.level = level;
        self
    }

    /// Sets [`buffer_time`](Self::buffer_time).
    pub fn buffer_time(mut self, buffer_time: Duration) -> Self {
        self.buffer_time = buffer_time;
        self
    }
}

/// Publishes the registry to CloudWatch; give it to
/// [`TelemetryBuilder::cloudwatch`](super::TelemetryBuilder::cloudwatch).
#[derive(Debug)]
pub struct CloudWatchExporter {
    client: CloudWatch,
    config: CloudWatchConfig,
}

impl CloudWatchExporter {
    /// A publisher through `client` with `config`.
    pub fn new(client: CloudWatch, config: CloudWatchConfig) -> Self {
        Self { client, config }
    }

    /// Publishes every `buffer_time` until `cancel`, then once more.
    pub(super) async fn run(self, registry: MetricsRegistry, cancel: CancellationToken) {
        if self.config.level == MetricsLevel::None {
            return;
        }
        let mut ticker = tokio::time::interval(self.config.buffer_time);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut last = HashMap::new();
        let mut streak = FailureStreak::new("CloudWatch metrics");
        loop {
            let stopping = tokio::select! {
                () = cancel.cancelled() => true,
                _ = ticker.tick() => false,
            };
            let data = data(&registry.snapshot_windows(), &mut last, self.config.level);
            if !data.is_empty() {
                match self
                    .client
                    .put_metric_data(&self.config.namespace, &data)
                    .await
                {
                    Ok(()) => streak.succeeded(),
                    // Metrics are best effort: the interval's data are
                    // dropped, the next interval's sent.
                    Err(err) => {
                        streak.failed(&err);
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }
}

/// Where a catalogue metric goes in CloudWatch: the Java KCL's operation,
/// metric name and level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KclName {
    /// The `Operation` dimension.
    pub operation: &'static str,
    /// The metric name.
    pub name: &'static str,
    /// The least level that publishes it.
    pub level: MetricsLevel,
}

/// The Java KCL's operation, name and level of catalogue metric `name`, if
/// the KCL has one.
pub fn kcl_name(name: &str) -> Option<KclName> {
    let (operation, kcl, level) = match name {
        n if n == metrics::RECORDS_PROCESSED.name => {
            ("ProcessTask", "RecordsProcessed", MetricsLevel::Summary)
        }
        n if n == metrics::BYTES_PROCESSED.name => {
            ("ProcessTask", "DataBytesProcessed", MetricsLevel::Summary)
        }
        n if n == metrics::MILLIS_BEHIND_LATEST.name => {
            ("ProcessTask", "MillisBehindLatest", MetricsLevel::Summary)
        }
        n if n == metrics::PROCESS_SECONDS.name => (
            "ProcessTask",
            "RecordProcessor.processRecords.Time",
            MetricsLevel::Summary,
        ),
        n if n == metrics::CHECKPOINT_SECONDS.name => {
            ("ProcessTask", "UpdateLease.Time", MetricsLevel::Detailed)
        }
        n if n == metrics::LEASES_HELD.name => {
            ("RenewAllLeases", "CurrentLeases", MetricsLevel::Summary)
        }
        n if n == metrics::LEASES_LOST.name => {
            ("RenewAllLeases", "LostLeases", MetricsLevel::Summary)
        }
        n if n == metrics::LEASES_TAKEN.name => {
            ("TakeLeases", "TakenLeases", MetricsLevel::Summary)
        }
        n if n == metrics::STREAMS_READ.name => (
            "MultiStreamTracker",
            "ActiveStreams.Count",
            MetricsLevel::Summary,
        ),
        _ => return None,
    };
    Some(KclName {
        operation,
        name: kcl,
        level,
    })
}

/// A series' identity across snapshots.
type SeriesKey = (String, Vec<(String, String)>);

/// The data of one interval: counters as their growth since `last`,
/// gauges as they are, times as the interval's statistics.
fn data(
    samples: &[(Sample, Option<Window>)],
    last: &mut HashMap<SeriesKey, u64>,
    level: MetricsLevel,
) -> Vec<Datum> {
    let mut data = Vec::new();
    for (sample, window) in samples {
        let (operation, name, least) = match kcl_name(&sample.name) {
            Some(kcl) => (kcl.operation, kcl.name.to_owned(), kcl.level),
            None => ("rkcl", sample.name.clone(), MetricsLevel::Detailed),
        };
        if level < least {
            continue;
        }
        let mut dimensions = vec![("Operation".to_owned(), operation.to_owned())];
        for (label, value) in &sample.labels {
            let dimension = match label.as_str() {
                metrics::SHARD => "ShardId".to_owned(),
                // The Java KCL's dimension of multi-stream applications;
                // none for an application of one stream.
                metrics::STREAM if value.is_empty() => continue,
                metrics::STREAM => "StreamId".to_owned(),
                metrics::WORKER => "WorkerIdentifier".to_owned(),
                metrics::CAUSE => "Cause".to_owned(),
                // A label the registry adds to every series (a worker id
                // under another name): not a KCL dimension.
                _ => continue,
            };
            dimensions.push((dimension, value.clone()));
        }
        let key = (sample.name.clone(), sample.labels.clone());
        let datum = match &sample.value {
            SampleValue::Counter(total) => {
                let before = last.insert(key, *total).unwrap_or(0);
                let grown = total.saturating_sub(before);
                if grown == 0 {
                    continue;
                }
                Datum {
                    name,
                    dimensions,
                    unit: if sample.name == metrics::BYTES_PROCESSED.name {
                        DatumUnit::Bytes
                    } else {
                        DatumUnit::Count
                    },
                    value: DatumValue::Value(grown as f64),
                }
            }
            SampleValue::Gauge(value) => Datum {
                name,
                dimensions,
                unit: if sample.name == metrics::MILLIS_BEHIND_LATEST.name {
                    DatumUnit::Milliseconds
                } else {
                    DatumUnit::Count
                },
                value: DatumValue::Value(*value),
            },
            SampleValue::Histogram(_) => {
                // rkcl's histograms are in seconds; the KCL's times in ms.
                let Some(w) = window else { continue };
                Datum {
                    name,
                    dimensions,
                    unit: DatumUnit::Milliseconds,
                    value: DatumValue::Statistics {
                        count: w.count as f64,
                        sum: w.sum * 1000.0,
                        min: w.min * 1000.0,
                        max: w.max * 1000.0,
                    },
                }
            }
        };
        data.push(datum);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(registry: &MetricsRegistry) {
        ::metrics::with_local_recorder(registry, || {
            crate::metrics::RECORDS_PROCESSED
                .counter(&["", "shardId-000000000001"])
                .increment(5);
            crate::metrics::LEASES_HELD.gauge(&["w-1"]).set(2.0);
            crate::metrics::BYTES_PROCESSED
                .counter(&["1:orders:5", "shardId-000000000001"])
                .increment(100);
            crate::metrics::PROCESS_SECONDS
                .histogram(&["", "shardId-000000000001"])
                .record(0.25);
            crate::metrics::PROCESS_SECONDS
                .histogram(&["", "shardId-000000000001"])
                .record(0.75);
            crate::metrics::CHECKPOINT_SECONDS
                .histogram(&["", "shardId-000000000001"])
                .record(0.01);
            crate::metrics::PROCESS_FAILURES
                .counter(&["", "shardId-000000000001"])
                .increment(1);
        });
    }

    fn find<'a>(data: &'a [Datum], name: &str) -> Option<&'a Datum> {
        data.iter().find(|d| d.name == name)
    }

    #[test]
    fn kcl_names_dimensions_units_and_intervals() {
        let registry = MetricsRegistry::new();
        record(&registry);
        let mut last = HashMap::new();
        let data = data(
            &registry.snapshot_windows(),
            &mut last,
            MetricsLevel::Detailed,
        );
        let records = find(&data, "RecordsProcessed").unwrap();
        assert_eq!(
            records.dimensions,
            [
                ("Operation".to_owned(), "ProcessTask".to_owned()),
                ("ShardId".to_owned(), "shardId-000000000001".to_owned())
            ]
        );
        assert_eq!(records.value, DatumValue::Value(5.0));
        // A multi-stream application's series carry the stream as `StreamId`.
        let bytes = find(&data, "DataBytesProcessed").unwrap();
        assert!(
            bytes
                .dimensions
                .contains(&("StreamId".to_owned(), "1:orders:5".to_owned())),
            "{:?}",
            bytes.dimensions
        );
        let leases = find(&data, "CurrentLeases").unwrap();
        assert_eq!(
            leases.dimensions[1],
            ("WorkerIdentifier".into(), "w-1".into())
        );
        let time = find(&data, "RecordProcessor.processRecords.Time").unwrap();
        assert_eq!(time.unit, DatumUnit::Milliseconds);
        assert_eq!(
            time.value,
            DatumValue::Statistics {
                count: 2.0,
                sum: 1000.0,
                min: 250.0,
                max: 750.0
            }
        );
        assert!(find(&data, "UpdateLease.Time").is_some());
        let failures = find(&data, "rkcl_process_failures").unwrap();
        assert_eq!(failures.dimensions[0].1, "rkcl");

        // The next interval: counters send what they grew by, nothing when
        // they did not; times only when something was recorded.
        ::metrics::with_local_recorder(&registry, || {
            crate::metrics::RECORDS_PROCESSED
                .counter(&["", "shardId-000000000001"])
                .increment(3);
        });
        let next = super::data(
            &registry.snapshot_windows(),
            &mut last,
            MetricsLevel::Detailed,
        );
        assert_eq!(
            find(&next, "RecordsProcessed").unwrap().value,
            DatumValue::Value(3.0)
        );
        assert!(find(&next, "rkcl_process_failures").is_none());
        assert!(find(&next, "RecordProcessor.processRecords.Time").is_none());
        assert!(
            find(&next, "CurrentLeases").is_some(),
            "gauges every interval"
        );
    }

    #[test]
    fn summary_leaves_out_the_detailed_metrics() {
        let registry = MetricsRegistry::new();
        record(&registry);
        let data = data(
            &registry.snapshot_windows(),
            &mut HashMap::new(),
            MetricsLevel::Summary,
        );
        assert!(find(&data, "RecordsProcessed").is_some());
        assert!(find(&data, "UpdateLease.Time").is_none());
        assert!(find(&data, "rkcl_process_failures").is_none());
        assert_eq!(
            "summary".parse::<MetricsLevel>().unwrap(),
            MetricsLevel::Summary
        );
        assert!("verbose".parse::<MetricsLevel>().is_err());
    }
}
