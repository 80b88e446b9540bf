//! The metrics a worker emits, checked value by value: a hand-written
//! `metrics::Recorder` captures every counter, gauge and histogram, one
//! worker consumes a 2-shard stream of plain and KPL-aggregated records, and
//! the captured figures must equal what an independent raw read of the
//! stream says was there.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{keyed_records, quick_polling_builder};
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName};
use metrics::{Metadata, SharedString, Unit};
use rkcl::metrics as catalogue;
use rkcl::{
    Checkpointer, ExtendedSequenceNumber, Kinesis, ProcessRecordsInput, ProcessorError,
    RecordProcessor, Scheduler, SchedulerConfig, ShardId, ShardInfo, aws::StreamRef,
    leases::LeaseStore, record::ProducerRecord,
};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::{Aggregated, Plain};
use rkcl_local::testkit::{create_stream, eventually, lease_table, put, read_all_raw};

/// A metric's name and its labels, sorted by label name.
type MetricKey = (String, Vec<(String, String)>);

/// What was emitted under one key.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

/// Every value emitted so far.
#[derive(Debug, Default)]
struct Captured {
    values: Mutex<HashMap<MetricKey, Value>>,
}

impl Captured {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<Value> {
        self.values
            .lock()
            .unwrap()
            .get(&key_of(name, labels))
            .cloned()
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.get(name, labels).map(|value| match value {
            Value::Counter(n) => n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.get(name, labels).map(|value| match value {
            Value::Gauge(n) => n,
            other => panic!("{name} is not a gauge: {other:?}"),
        })
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.get(name, labels) {
            Some(Value::Histogram(samples)) => samples,
            Some(other) => panic!("{name} is not a histogram: {other:?}"),
            None => Vec::new(),
        }
    }

    /// Every key emitted under `name`, with its value.
    fn all(&self, name: &str) -> Vec<(Vec<(String, String)>, Value)> {
        self.values
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, labels), value)| (labels.clone(), value.clone()))
            .collect()
    }

    /// Every key emitted, with its kind.
    fn keys(&self) -> Vec<(MetricKey, &'static str)> {
        let kind = |value: &Value| match value {
            Value::Counter(_) => "counter",
            Value::Gauge(_) => "gauge",
            Value::Histogram(_) => "histogram",
        };
        self.values
            .lock()
            .unwrap()
            .iter()
            .map(|(key, value)| (key.clone(), kind(value)))
            .collect()
    }

    fn update(&self, key: &MetricKey, change: impl FnOnce(&mut Value), empty: Value) {
        let mut values = self.values.lock().unwrap();
        change(values.entry(key.clone()).or_insert(empty));
    }
}

fn key_of(name: &str, labels: &[(&str, &str)]) -> MetricKey {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

/// One registered metric: writes go straight into [`Captured`].
#[derive(Debug)]
struct Handle {
    key: MetricKey,
    captured: Arc<Captured>,
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.captured.update(
            &self.key,
            |v| match v {
                Value::Counter(n) => *n += value,
                other => panic!("{:?} used as a counter and as {other:?}", self.key),
            },
            Value::Counter(0),
        );
    }

    fn absolute(&self, value: u64) {
        self.captured.update(
            &self.key,
            |v| match v {
                Value::Counter(n) => *n = (*n).max(value),
                other => panic!("{:?} used as a counter and as {other:?}", self.key),
            },
            Value::Counter(0),
        );
    }
}

impl Handle {
    fn gauge(&self, change: impl FnOnce(f64) -> f64) {
        self.captured.update(
            &self.key,
            |v| match v {
                Value::Gauge(n) => *n = change(*n),
                other => panic!("{:?} used as a gauge and as {other:?}", self.key),
            },
            Value::Gauge(0.0),
        );
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.gauge(|n| n + value);
    }

    fn decrement(&self, value: f64) {
        self.gauge(|n| n - value);
    }

    fn set(&self, value: f64) {
        self.gauge(|_| value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.captured.update(
            &self.key,
            |v| match v {
                Value::Histogram(samples) => samples.push(value),
                other => panic!("{:?} used as a histogram and as {other:?}", self.key),
            },
            Value::Histogram(Vec::new()),
        );
    }
}

/// The recorder installed for the whole test binary.
#[derive(Debug)]
struct CapturingRecorder(Arc<Captured>);

impl CapturingRecorder {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        Arc::new(Handle {
            key: key_of(key.name(), &labels),
            captured: self.0.clone(),
        })
    }
}

impl metrics::Recorder for CapturingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

