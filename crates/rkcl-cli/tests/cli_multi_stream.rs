//! `rkcl consume` over several streams: `--stream` repeated, and
//! `--streams-file` edited while it runs; `rkcl leases` groups the table by
//! stream.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::terminate;
use rkcl::Kinesis;
use rkcl::record::ProducerRecord;
use rkcl_local::Local;
use rkcl_local::testkit::Packing::Plain;
use rkcl_local::testkit::{create_stream, eventually, put};

fn rkcl(local: &Local) -> Command {
    common::rkcl_on(local)
}

fn consume(local: &Local, app: &str, streams: &[&str]) -> Command {
    let mut command = rkcl(local);
    command
        .args(["consume", "--app", app])
        .args(streams)
        .args(["--worker-id", "w-1", "--checkpoint-every", "1"])
        .args(["--lease-duration", "2s", "--idle-interval-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

/// Starts a consumer whose stdout lines land in `lines`.
fn spawn(command: Command, lines: &Arc<Mutex<Vec<serde_json::Value>>>) -> Child {
    common::spawn_json_lines(command, lines)
}

/// The records written, by stream name.
fn per_stream(lines: &Mutex<Vec<serde_json::Value>>) -> BTreeMap<String, BTreeSet<String>> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in lines.lock().unwrap().iter() {
        seen.entry(line["stream"].as_str().unwrap().to_owned())
            .or_default()
            .insert(line["data"].as_str().unwrap().to_owned());
    }
    seen
}

fn records(stream: &str, n: usize) -> Vec<ProducerRecord> {
    (0..n)
        .map(|i| ProducerRecord::new(format!("k{i}"), format!("{stream}-{i}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_reads_every_stream_named_and_leases_groups_by_stream() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    for (name, shards) in [("cli-a", 2), ("cli-b", 1)] {
        let stream = create_stream(&kinesis, name, shards).await;
        put(&kinesis, &stream, records(name, 40), Plain).await;
    }
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut child = spawn(
        consume(
            &local,
            "cli-multi",
            &["--stream", "cli-a", "--stream", "cli-b"],
        ),
        &lines,
    );
    eventually("both streams written", Duration::from_secs(30), || {
        let lines = lines.clone();
        async move {
            let seen = per_stream(&lines);
            seen.get("cli-a").map(BTreeSet::len) == Some(40)
                && seen.get("cli-b").map(BTreeSet::len) == Some(40)
        }
    })
    .await;
    terminate(&mut child);

    let output = rkcl(&local)
        .args(["leases", "--app", "cli-multi"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let headings: Vec<&str> = text.lines().filter(|l| l.starts_with("stream ")).collect();
    assert_eq!(headings.len(), 2, "{text}");
    assert!(headings[0].contains(":cli-a:"), "{text}");
    assert!(
        headings[0].ends_with("2 leases, 0 held, 0 finished"),
        "{text}"
    );
    assert!(headings[1].contains(":cli-b:"), "{text}");
    let json = rkcl(&local)
        .args(["leases", "--app", "cli-multi", "--json"])
        .output()
        .unwrap();
    let leases: Vec<serde_json::Value> = String::from_utf8(json.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(leases.len(), 3);
    // `rkcl status` of a multi-stream table shows one stream's leases.
    let refused = rkcl(&local)
        .args(["status", "--app", "cli-multi", "--sample", "0s"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("cli-a, cli-b"), "{message}");
    let status = rkcl(&local)
        .args(["status", "--app", "cli-multi", "--stream", "cli-a"])
        .args(["--json", "--sample", "0s"])
        .output()
        .unwrap();
    assert!(status.status.success());
    let shard_lines = String::from_utf8(status.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["type"] == "shard")
        .count();
    assert_eq!(shard_lines, 2);
    for lease in &leases {
        let stream = lease["stream"].as_str().unwrap();
        assert_eq!(
            lease["lease_key"].as_str().unwrap(),
            format!("{stream}:{}", lease["shard_id"].as_str().unwrap())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_file_edited_while_running_adds_and_removes_streams() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let first = create_stream(&kinesis, "file-a", 1).await;
    let second = create_stream(&kinesis, "file-b", 1).await;
    put(&kinesis, &first, records("file-a", 20), Plain).await;
    put(&kinesis, &second, records("file-b", 20), Plain).await;
    let dir = std::env::temp_dir().join(format!("rkcl-streams-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("streams.txt");
    std::fs::write(&file, "# the streams of this test\nfile-a\n").unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut command = consume(
        &local,
        "cli-file",
        &["--streams-file", file.to_str().unwrap()],
    );
    command.args([
        "--streams-refresh",
        "1s",
        "--new-streams-from",
        "trim-horizon",
        "--delete-former-streams-after",
        "1s",
    ]);
    let mut child = spawn(command, &lines);
    eventually("file-a written", Duration::from_secs(30), || {
        let lines = lines.clone();
        async move { per_stream(&lines).get("file-a").map(BTreeSet::len) == Some(20) }
    })
    .await;
    assert!(!per_stream(&lines).contains_key("file-b"));
    // file-b added: read from its trim horizon; file-a removed: its lease
    // is released, then deleted after the wait.
    std::fs::write(&file, "file-b\n").unwrap();
    eventually("file-b written", Duration::from_secs(30), || {
        let lines = lines.clone();
        async move { per_stream(&lines).get("file-b").map(BTreeSet::len) == Some(20) }
    })
    .await;
    let store = rkcl::DynamoDbLeaseStore::new(local.dynamodb_client(), "cli-file");
    eventually("file-a's lease deleted", Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            use rkcl::leases::LeaseStore;
            let leases = store.list().await.unwrap();
            leases.len() == 1 && leases[0].key.as_str().contains(":file-b:")
        }
    })
    .await;
    terminate(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
}
