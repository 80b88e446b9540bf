//! `rkcl multilang`: record processors written for the Java KCL's
//! MultiLangDaemon run as child processes, one per shard. A scripted child
//! covers the protocol's edge cases; the amazon-kclpy sample and an aws-kcl
//! processor run unchanged (downloaded once into the target directory; the
//! tests say so and skip when python3, node or the network is missing).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::terminate;
use rkcl::{ExtendedSequenceNumber, Kinesis, leases::LeaseStore, record::ProducerRecord};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::Aggregated;
use rkcl_local::testkit::{create_stream, eventually, lease_table, put, put_with_positions, split};
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

/// A scripted child's test: a scratch directory `name`, local services
/// with a stream `orders` of `shards` shards holding `count` records named
/// `prefix-N`, and the properties of application `ml-NAME` running the
/// scripted child in `mode`, with `extra` properties.
async fn scripted(
    name: &str,
    shards: u32,
    count: usize,
    prefix: &str,
    mode: &str,
    extra: &str,
) -> (PathBuf, Local, PathBuf) {
    let dir = scratch(name);
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", shards).await;
    put_with_positions(&local, &stream, &records(count, prefix)).await;
    let command = format!(
        "python3 {} {} {mode}",
        scripted_child().display(),
        dir.display()
    );
    let properties = properties(&dir, &local, &format!("ml-{name}"), &command, extra);
    (dir, local, properties)
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

/// A daemon killed when dropped, so a failed test leaves no process behind.
struct Daemon(Option<Child>);

impl Daemon {
    fn spawn(command: &mut Command) -> Self {
        Self(Some(command.spawn().unwrap()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn terminate_async(mut daemon: Daemon) {
    let mut child = daemon.0.take().unwrap();
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
    let daemon = Daemon::spawn(&mut multilang(&dir, &properties, &[], "rkcl.log"));
    // The checkpoints of the first batch follow its records.
    let checkpoint_events = |dir: &Path| {
        events(dir)
            .values()
            .flatten()
            .filter(|e| e["event"] == "checkpoint")
            .count()
    };
    eventually(
        "every record and three checkpoints",
        Duration::from_secs(60),
        || data_seen(&dir) == names(300, "agg") && checkpoint_events(&dir) == 3,
    )
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
    assert!(
        shard_events
            .iter()
            .any(|e| e["event"] == "shutdownRequested")
    );
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
    let (dir, _local, properties) =
        scripted("crash", 2, 200, "plain", "crash_once_at=50", "").await;
    let daemon = Daemon::spawn(&mut multilang(&dir, &properties, &[], "rkcl.log"));
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
    let (dir, _local, properties) =
        scripted("hang", 1, 50, "slow", "hang_once", "timeoutInSeconds = 2").await;
    let started = Instant::now();
    let daemon = Daemon::spawn(&mut multilang(&dir, &properties, &[], "rkcl.log"));
    eventually("every record", Duration::from_secs(60), || {
        data_seen(&dir) == names(50, "slow")
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    let log = log_text(&dir, "rkcl.log");
    assert!(
        log.contains("did not answer processRecords within 2s"),
        "{log}"
    );
    terminate_async(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_answers_with_the_wrong_status_is_restarted() {
    let (dir, _local, properties) =
        scripted("wrong", 1, 30, "status", "wrong_status_once", "").await;
    let daemon = Daemon::spawn(&mut multilang(&dir, &properties, &[], "rkcl.log"));
    eventually(
        "every record, twice delivered",
        Duration::from_secs(60),
        || {
            let initializations = events(&dir)
                .values()
                .flatten()
                .filter(|e| e["event"] == "initialize")
                .count();
            data_seen(&dir) == names(30, "status") && initializations == 2
        },
    )
    .await;
    let log = log_text(&dir, "rkcl.log");
    assert!(
        log.contains(r#"the child answered processRecords with a status for \"initialize\""#),
        "{log}"
    );
    terminate_async(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_child_failure_exit_ends_the_daemon_with_an_error() {
    let (dir, _local, properties) = scripted("exit", 1, 20, "fatal", "crash_once_at=5", "").await;
    let mut daemon = Daemon::spawn(&mut multilang(
        &dir,
        &properties,
        &["--on-child-failure", "exit"],
        "rkcl.log",
    ));
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = daemon.0.as_mut().unwrap().try_wait().unwrap() {
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

/// Where downloads are kept between runs.
fn cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("multilang-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn skip(what: &str) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("SKIPPED: {what}");
    }
}

fn run_quietly(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The extracted amazon-kclpy 3.2.0 sdist (its Python package needs none of
/// the jars its setup.py would fetch), downloaded once; `None` without
/// python3 or the network.
fn kclpy_sdist() -> Option<PathBuf> {
    let root = cache().join("amazon_kclpy-3.2.0");
    if root.join("samples/sample_kclpy_app.py").exists() {
        return Some(root);
    }
    if !has("python3") {
        skip("python3 is not installed");
        return None;
    }
    let download = cache().join("pip");
    let fetched = run_quietly(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--no-binary", ":all:"])
            // Without a network, give up in seconds rather than minutes.
            .args(["--timeout", "20", "--retries", "1"])
            .args(["amazon_kclpy==3.2.0", "-d"])
            .arg(&download),
    ) && run_quietly(
        Command::new("tar")
            .arg("xzf")
            .arg(download.join("amazon_kclpy-3.2.0.tar.gz"))
            .arg("-C")
            .arg(cache()),
    );
    if fetched && root.join("samples/sample_kclpy_app.py").exists() {
        Some(root)
    } else {
        skip("the amazon_kclpy 3.2.0 sdist could not be downloaded from PyPI");
        None
    }
}

/// A directory with aws-kcl 2.3.2 installed from npm, once; `None` without
/// node or the network.
fn aws_kcl() -> Option<PathBuf> {
    let root = cache().join("node");
    if root.join("node_modules/aws-kcl/package.json").exists() {
        return Some(root);
    }
    if !has("node") || !has("npm") {
        skip("node or npm is not installed");
        return None;
    }
    std::fs::create_dir_all(&root).unwrap();
    let installed = run_quietly(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .args([
                "--fetch-retries",
                "1",
                "--fetch-timeout",
                "20000",
                "--prefix",
            ])
            .arg(&root)
            .arg("aws-kcl@2.3.2"),
    );
    if installed && root.join("node_modules/aws-kcl/package.json").exists() {
        Some(root)
    } else {
        skip("aws-kcl 2.3.2 could not be installed from npm");
        None
    }
}

/// The sequence numbers the kclpy sample logged ("Sequence Number: N") on
/// its stderr, from rkcl's JSON log, by shard.
fn kclpy_processed(dir: &Path, log: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut text: BTreeMap<String, String> = BTreeMap::new();
    for line in log_text(dir, log).lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if event["target"] != "rkcl::multilang::stderr" {
            continue;
        }
        let shard = event["fields"]["shard_id"].as_str().unwrap().to_owned();
        let message = event["fields"]["message"].as_str().unwrap();
        text.entry(shard).or_default().push_str(message);
    }
    text.into_iter()
        .map(|(shard, text)| {
            let sequences = text
                .split("Sequence Number: ")
                .skip(1)
                .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect())
                .collect();
            (shard, sequences)
        })
        .collect()
}

fn all_sequences(processed: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    processed.values().flatten().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amazon_kclpy_sample_runs_unchanged_checkpoints_and_resumes() {
    let Some(sdist) = kclpy_sdist() else { return };
    let dir = scratch("kclpy");
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 4).await;
    let written = put_with_positions(&local, &stream, &records(400, "py")).await;
    let command = format!(
        "python3 {}",
        sdist.join("samples/sample_kclpy_app.py").display()
    );
    let properties = properties(&dir, &local, "ml-kclpy", &command, "");
    let daemon = Daemon::spawn(
        multilang(&dir, &properties, &[], "first.log")
            .env("PYTHONPATH", &sdist)
            .env("PYTHONUNBUFFERED", "1"),
    );
    let expected: BTreeSet<String> = written
        .iter()
        .map(|p| p.sequence_number.to_string())
        .collect();
    eventually(
        "the sample logs every record",
        Duration::from_secs(60),
        || all_sequences(&kclpy_processed(&dir, "first.log")) == expected,
    )
    .await;
    assert_eq!(kclpy_processed(&dir, "first.log").len(), 4, "four children");

    // A split while it reads: the parent's child gets shardEnded (the
    // sample checkpoints SHARD_END), its children's children take over.
    let parent = kinesis.list_shards(&stream).await.unwrap().remove(0);
    split(&local, &stream, &parent, None).await;
    let more = put_with_positions(&local, &stream, &records(200, "py-split")).await;
    let children: BTreeSet<&str> = more
        .iter()
        .map(|p| p.shard_id.as_str())
        .filter(|id| written.iter().all(|p| p.shard_id.as_str() != *id))
        .collect();
    assert_eq!(children.len(), 2, "records in both children");
    let expected: BTreeSet<String> = expected
        .into_iter()
        .chain(more.iter().map(|p| p.sequence_number.to_string()))
        .collect();
    eventually(
        "every record, after the split too",
        Duration::from_secs(60),
        || all_sequences(&kclpy_processed(&dir, "first.log")) == expected,
    )
    .await;

    // SIGTERM: shutdownRequested, the sample's checkpoint() lands at the
    // last record of each open shard, the leases are released.
    terminate_async(daemon).await;
    let store = lease_table(&local, "ml-kclpy").await;
    let leases = store.list().await.unwrap();
    assert!(leases.len() >= 5, "{leases:?}");
    for lease in &leases {
        if lease.key.as_str() == parent.id.as_str() {
            assert_eq!(lease.checkpoint, ExtendedSequenceNumber::ShardEnd);
            continue;
        }
        let last = written
            .iter()
            .chain(&more)
            .filter(|p| p.shard_id.as_str() == lease.key.as_str())
            .map(|p| ExtendedSequenceNumber::new(p.sequence_number.clone(), 0))
            .max()
            .unwrap();
        assert_eq!(lease.checkpoint, last, "{lease:?}");
        assert_eq!(lease.owner, None);
    }

    // A restart resumes there: only the new records are processed.
    let after = put_with_positions(&local, &stream, &records(40, "py-after")).await;
    let daemon = Daemon::spawn(
        multilang(&dir, &properties, &[], "second.log")
            .env("PYTHONPATH", &sdist)
            .env("PYTHONUNBUFFERED", "1"),
    );
    let expected_after: BTreeSet<String> = after
        .iter()
        .map(|p| p.sequence_number.to_string())
        .collect();
    eventually("the new records", Duration::from_secs(60), || {
        all_sequences(&kclpy_processed(&dir, "second.log")).is_superset(&expected_after)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    terminate_async(daemon).await;
    assert_eq!(
        all_sequences(&kclpy_processed(&dir, "second.log")),
        expected_after,
        "nothing before the checkpoints again"
    );
}

/// An aws-kcl processor: each record's data to `<out>/<shard>.jsonl`, a
/// checkpoint at the batch's last sequence number (aws-kcl sends no
/// sub-sequence number), and `checkpoint()` at shutdown and shard end.
const NODE_PROCESSOR: &str = r"
const kcl = require('aws-kcl');
const fs = require('fs');
const path = require('path');
const out = process.argv[2];
let shardId = 'unknown';
kcl({
  initialize: function (input, done) { shardId = input.shardId; done(); },
  processRecords: function (input, done) {
    const lines = input.records.map(function (r) {
      return JSON.stringify({ event: 'record', sequenceNumber: r.sequenceNumber,
        subSequenceNumber: r.subSequenceNumber, data: r.data }) + '\n';
    }).join('');
    fs.appendFileSync(path.join(out, shardId + '.jsonl'), lines);
    const last = input.records[input.records.length - 1].sequenceNumber;
    input.checkpointer.checkpoint(last, function (err) {
      fs.appendFileSync(path.join(out, shardId + '.jsonl'),
        JSON.stringify({ event: 'checkpoint', error: err || null }) + '\n');
      done();
    });
  },
  leaseLost: function (input, done) { done(); },
  shardEnded: function (input, done) { input.checkpointer.checkpoint(function () { done(); }); },
  shutdownRequested: function (input, done) { input.checkpointer.checkpoint(function () { done(); }); },
}).run();
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_kcl_processor_runs_checkpoints_and_resumes() {
    let Some(node_root) = aws_kcl() else { return };
    let dir = scratch("node");
    let script = node_root.join("processor.js");
    std::fs::write(&script, NODE_PROCESSOR).unwrap();
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 4).await;
    let written = put_with_positions(&local, &stream, &records(400, "js")).await;
    let command = format!("node {} {}", script.display(), dir.display());
    let properties = properties(&dir, &local, "ml-node", &command, "");
    let daemon = Daemon::spawn(&mut multilang(&dir, &properties, &[], "first.log"));
    // Each batch's checkpoint answer is logged after its records.
    let answered = |dir: &Path| {
        let events = events(dir);
        events.len() == 4
            && events.values().all(|shard| {
                shard
                    .last()
                    .is_some_and(|last| last["event"] == "checkpoint")
            })
    };
    eventually(
        "every record, answered checkpoints",
        Duration::from_secs(60),
        || data_seen(&dir) == names(400, "js") && answered(&dir),
    )
    .await;
    let events = events(&dir);
    assert_eq!(events.len(), 4, "four children");
    let checkpoint_errors: Vec<&Value> = events
        .values()
        .flatten()
        .filter(|e| e["event"] == "checkpoint")
        .map(|e| &e["error"])
        .collect();
    assert!(!checkpoint_errors.is_empty());
    assert!(
        checkpoint_errors.iter().all(|e| e.is_null()),
        "{checkpoint_errors:?}"
    );

    // A split while it reads: the parent's child gets shardEnded and
    // checkpoints SHARD_END; the new shards' children take over.
    let parent = kinesis.list_shards(&stream).await.unwrap().remove(0);
    split(&local, &stream, &parent, None).await;
    let more = put_with_positions(&local, &stream, &records(200, "js-split")).await;
    let children: BTreeSet<&str> = more
        .iter()
        .map(|p| p.shard_id.as_str())
        .filter(|id| written.iter().all(|p| p.shard_id.as_str() != *id))
        .collect();
    assert_eq!(children.len(), 2, "records in both children");
    let everything: BTreeSet<String> = names(400, "js")
        .into_iter()
        .chain(names(200, "js-split"))
        .collect();
    eventually(
        "every record, after the split too",
        Duration::from_secs(60),
        || data_seen(&dir) == everything,
    )
    .await;

    terminate_async(daemon).await;
    let store = lease_table(&local, "ml-node").await;
    for lease in store.list().await.unwrap() {
        if lease.key.as_str() == parent.id.as_str() {
            assert_eq!(lease.checkpoint, ExtendedSequenceNumber::ShardEnd);
            continue;
        }
        let last = written
            .iter()
            .chain(&more)
            .filter(|p| p.shard_id.as_str() == lease.key.as_str())
            .map(|p| ExtendedSequenceNumber::new(p.sequence_number.clone(), 0))
            .max()
            .unwrap();
        assert_eq!(lease.checkpoint, last, "{lease:?}");
        assert_eq!(lease.owner, None);
    }

    // A restart resumes after the checkpoints.
    for file in std::fs::read_dir(&dir).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            std::fs::remove_file(path).unwrap();
        }
    }
    put_with_positions(&local, &stream, &records(40, "js-after")).await;
    let daemon = Daemon::spawn(&mut multilang(&dir, &properties, &[], "second.log"));
    eventually("the new records", Duration::from_secs(60), || {
        data_seen(&dir).is_superset(&names(40, "js-after"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    terminate_async(daemon).await;
    assert_eq!(data_seen(&dir), names(40, "js-after"));
}