/// Installs the recorder once per test binary and returns what it captures.
fn captured() -> Arc<Captured> {
    static CAPTURED: OnceLock<Arc<Captured>> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Arc::new(Captured::default());
            metrics::set_global_recorder(CapturingRecorder(captured.clone()))
                .expect("no other recorder in this test binary");
            captured
        })
        .clone()
}

/// Per shard: batches processed (each checkpointed) and user records seen.
#[derive(Debug, Default)]
struct Tally {
    batches: Mutex<BTreeMap<ShardId, usize>>,
    records: AtomicUsize,
}

/// Counts and checkpoints after every batch.
struct Counting {
    shard: ShardId,
    tally: Arc<Tally>,
}

impl RecordProcessor for Counting {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        *self
            .tally
            .batches
            .lock()
            .unwrap()
            .entry(self.shard.clone())
            .or_default() += 1;
        self.tally
            .records
            .fetch_add(input.records.len(), Ordering::SeqCst);
        Ok(())
    }
}

/// What a raw read of one shard finds.
#[derive(Debug, Default)]
struct RawShard {
    /// User records after de-aggregation.
    user_records: usize,
    /// The Kinesis records' data, aggregates counted whole.
    kinesis_bytes: usize,
    /// The data of the Kinesis records that are not KPL aggregates.
    plain_bytes: usize,
    /// The last user record's position.
    last: Option<ExtendedSequenceNumber>,
}

/// Reads every shard from TRIM_HORIZON to its tip with plain SDK calls.
async fn read_raw(local: &Local, stream: &StreamRef) -> BTreeMap<String, RawShard> {
    let mut shards = BTreeMap::new();
    for shard in read_all_raw(local, stream).await.shards {
        let mut raw = RawShard::default();
        for record in &shard.records {
            raw.kinesis_bytes += record.data.len();
            if !rkcl::kpl::has_magic(&record.data) {
                raw.plain_bytes += record.data.len();
            }
        }
        raw.user_records = shard.user_records.len();
        raw.last = shard
            .user_records
            .last()
            .map(rkcl::UserRecord::extended_sequence_number);
        assert_eq!(shard.stats.sub_records_dropped, 0);
        shards.insert(shard.shard.id.as_str().to_owned(), raw);
    }
    shards
}

