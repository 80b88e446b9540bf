//! Helpers shared by the command's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

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
