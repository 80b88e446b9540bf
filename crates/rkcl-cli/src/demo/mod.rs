//! `rkcl demo`: a consumer group end to end on the embedded Kinesis and
//! DynamoDB, with nothing to set up, told so that a watcher can follow it.
//!
//! Records are produced at a steady rate (half of them KPL-aggregated)
//! while the group consumes them. Two scenarios share the producer, the
//! lease-table watch, the checks and the report:
//!
//! - the story (`story.rs`): three workers in this process start together;
//!   a worker is killed without a shutdown, a shard is split, two shards are
//!   merged, a worker joins and one leaves gracefully, each event only once
//!   the group has visibly settled after the one before (balanced, no
//!   handoff pending, caught up);
//! - chaos (`chaos.rs`, `--chaos`): the workers are `rkcl consume`
//!   processes; one is killed with SIGKILL every `--kill-every` and
//!   restarted, while a split, a merge, a join and a graceful leave happen at
//!   seeded times.
//!
//! What came out is checked by the demo itself (`tally.rs`, `checks.rs`):
//! produced, delivered, unique, lost, duplicates and whether each lies after
//! the last checkpoint of a killed or lease-losing worker, per-key order,
//! checkpoints that moved backwards, and records delivered by a worker the
//! lease table did not name as the shard's holder. The report is printed as
//! text or JSON (`report.rs`) and drawn as an HTML page (`html.rs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

mod chaos;
mod chart;
mod checks;
mod html;
mod processes;
mod produce;
mod report;
mod session;
mod story;
mod tally;
mod watch;

/// The arguments of `rkcl demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How many user records to produce. Default: 200,000, or 1,000,000
    /// with `--chaos`.
    #[arg(long)]
    records: Option<usize>,
    /// How many records to produce per second (200,000 take about half a
    /// minute at the default).
    #[arg(long, default_value_t = 7_000)]
    rate: u64,
    /// How many shards the demo stream starts with.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// The workers' lease duration: how long a killed worker's shards wait.
    #[arg(long, default_value = "4s")]
    lease_duration: humantime::Duration,
    /// Run the workers as `rkcl consume` processes, kill one with SIGKILL
    /// every `--kill-every` and restart it, and check what came out.
    #[arg(long)]
    chaos: bool,
    /// With `--chaos`: how often a worker is killed.
    #[arg(long, default_value = "10s", requires = "chaos")]
    kill_every: humantime::Duration,
    /// Faults the embedded services inject (the spec of `rkcl local
    /// --faults`), seeded from `--seed`; `none` for none. Default with
    /// `--chaos`: the throttles, errors, resets and latency of
    /// `CHAOS_FAULTS`; without it, none.
    #[arg(long, value_name = "SPEC")]
    faults: Option<String>,
    /// Seeds every random choice (which worker is killed, which shards are
    /// split and merged, when chaos events happen). Default: a random seed,
    /// printed so that the run can be repeated.
    #[arg(long)]
    seed: Option<u64>,
    /// Also write the report as a self-contained HTML page with charts.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print the report as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// The faults of a chaos run unless `--faults` says otherwise: throttles,
/// server errors and dropped connections on the calls workers make to both
/// services, and some latency. The producer's PutRecords is spared, so the
/// stream holds what was produced exactly once.
const CHAOS_FAULTS: &str = "kinesis.GetRecords:throttle=2%,kinesis.GetRecords:error=1%,\
kinesis.GetRecords:reset=0.5%,kinesis.GetShardIterator:error=1%,kinesis.ListShards:throttle=2%,\
dynamodb.*:throttle=1%,dynamodb.*:error=0.5%,dynamodb.UpdateItem:reset=0.2%,\
kinesis.GetRecords:latency=0..50ms,dynamodb.*:latency=0..20ms";

/// The most records a run may produce (the tally keeps a few bytes each).
const MAX_RECORDS: usize = 20_000_000;
/// The most shards the demo stream may start with.
const MAX_SHARDS: u32 = 64;
/// The shortest lease duration the demo runs with.
const MIN_LEASE_DURATION: Duration = Duration::from_secs(1);

/// The validated arguments of one run.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    /// How many records to produce.
    pub(super) records: usize,
    /// Records per second.
    pub(super) rate: u64,
    /// Shards at the start.
    pub(super) shards: u32,
    /// The workers' lease duration.
    pub(super) lease_duration: Duration,
    /// Whether this is the chaos run.
    pub(super) chaos: bool,
    /// How often chaos kills a worker.
    pub(super) kill_every: Duration,
    /// The seed of every random choice.
    pub(super) seed: u64,
    /// The faults the embedded services inject, if any.
    pub(super) faults: Option<rkcl_local::FaultPlan>,
    /// Quiet progress, a JSON report.
    pub(super) json: bool,
    /// Where to write the HTML report.
    pub(super) report: Option<PathBuf>,
}

