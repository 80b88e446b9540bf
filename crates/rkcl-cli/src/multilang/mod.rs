//! `rkcl multilang`: a drop-in for the Java KCL's MultiLangDaemon. It
//! reads the daemon's properties file, runs one worker of the consumer
//! group, and drives one child process per held shard through the
//! MultiLangDaemon protocol (JSON lines on the child's stdin and stdout),
//! so record processors written with amazon-kclpy, aws-kcl or any other
//! client of the protocol run unchanged, without a JVM.
//!
//! - `properties`: the Java properties format.
//! - `config`: the daemon's keys, turned into rkcl's typed config.
//! - `protocol`: the messages.
//! - `child`: the child processes and the processor that drives them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use rkcl::{Scheduler, ShardInfo};

use crate::aws::AwsArgs;

mod child;
mod config;
mod properties;
mod protocol;

use child::{ChildProcessor, Children, OnChildFailure};
pub(crate) use child::{EXIT_GRACE, Piped, StderrTarget};
use config::MultiLangConfig;

#[derive(Debug, clap::Args)]
pub(crate) struct MultiLangArgs {
    /// The MultiLangDaemon properties file (`executableName`,
    /// `applicationName`, `streamName`, ...).
    #[arg(
        short = 'p',
        long = "properties",
        visible_alias = "properties-file",
        value_name = "FILE"
    )]
    properties: PathBuf,
    /// What a child that crashes, answers wrongly or exceeds
    /// `timeoutInSeconds` does: `restart` kills it and restarts its shard
    /// from the last checkpoint with backoff, other shards going on;
    /// `exit` stops the daemon with a non-zero exit code, as the Java
    /// MultiLangDaemon does.
    #[arg(long, value_enum, default_value_t = OnChildFailure::Restart)]
    on_child_failure: OnChildFailure,
}

pub(crate) async fn run(aws: &AwsArgs, args: MultiLangArgs) -> anyhow::Result<ExitCode> {
    // Installed first: a SIGTERM during start-up is answered with a clean
    // shutdown once the worker runs.
    let signals = rkcl::scheduler::Signals::register();
    let text = std::fs::read_to_string(&args.properties)
        .with_context(|| format!("could not read {}", args.properties.display()))?;
    let config = MultiLangConfig::from_properties(&properties::parse(&text))
        .with_context(|| format!("{}", args.properties.display()))?;
    for key in &config.ignored {
        tracing::warn!(key = %key, "rkcl does not implement this property; it is ignored");
    }
    if !config.credential_keys.is_empty() {
        tracing::info!(
            keys = ?config.credential_keys,
            "credentials come from the standard AWS chain (environment, profile, web identity, \
             container and instance roles); these keys are honoured that way"
        );
    }
    let sdk = aws.sdk_config_with_region(config.region.as_deref()).await?;
    let mut kinesis = aws_sdk_kinesis::config::Builder::from(&sdk);
    if let Some(url) = &config.kinesis_endpoint {
        kinesis = kinesis.endpoint_url(url);
    }
    let kinesis = rkcl::Kinesis::new(aws_sdk_kinesis::Client::from_conf(kinesis.build()));
    let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(&sdk);
    if let Some(url) = &config.dynamodb_endpoint {
        dynamodb = dynamodb.endpoint_url(url);
    }
    let store = rkcl::DynamoDbLeaseStore::new(
        aws_sdk_dynamodb::Client::from_conf(dynamodb.build()),
        &config.table_name,
    );
    store
        .ensure_table(Duration::from_secs(60))
        .await
        .context("could not prepare the lease table")?;

    let children = Children::new(
        config.command.clone(),
        config.call_timeout,
        args.on_child_failure,
    );
    let stream = config.scheduler.stream.to_string();
    let factory_children = children.clone();
    let scheduler = Scheduler::start(
        config.scheduler,
        kinesis,
        store,
        move |shard: &ShardInfo| {
            ChildProcessor::new(factory_children.clone(), shard.shard_id.clone())
        },
    )
    .await
    .with_context(|| format!("could not start consuming {stream}"))?;
    tracing::info!(
        worker_id = scheduler.worker_id(),
        command = ?config.command,
        "running a child per shard"
    );
    let child_failed = tokio::select! {
        () = signals.recv() => {
            tracing::info!("signal received; asking every child to shut down");
            false
        }
        () = children.failed.notified() => true,
    };
    let report = scheduler.shutdown(config.shutdown_grace).await;
    tracing::info!(
        finished = report.finished_leases.len(),
        unfinished = ?report.unfinished_leases,
        unreleased = ?report.unreleased_leases,
        child_failures = children.failures.load(Ordering::SeqCst),
        "stopped"
    );
    Ok(if child_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
