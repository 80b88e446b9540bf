//! `rkcl leases` on the local DynamoDB.

use std::process::Command;

use aws_sdk_dynamodb::types::AttributeValue;
use rkcl::{
    ExtendedSequenceNumber, ShardId,
    leases::{Lease, LeaseStore},
};
use rkcl_local::Local;
use rkcl_local::testkit::{lease_key, lease_table};

fn rkcl(local: &Local) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rkcl"));
    command
        .env("AWS_ENDPOINT_URL_DYNAMODB", local.dynamodb_endpoint())
        .env("AWS_REGION", rkcl_local::REGION)
        .env("AWS_ACCESS_KEY_ID", rkcl_local::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", rkcl_local::SECRET_ACCESS_KEY)
        .env_remove("AWS_PROFILE");
    command
}

async fn run(command: Command) -> std::process::Output {
    let mut command = command;
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_leases_only_and_resets_with_care() {
    let local = Local::start().await.unwrap();
    let store = lease_table(&local, "orders-app").await;
    let owned = Lease::new(
        lease_key("shardId-000000000001"),
        ExtendedSequenceNumber::new("12345".parse().unwrap(), 3),
    );
    store.create_if_absent(&owned).await.unwrap();
    let owned = store.take(&owned, "worker-a").await.unwrap().unwrap();
    let finished = Lease {
        child_shard_ids: vec![ShardId::from("shardId-000000000002")],
        ..Lease::new(
            lease_key("shardId-000000000000"),
            ExtendedSequenceNumber::ShardEnd,
        )
    };
    store.create_if_absent(&finished).await.unwrap();
    local
        .dynamodb_client()
        .put_item()
        .table_name("orders-app")
        .item("leaseKey", AttributeValue::S("worker-a".into()))
        .item(
            "entityType",
            AttributeValue::S("WORKER_METRIC_STATS".into()),
        )
        .send()
        .await
        .unwrap();

    let mut list = rkcl(&local);
    list.args(["leases", "--app", "orders-app", "--json"]);
    let output = run(list).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "the worker-metrics item is not a lease");
    assert_eq!(lines[0]["lease_key"], "shardId-000000000000");
    assert_eq!(lines[0]["owner"], serde_json::Value::Null);
    assert_eq!(lines[0]["checkpoint"], "SHARD_END");
    assert_eq!(
        lines[0]["child_shard_ids"],
        serde_json::json!(["shardId-000000000002"])
    );
    assert_eq!(lines[0]["state"], "finished");
    assert_eq!(lines[1]["owner"], "worker-a");
    assert_eq!(lines[1]["counter"], 1);
    assert_eq!(lines[1]["checkpoint"], "12345");
    assert_eq!(lines[1]["checkpoint_sub_sequence_number"], 3);
    assert_eq!(lines[1]["parent_shard_ids"], serde_json::json!([]));

    let mut table = rkcl(&local);
    table.args(["leases", "--app", "orders-app"]);
    let output = run(table).await;
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 3);

    // An owned lease is not reset without --force.
    let mut reset = rkcl(&local);
    reset.args([
        "leases",
        "--app",
        "orders-app",
        "reset",
        "--shard",
        "shardId-000000000001",
        "--to",
        "trim-horizon",
    ]);
    let output = run(reset).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("owned by worker-a"));
    assert_eq!(store.get(&owned.key).await.unwrap().unwrap(), owned);

    let mut forced = rkcl(&local);
    forced.args([
        "leases",
        "--app",
        "orders-app",
        "reset",
        "--shard",
        "shardId-000000000001",
        "--to",
        "latest",
        "--force",
    ]);
    let output = run(forced).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reset = store.get(&owned.key).await.unwrap().unwrap();
    assert_eq!(
        (reset.checkpoint.clone(), reset.owner.clone()),
        (ExtendedSequenceNumber::Latest, None)
    );
    // The worker that held it has lost it: its renewal fails.
    assert!(store.renew(&owned).await.unwrap().is_none());

    let mut to_sequence = rkcl(&local);
    to_sequence.args([
        "leases",
        "--app",
        "orders-app",
        "reset",
        "--shard",
        "shardId-000000000001",
        "--to",
        "999",
    ]);
    assert!(run(to_sequence).await.status.success());
    assert_eq!(
        store.get(&owned.key).await.unwrap().unwrap().checkpoint,
        ExtendedSequenceNumber::new("999".parse().unwrap(), 0)
    );
    let metrics = local
        .dynamodb_client()
        .get_item()
        .table_name("orders-app")
        .key("leaseKey", AttributeValue::S("worker-a".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        metrics.item.unwrap().len(),
        2,
        "the non-lease item is untouched"
    );
}
