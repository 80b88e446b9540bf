//! How each contender is started, and kcl-rs' virtual environment.

use crate::proc::run_command;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{Endpoints, Progress, Stop, local_env, target_dir};
use crate::{RECORDS, RUN_TIMEOUT, subscribe};

const RKCL: &str = env!("CARGO_BIN_EXE_rkcl");
pub(crate) const KCL_RS_VERSION: &str = "0.1.4";
const KCL_RS_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/peers/kcl_rs_consumer.py"
);
/// kcl-rs' shard sync interval (see the top of `fanout.rs`).
const KCL_RS_SHARD_SYNC_MS: &str = "1000";

/// `rkcl consume` as one worker of application `app`.
pub(crate) fn rkcl_consume(endpoints: &Endpoints, app: &str, stream: &str) -> Command {
    let mut command = Command::new(RKCL);
    command
        .args(["consume", "--app", app, "--stream", stream])
        .args(["--worker-id", &format!("{app}-worker")]);
    local_env(&mut command, endpoints);
    command
}

/// Whether this `rkcl` reads with enhanced fan-out: its `consume --help`
/// mentions `--retrieval`. Until it does, the rkcl fan-out contenders are
/// not run.
pub(crate) fn rkcl_has_fan_out() -> bool {
    Command::new(RKCL)
        .args(["consume", "--help"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--retrieval"))
}

/// The rkcl fan-out contender of the throughput runs: `rkcl consume
/// --retrieval fan-out`, otherwise as the polling one (JSON lines counted).
/// Run only when [`rkcl_has_fan_out`].
pub(crate) fn rkcl_fan_out_command(endpoints: &Endpoints, app: &str, stream: &str) -> Command {
    let mut command = rkcl_consume(endpoints, app, stream);
    command.args(["--retrieval", "fan-out"]);
    command
}

/// The kcl-rs script reading `stream` as application `app` in `mode`
/// (`FANOUT` or `POLLING`).
pub(crate) fn kcl_rs_command(
    python: &Path,
    endpoints: &Endpoints,
    app: &str,
    stream: &str,
    mode: &str,
) -> Command {
    let mut command = Command::new(python);
    command
        .arg(KCL_RS_SCRIPT)
        .args(["--stream", stream, "--app", app, "--mode", mode])
        .args(["--expected", &RECORDS.to_string()])
        .args(["--shard-sync-interval-ms", KCL_RS_SHARD_SYNC_MS])
        .args(["--timeout-s", &(RUN_TIMEOUT.as_secs() - 10).to_string()]);
    local_env(&mut command, endpoints);
    command
}

/// The Python of a virtual environment with kcl-rs installed: made under
/// the target directory and installed from PyPI the first time.
pub(crate) fn kcl_rs_python() -> Result<PathBuf, String> {
    let venv = target_dir().join("peers").join("kcl-rs-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        run_command(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let version = "import importlib.metadata as m; print(m.version('kcl-rs'))";
    let installed = run_command(Command::new(&python).args(["-c", version]));
    if installed.as_deref().map(str::trim) != Ok(KCL_RS_VERSION) {
        run_command(
            Command::new(&python)
                .args(["-m", "pip", "install", "--quiet"])
                .args([
                    "--disable-pip-version-check",
                    &format!("kcl-rs=={KCL_RS_VERSION}"),
                ]),
        )?;
    }
    run_command(Command::new(&python).args(["-c", "import kcl_rs"]))?;
    Ok(python)
}

/// What every throughput run reads, and who can run.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) endpoints: Endpoints,
    pub(crate) stream: String,
    pub(crate) stream_arn: String,
    pub(crate) shards: Vec<String>,
    pub(crate) kinesis_records: u64,
    pub(crate) python: Result<PathBuf, String>,
    pub(crate) fan_out: bool,
}

/// A reader in the throughput runs, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Contender {
    RkclPolling,
    RkclFanOut,
    RkclWorkerFanOut,
    RkclWorkerPolling,
    KclRsFanOut,
    KclRsPolling,
    SdkLoop,
}

impl Contender {
    pub(crate) const ALL: [Self; 7] = [
        Self::RkclPolling,
        Self::RkclFanOut,
        Self::RkclWorkerFanOut,
        Self::RkclWorkerPolling,
        Self::KclRsFanOut,
        Self::KclRsPolling,
        Self::SdkLoop,
    ];

    /// Its name in the table.
    pub(crate) fn label(self) -> String {
        match self {
            Self::RkclPolling => "rkcl consume, polling".to_owned(),
            Self::RkclFanOut => "rkcl consume, fan-out".to_owned(),
            Self::RkclWorkerFanOut => "rkcl worker, counting, fan-out".to_owned(),
            Self::RkclWorkerPolling => "rkcl worker, counting, polling".to_owned(),
            Self::KclRsFanOut => format!("kcl-rs {KCL_RS_VERSION}, fan-out"),
            Self::KclRsPolling => format!("kcl-rs {KCL_RS_VERSION}, polling"),
            Self::SdkLoop => "SDK SubscribeToShard loop (floor)".to_owned(),
        }
    }

    /// Why this contender is not run, if it is not.
    pub(crate) fn skipped(self, setup: &Setup) -> Option<String> {
        match self {
            Self::RkclFanOut | Self::RkclWorkerFanOut if !setup.fan_out => {
                Some("not run: `rkcl consume --help` does not mention --retrieval yet".to_owned())
            }
            Self::KclRsFanOut | Self::KclRsPolling => setup
                .python
                .as_ref()
                .err()
                .map(|why| format!("not run: kcl-rs could not be installed: {why}")),
            _ => None,
        }
    }

    /// The process of run `run`, how it reports and how it stops.
    pub(crate) fn process(self, setup: &Setup, run: usize) -> (Command, Progress, Stop) {
        let (endpoints, stream) = (&setup.endpoints, setup.stream.as_str());
        let app = format!("{}-{run}", self.name());
        let python = || setup.python.as_deref().unwrap();
        match self {
            Self::RkclPolling => (
                rkcl_consume(endpoints, &app, stream),
                Progress::Lines(RECORDS),
                Stop::Terminate,
            ),
            Self::RkclFanOut => (
                rkcl_fan_out_command(endpoints, &app, stream),
                Progress::Lines(RECORDS),
                Stop::Terminate,
            ),
            Self::RkclWorkerFanOut | Self::RkclWorkerPolling => {
                let mode = if self == Self::RkclWorkerFanOut {
                    "fan-out"
                } else {
                    "polling"
                };
                let mut command = Command::new(std::env::current_exe().unwrap());
                command
                    .args([crate::worker::CHILD_ARG, mode])
                    .args([&endpoints.kinesis, &endpoints.dynamodb, &app, stream])
                    .arg(RECORDS.to_string());
                local_env(&mut command, endpoints);
                (command, Progress::Report, Stop::Stdin)
            }
            Self::KclRsFanOut | Self::KclRsPolling => {
                let mode = if self == Self::KclRsFanOut {
                    "FANOUT"
                } else {
                    "POLLING"
                };
                let command = kcl_rs_command(python(), endpoints, &app, stream, mode);
                (command, Progress::Report, Stop::Stdin)
            }
            Self::SdkLoop => {
                let mut command = Command::new(std::env::current_exe().unwrap());
                command
                    .args([
                        subscribe::CHILD_ARG,
                        &endpoints.kinesis,
                        &setup.stream_arn,
                        &app,
                    ])
                    .arg(setup.kinesis_records.to_string())
                    .args(&setup.shards);
                local_env(&mut command, endpoints);
                (command, Progress::Report, Stop::Stdin)
            }
        }
    }

    /// Its name in application names and log files.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::RkclPolling => "rkcl-polling",
            Self::RkclFanOut => "rkcl-fan-out",
            Self::RkclWorkerFanOut => "rkcl-worker-fan-out",
            Self::RkclWorkerPolling => "rkcl-worker-polling",
            Self::KclRsFanOut => "kcl-rs-fan-out",
            Self::KclRsPolling => "kcl-rs-polling",
            Self::SdkLoop => "sdk-loop",
        }
    }

    /// What a complete read counts.
    pub(crate) fn expected(self, setup: &Setup) -> u64 {
        match self {
            Self::SdkLoop => setup.kinesis_records,
            _ => RECORDS,
        }
    }
}
