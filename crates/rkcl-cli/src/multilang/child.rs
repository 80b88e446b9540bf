//! One child process per shard, driven through the MultiLangDaemon
//! protocol by a [`RecordProcessor`].
//!
//! Each call writes one message to the child's stdin, answers the child's
//! checkpoint requests with the shard's [`Checkpointer`], and ends at the
//! child's `status` for that call. A child that exits, answers with the
//! wrong status or exceeds the call timeout is killed and the call fails:
//! the library then delivers the batch again (its failure policy backs
//! off), and the processor starts a new child, initialized at the last
//! checkpoint, before it does. With [`OnChildFailure::Exit`] the whole
//! daemon stops instead, as the Java MultiLangDaemon does.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rkcl::{
    Checkpointer, ExtendedSequenceNumber, InitializationInput, ProcessRecordsInput, ProcessorError,
    RecordProcessor, SequenceNumber, ShardId,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::protocol::{FromChild, Record, ToChild, error_name, errors, parse_line};

/// How long a child may take to exit once its stdin is closed after the
/// last call (`leaseLost`, `shardEnded`, `shutdownRequested`), before it is
/// killed.
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(5);

/// How long the child's stderr may hold a line without its end before the
/// part read so far is logged (a child that writes without newlines).
const STDERR_LINGER: Duration = Duration::from_millis(200);

/// The longest stderr line logged as one message.
const STDERR_MAX_LINE: usize = 8 * 1024;

/// What a failed child does to the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnChildFailure {
    /// Kill the child and restart the shard from its last checkpoint after
    /// a backoff; other shards go on.
    Restart,
    /// Stop the whole daemon with a non-zero exit code (the Java
    /// MultiLangDaemon's behaviour).
    Exit,
}

/// What every shard's processor shares.
#[derive(Debug)]
pub(crate) struct Children {
    /// The program and its arguments.
    pub(crate) command: Vec<String>,
    /// The longest one call may take.
    pub(crate) call_timeout: Option<Duration>,
    /// What a failure does.
    pub(crate) on_failure: OnChildFailure,
    /// Children killed after a failure, over all shards.
    pub(crate) failures: AtomicU64,
    /// Set with [`OnChildFailure::Exit`] once a child failed.
    pub(crate) exiting: AtomicBool,
    /// Woken with [`OnChildFailure::Exit`] when a child failed.
    pub(crate) failed: Notify,
}

impl Children {
    /// The shared state for `command`.
    pub(crate) fn new(
        command: Vec<String>,
        call_timeout: Option<Duration>,
        on_failure: OnChildFailure,
    ) -> Arc<Self> {
        Arc::new(Self {
            command,
            call_timeout,
            on_failure,
            failures: AtomicU64::new(0),
            exiting: AtomicBool::new(false),
            failed: Notify::new(),
        })
    }
}

/// Why a call to a child failed.
#[derive(Debug)]
enum ChildFailure {
    /// The child could not be started.
    Spawn(std::io::Error),
    /// The child's pipes failed.
    Io(std::io::Error),
    /// The child closed its stdout (it exited or crashed).
    Exited(String),
    /// The child answered a call with the status of another.
    WrongStatus { expected: &'static str, got: String },
    /// The call took longer than `timeoutInSeconds`.
    Timeout {
        action: &'static str,
        limit: Duration,
    },
    /// No child runs (the daemon is exiting after a failure).
    NotRunning,
}

impl std::fmt::Display for ChildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChildFailure::Spawn(err) => write!(f, "could not start the child: {err}"),
            ChildFailure::Io(err) => write!(f, "the child's pipes failed: {err}"),
            ChildFailure::Exited(status) => write!(f, "the child exited ({status})"),
            ChildFailure::WrongStatus { expected, got } => {
                write!(f, "the child answered {expected} with a status for {got:?}")
            }
            ChildFailure::Timeout { action, limit } => {
                write!(f, "the child did not answer {action} within {limit:?}")
            }
            ChildFailure::NotRunning => f.write_str("no child runs for this shard"),
        }
    }
}

impl std::error::Error for ChildFailure {}

