//! `rkcl put --aggregate` end to end: 10,000 lines into a 4-shard stream on
//! the local Kinesis, read back with raw GetRecords on every shard and
//! de-aggregated by each shard's range, all there, in per-key order.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{rkcl, run_with_stdin};
use rkcl::aws::StreamRef;
use rkcl_local::Local;
use rkcl_local::testkit::read_all_raw;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_aggregate_of_ten_thousand_lines_reads_back_in_per_key_order() {
    let local = Local::start().await.unwrap();
    let mut create = rkcl(&local);
    create.args(["stream", "create", "cli-put", "--shards", "4"]);
    let create = tokio::task::spawn_blocking(move || create.output().unwrap())
        .await
        .unwrap();
    assert!(
        create.status.success(),
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );

    let keys = 64;
    let input: String = (0..10_000)
        .map(|i| {
            let key = format!("user-{}", i % keys);
            let data = BASE64.encode(format!("{key}:{}", i / keys));
            format!("{{\"partition_key\":\"{key}\",\"data\":\"{data}\"}}\n")
        })
        .collect();
    let mut put = rkcl(&local);
    put.args([
        "put",
        "--stream",
        "cli-put",
        "--aggregate",
        "--format",
        "json",
    ]);
    let output = tokio::task::spawn_blocking(move || run_with_stdin(put, &input))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("records: 10000,"), "{stdout}");

    let stream = StreamRef::parse("cli-put");
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    for shard in read_all_raw(&local, &stream).await.shards {
        for user in shard.user_records {
            assert!(user.is_aggregated());
            let text = String::from_utf8(user.data.to_vec()).unwrap();
            let (key, n) = text.split_once(':').unwrap();
            assert_eq!(key, user.partition_key);
            let expected = next.entry(key.to_owned()).or_default();
            assert_eq!(n.parse::<usize>().unwrap(), *expected, "order of {key}");
            *expected += 1;
            total += 1;
        }
        assert_eq!(shard.stats.aggregates_dropped, 0, "{}", shard.shard.id);
    }
    assert_eq!(total, 10_000);
    assert_eq!(next.len(), keys);
    tokio::time::timeout(Duration::from_secs(10), local.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_and_a_non_zero_exit() {
    let local = Local::start().await.unwrap();
    let mut describe = rkcl(&local);
    describe.args(["stream", "describe", "missing"]);
    let output = tokio::task::spawn_blocking(move || describe.output().unwrap())
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");

    let output = run_with_stdin(
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_rkcl"));
            c.args(["kpl", "decode"]);
            c
        },
        "bm90IGFnZ3JlZ2F0ZWQ=\n%%%\n",
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("line 2"));
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 1);
}

#[test]
fn an_unreachable_endpoint_is_one_line_and_a_non_zero_exit() {
    let output = Command::new(env!("CARGO_BIN_EXE_rkcl"))
        .args(["--endpoint-url", "http://127.0.0.1:9", "stream", "list"])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("could not reach Kinesis"), "{stderr}");
}

#[test]
fn rkcl_local_prints_endpoints_that_work() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_rkcl"))
        .args(["local", "--kinesis-port", "0", "--dynamodb-port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut exports = std::collections::HashMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some((name, value)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
            exports.insert(name.to_owned(), value.to_owned());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let kinesis = exports["AWS_ENDPOINT_URL_KINESIS"].clone();
    assert!(exports["AWS_ENDPOINT_URL_DYNAMODB"].starts_with("http://127.0.0.1:"));
    let output = Command::new(env!("CARGO_BIN_EXE_rkcl"))
        .args(["stream", "create", "via-env", "--shards", "2"])
        .envs(&exports)
        .env("AWS_ENDPOINT_URL_KINESIS", &kinesis)
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("created via-env with 2 shards"));
}
