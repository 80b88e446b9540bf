//! Runs the handler command on batches: a process per batch (as Lambda
//! starts an invocation), or a long-running process per lane fed one event
//! per line.
//!
//! The handler's stderr is logged under the shard's id (target
//! `rkcl::exec::stderr`); events and responses are never logged, since
//! they hold payloads.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rkcl::ShardId;
use rkcl::stream::{Batch, BatchError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::task::JoinHandle;

use super::event::{Event, EventSource, Outcome, read_response};
use crate::multilang::{EXIT_GRACE, Piped, StderrTarget};

/// How the handler command is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ExecMode {
    /// A new process per batch: the event on its stdin (then closed), the
    /// response (if any) as the last line of its stdout, success or failure
    /// by its exit status.
    PerBatch,
    /// A process per lane (a shard, or a lane of a shard with
    /// `--parallelization-factor` above 1), kept running: one event per line
    /// on its stdin, one response per line on its stdout. A process that
    /// exits or times out is replaced by a new one for the retry.
    PerLane,
}

/// The handler command and how to run it; shared by every lane.
#[derive(Debug)]
pub(crate) struct Handlers {
    /// The program and its arguments.
    command: Vec<String>,
    mode: ExecMode,
    /// The longest one batch may take before its process is killed.
    timeout: Option<Duration>,
    source: EventSource,
    /// Per-lane processes waiting for their lane's next batch, by shard.
    /// Never locked across an `.await`. The processes of a shard whose
    /// lease this worker lost stay idle here until the worker stops (the
    /// library does not say when a shard's lanes end).
    idle: Mutex<HashMap<ShardId, Vec<LaneProcess>>>,
}

/// Why one call of the handler failed (no payloads in these words).
type CallError = String;

