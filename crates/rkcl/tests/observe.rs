//! Seeing a worker from outside, on the local Kinesis and DynamoDB:
//! `/metrics` scraped during a real consumption and parsed as Prometheus
//! text, `/healthz` and `/readyz`, and the stalled-shard watchdog with a
//! processor that hangs, a reader behind injected hangs and a child whose
//! parent never finishes.
//!
//! One process-wide recorder serves every test here (a process has one);
//! the tests tell their series apart by worker id.
#![cfg(feature = "prometheus")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{key_and_number, keyed_records, quick_polling_builder};
use rkcl::observe::{MetricsRegistry, Sample, SampleValue, Telemetry};
use rkcl::watchdog::{StallAction, WatchdogConfig};
use rkcl::{
    Checkpointer, Kinesis, ProcessRecordsInput, ProcessorError, RecordProcessor, Scheduler,
    SchedulerConfig, ShardInfo,
    leases::{Lease, LeaseStore},
};
use rkcl_local::testkit::Packing::Plain;
use rkcl_local::testkit::{create_stream, eventually, lease_table, put, split};
use rkcl_local::{FaultPlan, Local};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The process's registry, installed once.
fn registry() -> &'static MetricsRegistry {
    static REGISTRY: OnceLock<MetricsRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry = MetricsRegistry::new();
        metrics::set_global_recorder(registry.clone()).expect("the only recorder");
        rkcl::metrics::describe_all();
        registry
    })
}

/// The value of counter or gauge `name` of worker `worker` summed over its
/// other labels (a metric labelled by shard is summed over shards).
fn value(samples: &[Sample], name: &str, label: (&str, &str)) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && s.label(label.0) == Some(label.1))
        .map(|s| match &s.value {
            SampleValue::Counter(n) => *n as f64,
            SampleValue::Gauge(v) => *v,
            SampleValue::Histogram(h) => h.count as f64,
        })
        .sum()
}

/// An HTTP/1.1 GET of `path`: status and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    // The listener may answer chunked.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

/// Counts records (and their keys and numbers) and checkpoints each batch.
#[derive(Clone, Default)]
struct Counting {
    seen: Arc<Mutex<Vec<(usize, usize)>>>,
}

impl RecordProcessor for Counting {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        self.seen
            .lock()
            .unwrap()
            .extend(input.records.iter().map(|r| key_and_number(&r.data)));
        checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, checkpointer: &Checkpointer) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        Ok(())
    }
}

fn config(app: &str, stream: &str, worker: &str, watchdog: WatchdogConfig) -> SchedulerConfig {
    SchedulerConfig::builder(app, stream)
        .worker_id(worker)
        .lease_duration(Duration::from_secs(2))
        .polling(quick_polling_builder().build().unwrap())
        .shard_sync_interval(Duration::from_secs(1))
        .parent_poll_interval(Duration::from_millis(100))
        .watchdog(watchdog)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_prometheus_format_and_health_follows_the_worker() {
    let registry = registry();
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "scraped", 2).await;
    let store = lease_table(&local, "scraped-app").await;
    let records = keyed_records(8, 250, 0);
    put(&kinesis, &stream, records.clone(), Plain).await;

    let telemetry = Telemetry::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .start(registry.clone())
        .await
        .unwrap();
    let addr = telemetry.local_addr().unwrap();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "no worker yet: {body}");
    assert_eq!(get(addr, "/healthz").await.0, 200);

    let processor = Counting::default();
    let seen = processor.seen.clone();
    let scheduler = Scheduler::start(
        config(
            "scraped-app",
            "scraped",
            "scraped-w",
            WatchdogConfig::default(),
        ),
        kinesis.clone(),
        store,
        move |_: &ShardInfo| processor.clone(),
    )
    .await
    .unwrap();
    telemetry.watch(scheduler.health());
    eventually("every record", Duration::from_secs(30), || {
        seen.lock().unwrap().len() >= records.len()
    })
    .await;
    eventually("ready", Duration::from_secs(10), || async {
        get(addr, "/readyz").await.0 == 200
    })
    .await;
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ok loop lease renewer"), "{body}");
    assert!(body.contains("ok loop worker"), "{body}");

    // Scrape and parse with an independent Prometheus text parser.
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
    let delivered = seen.lock().unwrap().len() as f64;
    let mut processed = 0.0;
    let mut shards = BTreeSet::new();
    for sample in &scrape.samples {
        if sample.metric == "rkcl_records_processed_total"
            && let prometheus_parse::Value::Counter(n) = sample.value
        {
            processed += n;
            shards.insert(sample.labels.get("shard").unwrap().to_owned());
        }
    }
    assert_eq!(
        processed, delivered,
        "records counted equal records delivered"
    );
    assert_eq!(shards.len(), 2, "one series per shard: {shards:?}");
    let held: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "rkcl_leases_held" && s.labels.get("worker") == Some("scraped-w"))
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(held, [2.0]);
    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == "rkcl_process_seconds")
        .expect("the processing-time histogram");
    let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
        panic!("{histogram:?}");
    };
    assert_eq!(buckets.len(), rkcl::observe::BUCKETS.len() + 1);
    // Every metric of the catalogue that polling emits, with its help
    // text and its labels.
    for metric in [
        &rkcl::metrics::RECORDS_PROCESSED,
        &rkcl::metrics::BYTES_PROCESSED,
        &rkcl::metrics::MILLIS_BEHIND_LATEST,
        &rkcl::metrics::PROCESS_SECONDS,
        &rkcl::metrics::CHECKPOINT_SECONDS,
        &rkcl::metrics::LEASES_TAKEN,
        &rkcl::metrics::LEASES_HELD,
        &rkcl::metrics::SHARDS_STALLED,
    ] {
        let exposed = match metric.kind {
            rkcl::metrics::MetricKind::Counter => format!("{}_total", metric.name),
            _ => metric.name.to_owned(),
        };
        assert!(
            scrape
                .docs
                .get(&exposed)
                .is_some_and(|doc| doc == metric.description),
            "no help text for {exposed}"
        );
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == exposed)
            .unwrap_or_else(|| panic!("no {exposed}"));
        for label in metric.labels {
            assert!(
                sample.labels.get(label).is_some(),
                "{exposed} without {label}"
            );
        }
    }

    let shutdown = tokio::spawn(scheduler.shutdown(Duration::from_secs(10)));
    eventually(
        "not ready while stopping",
        Duration::from_secs(10),
        || async { get(addr, "/readyz").await.0 == 503 },
    )
    .await;
    shutdown.await.unwrap();
    telemetry.shutdown().await;
}

