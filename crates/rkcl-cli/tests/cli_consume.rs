//! `rkcl consume`: two processes of one group share the shards, write every
//! record, stop cleanly on SIGTERM with final checkpoints and released
//! leases, and a restart resumes after what was written.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http_get, terminate};
use rkcl::{
    DynamoDbLeaseStore, ExtendedSequenceNumber, Kinesis, leases::LeaseStore, record::ProducerRecord,
};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::Aggregated;
use rkcl_local::testkit::{create_stream, eventually, put};

fn consume(local: &Local, worker: &str, reading: &[&str]) -> Command {
    let mut command = common::rkcl_on(local);
    command
        .args(["consume", "--app", "cli-group", "--stream", "orders"])
        .args(reading)
        .args(["--worker-id", worker, "--checkpoint-every", "100"])
        .args(["--lease-duration", "2s", "--idle-interval-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

/// Starts a consumer whose stdout lines land in `lines`.
fn spawn(command: Command, lines: &Arc<Mutex<Vec<serde_json::Value>>>) -> Child {
    common::spawn_json_lines(command, lines)
}

fn unique(lines: &Mutex<Vec<serde_json::Value>>) -> BTreeSet<String> {
    lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| l["data"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_share_the_shards_and_stop_cleanly_on_sigterm() {
    share_stop_and_resume(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fan_out_consumers_share_the_shards_and_stop_cleanly_on_sigterm() {
    // One stream consumer for the group (the application name), each shard
    // subscribed by the worker holding its lease.
    share_stop_and_resume(&["--retrieval", "fan-out"]).await;
}

/// Two workers share a stream, stop on SIGTERM with final checkpoints, and
/// a third resumes after what was written; `reading` chooses how.
async fn share_stop_and_resume(reading: &[&str]) {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 2).await;
    let records: Vec<ProducerRecord> = (0..2000)
        .map(|i| ProducerRecord::new(format!("key-{}", i % 50), format!("record-{i}")))
        .collect();
    put(&kinesis, &stream, records, Aggregated).await;

    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut first = spawn(consume(&local, "w1", reading), &lines);
    let mut second = spawn(consume(&local, "w2", reading), &lines);
    let deadline = Instant::now() + Duration::from_secs(60);
    while unique(&lines).len() < 2000 {
        assert!(
            Instant::now() < deadline,
            "only {} records",
            unique(&lines).len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both workers settle on one shard each, no handoff still in flight.
    let store = DynamoDbLeaseStore::new(local.dynamodb_client(), "cli-group");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leases = store.list().await.unwrap();
        let owners: BTreeSet<Option<&str>> = leases.iter().map(|l| l.owner.as_deref()).collect();
        let settled = owners == BTreeSet::from([Some("w1"), Some("w2")])
            && leases.iter().all(|l| l.checkpoint_owner.is_none());
        if settled {
            break;
        }
        assert!(Instant::now() < deadline, "never settled: {leases:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(move || {
        terminate(&mut first);
        terminate(&mut second);
    })
    .await
    .unwrap();

    // Final checkpoints at the last record written per shard; leases free.
    let written = lines.lock().unwrap().clone();
    for lease in store.list().await.unwrap() {
        assert_eq!(lease.owner, None, "{lease:?}");
        let last = written
            .iter()
            .filter(|l| l["shard_id"] == lease.key.as_str())
            .map(|l| {
                ExtendedSequenceNumber::new(
                    l["sequence_number"].as_str().unwrap().parse().unwrap(),
                    l["sub_sequence_number"].as_u64().unwrap_or(0),
                )
            })
            .max()
            .unwrap();
        assert_eq!(lease.checkpoint, last);
    }

    // A restart resumes after what was written: only new records follow.
    put(
        &kinesis,
        &stream,
        vec![ProducerRecord::new("key-1", "after-restart")],
        Aggregated,
    )
    .await;
    let again = Arc::new(Mutex::new(Vec::new()));
    let mut third = spawn(consume(&local, "w3", reading), &again);
    eventually(
        "a record after the restart",
        Duration::from_secs(30),
        || !again.lock().unwrap().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::spawn_blocking(move || terminate(&mut third))
        .await
        .unwrap();
    assert_eq!(unique(&again), BTreeSet::from(["after-restart".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_serves_its_metrics_and_health() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 2).await;
    let records: Vec<ProducerRecord> = (0..500)
        .map(|i| ProducerRecord::new(format!("key-{i}"), format!("record-{i}")))
        .collect();
    put(&kinesis, &stream, records, Aggregated).await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut command = consume(&local, "w-metrics", &[]);
    command.args(["--metrics", &format!("prometheus:{addr}")]);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut child = spawn(command, &lines);
    eventually("every record", Duration::from_secs(60), || {
        unique(&lines).len() == 500
    })
    .await;
    let ready = move || http_get(addr, "/readyz").is_some_and(|(status, _)| status == 200);
    eventually("ready", Duration::from_secs(30), ready).await;
    let (status, metrics) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let processed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("rkcl_records_processed_total{"))
        .inspect(|l| assert!(l.contains(r#"worker="w-metrics""#), "{l}"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(processed, 500.0, "{metrics}");
    assert!(
        metrics.contains("# TYPE rkcl_leases_held gauge"),
        "{metrics}"
    );
    let (status, health) = http_get(addr, "/healthz").unwrap();
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("ok loop worker"), "{health}");
    tokio::task::spawn_blocking(move || terminate(&mut child))
        .await
        .unwrap();
    assert!(
        http_get(addr, "/healthz").is_none(),
        "the listener stops with the process"
    );
}