impl Handlers {
    pub(crate) fn new(
        command: Vec<String>,
        mode: ExecMode,
        timeout: Option<Duration>,
        source: EventSource,
    ) -> Self {
        Self {
            command,
            mode,
            timeout,
            source,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Handles one batch: the handler's verdict for the library's failure
    /// policy.
    pub(crate) async fn handle(&self, batch: Batch) -> Result<(), BatchError> {
        let shard_id = &batch.shard.shard_id;
        let line = Event::new(&self.source, shard_id.as_str(), &batch.records)
            .to_line()
            .map_err(|err| BatchError::Failed(err.into()))?;
        let response = match self.mode {
            ExecMode::PerBatch => self.call_once(shard_id, &line).await,
            ExecMode::PerLane => self.call_lane(shard_id, &line).await,
        };
        let response = response.map_err(|err| BatchError::Failed(err.into()))?;
        match read_response(&response, &batch.records) {
            Outcome::Success => Ok(()),
            Outcome::FailedFrom(0) => Err(BatchError::Failed(
                "batchItemFailures names the batch's first record".into(),
            )),
            Outcome::FailedFrom(first_failed) => Err(BatchError::Partial {
                first_failed,
                error: "batchItemFailures names a record of the batch".into(),
            }),
            Outcome::Failed(reason) => Err(BatchError::Failed(reason.into())),
        }
    }

    fn spawn(&self, shard_id: &ShardId) -> Result<Piped, CallError> {
        let env = [("RKCL_SHARD_ID", shard_id.as_str())];
        Piped::spawn(&self.command, &env, shard_id, StderrTarget::Exec)
            .map_err(|err| format!("could not start the handler: {err}"))
    }

    async fn limited<T>(
        &self,
        call: impl Future<Output = Result<T, CallError>>,
    ) -> Result<T, CallError> {
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or_else(|_| Err(format!("the handler took longer than {limit:?}"))),
            None => call.await,
        }
    }

    /// A process for this batch alone; the response is the last non-empty
    /// line of its stdout.
    async fn call_once(&self, shard_id: &ShardId, line: &[u8]) -> Result<String, CallError> {
        let Piped {
            mut child,
            mut stdin,
            stdout,
            stderr,
        } = self.spawn(shard_id)?;
        // The child is killed when this future is dropped (a timeout):
        // `kill_on_drop`.
        let result = self
            .limited(async {
                let write = async move {
                    let written = stdin.write_all(line).await;
                    drop(stdin);
                    written
                };
                let read = async {
                    let mut lines = BufReader::new(stdout).lines();
                    let mut last = String::new();
                    while let Some(line) = lines.next_line().await? {
                        if !line.trim().is_empty() {
                            last = line;
                        }
                    }
                    Ok::<_, std::io::Error>(last)
                };
                let (written, read) = tokio::join!(write, read);
                let status = child
                    .wait()
                    .await
                    .map_err(|err| format!("could not wait for the handler: {err}"))?;
                if !status.success() {
                    return Err(format!("the handler exited with {status}"));
                }
                if let Err(err) = written {
                    // It succeeded without reading all of its event.
                    tracing::debug!(shard_id = %shard_id, error = %err, "the handler did not read its whole event");
                }
                read.map_err(|err| format!("could not read the handler's stdout: {err}"))
            })
            .await;
        // Its last stderr lines are logged before the verdict.
        let _ = tokio::time::timeout(Duration::from_secs(1), stderr).await;
        result
    }

    /// The lane's process (an idle one of the shard, or a new one); put
    /// back after a response, dropped (killed) after a failure.
    async fn call_lane(&self, shard_id: &ShardId, line: &[u8]) -> Result<String, CallError> {
        let idle = self
            .idle
            .lock()
            .ok()
            .and_then(|mut idle| idle.get_mut(shard_id).and_then(Vec::pop));
        let mut process = match idle {
            Some(process) => process,
            None => LaneProcess::new(self.spawn(shard_id)?, shard_id),
        };
        match self.limited(process.exchange(line)).await {
            Ok(response) => {
                if let Ok(mut idle) = self.idle.lock() {
                    idle.entry(shard_id.clone()).or_default().push(process);
                }
                Ok(response)
            }
            Err(err) => {
                process.kill().await;
                tracing::warn!(shard_id = %shard_id, error = %err, "the lane's handler process failed and was killed; a new one takes the retry");
                Err(err)
            }
        }
    }

    /// Closes the stdin of every idle per-lane process and waits for them
    /// to exit (killing those that do not within the grace time).
    pub(crate) async fn close(&self) {
        let idle: Vec<LaneProcess> = match self.idle.lock() {
            Ok(mut idle) => idle.drain().flat_map(|(_, processes)| processes).collect(),
            Err(_) => Vec::new(),
        };
        for process in idle {
            process.finish(EXIT_GRACE).await;
        }
    }
}

/// A long-running handler process of one lane.
#[derive(Debug)]
struct LaneProcess {
    shard_id: ShardId,
    child: tokio::process::Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<()>,
}

impl LaneProcess {
    fn new(piped: Piped, shard_id: &ShardId) -> Self {
        Self {
            shard_id: shard_id.clone(),
            child: piped.child,
            stdin: Some(piped.stdin),
            stdout: BufReader::new(piped.stdout).lines(),
            stderr: piped.stderr,
        }
    }

    /// Writes one event line and reads one response line.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped midway, the process's next line may answer
    /// this event; the caller kills the process instead of reusing it.
    async fn exchange(&mut self, line: &[u8]) -> Result<String, CallError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| "the handler's stdin is closed".to_owned())?;
        let sent = async {
            stdin.write_all(line).await?;
            stdin.flush().await
        };
        if let Err(err) = sent.await {
            return Err(self
                .exited()
                .await
                .unwrap_or_else(|| format!("could not write to the handler: {err}")));
        }
        loop {
            match self.stdout.next_line().await {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => return Ok(line),
                Ok(None) => {
                    return Err(self
                        .exited()
                        .await
                        .unwrap_or_else(|| "the handler closed its stdout".to_owned()));
                }
                Err(err) => return Err(format!("could not read the handler's stdout: {err}")),
            }
        }
    }

    /// How the process exited, if it has (waiting briefly).
    async fn exited(&mut self) -> Option<CallError> {
        match tokio::time::timeout(Duration::from_millis(500), self.child.wait()).await {
            Ok(Ok(status)) => Some(format!("the handler exited with {status}")),
            _ => None,
        }
    }

    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.stderr).await;
    }

    /// Closes stdin, waits up to `grace` for the exit, then kills.
    async fn finish(mut self, grace: Duration) {
        drop(self.stdin.take());
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => {
                tracing::info!(shard_id = %self.shard_id, %status, "a lane's handler exited");
            }
            _ => {
                tracing::warn!(shard_id = %self.shard_id, ?grace, "a lane's handler did not exit after its stdin was closed; killing it");
                self.kill().await;
                return;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.stderr).await;
    }
}
