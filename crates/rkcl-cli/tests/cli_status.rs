//! `rkcl status` on the local Kinesis and DynamoDB: a group of two workers
//! on a three-shard stream, one shard held behind; the lag reported is what
//! was written and not checkpointed, both owners show, and after the group
//! stops, a shard without a lease and a lease of a gone shard show too.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rkcl::{
    Checkpointer, DynamoDbLeaseStore, ExtendedSequenceNumber, Kinesis, ProcessRecordsInput,
    ProcessorError, RecordProcessor, Scheduler, SchedulerConfig, ShardId, ShardInfo,
    leases::{Lease, LeaseStore},
    record::ProducerRecord,
    retrieval::PollingConfig,
};
use rkcl_local::Local;
use rkcl_local::testkit::{create_stream, eventually, lease_key, lease_table, put_with_positions};
use serde_json::Value;

/// The application, and the stream named after it (the default of
/// `--stream`).
const APP: &str = "orders";

fn rkcl(local: &Local) -> Command {
    common::rkcl_on(local)
}

async fn run(local: &Local, args: &[&str]) -> Output {
    let mut command = rkcl(local);
    command.arg("status").args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// `rkcl status --json` with `args`: the shard objects by shard id, and the
/// summary.
async fn status_json(local: &Local, args: &[&str]) -> (HashMap<String, Value>, Value) {
    let mut all = vec!["--app", APP, "--json"];
    all.extend_from_slice(args);
    let output = run(local, &all).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = lines.pop().unwrap();
    assert_eq!(summary["type"], "summary", "{summary}");
    let shards = lines
        .into_iter()
        .map(|l| {
            assert_eq!(l["type"], "shard", "{l}");
            let key = l["lease_key"]
                .as_str()
                .or(l["shard_id"].as_str())
                .unwrap()
                .to_owned();
            (key, l)
        })
        .collect();
    (shards, summary)
}

/// What the processors share: records delivered per shard, and whether
/// the held shard still checkpoints.
#[derive(Default)]
struct Shared {
    delivered: Mutex<HashMap<ShardId, usize>>,
    hold: AtomicBool,
}

/// Checkpoints after every batch, except on `held` once `hold` is set.
struct Processor {
    shard: ShardId,
    held: ShardId,
    shared: Arc<Shared>,
}

impl Processor {
    fn checkpoints(&self) -> bool {
        self.shard != self.held || !self.shared.hold.load(Ordering::SeqCst)
    }
}

impl RecordProcessor for Processor {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        *self
            .shared
            .delivered
            .lock()
            .unwrap()
            .entry(self.shard.clone())
            .or_default() += input.records.len();
        if self.checkpoints() {
            checkpointer.checkpoint().await?;
        }
        Ok(())
    }

    async fn shutdown_requested(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        if self.checkpoints() {
            checkpointer.checkpoint().await?;
        }
        Ok(())
    }
}

async fn worker(
    local: &Local,
    store: &DynamoDbLeaseStore,
    id: &str,
    held: &ShardId,
    shared: &Arc<Shared>,
) -> Scheduler {
    let config = SchedulerConfig::builder(APP, APP)
        .worker_id(id)
        .lease_duration(Duration::from_secs(2))
        .polling(
            PollingConfig::builder()
                .idle_interval(Duration::from_millis(200))
                .build()
                .unwrap(),
        )
        .shard_sync_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let (held, shared) = (held.clone(), shared.clone());
    Scheduler::start(
        config,
        Kinesis::new(local.kinesis_client()),
        store.clone(),
        move |shard: &ShardInfo| Processor {
            shard: shard.shard_id.clone(),
            held: held.clone(),
            shared: shared.clone(),
        },
    )
    .await
    .unwrap()
}