impl Settings {
    /// Checks the arguments.
    fn from_args(args: DemoArgs) -> anyhow::Result<Self> {
        let records = args
            .records
            .unwrap_or(if args.chaos { 1_000_000 } else { 200_000 });
        if !(1..=MAX_RECORDS).contains(&records) {
            bail!("--records must be between 1 and {MAX_RECORDS}");
        }
        if args.rate == 0 {
            bail!("--rate must be at least 1 record per second");
        }
        if !(1..=MAX_SHARDS).contains(&args.shards) {
            bail!("--shards must be between 1 and {MAX_SHARDS}");
        }
        let lease_duration: Duration = args.lease_duration.into();
        if lease_duration < MIN_LEASE_DURATION {
            bail!("--lease-duration must be at least 1s");
        }
        let kill_every: Duration = args.kill_every.into();
        if kill_every < Duration::from_secs(1) {
            bail!("--kill-every must be at least 1s");
        }
        let faults = match args.faults.as_deref() {
            Some("none") => None,
            Some(spec) => Some(spec.to_owned()),
            None if args.chaos => Some(CHAOS_FAULTS.to_owned()),
            None => None,
        };
        let faults = faults
            .map(|spec| rkcl_local::FaultPlan::parse(&spec))
            .transpose()
            .context("--faults")?;
        Ok(Self {
            faults,
            records,
            rate: args.rate,
            shards: args.shards,
            lease_duration,
            chaos: args.chaos,
            kill_every,
            seed: args.seed.unwrap_or_else(rand::random),
            json: args.json,
            report: args.report,
        })
    }

    /// How long the group must stay settled before the story goes on: long
    /// enough for a watcher to see it (two progress lines at the default
    /// lease duration).
    pub(super) fn dwell(&self) -> Duration {
        (self.lease_duration / 2).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    /// How long the group may take to settle after an event before the
    /// demo gives up waiting (and says so).
    pub(super) fn settle_timeout(&self) -> Duration {
        Duration::from_secs(30) + self.lease_duration * 5
    }

    /// Shows a progress line on stderr (not with `--json`).
    pub(super) fn progress(&self, text: &str) {
        if !self.json {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("rkcl demo: {text}");
            }
        }
    }
}

/// Runs `rkcl demo`: the story, or the chaos run; prints the report and
/// writes the page. Fails when the run could not be made; a run that found
/// something wrong exits with a failure code.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(args)?;
    if let Some(path) = &settings.report {
        // Fail before the run, not after it, when the page cannot be written.
        std::fs::write(path, "")
            .with_context(|| format!("could not write the report to {}", path.display()))?;
    }
    let local = start_services(&settings).await?;
    let outcome = if settings.chaos {
        chaos::run(&local, settings.clone()).await
    } else {
        story::run(&local, settings.clone()).await
    };
    if settings.faults.is_some() {
        // On stderr also with --json, so a run's faults can always be read
        // and replayed.
        let counts = local.fault_counts();
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "rkcl demo: faults injected (seed {}):\n{counts}",
                settings.seed
            );
        }
    }
    local.shutdown().await;
    let report = outcome?;
    if let Some(path) = &settings.report {
        std::fs::write(path, html::render(&report))
            .with_context(|| format!("could not write the report to {}", path.display()))?;
        settings.progress(&format!("report written to {}", path.display()));
    }
    report::print(&report, settings.json)?;
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Starts the embedded Kinesis and DynamoDB. This is the one place the demo
/// configures them: a server-side fault plan for the chaos run is one more
/// builder call here, seeded from `settings.seed`.
async fn start_services(settings: &Settings) -> anyhow::Result<rkcl_local::Local> {
    let mut builder = rkcl_local::Local::builder();
    if let Some(plan) = &settings.faults {
        builder = builder.faults(plan.clone()).fault_seed(settings.seed);
        settings.progress(&format!("faults: {plan} (seed {})", settings.seed));
    }
    let local = builder
        .start()
        .await
        .context("could not start the embedded Kinesis and DynamoDB")?;
    settings.progress(&format!(
        "embedded Kinesis at {} and DynamoDB at {}",
        local.kinesis_endpoint(),
        local.dynamodb_endpoint()
    ));
    Ok(local)
}
