//! `rkcl local --faults`: a bad spec is refused naming the bad part; a good
//! one prints its seed at start and the faults it injected at SIGTERM.
//! `rkcl local --request-counts FILE` keeps FILE's counts of requests by
//! service and operation up to date, and injects no fault.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::error::ProvideErrorMetadata;

fn rkcl_local(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rkcl"));
    command
        .args(["local", "--kinesis-port", "0", "--dynamodb-port", "0"])
        .args(args);
    command
}

#[test]
fn a_bad_fault_spec_is_refused_naming_the_part() {
    let output = rkcl_local(&["--faults", "*:error=1%,kinesis.GetRecord:throttle=2%"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`kinesis.GetRecord:throttle=2%`") && stderr.contains("GetRecords"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_seed_is_printed_and_the_faults_counted() {
    let mut child = rkcl_local(&[
        "--faults",
        "kinesis.ListStreams:throttle=100%",
        "--seed",
        "5",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut head = String::new();
    while !head.contains("Press Ctrl-C") {
        assert!(stdout.read_line(&mut head).unwrap() > 0, "{head}");
    }
    assert!(head.contains("seed 5: replay with --seed 5"), "{head}");
    let endpoint = head
        .lines()
        .find_map(|line| line.strip_prefix("Kinesis:"))
        .unwrap()
        .trim()
        .to_owned();

    let client = rkcl_local::kinesis_client(&endpoint);
    let client = aws_sdk_kinesis::Client::from_conf(
        client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    for _ in 0..3 {
        let err = client.list_streams().send().await.unwrap_err();
        assert_eq!(err.code(), Some("LimitExceededException"), "{err:?}");
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut tail = String::new();
    stdout.read_to_string(&mut tail).unwrap();
    assert!(tail.contains("Faults injected (seed 5):"), "{tail}");
    assert!(tail.contains("kinesis.ListStreams throttle 3"), "{tail}");
}

#[tokio::test]
async fn request_counts_are_written_by_service_and_operation() {
    let file = std::env::temp_dir().join(format!("rkcl-requests-{}.json", std::process::id()));
    let mut child = rkcl_local(&["--request-counts", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut head = String::new();
    while !head.contains("Press Ctrl-C") {
        assert!(stdout.read_line(&mut head).unwrap() > 0, "{head}");
    }
    assert!(!head.contains("Faults:"), "{head}");
    let endpoint = |name: &str| {
        head.lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    let kinesis = rkcl_local::kinesis_client(&endpoint("Kinesis:"));
    let dynamodb = rkcl_local::dynamodb_client(&endpoint("DynamoDB:"));
    for _ in 0..3 {
        kinesis.list_streams().send().await.unwrap();
    }
    dynamodb.list_tables().send().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Ok(counts) = serde_json::from_str::<serde_json::Value>(&text)
            && counts["kinesis"]["ListStreams"] == 3
            && counts["dynamodb"]["ListTables"] == 1
        {
            break counts;
        }
        assert!(Instant::now() < deadline, "counts not written: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(counts["dynamodb"].get("ListStreams").is_none(), "{counts}");
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_file(&file).unwrap();
}
