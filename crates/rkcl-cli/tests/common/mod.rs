//! Helpers shared by the command's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rkcl_local::Local;

/// The `rkcl` binary, pointed at the local Kinesis with its credentials.
pub fn rkcl(local: &Local) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rkcl"));
    command
        .arg("--endpoint-url")
        .arg(local.kinesis_endpoint())
        .env("AWS_REGION", rkcl_local::REGION)
        .env("AWS_ACCESS_KEY_ID", rkcl_local::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", rkcl_local::SECRET_ACCESS_KEY)
        .env_remove("AWS_PROFILE");
    command
}

/// The `rkcl` binary, pointed at both local services (Kinesis and
/// DynamoDB) through the standard endpoint variables, with their
/// credentials.
pub fn rkcl_on(local: &Local) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rkcl"));
    command
        .env("AWS_ENDPOINT_URL_KINESIS", local.kinesis_endpoint())
        .env("AWS_ENDPOINT_URL_DYNAMODB", local.dynamodb_endpoint())
        .env("AWS_REGION", rkcl_local::REGION)
        .env("AWS_ACCESS_KEY_ID", rkcl_local::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", rkcl_local::SECRET_ACCESS_KEY)
        .env_remove("AWS_PROFILE");
    command
}

/// Starts `command` with its stdout piped; every line, read as JSON, lands
/// in `lines`.
pub fn spawn_json_lines(
    mut command: Command,
    lines: &std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) -> Child {
    use std::io::BufRead;
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            lines
                .lock()
                .unwrap()
                .push(serde_json::from_str(&line).unwrap());
        }
    });
    child
}

/// Runs `command` with `stdin` as its input.
pub fn run_with_stdin(mut command: Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_owned();
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    output
}

/// Sends SIGTERM and waits (up to 30 s) for a successful exit.
pub fn terminate(child: &mut Child) {
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

/// `GET path` on `addr`: status and body, or `None` while nothing listens.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}