/// Whose stderr a child's lines are logged as: the log target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StderrTarget {
    /// `rkcl::multilang::stderr`.
    Multilang,
    /// `rkcl::exec::stderr`.
    Exec,
}

/// A child started with its three pipes, its stderr already drained into
/// the log under the shard's id.
#[derive(Debug)]
pub(crate) struct Piped {
    pub(crate) child: tokio::process::Child,
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: ChildStdout,
    /// Ends once the child's stderr is closed.
    pub(crate) stderr: JoinHandle<()>,
}

impl Piped {
    /// Starts `command` (program and arguments) with `env` added, in a
    /// process group of its own, killed when dropped.
    pub(crate) fn spawn(
        command: &[String],
        env: &[(&str, &str)],
        shard_id: &ShardId,
        target: StderrTarget,
    ) -> std::io::Result<Self> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| std::io::Error::other("the command is empty"))?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // A process group of its own: Ctrl-C in a terminal reaches rkcl
        // only, which then shuts each child down in order, instead of
        // interrupting the children before they can finish.
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn()?;
        let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
            return Err(std::io::Error::other("the child's pipes were not opened"));
        };
        tracing::debug!(shard_id = %shard_id, pid = child.id(), "started a child");
        Ok(Self {
            child,
            stdin,
            stdout,
            stderr: tokio::spawn(drain_stderr(stderr, shard_id.clone(), target)),
        })
    }
}

/// A running child.
#[derive(Debug)]
struct Process {
    child: tokio::process::Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<()>,
}

impl Process {
    fn spawn(command: &[String], shard_id: &ShardId) -> Result<Self, ChildFailure> {
        let piped = Piped::spawn(command, &[], shard_id, StderrTarget::Multilang)
            .map_err(ChildFailure::Spawn)?;
        tracing::info!(shard_id = %shard_id, pid = piped.child.id(), "started a child");
        Ok(Self {
            child: piped.child,
            stdin: Some(piped.stdin),
            stdout: BufReader::new(piped.stdout).lines(),
            stderr: piped.stderr,
        })
    }

    async fn send(&mut self, message: &ToChild<'_>) -> Result<(), ChildFailure> {
        let mut line = serde_json::to_vec(message)
            .map_err(|err| ChildFailure::Io(std::io::Error::other(err)))?;
        line.push(b'\n');
        let stdin = self.stdin.as_mut().ok_or(ChildFailure::NotRunning)?;
        stdin.write_all(&line).await.map_err(ChildFailure::Io)?;
        stdin.flush().await.map_err(ChildFailure::Io)
    }

    /// Sends `message` and serves the child until its status for it.
    async fn exchange(
        &mut self,
        message: &ToChild<'_>,
        checkpointer: Option<&Checkpointer>,
        shard_id: &ShardId,
    ) -> Result<(), ChildFailure> {
        let expected = message.action();
        if let Err(err) = self.send(message).await {
            return Err(self.exited().await.unwrap_or(err));
        }
        loop {
            let line = match self.stdout.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => {
                    return Err(self
                        .exited()
                        .await
                        .unwrap_or_else(|| ChildFailure::Exited("stdout closed".into())));
                }
                Err(err) => return Err(ChildFailure::Io(err)),
            };
            match parse_line(&line) {
                Some(FromChild::Status { response_for }) if response_for == expected => {
                    return Ok(());
                }
                Some(FromChild::Status { response_for }) => {
                    return Err(ChildFailure::WrongStatus {
                        expected,
                        got: response_for,
                    });
                }
                Some(FromChild::Checkpoint {
                    sequence_number,
                    sub_sequence_number,
                }) => {
                    let error = checkpoint(
                        checkpointer,
                        sequence_number.as_deref(),
                        sub_sequence_number,
                    )
                    .await;
                    if let Some(error) = error {
                        tracing::debug!(shard_id = %shard_id, error, during = expected, "refused a checkpoint");
                    }
                    self.send(&ToChild::Checkpoint {
                        sequence_number,
                        sub_sequence_number,
                        error,
                    })
                    .await?;
                }
                None if line.trim().is_empty() => {}
                None => {
                    tracing::debug!(shard_id = %shard_id, line = %line, "skipped a line of the child's stdout that is no message");
                }
            }
        }
    }

    /// The child's exit, if it has exited (waiting briefly for it).
    async fn exited(&mut self) -> Option<ChildFailure> {
        match tokio::time::timeout(Duration::from_millis(500), self.child.wait()).await {
            Ok(Ok(status)) => Some(ChildFailure::Exited(status.to_string())),
            _ => None,
        }
    }

    /// Closes stdin and waits up to `grace` for the child to exit, then
    /// kills it.
    async fn finish(mut self, grace: Duration, shard_id: &ShardId) {
        drop(self.stdin.take());
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => tracing::info!(shard_id = %shard_id, %status, "the child exited"),
            Ok(Err(err)) => {
                tracing::warn!(shard_id = %shard_id, error = %err, "could not wait for the child")
            }
            Err(_) => {
                tracing::warn!(shard_id = %shard_id, ?grace, "the child did not exit after its stdin was closed; killing it");
                self.kill().await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.stderr).await;
    }

    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// Answers a checkpoint request; the Java exception name when refused.
