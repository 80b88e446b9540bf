//! Every metric rkcl emits, in one closed catalogue.
//!
//! rkcl records through the [`metrics`](https://docs.rs/metrics) facade;
//! install any recorder (Prometheus, StatsD, ...) to collect them. Each
//! [`Metric`] here names one series: its name, kind, unit, labels and
//! meaning. Code that emits a metric goes through these constants, so no
//! name is spelled twice, and tests and dashboards can read the same list
//! ([`ALL`]). Labels are bounded: a shard id, a worker id, or a cause out
//! of a closed set, a stream identifier, never a sequence number or anything per record.
//!
//! ```
//! // Register descriptions (units, help text) with the installed recorder.
//! rkcl::metrics::describe_all();
//! assert!(rkcl::metrics::ALL.iter().any(|m| m.name == "rkcl_records_processed"));
//! ```

use ::metrics::{Counter, Gauge, Histogram, Label, Unit};

/// What a metric measures over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// A count that only grows.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution of observed values.
    Histogram,
}

/// One metric: its name, kind, unit, label names and meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    /// The series name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The unit of its values.
    pub unit: Unit,
    /// The label names, in the order emitters pass their values.
    pub labels: &'static [&'static str],
    /// What it means, in one sentence.
    pub description: &'static str,
}

impl Metric {
    /// The labels of one series: this metric's label names with `values`, in
    /// order.
    pub fn labels(&self, values: &[&str]) -> Vec<Label> {
        debug_assert_eq!(values.len(), self.labels.len(), "labels of {}", self.name);
        self.labels
            .iter()
            .zip(values)
            .map(|(name, value)| Label::new(*name, (*value).to_owned()))
            .collect()
    }

    /// The counter of the series with these label values.
    pub(crate) fn counter(&self, values: &[&str]) -> Counter {
        debug_assert_eq!(self.kind, MetricKind::Counter, "{}", self.name);
        ::metrics::counter!(self.name, self.labels(values))
    }

    /// The gauge of the series with these label values.
    pub(crate) fn gauge(&self, values: &[&str]) -> Gauge {
        debug_assert_eq!(self.kind, MetricKind::Gauge, "{}", self.name);
        ::metrics::gauge!(self.name, self.labels(values))
    }

    /// The histogram of the series with these label values.
    pub(crate) fn histogram(&self, values: &[&str]) -> Histogram {
        debug_assert_eq!(self.kind, MetricKind::Histogram, "{}", self.name);
        ::metrics::histogram!(self.name, self.labels(values))
    }
}

/// The label naming a shard.
pub const SHARD: &str = "shard";
/// The label naming a shard's stream in a multi-stream application (its
/// identifier, `account:streamName:creationEpoch`); empty for an
/// application of one stream.
pub const STREAM: &str = "stream";
/// The label naming a worker.
pub const WORKER: &str = "worker";
/// The label naming why something happened, out of a closed set of
/// causes named where the metric is described (never free text, never an
/// error message).
pub const CAUSE: &str = "cause";

/// Every value the `cause` label of [`RESUBSCRIPTIONS`] takes.
pub const RESUBSCRIPTION_CAUSES: &[&str] = &["session_end", "idle", "throttled", "in_use", "error"];

/// Every value the `cause` label of [`PRODUCER_RETRIES`] takes.
pub const PRODUCER_RETRY_CAUSES: &[&str] = &["throttled", "entry_error", "call_error", "reshard"];

/// User records handed to processors and processed without error.
pub const RECORDS_PROCESSED: Metric = Metric {
    name: "rkcl_records_processed",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[STREAM, SHARD],
    description: "User records processed successfully.",
};

/// Bytes of Kinesis record data in batches processed without error.
pub const BYTES_PROCESSED: Metric = Metric {
    name: "rkcl_bytes_processed",
    kind: MetricKind::Counter,
    unit: Unit::Bytes,
    labels: &[STREAM, SHARD],
    description: "Bytes of record data in batches processed successfully.",
};

/// How far behind the tip of its shard the last batch was read.
pub const MILLIS_BEHIND_LATEST: Metric = Metric {
    name: "rkcl_millis_behind_latest",
    kind: MetricKind::Gauge,
    unit: Unit::Milliseconds,
    labels: &[STREAM, SHARD],
    description: "How far behind the tip of the shard the last batch was read.",
};

/// Time spent in one `process_records` call.
pub const PROCESS_SECONDS: Metric = Metric {
    name: "rkcl_process_seconds",
    kind: MetricKind::Histogram,
    unit: Unit::Seconds,
    labels: &[STREAM, SHARD],
    description: "Time spent in one process_records call.",
};

/// `process_records` calls that failed or panicked.
pub const PROCESS_FAILURES: Metric = Metric {
    name: "rkcl_process_failures",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[STREAM, SHARD],
    description: "process_records calls that returned an error or panicked.",
};

