//! `rkcl multilang`: record processors written for the Java KCL's
//! MultiLangDaemon run as child processes, one per shard. A scripted child
//! covers the protocol's edge cases; the amazon-kclpy sample and an aws-kcl
//! processor run unchanged (downloaded once into the target directory; the
//! tests say so and skip when python3, node or the network is missing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use rkcl::{ExtendedSequenceNumber, Kinesis, leases::LeaseStore, record::ProducerRecord};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::Aggregated;
use rkcl_local::testkit::{create_stream, eventually, lease_table, put, put_with_positions};
use serde_json::Value;

/// The scripted child of these tests.
fn scripted_child() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/multilang/scripted_child.py")
}

/// A scratch directory of its own under the target directory.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("multilang")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn has(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A properties file for `command` on the local services, polling.
fn properties(dir: &Path, local: &Local, app: &str, command: &str, extra: &str) -> PathBuf {
    let path = dir.join("app.properties");
    let text = format!(
        "# The local services.\n\
         executableName = {command}\n\
         applicationName = {app}\n\
         streamName = orders\n\
         regionName = {region}\n\
         kinesisEndpoint = {kinesis}\n\
         dynamoDBEndpoint: {dynamodb}\n\
         AwsCredentialsProvider = DefaultCredentialsProvider\n\
         processingLanguage = python/3\n\
         initialPositionInStream = TRIM_HORIZON\n\
         idleTimeBetweenReadsInMillis = 200\n\
         failoverTimeMillis = 4000\n\
         shutdownGraceMillis = 10000\n\
         metricsLevel = NONE\n\
         {extra}\n",
        region = rkcl_local::REGION,
        kinesis = local.kinesis_endpoint(),
        dynamodb = local.dynamodb_endpoint(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `rkcl multilang` with JSON logs (the children's stderr at info) in
/// `dir/rkcl.log`.
fn multilang(dir: &Path, properties: &Path, args: &[&str], log_name: &str) -> Command {
    let log = std::fs::File::create(dir.join(log_name)).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_rkcl"));
    command
        .args(["--log-format", "json", "multilang", "-p"])
        .arg(properties)
        .args(args)
        .env("RKCL_LOG", "info")
        .env("AWS_ACCESS_KEY_ID", rkcl_local::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", rkcl_local::SECRET_ACCESS_KEY)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REGION")
        .env_remove("AWS_ENDPOINT_URL")
        .stdout(Stdio::null())
        .stderr(log);
    command
}

/// Sends SIGTERM and waits for a successful exit.
fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn terminate_async(mut child: Child) {
    tokio::task::spawn_blocking(move || terminate(&mut child))
        .await
        .unwrap();
}

/// The events the scripted children logged, by shard.
fn events(dir: &Path) -> BTreeMap<String, Vec<Value>> {
    let mut events = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            let shard = path.file_stem().unwrap().to_string_lossy().into_owned();
            let lines = std::fs::read_to_string(&path).unwrap();
            let parsed = lines
                .lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect();
            events.insert(shard, parsed);
        }
    }
    events
}

/// The data of every record the scripted children logged.
fn data_seen(dir: &Path) -> BTreeSet<String> {
    events(dir)
        .values()
        .flatten()
        .filter(|e| e["event"] == "record")
        .map(|e| {
            let data = base64::engine::general_purpose::STANDARD
                .decode(e["data"].as_str().unwrap())
                .unwrap();
            String::from_utf8(data).unwrap()
        })
        .collect()
}

fn records(count: usize, prefix: &str) -> Vec<ProducerRecord> {
    (0..count)
        .map(|i| ProducerRecord::new(format!("key-{}", i % 37), format!("{prefix}-{i}")))
        .collect()
}

fn names(count: usize, prefix: &str) -> BTreeSet<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

fn position(event: &Value) -> ExtendedSequenceNumber {
    ExtendedSequenceNumber::new(
        event["sequenceNumber"].as_str().unwrap().parse().unwrap(),
        event["subSequenceNumber"].as_u64().unwrap(),
    )
}

fn log_text(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_inside_an_aggregate_refusals_noise_and_a_final_checkpoint_on_sigterm() {
    let dir = scratch("protocol");
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 1).await;
    put(&kinesis, &stream, records(300, "agg"), Aggregated).await;
    let command = format!(
        "python3 {} {} checkpoint_in_initialize checkpoint_inside noise",
        scripted_child().display(),
        dir.display()
    );
    let properties = properties(&dir, &local, "ml-protocol", &command, "");
    let daemon = multilang(&dir, &properties, &[], "rkcl.log").spawn().unwrap();
    eventually("every record", Duration::from_secs(60), || {
        data_seen(&dir) == names(300, "agg")
    })
    .await;

    let events = events(&dir);
    let (shard, shard_events) = events.iter().next().unwrap();
    let checkpoints: Vec<&Value> = shard_events
        .iter()
        .filter(|e| e["event"] == "checkpoint")
        .collect();
    assert_eq!(checkpoints[0]["during"], "initialize");
    assert_eq!(checkpoints[0]["error"], "InvalidStateException");
    // Inside an aggregate: accepted and stored.
    assert_eq!(checkpoints[1]["subSequenceNumber"], 1);
    assert_eq!(checkpoints[1]["error"], Value::Null, "{checkpoints:?}");
    // Behind it: refused.
    assert_eq!(checkpoints[2]["subSequenceNumber"], 0);
    assert_eq!(checkpoints[2]["error"], "IllegalArgumentException");
    let store = lease_table(&local, "ml-protocol").await;
    let lease = store.list().await.unwrap().remove(0);
    assert_eq!(lease.checkpoint, position(checkpoints[1]));

    // SIGTERM: shutdownRequested, a checkpoint at the last record, the
    // lease released.
    terminate_async(daemon).await;
    let events = self::events(&dir);
    let shard_events = &events[shard];
    assert!(shard_events.iter().any(|e| e["event"] == "shutdownRequested"));
    let last = shard_events
        .iter()
        .filter(|e| e["event"] == "record")
        .map(position)
        .max()
        .unwrap();
    let lease = store.list().await.unwrap().remove(0);
    assert_eq!(lease.checkpoint, last);
    assert_eq!(lease.owner, None);
    let log = log_text(&dir, "rkcl.log");
    assert!(log.contains("metricsLevel"), "the unknown key is named");
    assert!(!log.contains("child failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_crashes_mid_batch_is_restarted_and_nothing_is_lost() {
    let dir = scratch("crash");
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 2).await;
    put_with_positions(&local, &stream, &records(200, "plain")).await;
    let command = format!(
        "python3 {} {} crash_once_at=50",
        scripted_child().display(),
        dir.display()
    );
    let properties = properties(&dir, &local, "ml-crash", &command, "");
    let daemon = multilang(&dir, &properties, &[], "rkcl.log").spawn().unwrap();
    eventually("every record", Duration::from_secs(60), || {
        data_seen(&dir) == names(200, "plain")
    })
    .await;
    assert!(dir.join("crash.once").exists(), "a child crashed");
    let log = log_text(&dir, "rkcl.log");
    assert!(
        log.contains("the child failed and was killed") && log.contains("exit status: 3"),
        "{log}"
    );
    // The restarted child was initialized at the stored checkpoint.
    let initializations: usize = events(&dir)
        .values()
        .flatten()
        .filter(|e| e["event"] == "initialize")
        .count();
    assert_eq!(initializations, 3);
    terminate_async(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_never_answers_is_timed_out_and_restarted() {
    let dir = scratch("hang");
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 1).await;
    put_with_positions(&local, &stream, &records(50, "slow")).await;
    let command = format!(
        "python3 {} {} hang_once",
        scripted_child().display(),
        dir.display()
    );
    let properties = properties(&dir, &local, "ml-hang", &command, "timeoutInSeconds = 2");
    let started = Instant::now();
    let daemon = multilang(&dir, &properties, &[], "rkcl.log").spawn().unwrap();
    eventually("every record", Duration::from_secs(60), || {
        data_seen(&dir) == names(50, "slow")
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    let log = log_text(&dir, "rkcl.log");
    assert!(log.contains("did not answer processRecords within 2s"), "{log}");
    terminate_async(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_child_failure_exit_ends_the_daemon_with_an_error() {
    let dir = scratch("exit");
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 1).await;
    put_with_positions(&local, &stream, &records(20, "fatal")).await;
    let command = format!(
        "python3 {} {} crash_once_at=5",
        scripted_child().display(),
        dir.display()
    );
    let properties = properties(&dir, &local, "ml-exit", &command, "");
    let mut daemon = multilang(&dir, &properties, &["--on-child-failure", "exit"], "rkcl.log")
        .spawn()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = daemon.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        events(&dir)
            .values()
            .flatten()
            .filter(|e| e["event"] == "initialize")
            .count(),
        1,
        "no restart"
    );
}

#[test]
fn a_missing_key_is_one_error_line() {
    let dir = scratch("missing");
    let path = dir.join("bad.properties");
    std::fs::write(&path, "applicationName = app\nstreamName = orders\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_rkcl"))
        .args(["multilang", "--properties"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("executableName"), "{stderr}");
}