async fn checkpoint(
    checkpointer: Option<&Checkpointer>,
    sequence_number: Option<&str>,
    sub_sequence_number: Option<i64>,
) -> Option<&'static str> {
    let Some(checkpointer) = checkpointer else {
        return Some(errors::INVALID_STATE);
    };
    let result = match sequence_number {
        None => checkpointer.checkpoint().await,
        Some(text) => {
            let (Ok(sequence), Ok(sub)) = (
                text.parse::<SequenceNumber>(),
                u64::try_from(sub_sequence_number.unwrap_or(0)),
            ) else {
                return Some(errors::ILLEGAL_ARGUMENT);
            };
            checkpointer.checkpoint_at(&sequence, sub).await
        }
    };
    result.err().map(|err| error_name(&err))
}

/// Logs the child's stderr, line by line, under the shard's id.
async fn drain_stderr(stderr: impl AsyncRead + Unpin, shard_id: ShardId, target: StderrTarget) {
    let mut stderr = stderr;
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0_u8; 8 * 1024];
    loop {
        let read = if pending.is_empty() {
            Ok(stderr.read(&mut chunk).await)
        } else {
            tokio::time::timeout(STDERR_LINGER, stderr.read(&mut chunk)).await
        };
        match read {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => {
                pending.extend_from_slice(chunk.get(..n).unwrap_or_default());
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    log_stderr(target, &shard_id, &line);
                }
                if pending.len() >= STDERR_MAX_LINE {
                    log_stderr(target, &shard_id, &std::mem::take(&mut pending));
                }
            }
            // Nothing more for a while: log the line so far.
            Err(_) => log_stderr(target, &shard_id, &std::mem::take(&mut pending)),
        }
    }
    if !pending.is_empty() {
        log_stderr(target, &shard_id, &pending);
    }
}

fn log_stderr(target: StderrTarget, shard_id: &ShardId, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return;
    }
    match target {
        StderrTarget::Multilang => {
            tracing::info!(target: "rkcl::multilang::stderr", shard_id = %shard_id, "{text}");
        }
        StderrTarget::Exec => {
            tracing::info!(target: "rkcl::exec::stderr", shard_id = %shard_id, "{text}");
        }
    }
}

/// Drives one shard's child.
#[derive(Debug)]
pub(crate) struct ChildProcessor {
    children: Arc<Children>,
    shard_id: ShardId,
    process: Option<Process>,
}

impl ChildProcessor {
    pub(crate) fn new(children: Arc<Children>, shard_id: ShardId) -> Self {
        Self {
            children,
            shard_id,
            process: None,
        }
    }

    /// One call, under the call timeout.
    async fn call(
        &mut self,
        message: &ToChild<'_>,
        checkpointer: Option<&Checkpointer>,
    ) -> Result<(), ChildFailure> {
        let process = self.process.as_mut().ok_or(ChildFailure::NotRunning)?;
        let exchange = process.exchange(message, checkpointer, &self.shard_id);
        match self.children.call_timeout {
            Some(limit) => {
                tokio::time::timeout(limit, exchange)
                    .await
                    .unwrap_or(Err(ChildFailure::Timeout {
                        action: message.action(),
                        limit,
                    }))
            }
            None => exchange.await,
        }
    }

