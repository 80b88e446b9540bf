//! `rkcl`: local Kinesis and DynamoDB, KPL tools, producing and inspecting
//! streams.
//!
//! Arguments are parsed by clap, then each command validates them into the
//! library's typed config. Errors are printed as one line and give a
//! non-zero exit code; nothing panics on bad input.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod aws;
mod consume;
mod demo;
mod exec;
mod kpl;
mod leases;
mod local;
mod multilang;
mod observe;
mod output;
mod put;
mod retrieval;
mod status;
mod stream;
mod tail;

/// The Kinesis Client Library for Rust, on the command line.
#[derive(Debug, Parser)]
#[command(name = "rkcl", version, about)]
struct Cli {
    #[command(flatten)]
    aws: aws::AwsArgs,
    /// How logs are written to stderr: `text` for people, `json` (one
    /// object per line) for log shippers. Levels come from `RKCL_LOG`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Be one worker of a consumer group: records to stdout as JSON lines,
    /// checkpoints of what was written.
    Consume(Box<consume::ConsumeArgs>),
    /// Watch a consumer group on an embedded Kinesis through a kill, a
    /// split, a merge, a join and a leave (`--chaos`: worker processes
    /// under SIGKILL), and report what came out.
    Demo(demo::DemoArgs),
    /// Show an application's lease table, or reset a shard's checkpoint.
    Leases(leases::LeasesArgs),
    /// Run Kinesis and DynamoDB on 127.0.0.1 until Ctrl-C.
    Local(local::LocalArgs),
    /// Run record processors written for the Java KCL's MultiLangDaemon
    /// (amazon-kclpy, aws-kcl, ...) from its properties file: one child
    /// process per shard, no JVM.
    Multilang(multilang::MultiLangArgs),
    /// Encode and decode the KPL aggregation format.
    #[command(subcommand)]
    Kpl(kpl::KplCommand),
    /// Write lines from stdin to a stream with PutRecords.
    Put(put::PutArgs),
    /// Show a consumer group: each lease's owner, renewal, checkpoint and
    /// how far behind the tip it is; per-worker totals (`--watch`: live).
    Status(status::StatusArgs),
    /// Write every user record of a stream to stdout as JSON lines.
    Tail(tail::TailArgs),
    /// Create, list and describe streams.
    #[command(subcommand)]
    Stream(stream::StreamCommand),
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            report(&anyhow::Error::new(err).context("could not start the async runtime"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Consume(args) => consume::run(&cli.aws, *args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Leases(args) => leases::run(&cli.aws, args).await,
            Command::Local(args) => local::run(args).await,
            Command::Kpl(command) => kpl::run(command),
            Command::Multilang(args) => multilang::run(&cli.aws, args).await,
            Command::Put(args) => put::run(&cli.aws, args).await,
            Command::Status(args) => status::run(&cli.aws, args).await,
            Command::Stream(command) => stream::run(&cli.aws, command).await,
            Command::Tail(args) => tail::run(&cli.aws, args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

/// Prints an error and its causes as one line on stderr.
fn report(err: &anyhow::Error) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("rkcl: error: {err:#}");
    }
}

/// What is logged when `RKCL_LOG` is not set: warnings, and only errors of
/// the SDK's configuration and the embedded servers (whose expected errors,
/// such as a conditional write that lost, would otherwise look alarming).
const DEFAULT_LOG: &str = "warn,aws_config=error,dynoxide=error,ferrokinesis=error";

/// The crates a bare level in `RKCL_LOG` applies to.
const OWN_CRATES: [&str; 3] = ["rkcl", "rkcl_cli", "rkcl_local"];

/// The filter directives for `RKCL_LOG`: a bare level (`debug`) applies to
/// rkcl's own crates only, so `RKCL_LOG=debug` does not flood the output
/// with the SDK's internals; directives that name a target
/// (`aws_smithy_runtime=debug`) are kept as given.
fn log_directives(rkcl_log: Option<&str>) -> String {
    let mut directives = vec![DEFAULT_LOG.to_owned()];
    for directive in rkcl_log.unwrap_or_default().split(',') {
        let directive = directive.trim();
        if directive.is_empty() {
            continue;
        }
        if directive.contains('=') || directive.parse::<tracing::Level>().is_err() {
            directives.push(directive.to_owned());
        } else {
            directives.extend(
                OWN_CRATES
                    .iter()
                    .map(|krate| format!("{krate}={directive}")),
            );
        }
    }
    directives.join(",")
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let raw = std::env::var("RKCL_LOG").ok();
    let filter = match tracing_subscriber::EnvFilter::try_new(log_directives(raw.as_deref())) {
        Ok(filter) => filter,
        Err(err) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "rkcl: warning: RKCL_LOG is not a valid filter ({err}); using the default"
                );
            }
            tracing_subscriber::EnvFilter::new(DEFAULT_LOG)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_applies_to_rkcl_only() {
        let directives = log_directives(Some("debug"));
        assert!(directives.starts_with(DEFAULT_LOG));
        assert!(directives.contains("rkcl=debug"));
        assert!(directives.contains("rkcl_cli=debug"));
        assert!(directives.contains("rkcl_local=debug"));
        assert!(!directives.contains(",debug"), "{directives}");
    }

    #[test]
    fn named_targets_are_kept_as_given() {
        let directives = log_directives(Some("debug,aws_smithy_runtime=debug"));
        assert!(
            directives.ends_with(",aws_smithy_runtime=debug"),
            "{directives}"
        );
        assert!(directives.contains("rkcl=debug"));
        assert_eq!(log_directives(None), DEFAULT_LOG);
        assert_eq!(log_directives(Some("")), DEFAULT_LOG);
    }
}