/// Blocks forever in its first `process_records` of each instance, unless
/// told to pass.
#[derive(Clone, Default)]
struct Hanging {
    instances: Arc<AtomicUsize>,
}

impl RecordProcessor for Hanging {
    async fn process_records(
        &mut self,
        _: &ProcessRecordsInput,
        _: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_that_never_returns_is_reported_and_its_lease_released() {
    let registry = registry();
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "hanging", 1).await;
    let store = lease_table(&local, "hanging-app").await;
    put(&kinesis, &stream, keyed_records(1, 5, 0), Plain).await;

    let processor = Hanging::default();
    let instances = processor.instances.clone();
    let watchdog = WatchdogConfig::builder()
        .check_interval(Duration::from_millis(100))
        .processor_timeout(Duration::from_millis(800))
        .on_stalled_processor(StallAction::ReleaseLease)
        .build()
        .unwrap();
    let scheduler = Scheduler::start(
        config("hanging-app", "hanging", "hanging-w", watchdog),
        kinesis.clone(),
        store.clone(),
        move |_: &ShardInfo| {
            processor.instances.fetch_add(1, Ordering::SeqCst);
            processor.clone()
        },
    )
    .await
    .unwrap();
    let worker = ("worker", "hanging-w");
    // Reported within its threshold (and the check interval)...
    eventually("a release", Duration::from_secs(10), || {
        value(&registry.snapshot(), "rkcl_stall_actions", worker) >= 1.0
    })
    .await;
    // ...and the shard started again from its checkpoint: a new processor,
    // which hangs too and is released again.
    eventually("the shard taken again", Duration::from_secs(15), || {
        instances.load(Ordering::SeqCst) >= 2
    })
    .await;
    eventually("a second release", Duration::from_secs(15), || {
        value(&registry.snapshot(), "rkcl_stall_actions", worker) >= 2.0
    })
    .await;
    let lease: Lease = store.list().await.unwrap().remove(0);
    assert!(
        lease.counter >= 3,
        "taken, released, taken again: counter {}",
        lease.counter
    );
    assert_eq!(
        lease.checkpoint,
        rkcl::ExtendedSequenceNumber::TrimHorizon,
        "nothing checkpointed: nothing was processed"
    );
    scheduler.shutdown(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_injected_hangs_is_restarted_and_nothing_is_lost() {
    let registry = registry();
    // Every GetRecords waits up to 2.5 s; the watchdog restarts a reader
    // silent for 1 s.
    let local = Local::builder()
        .faults(FaultPlan::parse("kinesis.GetRecords:latency=0..2500ms").unwrap())
        .fault_seed(3)
        .start()
        .await
        .unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "slow-reads", 2).await;
    let store = lease_table(&local, "slow-app").await;
    let records = keyed_records(4, 100, 0);
    put(&kinesis, &stream, records.clone(), Plain).await;

    let watchdog = WatchdogConfig::builder()
        .check_interval(Duration::from_millis(100))
        .reader_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let processor = Counting::default();
    let seen = processor.seen.clone();
    let polling = quick_polling_builder().max_records(50).build().unwrap();
    let mut config = config("slow-app", "slow-reads", "slow-w", watchdog);
    config.retrieval = rkcl::retrieval::Retrieval::Polling(polling);
    let scheduler = Scheduler::start(config, kinesis.clone(), store, move |_: &ShardInfo| {
        processor.clone()
    })
    .await
    .unwrap();
    let worker = ("worker", "slow-w");
    eventually("a reader restarted", Duration::from_secs(30), || {
        value(&registry.snapshot(), "rkcl_stall_actions", worker) >= 1.0
    })
    .await;
    eventually("every record", Duration::from_secs(60), || {
        seen.lock().unwrap().iter().collect::<BTreeSet<_>>().len() == records.len()
    })
    .await;
    // At least once, and in order per key: a restarted reader starts after
    // the last record delivered.
    let seen = seen.lock().unwrap().clone();
    let mut last: BTreeMap<usize, usize> = BTreeMap::new();
    for (key, number) in &seen {
        if let Some(previous) = last.insert(*key, *number) {
            assert!(*number > previous, "key {key}: {number} after {previous}");
        }
    }
    scheduler.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_whose_parent_never_finishes_is_reported_stalled() {
    let registry = registry();
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orphans", 1).await;
    let store = lease_table(&local, "orphans-app").await;
    let parent = kinesis.list_shards(&stream).await.unwrap().remove(0);
    split(&local, &stream, &parent, None).await;

    // The leases as a shard sync writes them: the parent, and the children
    // naming it.
    let shards = kinesis.list_shards(&stream).await.unwrap();
    for shard in &shards {
        let mut lease = Lease::new(
            rkcl::model::LeaseKey::for_shard(&shard.id),
            rkcl::ExtendedSequenceNumber::TrimHorizon,
        );
        lease.parent_shard_ids = shard.parents().cloned().collect();
        lease.hash_key_range = Some(shard.hash_key_range);
        assert!(store.create_if_absent(&lease).await.unwrap());
    }
    assert_eq!(shards.len(), 3);
    // Another worker holds the parent and never finishes it: a test task
    // keeps its lease alive.
    let parent_key = rkcl::model::LeaseKey::for_shard(&parent.id);
    let ghost_store = store.clone();
    let ghost = tokio::spawn(async move {
        loop {
            if let Ok(Some(lease)) = ghost_store.get(&parent_key).await {
                let _ = if lease.owner.as_deref() == Some("ghost") {
                    ghost_store.renew(&lease).await
                } else {
                    ghost_store.take(&lease, "ghost").await
                };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let worker = "orphans-w";
    let watchdog = WatchdogConfig::builder()
        .check_interval(Duration::from_millis(100))
        .parents_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let scheduler_config = config("orphans-app", "orphans", worker, watchdog);
    eventually(
        "the ghost holds the parent",
        Duration::from_secs(5),
        || async {
            store
                .get(&rkcl::model::LeaseKey::for_shard(&parent.id))
                .await
                .unwrap()
                .is_some_and(|l| l.owner.as_deref() == Some("ghost"))
        },
    )
    .await;
    let scheduler = Scheduler::start(scheduler_config, kinesis.clone(), store, |_: &ShardInfo| {
        Counting::default()
    })
    .await
    .unwrap();
    let health = scheduler.health();
    eventually(
        "the children stalled on their parent",
        Duration::from_secs(20),
        || {
            let samples = registry.snapshot();
            samples.iter().any(|s| {
                s.name == "rkcl_shards_stalled"
                    && s.label("worker") == Some(worker)
                    && s.label("cause") == Some("parents")
                    && s.value == SampleValue::Gauge(2.0)
            })
        },
    )
    .await;
    let readiness = health.readiness();
    assert!(!readiness.ok, "{readiness}");
    assert!(
        readiness.to_string().contains("FAIL stalled shards: 2"),
        "{readiness}"
    );
    ghost.abort();
    scheduler.shutdown(Duration::from_secs(5)).await;
}
