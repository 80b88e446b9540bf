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
mod kpl;
mod leases;
mod local;
mod output;
mod put;
mod stream;
mod tail;

/// The Kinesis Client Library for Rust, on the command line.
#[derive(Debug, Parser)]
#[command(name = "rkcl", version, about)]
struct Cli {
    #[command(flatten)]
    aws: aws::AwsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Be one worker of a consumer group: records to stdout as JSON lines,
    /// checkpoints of what was written.
    Consume(consume::ConsumeArgs),
    /// Produce records into an embedded Kinesis, read them back, and report.
    Demo(demo::DemoArgs),
    /// Show an application's lease table, or reset a shard's checkpoint.
    Leases(leases::LeasesArgs),
    /// Run Kinesis and DynamoDB on 127.0.0.1 until Ctrl-C.
    Local(local::LocalArgs),
    /// Encode and decode the KPL aggregation format.
    #[command(subcommand)]
    Kpl(kpl::KplCommand),
    /// Write lines from stdin to a stream with PutRecords.
    Put(put::PutArgs),
    /// Write every user record of a stream to stdout as JSON lines.
    Tail(tail::TailArgs),
    /// Create, list and describe streams.
    #[command(subcommand)]
    Stream(stream::StreamCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
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
            Command::Consume(args) => consume::run(&cli.aws, args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Leases(args) => leases::run(&cli.aws, args).await,
            Command::Local(args) => local::run(args).await,
            Command::Kpl(command) => kpl::run(command),
            Command::Put(args) => put::run(&cli.aws, args).await,
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RKCL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,aws_config=error,dynoxide=error,ferrokinesis=error",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