const PLAIN: usize = 600;
const AGGREGATED: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reports_exact_records_bytes_leases_and_latency_samples_per_shard() {
    let captured = captured();
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "metered", 2).await;
    let store = lease_table(&local, "metered-app").await;

    // Plain records of varied, known sizes over many keys (both shards),
    // then KPL aggregates of `K:N` records.
    let plain: Vec<ProducerRecord> = (0..PLAIN)
        .map(|i| ProducerRecord::new(format!("plain-{}", i % 97), vec![b'p'; 1 + i % 300]))
        .collect();
    let plain_bytes: usize = plain.iter().map(|r| r.data.len()).sum();
    put(&kinesis, &stream, plain, Plain).await;
    put(
        &kinesis,
        &stream,
        keyed_records(50, AGGREGATED / 50, 0),
        Aggregated,
    )
    .await;
    let raw = read_raw(&local, &stream).await;
    assert_eq!(raw.len(), 2);
    assert_eq!(
        raw.values().map(|r| r.user_records).sum::<usize>(),
        PLAIN + AGGREGATED
    );
    assert_eq!(
        raw.values().map(|r| r.plain_bytes).sum::<usize>(),
        plain_bytes
    );
    assert!(
        raw.values()
            .all(|r| r.user_records > 0 && r.kinesis_bytes > r.plain_bytes)
    );

    let worker_id = "metered-worker";
    let config = SchedulerConfig::builder("metered-app", "metered")
        .worker_id(worker_id)
        .lease_duration(Duration::from_secs(2))
        // Small calls: several batches per shard, so the counters must add
        // up across batches.
        .polling(quick_polling_builder().max_records(150).build().unwrap())
        .shard_sync_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let counts = tally.clone();
    let worker = Scheduler::start(
        config,
        kinesis.clone(),
        store.clone(),
        move |shard: &ShardInfo| Counting {
            shard: shard.shard_id.clone(),
            tally: counts.clone(),
        },
    )
    .await
    .unwrap();
    eventually("every record processed", Duration::from_secs(60), || {
        let records = tally.records.load(Ordering::SeqCst);
        async move { records == PLAIN + AGGREGATED }
    })
    .await;
    eventually(
        "every shard checkpointed at its last record",
        Duration::from_secs(30),
        || {
            let (store, raw) = (&store, &raw);
            async move {
                let leases = store.list().await.unwrap();
                leases.len() == 2
                    && leases
                        .iter()
                        .all(|l| Some(&l.checkpoint) == raw[l.key.as_str()].last.as_ref())
            }
        },
    )
    .await;

    // Leases: both taken by this one worker, none lost, two held.
    let worker_label = [(catalogue::WORKER, worker_id)];
    assert_eq!(worker.held_leases().len(), 2);
    assert_eq!(
        captured.counter(catalogue::LEASES_TAKEN.name, &worker_label),
        Some(2)
    );
    assert_eq!(
        captured
            .counter(catalogue::LEASES_LOST.name, &worker_label)
            .unwrap_or(0),
        0
    );
    assert_eq!(
        captured.gauge(catalogue::LEASES_HELD.name, &worker_label),
        Some(2.0)
    );

    let batches = tally.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 2, "{batches:?}");
    assert!(batches.values().all(|&b| b > 1), "{batches:?}");
    let mut records_total = 0;
    let mut bytes_total = 0;
    for (shard, raw) in &raw {
        // An application of one stream: the stream label is empty.
        let label = [(catalogue::STREAM, ""), (catalogue::SHARD, shard.as_str())];
        // User records after de-aggregation; bytes of the Kinesis records
        // as read (an aggregate counts whole), as `ShardBatch::bytes` says.
        let records = captured.counter(catalogue::RECORDS_PROCESSED.name, &label);
        let bytes = captured.counter(catalogue::BYTES_PROCESSED.name, &label);
        assert_eq!(records, Some(raw.user_records as u64), "records of {shard}");
        assert_eq!(bytes, Some(raw.kinesis_bytes as u64), "bytes of {shard}");
        records_total += records.unwrap_or(0);
        bytes_total += bytes.unwrap_or(0);
        // One processing sample and one checkpoint sample per batch: the
        // processor checkpoints after each one and every batch moves on.
        let calls = batches[&ShardId::new(shard.as_str())];
        let processed = captured.samples(catalogue::PROCESS_SECONDS.name, &label);
        let checkpointed = captured.samples(catalogue::CHECKPOINT_SECONDS.name, &label);
        assert_eq!(processed.len(), calls, "process samples of {shard}");
        assert_eq!(checkpointed.len(), calls, "checkpoint samples of {shard}");
        for sample in processed.iter().chain(&checkpointed) {
            assert!((0.0..10.0).contains(sample), "{shard}: {sample} s");
        }
        // The reader has caught up with the tip.
        assert_eq!(
            captured.gauge(catalogue::MILLIS_BEHIND_LATEST.name, &label),
            Some(0.0)
        );
        assert_eq!(
            captured
                .counter(catalogue::PROCESS_FAILURES.name, &label)
                .unwrap_or(0),
            0
        );
    }
    assert_eq!(records_total, (PLAIN + AGGREGATED) as u64);
    assert_eq!(
        bytes_total,
        raw.values().map(|r| r.kinesis_bytes as u64).sum::<u64>()
    );
    assert!(bytes_total > plain_bytes as u64);
    // Nothing under other labels: no failures anywhere, no other shards.
    assert!(
        captured.all(catalogue::PROCESS_FAILURES.name).is_empty(),
        "{:?}",
        captured.all(catalogue::PROCESS_FAILURES.name)
    );
    assert_eq!(captured.all(catalogue::RECORDS_PROCESSED.name).len(), 2);

    let report = worker.shutdown(Duration::from_secs(10)).await;
    assert!(report.unfinished_leases.is_empty(), "{report:?}");
    // A worker that has shut down holds nothing.
    assert_eq!(
        captured.gauge(catalogue::LEASES_HELD.name, &worker_label),
        Some(0.0)
    );
    // The final checkpoints repeat the stored ones: no further samples.
    for shard in raw.keys() {
        // An application of one stream: the stream label is empty.
        let label = [(catalogue::STREAM, ""), (catalogue::SHARD, shard.as_str())];
        let calls = batches[&ShardId::new(shard.as_str())];
        assert_eq!(
            captured
                .samples(catalogue::CHECKPOINT_SECONDS.name, &label)
                .len(),
            calls
        );
    }
    // Every series emitted is in the closed catalogue, as a metric of the
    // catalogue's kind with exactly the catalogue's labels.
    for ((name, labels), kind) in captured.keys() {
        let metric = catalogue::ALL
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} is not in the catalogue"));
        let expected_kind = match metric.kind {
            catalogue::MetricKind::Counter => "counter",
            catalogue::MetricKind::Gauge => "gauge",
            catalogue::MetricKind::Histogram => "histogram",
            other => panic!("unknown kind {other:?}"),
        };
        assert_eq!(kind, expected_kind, "{name}");
        let mut names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        let mut declared = metric.labels.to_vec();
        names.sort_unstable();
        declared.sort_unstable();
        assert_eq!(names, declared, "labels of {name}");
    }
    local.shutdown().await;
}