/// `count` records that all land in `shard`.
fn records_for(shard: &rkcl::shards::Shard, tag: &str, count: usize) -> Vec<ProducerRecord> {
    let key = shard.hash_key_range.start().as_u128().to_string();
    (0..count)
        .map(|n| ProducerRecord {
            explicit_hash_key: Some(key.clone()),
            ..ProducerRecord::new(format!("{tag}-{n}"), format!("{tag}:{n}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_the_lag_of_a_group_and_its_odd_shards() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, APP, 3).await;
    let store = lease_table(&local, APP).await;
    let shards = kinesis.list_shards(&stream).await.unwrap();
    let held = shards[1].id.clone();
    let shared = Arc::new(Shared::default());
    let a = worker(&local, &store, "worker-a", &held, &shared).await;
    let b = worker(&local, &store, "worker-b", &held, &shared).await;

    // Everything written first is read and checkpointed on every shard.
    let mut first = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        first.extend(records_for(shard, &format!("first{i}"), 5));
    }
    let positions = put_with_positions(&local, &stream, &first).await;
    let last_of = |shard: &ShardId| {
        positions
            .iter()
            .rfind(|p| &p.shard_id == shard)
            .unwrap()
            .sequence_number
            .clone()
    };
    eventually(
        "every shard checkpointed, two owners",
        Duration::from_secs(30),
        || async {
            let leases = store.list().await.unwrap();
            let owners: BTreeSet<_> = leases.iter().filter_map(|l| l.owner.clone()).collect();
            owners.len() == 2
                && leases.len() == 3
                && leases
                    .iter()
                    .all(|l| l.checkpoint.sequence_number() == Some(&last_of(&l.shard_id())))
        },
    )
    .await;

    // Then the held shard stops checkpointing and gets 25 more records,
    // which its worker reads but does not checkpoint.
    shared.hold.store(true, Ordering::SeqCst);
    let written = Instant::now();
    put_with_positions(&local, &stream, &records_for(&shards[1], "behind", 25)).await;
    eventually("the held shard read", Duration::from_secs(20), || {
        let delivered = shared.delivered.lock().unwrap().get(&held).copied();
        async move { delivered == Some(30) }
    })
    .await;
    // Arrival times have whole seconds here: wait so the time behind shows.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let (lags, summary) = status_json(&local, &["--sample", "2s"]).await;
    let elapsed = written.elapsed();
    assert_eq!(lags.len(), 3, "{lags:?}");
    let behind = &lags[held.as_str()];
    assert_eq!(behind["records_behind"], 25, "{behind}");
    assert_eq!(behind["records_behind_more"], false);
    assert_eq!(behind["state"], "owned");
    assert_eq!(behind["checkpoint"], last_of(&held).to_string());
    let time_behind = behind["time_behind_ms"].as_u64().unwrap();
    assert!(
        (1_000..=u64::try_from(elapsed.as_millis()).unwrap() + 1_000).contains(&time_behind),
        "{time_behind} ms behind, written {elapsed:?} ago"
    );
    let mut owners = BTreeSet::new();
    for lag in lags.values() {
        owners.insert(lag["owner"].as_str().unwrap().to_owned());
        assert_eq!(lag["shard_open"], true);
        assert_eq!(lag["parent_shard_ids"], serde_json::json!([]));
        // Leases of 2 s are renewed every 0.67 s: seen within the sample.
        assert_eq!(lag["renewed_ago_bound"], "at_most", "{lag}");
        assert!(lag["renewed_ago_ms"].as_u64().unwrap() < 2_500, "{lag}");
        if lag["shard_id"] != held.as_str() {
            assert_eq!(lag["records_behind"], 0, "{lag}");
            assert_eq!(lag["time_behind_ms"], 0, "{lag}");
        }
    }
    assert_eq!(
        owners,
        BTreeSet::from(["worker-a".into(), "worker-b".into()])
    );
    assert_eq!(summary["records_behind"], 25);
    assert_eq!(summary["shards"], 3);
    assert_eq!(summary["leases"], 3);
    assert_eq!(summary["shards_without_lease"], 0);
    let workers = summary["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{summary}");
    let holder = workers
        .iter()
        .find(|w| w["worker"] == behind["owner"])
        .unwrap();
    assert_eq!(holder["records_behind"], 25);
    assert_eq!(
        workers
            .iter()
            .map(|w| w["leases"].as_u64().unwrap())
            .sum::<u64>(),
        3
    );

    // A bounded read reports a lower bound.
    let (lags, summary) = status_json(&local, &["--sample", "0s", "--max-records", "10"]).await;
    assert_eq!(lags[held.as_str()]["records_behind"], 10);
    assert_eq!(lags[held.as_str()]["records_behind_more"], true);
    assert_eq!(summary["records_behind_more"], true);

    // The table names both workers and the lag.
    let output = run(&local, &["--app", APP, "--sample", "0s"]).await;
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.contains("worker-a") && table.contains("worker-b"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with(held.as_str()))
        .unwrap();
    assert!(row.split_whitespace().any(|cell| cell == "25"), "{row}");

    // The group stops; the held shard keeps its lag. One shard loses its
    // lease, and a lease of a shard that is gone appears.
    a.shutdown(Duration::from_secs(10)).await;
    b.shutdown(Duration::from_secs(10)).await;
    let unleased = &shards[2].id;
    let lease = store
        .get(&lease_key(unleased.as_str()))
        .await
        .unwrap()
        .unwrap();
    assert!(store.delete(&lease).await.unwrap());
    store
        .create_if_absent(&Lease::new(
            lease_key("shardId-000000000099"),
            ExtendedSequenceNumber::TrimHorizon,
        ))
        .await
        .unwrap();
    let (lags, summary) = status_json(&local, &["--sample", "1s"]).await;
    assert_eq!(lags.len(), 4, "{lags:?}");
    assert_eq!(lags[unleased.as_str()]["state"], "no-lease");
    assert_eq!(lags[unleased.as_str()]["records_behind"], Value::Null);
    assert_eq!(lags["shardId-000000000099"]["state"], "shard-gone");
    assert_eq!(lags["shardId-000000000099"]["shard_open"], Value::Null);
    let behind = &lags[held.as_str()];
    assert_eq!(behind["records_behind"], 25);
    assert_eq!(behind["owner"], Value::Null);
    // Released leases are not renewed: their counters stand still.
    assert_eq!(behind["renewed_ago_bound"], "at_least", "{behind}");
    assert!(
        behind["renewed_ago_ms"].as_u64().unwrap() >= 900,
        "{behind}"
    );
    assert_eq!(summary["shards_without_lease"], 1);
    assert_eq!(summary["leases_of_gone_shards"], 1);
    assert_eq!(summary["workers"].as_array().unwrap().len(), 1, "{summary}");
    assert_eq!(summary["workers"][0]["worker"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tables_and_streams_are_one_line_errors() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    create_stream(&kinesis, APP, 1).await;

    let output = run(&local, &["--app", "no-such-app", "--stream", APP]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no lease table \"no-such-app\""),
        "{stderr}"
    );

    let output = run(&local, &["--app", APP, "--stream", "missing"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no stream \"missing\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_refreshes_until_sigterm() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    create_stream(&kinesis, APP, 2).await;
    lease_table(&local, APP).await;

    let mut command = rkcl(&local);
    command
        .args(["status", "--app", APP, "--watch", "200ms", "--sample", "0s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                lines.lock().unwrap().push(line.unwrap());
            }
        })
    };
    let frames = |lines: &Mutex<Vec<String>>| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("WORKER"))
            .count()
    };
    eventually("three refreshes", Duration::from_secs(20), || async {
        frames(&lines) >= 3
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    // Not a terminal: no escape codes; each refresh after the first starts
    // after a blank line, with the two shards without a lease.
    assert!(lines.iter().all(|l| !l.contains('\x1b')));
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("app orders"))
        .collect();
    assert!(starts.len() >= 3, "{lines:?}");
    for &start in &starts[1..] {
        assert_eq!(lines[start - 1], "", "{lines:?}");
    }
    assert_eq!(
        lines.iter().filter(|l| l.contains("no-lease")).count(),
        2 * starts.len(),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("2 shards, 0 leases")));
}
