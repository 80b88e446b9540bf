//! `rkcl local`: the embedded Kinesis and DynamoDB until Ctrl-C, with
//! faults on demand.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub(crate) struct LocalArgs {
    /// The Kinesis port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 4567)]
    kinesis_port: u16,
    /// The DynamoDB port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    dynamodb_port: u16,
    /// Keep streams and tables in this directory across restarts.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Inject faults: comma-separated TARGET:KIND=VALUE, where TARGET is *,
    /// kinesis.*, dynamodb.* or SERVICE.Operation and KIND=VALUE one of
    /// throttle=P%, error=P%, latency=A..Bms, reset=P%, expired=P% (Kinesis
    /// GetRecords only). Example:
    /// kinesis.GetRecords:throttle=2%,dynamodb.UpdateItem:error=1%,*:latency=0..300ms
    #[arg(long, value_name = "SPEC")]
    faults: Option<String>,
    /// The seed of the injected faults, to replay a run (default: random,
    /// printed at start).
    #[arg(long, value_name = "N", requires = "faults")]
    seed: Option<u64>,
    /// Count the requests each service gets, by operation, and write the
    /// counts since start to FILE as JSON every second and at exit, such as
    /// {"dynamodb":{"UpdateItem":12},"kinesis":{"GetRecords":40}}. Each
    /// request then takes one more local hop.
    #[arg(long, value_name = "FILE")]
    request_counts: Option<PathBuf>,
}

/// How often `--request-counts` rewrites its file.
const REQUEST_COUNTS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) async fn run(args: LocalArgs) -> anyhow::Result<ExitCode> {
    let mut builder = rkcl_local::Local::builder()
        .kinesis_port(args.kinesis_port)
        .dynamodb_port(args.dynamodb_port);
    if let Some(dir) = &args.data_dir {
        builder = builder.data_dir(dir);
    }
    if let Some(spec) = &args.faults {
        let plan = rkcl_local::FaultPlan::parse(spec).context("--faults")?;
        builder = builder
            .faults(plan)
            .fault_seed(args.seed.unwrap_or_else(rand::random));
    }
    if args.request_counts.is_some() {
        builder = builder.count_requests();
    }
    let local = builder.start().await?;
    {
        let mut out = std::io::stdout().lock();
        let data = args.data_dir.as_ref().map_or_else(
            || "in memory".to_owned(),
            |dir| format!("in {}", dir.display()),
        );
        writeln!(out, "Kinesis:  {}", local.kinesis_endpoint())?;
        writeln!(out, "DynamoDB: {} (data {data})", local.dynamodb_endpoint())?;
        if let (Some(plan), Some(seed)) = (local.fault_plan(), local.fault_seed()) {
            let plan = if plan.is_empty() {
                "none".to_owned()
            } else {
                plan.to_string()
            };
            writeln!(
                out,
                "Faults:   {plan} (seed {seed}: replay with --seed {seed})"
            )?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "export AWS_ENDPOINT_URL_KINESIS={}",
            local.kinesis_endpoint()
        )?;
        writeln!(
            out,
            "export AWS_ENDPOINT_URL_DYNAMODB={}",
            local.dynamodb_endpoint()
        )?;
        writeln!(out, "export AWS_REGION={}", rkcl_local::REGION)?;
        writeln!(
            out,
            "export AWS_ACCESS_KEY_ID={}",
            rkcl_local::ACCESS_KEY_ID
        )?;
        writeln!(
            out,
            "export AWS_SECRET_ACCESS_KEY={}",
            rkcl_local::SECRET_ACCESS_KEY
        )?;
        writeln!(out)?;
        writeln!(out, "Press Ctrl-C to stop.")?;
        out.flush()?;
    }
    let stopped = shutdown_signal();
    match &args.request_counts {
        Some(path) => {
            write_request_counts(path, &local.request_counts())?;
            let mut every = tokio::time::interval(REQUEST_COUNTS_EVERY);
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    result = &mut stopped => {
                        result.context("could not wait for Ctrl-C")?;
                        break;
                    }
                    _ = every.tick() => write_request_counts(path, &local.request_counts())?,
                }
            }
            write_request_counts(path, &local.request_counts())?;
        }
        None => stopped.await.context("could not wait for Ctrl-C")?,
    }
    let counts = local.fault_counts();
    let seed = local.fault_seed();
    local.shutdown().await;
    if let Some(seed) = seed {
        let mut out = std::io::stdout().lock();
        writeln!(out, "Faults injected (seed {seed}):")?;
        for line in counts.to_string().lines() {
            writeln!(out, "  {line}")?;
        }
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `counts` to `path` as one JSON object of services, each an object
/// of operations and counts. The file is replaced whole (written beside it,
/// then renamed), so a reader never sees half of it.
fn write_request_counts(
    path: &std::path::Path,
    counts: &rkcl_local::RequestCounts,
) -> anyhow::Result<()> {
    let mut services = serde_json::Map::new();
    for service in rkcl_local::Service::ALL {
        services.insert(service.name().to_owned(), serde_json::json!({}));
    }
    for (service, operation, n) in counts.iter() {
        if let Some(serde_json::Value::Object(operations)) = services.get_mut(service.name()) {
            operations.insert(operation.to_owned(), n.into());
        }
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let text = serde_json::Value::Object(services).to_string();
    std::fs::write(&partial, text + "\n")
        .with_context(|| format!("could not write {}", partial.display()))?;
    std::fs::rename(&partial, path)
        .with_context(|| format!("could not write {}", path.display()))?;
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
