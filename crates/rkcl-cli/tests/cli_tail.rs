//! `rkcl tail` end to end on the local Kinesis.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::rkcl;
use rkcl::{Kinesis, aws::StreamRef, record::ProducerRecord};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::{Aggregated, Plain};
use rkcl_local::testkit::{create_stream, merge, put, split};

/// Puts `record-I` with key `key-(I % 500)` for each I of each range, packed
/// as its range says.
async fn put_numbered<const N: usize>(
    kinesis: &Kinesis,
    stream: &StreamRef,
    ranges: [(rkcl_local::testkit::Packing, std::ops::Range<usize>); N],
) {
    for (packing, range) in ranges {
        let batch: Vec<ProducerRecord> = range
            .map(|i| ProducerRecord::new(format!("key-{}", i % 500), format!("record-{i}")))
            .collect();
        put(kinesis, stream, batch, packing).await;
    }
}

async fn stream_with_records(local: &Local, name: &str, shards: u32, records: usize) -> StreamRef {
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, name, shards).await;
    let half = records / 2;
    put_numbered(
        &kinesis,
        &stream,
        [(Plain, 0..half), (Aggregated, half..records)],
    )
    .await;
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_trim_horizon_outputs_every_record_once_in_shard_order() {
    let local = Local::start().await.unwrap();
    stream_with_records(&local, "tail-all", 4, 50_000).await;

    let mut tail = rkcl(&local);
    tail.args([
        "tail",
        "--stream",
        "tail-all",
        "--from",
        "trim-horizon",
        "--exit-at-end",
    ]);
    let output = tokio::task::spawn_blocking(move || tail.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut seen = HashSet::new();
    let mut last_per_shard: HashMap<String, (rkcl::SequenceNumber, u64)> = HashMap::new();
    let mut aggregated = 0;
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(json["stream"], "tail-all");
        assert!(
            json["approximate_arrival_timestamp"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        let data = json["data"].as_str().unwrap().to_owned();
        let i: usize = data.strip_prefix("record-").unwrap().parse().unwrap();
        assert_eq!(json["partition_key"], format!("key-{}", i % 500));
        assert!(seen.insert(i), "record {i} twice");
        let shard = json["shard_id"].as_str().unwrap().to_owned();
        let position = (
            json["sequence_number"].as_str().unwrap().parse().unwrap(),
            json["sub_sequence_number"].as_u64().unwrap_or(0),
        );
        if json["sub_sequence_number"].is_u64() {
            aggregated += 1;
        }
        if let Some(last) = last_per_shard.get(&shard) {
            assert!(&position > last, "out of order in {shard}");
        }
        last_per_shard.insert(shard, position);
    }
    assert_eq!(seen.len(), 50_000);
    assert_eq!(aggregated, 25_000);
    assert_eq!(last_per_shard.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_and_max_records_end_tail_quietly() {
    let local = Local::start().await.unwrap();
    stream_with_records(&local, "tail-head", 2, 2_000).await;

    let mut tail = rkcl(&local);
    tail.args([
        "tail",
        "--stream",
        "tail-head",
        "--from",
        "trim-horizon",
        "--max-records",
        "25",
        "--data",
        "base64",
    ]);
    let output = tokio::task::spawn_blocking(move || tail.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 25);

    // Like `| head -3`: read three lines, then close the pipe.
    let mut tail = rkcl(&local);
    tail.args(["tail", "--stream", "tail-head", "--from", "trim-horizon"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let status = tokio::task::spawn_blocking(move || {
        let mut child = tail.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines: Vec<String> = BufReader::new(stdout)
            .lines()
            .take(3)
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.len(), 3);
        // The reader is gone: the next write fails and tail ends.
        let output = child.wait_with_output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{}", status.1);
    assert!(status.1.is_empty(), "{}", status.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_exit_at_end_reads_the_children_of_a_stream_resharded_before_it_is_read() {
    let local = Local::start().await.unwrap();
    let stream = stream_with_records(&local, "tail-resharded", 4, 8_000).await;
    let kinesis = Kinesis::new(local.kinesis_client());
    let shards = kinesis.list_shards(&stream).await.unwrap();
    split(&local, &stream, &shards[0], None).await;
    merge(&local, &stream, &shards[2], &shards[3]).await;
    // More records, plain and aggregated, land in the three children.
    put_numbered(
        &kinesis,
        &stream,
        [(Plain, 8_000..11_000), (Aggregated, 11_000..14_000)],
    )
    .await;

    let mut tail = rkcl(&local);
    tail.args([
        "tail",
        "--stream",
        "tail-resharded",
        "--from",
        "trim-horizon",
        "--exit-at-end",
    ]);
    let output = tokio::task::spawn_blocking(move || tail.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut seen = HashSet::new();
    let mut last_per_key: HashMap<String, usize> = HashMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        let data = json["data"].as_str().unwrap();
        let i: usize = data.strip_prefix("record-").unwrap().parse().unwrap();
        assert!(seen.insert(i), "record {i} twice");
        let key = json["partition_key"].as_str().unwrap().to_owned();
        if let Some(&before) = last_per_key.get(&key) {
            assert!(before < i, "key {key}: record {i} after {before}");
        }
        last_per_key.insert(key, i);
    }
    assert_eq!(seen.len(), 14_000, "every record, children included");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_with_fan_out_reads_every_record_through_a_stream_consumer() {
    let local = Local::start().await.unwrap();
    stream_with_records(&local, "tail-fanout", 2, 6_000).await;
    let mut tail = rkcl(&local);
    tail.args([
        "tail",
        "--stream",
        "tail-fanout",
        "--from",
        "trim-horizon",
        "--exit-at-end",
        "--retrieval",
        "fan-out",
        "--consumer-name",
        "tail-fanout-reader",
    ]);
    let output = tokio::task::spawn_blocking(move || tail.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut seen = HashSet::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        let i: usize = json["data"]
            .as_str()
            .unwrap()
            .strip_prefix("record-")
            .unwrap()
            .parse()
            .unwrap();
        assert!(seen.insert(i), "record {i} twice");
    }
    assert_eq!(seen.len(), 6_000);

    // The consumer the reader registered, and one registered and
    // deregistered by hand.
    let list = |json: bool| {
        let mut command = rkcl(&local);
        command.args(["stream", "consumers", "tail-fanout"]);
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    };
    let names = |output: std::process::Output| -> Vec<(String, String)> {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| {
                let json: serde_json::Value = serde_json::from_str(line).unwrap();
                (
                    json["name"].as_str().unwrap().to_owned(),
                    json["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        names(list(true)),
        [("tail-fanout-reader".to_owned(), "ACTIVE".to_owned())]
    );
    let registered = rkcl(&local)
        .args([
            "stream",
            "consumers",
            "tail-fanout",
            "--register",
            "by-hand",
        ])
        .output()
        .unwrap();
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    assert!(String::from_utf8_lossy(&registered.stdout).contains("registered by-hand (active)"));
    let mut listed = names(list(true));
    listed.sort();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0], ("by-hand".to_owned(), "ACTIVE".to_owned()));
    let table = String::from_utf8(list(false).stdout).unwrap();
    assert!(table.starts_with("CONSUMER"), "{table}");
    let deregistered = rkcl(&local)
        .args([
            "stream",
            "consumers",
            "tail-fanout",
            "--deregister",
            "by-hand",
        ])
        .output()
        .unwrap();
    assert!(
        deregistered.status.success(),
        "{}",
        String::from_utf8_lossy(&deregistered.stderr)
    );
    let missing = rkcl(&local)
        .args([
            "stream",
            "consumers",
            "tail-fanout",
            "--deregister",
            "nobody",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no consumer nobody"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