/// Time to store one checkpoint, retries included.
pub const CHECKPOINT_SECONDS: Metric = Metric {
    name: "rkcl_checkpoint_seconds",
    kind: MetricKind::Histogram,
    unit: Unit::Seconds,
    labels: &[STREAM, SHARD],
    description: "Time to store one checkpoint, retries included.",
};

/// Warnings about a record of the Stream API left uncommitted too long.
pub const UNCOMMITTED_RECORDS_WARNED: Metric = Metric {
    name: "rkcl_uncommitted_records_warned",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[STREAM, SHARD],
    description: "Records of the Stream API left uncommitted past the warning time.",
};

/// Leases this worker took (available, expired, stolen or handed over).
pub const LEASES_TAKEN: Metric = Metric {
    name: "rkcl_leases_taken",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[WORKER],
    description: "Leases this worker took.",
};

/// Leases this worker lost (taken by another, or not renewed in time).
pub const LEASES_LOST: Metric = Metric {
    name: "rkcl_leases_lost",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[WORKER],
    description: "Leases this worker lost without letting them go.",
};

/// Leases this worker holds now.
pub const LEASES_HELD: Metric = Metric {
    name: "rkcl_leases_held",
    kind: MetricKind::Gauge,
    unit: Unit::Count,
    labels: &[WORKER],
    description: "Leases this worker holds now.",
};

/// Streams this worker reads (multi-stream mode).
pub const STREAMS_READ: Metric = Metric {
    name: "rkcl_streams_read",
    kind: MetricKind::Gauge,
    unit: Unit::Count,
    labels: &[WORKER],
    description: "Streams this worker reads (multi-stream mode).",
};

/// SubscribeToShard sessions opened (enhanced fan-out).
pub const SUBSCRIPTIONS: Metric = Metric {
    name: "rkcl_subscriptions",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[SHARD],
    description: "Enhanced fan-out subscriptions opened.",
};

/// Subscriptions opened again, by cause: `session_end` (Kinesis ended the
/// session, every five minutes on AWS), `idle` (no event for the idle
/// timeout), `throttled`, `in_use` (the shard was still subscribed, or the
/// consumer not active) and `error` (5xx, connection errors).
pub const RESUBSCRIPTIONS: Metric = Metric {
    name: "rkcl_resubscriptions",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[SHARD, CAUSE],
    description: "Enhanced fan-out subscriptions opened again, by cause.",
};

/// Every value the `cause` label of [`SHARDS_STALLED`] takes.
pub const STALL_CAUSES: &[&str] = &["processor", "reader", "parents"];

/// Shards the watchdog finds stalled now, by cause: `processor` (a call
/// into the processor has not returned), `reader` (the reader brings
/// nothing) and `parents` (a child waits for its parents).
pub const SHARDS_STALLED: Metric = Metric {
    name: "rkcl_shards_stalled",
    kind: MetricKind::Gauge,
    unit: Unit::Count,
    labels: &[WORKER, CAUSE],
    description: "Shards stalled now, by cause (processor, reader, parents).",
};

/// Every value the `cause` label of [`STALL_ACTIONS`] takes.
pub const STALL_ACTION_CAUSES: &[&str] = &["restart_reader", "release_lease"];

/// What the watchdog did about stalls, by action: `restart_reader` (a
/// stalled reader opened again) and `release_lease` (a stalled processor's
/// consumer stopped and its lease released).
pub const STALL_ACTIONS: Metric = Metric {
    name: "rkcl_stall_actions",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[WORKER, CAUSE],
    description: "Actions the watchdog took on stalled shards (restart_reader, release_lease).",
};

/// User records the producer's engine wrote.
pub const PRODUCER_USER_RECORDS: Metric = Metric {
    name: "rkcl_producer_user_records",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[],
    description: "User records the producer wrote.",
};

/// Kinesis records (plain records or aggregates) the producer's engine wrote.
pub const PRODUCER_KINESIS_RECORDS: Metric = Metric {
    name: "rkcl_producer_kinesis_records",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[],
    description: "Kinesis records (plain or aggregates) the producer wrote.",
};

/// Bytes (data plus partition keys) of the Kinesis records written.
pub const PRODUCER_BYTES: Metric = Metric {
    name: "rkcl_producer_bytes",
    kind: MetricKind::Counter,
    unit: Unit::Bytes,
    labels: &[],
    description: "Bytes of Kinesis records (data and partition keys) the producer wrote.",
};

