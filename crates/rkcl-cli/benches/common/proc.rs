//! What the benches read of their child processes (`/proc`) and how they
//! run helper commands; included by each bench with `#[path]`.
// Each bench uses some of these.
#![allow(dead_code)]

use std::process::Command;

/// Points `command` at the local Kinesis and DynamoDB of `local` through the
/// standard endpoint variables, with their credentials, and without the
/// caller's profile.
pub(crate) fn with_local_env(command: &mut Command, local: &rkcl_local::Local) {
    command
        .env("AWS_ENDPOINT_URL_KINESIS", local.kinesis_endpoint())
        .env("AWS_ENDPOINT_URL_DYNAMODB", local.dynamodb_endpoint())
        .env("AWS_REGION", rkcl_local::REGION)
        .env("AWS_ACCESS_KEY_ID", rkcl_local::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", rkcl_local::SECRET_ACCESS_KEY)
        .env_remove("AWS_PROFILE");
}

/// A value in kB from `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`,
/// `Threads:`), while the process exists.
pub(crate) fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU seconds of a process (all its threads) so far.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the whole line, in clock
    // ticks; USER_HZ is 100 on Linux.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Runs `command`, returning its stdout or why it failed.
pub(crate) fn run_command(command: &mut Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|err| format!("could not run {command:?}: {err}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        Err(format!(
            "{command:?} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }
}
