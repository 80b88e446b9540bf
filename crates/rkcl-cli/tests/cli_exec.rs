//! `rkcl consume --exec`: a Lambda-style Node.js handler (tests/exec/)
//! gets every record exactly once across a worker restart; a poison record
//! is bisected out to the on-failure file; `batchItemFailures` resumes at
//! the named record; per-lane processes are restarted after a crash.
//!
//! Skipped, with a message, when `node` is not installed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rkcl::{Kinesis, record::ProducerRecord};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::Plain;
use rkcl_local::testkit::{create_stream, put, put_with_positions};

fn node_missing() -> bool {
    let found = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        println!("skipped: node is not installed");
    }
    !found
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rkcl-cli-exec-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The handler command: the runner around tests/exec/handler.js.
fn handler_command(per_lane: bool) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/exec");
    let runner = dir.join("runner.js");
    let handler = dir.join("handler.js");
    let mut command = format!("node '{}' '{}'", runner.display(), handler.display());
    if per_lane {
        command.push_str(" --per-lane");
    }
    command
}

/// `rkcl consume --exec` for the group `app` with the handler's files in
/// `dir`, logging to `dir/WORKER.log`.
fn consume(local: &Local, dir: &Path, worker: &str, args: &[&str]) -> Command {
    let per_lane = args.windows(2).any(|w| w == ["--exec-mode", "per-lane"]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_rkcl"));
    command
        .args(["consume", "--app", "exec-group", "--stream", "orders"])
        .args(["--worker-id", worker, "--exec", &handler_command(per_lane)])
        .args(["--lease-duration", "2s", "--idle-interval-ms", "200"])
        .args(args)
        .env("AWS_ENDPOINT_URL_KINESIS", local.kinesis_endpoint())
        .env("AWS_ENDPOINT_URL_DYNAMODB", local.dynamodb_endpoint())
        .env("AWS_REGION", rkcl_local::REGION)
        .env("AWS_ACCESS_KEY_ID", rkcl_local::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", rkcl_local::SECRET_ACCESS_KEY)
        .env_remove("AWS_PROFILE")
        .env("RKCL_LOG", "info")
        .env("OUT", dir.join("out.txt"))
        .env("SEEN", dir.join("seen.txt"))
        .env("MARKER", dir.join("marker"))
        .env("PIDS", dir.join("pids.txt"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{worker}.log"))).unwrap());
    command
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The logs of every worker in `dir`, for a failed assertion.
fn logs(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            text.push_str(&format!("--- {}\n", path.display()));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

/// Waits until `condition`, failing with the workers' logs after `timeout`.
async fn wait_for(what: &str, dir: &Path, timeout: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            logs(dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then a clean exit within 30 s.
async fn terminate(mut child: Child) {
    tokio::task::spawn_blocking(move || common::terminate(&mut child))
        .await
        .unwrap();
}

/// How often each line appears.
fn counts(lines: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        *counts.entry(line.as_str()).or_insert(0) += 1;
    }
    counts
}

fn records(n: usize, keys: usize) -> Vec<ProducerRecord> {
    (0..n)
        .map(|i| ProducerRecord::new(format!("key-{}", i % keys), format!("record-{i}")))
        .collect()
}

fn expected(n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("record-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_handled_once_across_a_worker_restart() {
    if node_missing() {
        return;
    }
    let dir = scratch("restart");
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 2).await;
    put(&kinesis, &stream, records(10_000, 100), Plain).await;
    let out = dir.join("out.txt");
    let args = [
        "--batch-size",
        "250",
        "--batching-window",
        "50ms",
        "--checkpoint-every",
        "500",
    ];

    // The first worker handles part of the stream, then stops on SIGTERM
    // with checkpoints of what its handler finished.
    let first = consume(&local, &dir, "w1", &args).spawn().unwrap();
    wait_for("a first part", &dir, Duration::from_secs(60), || {
        read_lines(&out).len() >= 2_000
    })
    .await;
    terminate(first).await;
    let before_restart = read_lines(&out).len();

    // A new process resumes after the checkpoints.
    let second = consume(&local, &dir, "w2", &args).spawn().unwrap();
    wait_for("every record", &dir, Duration::from_secs(120), || {
        read_lines(&out).len() >= 10_000
    })
    .await;
    // Time for a duplicate to show, had a batch been sent twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    terminate(second).await;

    let lines = read_lines(&out);
    let duplicates: Vec<_> = counts(&lines).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(duplicates.is_empty(), "handled twice: {duplicates:?}");
    assert_eq!(lines.len(), 10_000);
    assert_eq!(lines.into_iter().collect::<BTreeSet<_>>(), expected(10_000));
    assert!(
        before_restart < 10_000,
        "the first worker did everything ({before_restart}): no restart was tested"
    );
    assert!(
        std::fs::read_to_string(dir.join("w2.log"))
            .unwrap()
            .contains("consuming with a handler")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_bisected_out_to_the_on_failure_file() {
    if node_missing() {
        return;
    }
    let dir = scratch("poison");
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 1).await;
    let positions = put_with_positions(&local, &stream, &records(300, 10)).await;
    let poison = positions.get(137).unwrap();
    let out = dir.join("out.txt");
    let failures = dir.join("failures.jsonl");
    let failures_arg = failures.to_str().unwrap();
    let mut command = consume(
        &local,
        &dir,
        "w1",
        &[
            "--batch-size",
            "64",
            "--batching-window",
            "200ms",
            "--bisect-on-error",
            "--retries",
            "1",
            "--on-failure",
            failures_arg,
        ],
    );
    command.env("POISON", "record-137");
    let worker = command.spawn().unwrap();
    wait_for(
        "every other record and the failure",
        &dir,
        Duration::from_secs(60),
        || read_lines(&out).len() >= 299 && !read_lines(&failures).is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    terminate(worker).await;

    let lines = read_lines(&out);
    let mut others = expected(300);
    others.remove("record-137");
    assert_eq!(lines.len(), 299, "each other record once");
    assert_eq!(lines.into_iter().collect::<BTreeSet<_>>(), others);
    let failures = read_lines(&failures);
    assert_eq!(failures.len(), 1, "{failures:?}");
    let failure: serde_json::Value = serde_json::from_str(failures.first().unwrap()).unwrap();
    let info = &failure["KinesisBatchInfo"];
    assert_eq!(info["batchSize"], 1, "{failure}");
    assert_eq!(info["shardId"], poison.shard_id.as_str());
    assert_eq!(
        info["startSequenceNumber"],
        poison.sequence_number.to_string()
    );
    assert_eq!(
        info["endSequenceNumber"],
        poison.sequence_number.to_string()
    );
    assert!(
        info["approximateArrivalOfFirstRecord"].is_string(),
        "{failure}"
    );
    assert!(
        info["streamArn"]
            .as_str()
            .unwrap()
            .ends_with(":stream/orders"),
        "{failure}"
    );
    assert_eq!(
        failure["requestContext"]["condition"],
        "RetryAttemptsExhausted"
    );
    assert_eq!(failure["requestContext"]["approximateInvokeCount"], 2);
    assert!(
        !failures.first().unwrap().contains("record-137"),
        "no payloads in the failure line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_item_failures_resume_at_the_named_record() {
    if node_missing() {
        return;
    }
    let dir = scratch("partial");
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 1).await;
    put(&kinesis, &stream, records(100, 7), Plain).await;
    let (out, seen) = (dir.join("out.txt"), dir.join("seen.txt"));
    let mut command = consume(
        &local,
        &dir,
        "w1",
        &["--batch-size", "30", "--batching-window", "1s"],
    );
    command.env("FAIL_ONCE", "record-40");
    let worker = command.spawn().unwrap();
    wait_for("every record", &dir, Duration::from_secs(60), || {
        read_lines(&out).len() >= 100
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    terminate(worker).await;

    let lines = read_lines(&out);
    assert_eq!(lines.len(), 100, "each record once");
    assert_eq!(lines.into_iter().collect::<BTreeSet<_>>(), expected(100));
    // What each call was sent, in order (one shard, one lane).
    let calls: Vec<Vec<String>> = read_lines(&seen)
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let named = "record-40".to_owned();
    let failed_call = calls.iter().position(|c| c.contains(&named)).unwrap();
    let failed = calls.get(failed_call).unwrap();
    let at = failed.iter().position(|d| *d == named).unwrap();
    assert!(at > 0, "record-40 should not open its batch: {failed:?}");
    // The retry is the named record and those after it, nothing before.
    let retry = calls.get(failed_call + 1).unwrap();
    assert_eq!(retry.as_slice(), failed.get(at..).unwrap());
    let sent: Vec<&String> = calls.iter().flatten().collect();
    for data in failed.get(..at).unwrap() {
        assert_eq!(
            sent.iter().filter(|d| **d == data).count(),
            1,
            "{data} sent again"
        );
    }
    for data in failed.get(at..).unwrap() {
        assert_eq!(sent.iter().filter(|d| **d == data).count(), 2, "{data}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_lane_handlers_are_restarted_after_a_crash() {
    if node_missing() {
        return;
    }
    let dir = scratch("per-lane");
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 2).await;
    put(&kinesis, &stream, records(2_000, 50), Plain).await;
    let out = dir.join("out.txt");
    let mut command = consume(
        &local,
        &dir,
        "w1",
        &[
            "--exec-mode",
            "per-lane",
            "--parallelization-factor",
            "2",
            "--batch-size",
            "50",
            "--batching-window",
            "50ms",
        ],
    );
    command.env("CRASH_ONCE", "record-777");
    let worker = command.spawn().unwrap();
    wait_for("every record", &dir, Duration::from_secs(60), || {
        read_lines(&out).len() >= 2_000
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    terminate(worker).await;

    let lines = read_lines(&out);
    assert_eq!(lines.len(), 2_000, "each record once");
    assert_eq!(lines.into_iter().collect::<BTreeSet<_>>(), expected(2_000));
    assert!(dir.join("marker").exists(), "the handler never crashed");
    // Long-running: a few processes (two shards, two lanes each, and the
    // one that replaced the crashed), not one per batch.
    let pids = read_lines(&dir.join("pids.txt"));
    assert!(
        (2..=5).contains(&pids.len()),
        "{} handler processes: {pids:?}",
        pids.len()
    );
    let log = std::fs::read_to_string(dir.join("w1.log")).unwrap();
    assert!(log.contains("the lane's handler process failed"), "{log}");
    // The handler's stderr is logged with the shard's id.
    assert!(
        log.lines()
            .any(|l| l.contains("rkcl::exec::stderr") && l.contains("shardId-")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_worker_reports_its_readiness() {
    if node_missing() {
        return;
    }
    let dir = scratch("ready");
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orders", 2).await;
    put(&kinesis, &stream, records(200, 10), Plain).await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let metrics = format!("prometheus:{addr}");
    let worker = consume(&local, &dir, "w1", &["--metrics", &metrics])
        .spawn()
        .unwrap();
    let out = dir.join("out.txt");
    wait_for("every record", &dir, Duration::from_secs(60), || {
        read_lines(&out).len() >= 200
    })
    .await;
    // The Stream API's worker feeds /readyz as the scheduler's does.
    wait_for("ready", &dir, Duration::from_secs(30), || {
        common::http_get(addr, "/readyz").is_some_and(|(status, _)| status == 200)
    })
    .await;
    assert_eq!(
        common::http_get(addr, "/healthz").map(|(s, _)| s),
        Some(200)
    );
    terminate(worker).await;
}
