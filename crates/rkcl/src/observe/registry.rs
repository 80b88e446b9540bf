//! The recorder every exporter reads: counters, gauges and fixed-bucket
//! histograms behind the `metrics` facade, and snapshots of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// The upper bounds of every histogram's buckets. rkcl's histograms
/// measure seconds, from a checkpoint's few milliseconds to a processor
/// that takes a minute.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// A histogram with fixed buckets, a running count and sum, and the least
/// and greatest value since its window was last taken.
#[derive(Debug)]
pub(crate) struct Buckets {
    /// Per bucket of [`BUCKETS`], then one for values above the last bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    /// An `f64`'s bits.
    sum: AtomicU64,
    window_min: AtomicU64,
    window_max: AtomicU64,
    window_count: AtomicU64,
    window_sum: AtomicU64,
}

impl Default for Buckets {
    fn default() -> Self {
        Self {
            counts: Default::default(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
            window_min: AtomicU64::new(f64::INFINITY.to_bits()),
            window_max: AtomicU64::new(f64::NEG_INFINITY.to_bits()),
            window_count: AtomicU64::new(0),
            window_sum: AtomicU64::new(0f64.to_bits()),
        }
    }
}

/// Adds `value` to the `f64` stored as bits in `cell`.
fn add_f64(cell: &AtomicU64, value: f64) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        Some((f64::from_bits(bits) + value).to_bits())
    });
}

/// Keeps in `cell` whichever of its value and `value` `pick` chooses.
fn keep_f64(cell: &AtomicU64, value: f64, pick: fn(f64, f64) -> f64) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        Some(pick(f64::from_bits(bits), value).to_bits())
    });
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let bucket = BUCKETS
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(BUCKETS.len());
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        add_f64(&self.sum, value);
        self.window_count.fetch_add(1, Ordering::Relaxed);
        add_f64(&self.window_sum, value);
        keep_f64(&self.window_min, value, f64::min);
        keep_f64(&self.window_max, value, f64::max);
    }
}

impl Buckets {
    fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = BUCKETS
            .iter()
            .zip(&self.counts)
            .map(|(bound, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (*bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: self.count.load(Ordering::Relaxed),
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
        }
    }

    /// The values recorded since the last call, and starts a new window.
    #[cfg_attr(not(feature = "cloudwatch"), allow(dead_code))]
    fn take_window(&self) -> Option<Window> {
        let count = self.window_count.swap(0, Ordering::Relaxed);
        let sum = f64::from_bits(self.window_sum.swap(0f64.to_bits(), Ordering::Relaxed));
        let min = f64::from_bits(
            self.window_min
                .swap(f64::INFINITY.to_bits(), Ordering::Relaxed),
        );
        let max = f64::from_bits(
            self.window_max
                .swap(f64::NEG_INFINITY.to_bits(), Ordering::Relaxed),
        );
        (count > 0).then_some(Window {
            count,
            sum,
            min,
            max,
        })
    }
}

/// A histogram's cumulative buckets, count and sum.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, values at or below it)`, cumulative, one per bound of
    /// [`BUCKETS`]; `count` is the `+Inf` bucket.
    pub buckets: Vec<(f64, u64)>,
    /// Values recorded.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
}

/// What a histogram recorded in one window (between two exports).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Values recorded.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// The least.
    pub min: f64,
    /// The greatest.
    pub max: f64,
}

/// The value of one series at a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum SampleValue {
    /// A counter's total.
    Counter(u64),
    /// A gauge's value.
    Gauge(f64),
    /// A histogram's buckets.
    Histogram(HistogramSnapshot),
}

/// One series at a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric's name.
    pub name: String,
    /// Its labels, in the order they were given, then the registry's own.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: SampleValue,
}

impl Sample {
    /// The value of label `name`, if it has one.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug)]
enum Series {
    Counter(Arc<AtomicU64>),
    /// An `f64`'s bits.
    Gauge(Arc<AtomicU64>),
    Histogram(Arc<Buckets>),
}

impl Series {
    fn value(&self) -> SampleValue {
        match self {
            Series::Counter(n) => SampleValue::Counter(n.load(Ordering::Relaxed)),
            Series::Gauge(bits) => SampleValue::Gauge(f64::from_bits(bits.load(Ordering::Relaxed))),
            Series::Histogram(buckets) => SampleValue::Histogram(buckets.snapshot()),
        }
    }
}

/// The unit and help text of a metric, as described to the recorder.
#[derive(Clone, Debug)]
pub struct Description {
    /// Its unit, if described with one.
    pub unit: Option<Unit>,
    /// Its help text.
    pub text: String,
}

#[derive(Debug, Default)]
struct Inner {
    series: RwLock<HashMap<Key, Series>>,
    descriptions: RwLock<HashMap<String, Description>>,
    labels: Vec<(String, String)>,
}

/// A `metrics` recorder that keeps every series in memory for exporters to
/// read. Cheap to clone: clones share the series.
///
/// Install it with [`metrics::set_global_recorder`] (the
/// [`Telemetry`](super::Telemetry) builder does), or use it as a local
/// recorder in tests with [`metrics::with_local_recorder`].
#[derive(Clone, Debug, Default)]
pub struct MetricsRegistry {
    inner: Arc<Inner>,
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry that adds `labels` to every series it exports
    /// unless the series has a label of that name (for example the worker
    /// id, so every series of a process names its worker).
    pub fn with_labels(labels: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            inner: Arc::new(Inner {
                labels: labels.into_iter().collect(),
                ..Inner::default()
            }),
        }
    }