    /// Starts a child and initializes it at `checkpoint`.
    async fn start(&mut self, checkpoint: &ExtendedSequenceNumber) -> Result<(), ProcessorError> {
        if self.children.exiting.load(Ordering::SeqCst) {
            return Err(Box::new(ChildFailure::NotRunning));
        }
        if let Some(mut old) = self.process.take() {
            old.kill().await;
        }
        let started = Process::spawn(&self.children.command, &self.shard_id);
        match started {
            Ok(process) => self.process = Some(process),
            Err(failure) => return Err(self.failed(failure).await),
        }
        let shard_id = self.shard_id.to_string();
        let message = ToChild::initialize(&shard_id, checkpoint);
        match self.call(&message, None).await {
            Ok(()) => Ok(()),
            Err(failure) => Err(self.failed(failure).await),
        }
    }

    /// A child running and initialized: the one there, or a new one at the
    /// last checkpoint.
    async fn ensure_started(&mut self, checkpointer: &Checkpointer) -> Result<(), ProcessorError> {
        if self.process.is_some() {
            return Ok(());
        }
        let checkpoint = checkpointer.last_checkpoint();
        tracing::info!(shard_id = %self.shard_id, %checkpoint, "restarting the shard's child at the last checkpoint");
        self.start(&checkpoint).await
    }

    /// Kills the child after `failure`, counts and logs it; the error for
    /// the library.
    async fn failed(&mut self, failure: ChildFailure) -> ProcessorError {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut process.stderr).await;
        }
        let total = self.children.failures.fetch_add(1, Ordering::SeqCst) + 1;
        match self.children.on_failure {
            OnChildFailure::Restart => tracing::warn!(
                shard_id = %self.shard_id,
                error = %failure,
                failures = total,
                "the child failed and was killed; the shard restarts from its last checkpoint"
            ),
            OnChildFailure::Exit => {
                tracing::error!(shard_id = %self.shard_id, error = %failure, "the child failed; the daemon exits");
                self.children.exiting.store(true, Ordering::SeqCst);
                self.children.failed.notify_one();
            }
        }
        Box::new(failure)
    }

    /// The last call of a child: sends `message`, then lets it exit.
    async fn last_call(
        &mut self,
        message: &ToChild<'_>,
        checkpointer: Option<&Checkpointer>,
    ) -> Result<(), ProcessorError> {
        if let Err(failure) = self.call(message, checkpointer).await {
            return Err(self.failed(failure).await);
        }
        if let Some(process) = self.process.take() {
            process.finish(EXIT_GRACE, &self.shard_id).await;
        }
        Ok(())
    }
}

impl RecordProcessor for ChildProcessor {
    async fn initialize(&mut self, input: &InitializationInput) -> Result<(), ProcessorError> {
        self.start(&input.checkpoint).await
    }

    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        self.ensure_started(checkpointer).await?;
        let message = ToChild::ProcessRecords {
            millis_behind_latest: input.millis_behind_latest,
            records: input.records.iter().map(Record::new).collect(),
        };
        match self.call(&message, Some(checkpointer)).await {
            Ok(()) => Ok(()),
            Err(failure) => Err(self.failed(failure).await),
        }
    }

    async fn lease_lost(&mut self) {
        if self.process.is_some() {
            // Failures are logged in `failed`; the shard is gone either way.
            let _ = self.last_call(&ToChild::LeaseLost, None).await;
        }
    }

    async fn shard_ended(&mut self, checkpointer: &Checkpointer) -> Result<(), ProcessorError> {
        self.ensure_started(checkpointer).await?;
        self.last_call(&ToChild::ShardEnded, Some(checkpointer))
            .await
    }

    async fn shutdown_requested(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        if self.process.is_none() {
            // The child failed before; what it checkpointed stands.
            return Ok(());
        }
        self.last_call(&ToChild::ShutdownRequested, Some(checkpointer))
            .await
    }
}
