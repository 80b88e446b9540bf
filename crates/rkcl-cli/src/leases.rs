//! `rkcl leases`: the lease table of an application, and resets for operators.

use std::process::ExitCode;

use anyhow::{Context, bail};
use rkcl::{
    ExtendedSequenceNumber,
    leases::{Lease, LeaseStore},
    model::LeaseKey,
};

use crate::aws::AwsArgs;
use crate::output::{flush, write_json_line, write_line};

#[derive(Debug, clap::Args)]
pub(crate) struct LeasesArgs {
    /// The application name, which names the lease table.
    #[arg(long)]
    app: String,
    /// One JSON object per lease instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Option<LeasesCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum LeasesCommand {
    /// Move a shard's checkpoint (back) to a position. The lease is taken,
    /// checkpointed and released, each write conditional on the counter.
    Reset {
        /// The lease key (shard id, or the multi-stream key).
        #[arg(long)]
        shard: String,
        /// `trim-horizon`, `latest` or a sequence number.
        #[arg(long)]
        to: String,
        /// Reset a lease another worker holds (it loses the lease).
        #[arg(long)]
        force: bool,
    },
}

/// The owner name operator writes use while they hold a lease.
const OPERATOR: &str = "rkcl-operator";

pub(crate) async fn run(aws: &AwsArgs, args: LeasesArgs) -> anyhow::Result<ExitCode> {
    let store = aws.lease_store(&args.app).await?;
    match args.command {
        None => list(&store, &args.app, args.json).await,
        Some(LeasesCommand::Reset { shard, to, force }) => reset(&store, &shard, &to, force).await,
    }
}

/// A lease's state in a word: finished, handing-off, owned or unowned.
pub(crate) fn state(lease: &Lease) -> &'static str {
    match (&lease.checkpoint, &lease.owner, &lease.checkpoint_owner) {
        (ExtendedSequenceNumber::ShardEnd, _, _) => "finished",
        (_, _, Some(_)) => "handing-off",
        (_, Some(_), None) => "owned",
        (_, None, None) => "unowned",
    }
}

/// A checkpoint as a sequence number, or its sentinel's name.
pub(crate) fn checkpoint_text(checkpoint: &ExtendedSequenceNumber) -> String {
    match checkpoint.sequence_number() {
        Some(seq) => seq.to_string(),
        None => checkpoint.to_string(),
    }
}

fn ids(ids: &[rkcl::ShardId]) -> Vec<&str> {
    ids.iter().map(rkcl::ShardId::as_str).collect()
}

async fn list(store: &rkcl::DynamoDbLeaseStore, app: &str, json: bool) -> anyhow::Result<ExitCode> {
    let mut leases = store
        .list()
        .await
        .with_context(|| format!("lease table {app}"))?;
    leases.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = std::io::stdout().lock();
    if !json {
        write_line(
            &mut out,
            &format!(
                "{:<24} {:<24} {:>8} {:<58} {:>7} {:<12} {:<24} {:<24}",
                "SHARD",
                "OWNER",
                "COUNTER",
                "CHECKPOINT",
                "SUB-SEQ",
                "STATE",
                "PARENTS",
                "CHILDREN"
            ),
        )?;
    }
    let mut stream = None;
    for lease in &leases {
        // A multi-stream table: one heading per stream, then its leases by
        // shard id.
        if !json
            && let Some(id) = lease.key.stream_identifier()
            && stream != Some(id)
        {
            stream = Some(id);
            if !write_line(&mut out, &stream_heading(id, &leases))? {
                return Ok(ExitCode::SUCCESS);
            }
        }
        let ok = if json {
            write_json_line(
                &mut out,
                &serde_json::json!({
                    "lease_key": lease.key.as_str(),
                    "stream": lease.key.stream_identifier(),
                    "shard_id": lease.shard_id().as_str(),
                    "owner": lease.owner,
                    "counter": lease.counter,
                    "checkpoint": checkpoint_text(&lease.checkpoint),
                    "checkpoint_sub_sequence_number": lease.checkpoint.sub_sequence_number(),
                    "pending_checkpoint": lease.pending_checkpoint.as_ref().map(checkpoint_text),
                    "owner_switches_since_checkpoint": lease.owner_switches_since_checkpoint,
                    "parent_shard_ids": ids(&lease.parent_shard_ids),
                    "child_shard_ids": ids(&lease.child_shard_ids),
                    "checkpoint_owner": lease.checkpoint_owner,
                    "state": state(lease),
                }),
            )?
        } else {
            write_line(
                &mut out,
                &format!(
                    "{:<24} {:<24} {:>8} {:<58} {:>7} {:<12} {:<24} {:<24}",
                    lease.shard_id(),
                    lease.owner.as_deref().unwrap_or("-"),
                    lease.counter,
                    checkpoint_text(&lease.checkpoint),
                    lease.checkpoint.sub_sequence_number(),
                    state(lease),
                    ids(&lease.parent_shard_ids).join(","),
                    ids(&lease.child_shard_ids).join(","),
                ),
            )?
        };
        if !ok {
            return Ok(ExitCode::SUCCESS);
        }
    }
    flush(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// The line above a stream's leases: its identifier and how many leases
/// it has, held and finished.
fn stream_heading(stream: &str, leases: &[Lease]) -> String {
    let of_stream: Vec<&Lease> = leases
        .iter()
        .filter(|l| l.key.stream_identifier() == Some(stream))
        .collect();
    let held = of_stream.iter().filter(|l| l.owner.is_some()).count();
    let finished = of_stream
        .iter()
        .filter(|l| l.checkpoint == ExtendedSequenceNumber::ShardEnd)
        .count();
    format!(
        "stream {stream}: {} leases, {held} held, {finished} finished",
        of_stream.len()
    )
}

async fn reset(
    store: &rkcl::DynamoDbLeaseStore,
    key: &str,
    to: &str,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let position = match to {
        "trim-horizon" => ExtendedSequenceNumber::TrimHorizon,
        "latest" => ExtendedSequenceNumber::Latest,
        seq => ExtendedSequenceNumber::new(
            seq.parse().with_context(|| {
                format!("--to takes trim-horizon, latest or a sequence number, got {seq:?}")
            })?,
            0,
        ),
    };
    let lease_key = LeaseKey::parse(key)?;
    let lease = store
        .get(&lease_key)
        .await?
        .with_context(|| format!("no lease {key} in table {}", store.table()))?;
    if let Some(owner) = &lease.owner
        && !force
    {
        bail!("lease {key} is owned by {owner}; stop that worker first or pass --force");
    }
    let lost = || anyhow::anyhow!("lease {key} changed while it was being reset; try again");
    let taken = store.take(&lease, OPERATOR).await?.ok_or_else(lost)?;
    let checkpointed = store
        .update_checkpoint(&taken, &position)
        .await?
        .ok_or_else(lost)?;
    store.release(&checkpointed).await?.ok_or_else(lost)?;
    let mut out = std::io::stdout().lock();
    write_line(
        &mut out,
        &format!("reset {key} to {}", checkpoint_text(&position)),
    )?;
    Ok(ExitCode::SUCCESS)
}