    /// Every series now, ordered by name and labels.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.collect(|series| (series.value(), ()))
            .into_iter()
            .map(|(sample, ())| sample)
            .collect()
    }

    /// Every series, with each histogram's window since the last call
    /// (`None` for a histogram that recorded nothing in it), for exporters
    /// that publish statistics per interval. Only one exporter should take
    /// windows.
    #[cfg_attr(not(feature = "cloudwatch"), allow(dead_code))]
    pub(crate) fn snapshot_windows(&self) -> Vec<(Sample, Option<Window>)> {
        self.collect(|series| {
            let window = match series {
                Series::Histogram(buckets) => buckets.take_window(),
                _ => None,
            };
            (series.value(), window)
        })
    }

    fn collect<T>(&self, mut value: impl FnMut(&Series) -> (SampleValue, T)) -> Vec<(Sample, T)> {
        let series = self
            .inner
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut samples: Vec<(Sample, T)> = series
            .iter()
            .map(|(key, series)| {
                let mut labels: Vec<(String, String)> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                for (name, v) in &self.inner.labels {
                    if !labels.iter().any(|(n, _)| n == name) {
                        labels.push((name.clone(), v.clone()));
                    }
                }
                let (value, extra) = value(series);
                (
                    Sample {
                        name: key.name().to_owned(),
                        labels,
                        value,
                    },
                    extra,
                )
            })
            .collect();
        samples.sort_by(|(a, _), (b, _)| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
        samples
    }

    /// The description of metric `name`, if one was given.
    pub fn description(&self, name: &str) -> Option<Description> {
        self.inner
            .descriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn describe(&self, name: KeyName, unit: Option<Unit>, text: SharedString) {
        self.inner
            .descriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                name.as_str().to_owned(),
                Description {
                    unit,
                    text: text.to_string(),
                },
            );
    }

    fn series(&self, key: &Key, make: impl FnOnce() -> Series) -> Series {
        if let Some(series) = self
            .inner
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return series.clone();
        }
        self.inner
            .series
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_insert_with(make)
            .clone()
    }
}

impl Recorder for MetricsRegistry {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        match self.series(key, || Series::Counter(Arc::default())) {
            Series::Counter(n) => Counter::from_arc(n),
            // The same name registered as another kind: not recorded.
            _ => Counter::noop(),
        }
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        match self.series(key, || {
            Series::Gauge(Arc::new(AtomicU64::new(0f64.to_bits())))
        }) {
            Series::Gauge(bits) => Gauge::from_arc(bits),
            _ => Gauge::noop(),
        }
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match self.series(key, || Series::Histogram(Arc::default())) {
            Series::Histogram(buckets) => Histogram::from_arc(buckets),
            _ => Histogram::noop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_kept_per_name_and_labels_with_the_registry_labels_added() {
        let registry = MetricsRegistry::with_labels([("worker".to_owned(), "w-1".to_owned())]);
        metrics::with_local_recorder(&registry, || {
            metrics::counter!("c", "shard" => "s-1").increment(3);
            metrics::counter!("c", "shard" => "s-1").increment(2);
            metrics::counter!("c", "shard" => "s-2").increment(1);
            metrics::gauge!("g", "worker" => "w-9").set(2.5);
            for v in [0.002, 0.2, 100.0] {
                metrics::histogram!("h").record(v);
            }
        });
        let samples = registry.snapshot();
        assert_eq!(samples.len(), 4, "{samples:?}");
        assert_eq!(samples[0].name, "c");
        assert_eq!(samples[0].label("shard"), Some("s-1"));
        assert_eq!(samples[0].label("worker"), Some("w-1"));
        assert_eq!(samples[0].value, SampleValue::Counter(5));
        assert_eq!(samples[1].value, SampleValue::Counter(1));
        // A series' own label wins over the registry's.
        assert_eq!(samples[2].label("worker"), Some("w-9"));
        assert_eq!(samples[2].value, SampleValue::Gauge(2.5));
        let SampleValue::Histogram(h) = &samples[3].value else {
            panic!("{samples:?}");
        };
        assert_eq!(h.count, 3);
        assert!((h.sum - 100.202).abs() < 1e-9);
        assert_eq!(h.buckets[1], (0.0025, 1));
        assert_eq!(h.buckets[7], (0.25, 2));
        assert_eq!(h.buckets.last(), Some(&(60.0, 2)), "100 s is only in +Inf");
    }

    #[test]
    fn a_window_holds_what_was_recorded_since_the_last() {
        let registry = MetricsRegistry::new();
        metrics::with_local_recorder(&registry, || {
            metrics::histogram!("h").record(1.0);
            metrics::histogram!("h").record(3.0);
        });
        let first = registry.snapshot_windows();
        assert_eq!(
            first[0].1,
            Some(Window {
                count: 2,
                sum: 4.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(registry.snapshot_windows()[0].1, None, "nothing since");
        metrics::with_local_recorder(&registry, || metrics::histogram!("h").record(0.5));
        let third = registry.snapshot_windows();
        assert_eq!(third[0].1.map(|w| (w.count, w.min)), Some((1, 0.5)));
        let SampleValue::Histogram(h) = &third[0].0.value else {
            panic!()
        };
        assert_eq!(h.count, 3, "the buckets keep counting");
    }
}
