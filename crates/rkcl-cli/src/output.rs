//! Writing to stdout: one line at a time, and a closed pipe (`| head`) is a
//! quiet end, not an error.

use std::io::Write;

use anyhow::Context;
use serde::Serialize;

/// Writes one JSON line; `false` when the reader has gone (closed pipe).
pub(crate) fn write_json_line(out: &mut dyn Write, value: &impl Serialize) -> anyhow::Result<bool> {
    let text = serde_json::to_string(value).context("could not encode JSON")?;
    write_line(out, &text)
}

/// Writes one line; `false` when the reader has gone (closed pipe).
pub(crate) fn write_line(out: &mut dyn Write, text: &str) -> anyhow::Result<bool> {
    match writeln!(out, "{text}") {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(err).context("could not write to stdout"),
    }
}

/// Writes `bytes` whole; `false` when the reader has gone (closed pipe).
pub(crate) fn write_bytes(out: &mut dyn Write, bytes: &[u8]) -> anyhow::Result<bool> {
    match out.write_all(bytes) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(err).context("could not write to stdout"),
    }
}

/// Flushes; `false` when the reader has gone (closed pipe).
pub(crate) fn flush(out: &mut dyn Write) -> anyhow::Result<bool> {
    match out.flush() {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(err).context("could not write to stdout"),
    }
}