/// User records sent again, by cause: `throttled` (the entry or the call),
/// `entry_error` (another failed entry), `call_error` (the call failed and
/// may succeed again) and `reshard` (an aggregate landed in a shard a
/// consumer would drop it from).
pub const PRODUCER_RETRIES: Metric = Metric {
    name: "rkcl_producer_retries",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[CAUSE],
    description: "User records the producer sent again, by cause: `throttled`, `entry_error`, `call_error`, `reshard`.",
};

/// PutRecords entries Kinesis throttled.
pub const PRODUCER_THROTTLES: Metric = Metric {
    name: "rkcl_producer_throttles",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[],
    description: "PutRecords entries Kinesis throttled.",
};

/// User records answered with an error (expired, failed, shut down).
pub const PRODUCER_FAILED_RECORDS: Metric = Metric {
    name: "rkcl_producer_failed_records",
    kind: MetricKind::Counter,
    unit: Unit::Count,
    labels: &[],
    description: "User records the producer answered with an error.",
};

/// From `send` to the start of the call that wrote the record.
pub const PRODUCER_BUFFER_SECONDS: Metric = Metric {
    name: "rkcl_producer_buffer_seconds",
    kind: MetricKind::Histogram,
    unit: Unit::Seconds,
    labels: &[],
    description: "Time from send to the start of the PutRecords call that wrote the record.",
};

/// Records sent and not yet answered.
pub const PRODUCER_OUTSTANDING_RECORDS: Metric = Metric {
    name: "rkcl_producer_outstanding_records",
    kind: MetricKind::Gauge,
    unit: Unit::Count,
    labels: &[],
    description: "Records sent to the producer and not yet answered.",
};

/// Every metric rkcl emits.
pub const ALL: &[Metric] = &[
    RECORDS_PROCESSED,
    BYTES_PROCESSED,
    MILLIS_BEHIND_LATEST,
    PROCESS_SECONDS,
    PROCESS_FAILURES,
    CHECKPOINT_SECONDS,
    UNCOMMITTED_RECORDS_WARNED,
    LEASES_TAKEN,
    LEASES_LOST,
    LEASES_HELD,
    STREAMS_READ,
    SUBSCRIPTIONS,
    RESUBSCRIPTIONS,
    SHARDS_STALLED,
    STALL_ACTIONS,
    PRODUCER_USER_RECORDS,
    PRODUCER_KINESIS_RECORDS,
    PRODUCER_BYTES,
    PRODUCER_RETRIES,
    PRODUCER_THROTTLES,
    PRODUCER_FAILED_RECORDS,
    PRODUCER_BUFFER_SECONDS,
    PRODUCER_OUTSTANDING_RECORDS,
];

/// Registers the unit and description of every metric with the installed
/// recorder (exporters show them as help text).
pub fn describe_all() {
    for metric in ALL {
        match metric.kind {
            MetricKind::Counter => {
                ::metrics::describe_counter!(metric.name, metric.unit, metric.description)
            }
            MetricKind::Gauge => {
                ::metrics::describe_gauge!(metric.name, metric.unit, metric.description)
            }
            MetricKind::Histogram => {
                ::metrics::describe_histogram!(metric.name, metric.unit, metric.description)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_labels_bounded() {
        let mut names = HashSet::new();
        for metric in ALL {
            assert!(names.insert(metric.name), "{} twice", metric.name);
            assert!(metric.name.starts_with("rkcl_"), "{}", metric.name);
            // A label is a shard, a worker, or a cause out of a closed set;
            // a metric with a cause names every cause in its description.
            assert!(
                metric
                    .labels
                    .iter()
                    .all(|l| [STREAM, SHARD, WORKER, CAUSE].contains(l)),
                "{} has an unbounded label",
                metric.name
            );
        }
        assert_eq!(
            ALL.iter()
                .filter(|m| m.labels.contains(&CAUSE))
                .map(|m| m.name)
                .collect::<Vec<_>>(),
            [
                RESUBSCRIPTIONS.name,
                SHARDS_STALLED.name,
                STALL_ACTIONS.name,
                PRODUCER_RETRIES.name
            ],
            "a new metric with a cause needs its closed set of causes here"
        );
        for (metric, causes) in [
            (SHARDS_STALLED, STALL_CAUSES),
            (STALL_ACTIONS, STALL_ACTION_CAUSES),
        ] {
            for cause in causes {
                assert!(
                    metric.description.contains(cause),
                    "{} does not name {cause}",
                    metric.name
                );
            }
        }
    }

    #[test]
    fn labels_pair_names_with_values() {
        let labels = RECORDS_PROCESSED.labels(&["1:orders:5", "shardId-000000000001"]);
        assert_eq!(labels.len(), 2);
        assert_eq!(labels[0].key(), "stream");
        assert_eq!(labels[0].value(), "1:orders:5");
        assert_eq!(labels[1].key(), "shard");
        assert_eq!(labels[1].value(), "shardId-000000000001");
    }
}
