//! The lease stores: the testkit's conformance suite for the in-memory store
//! and the DynamoDB store (on the local DynamoDB), and the DynamoDB table
//! checked against the Java KCL's schema both ways.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use rkcl::{
    ExtendedSequenceNumber, SequenceNumber, ShardId,
    leases::{InMemoryLeaseStore, LeaseStore},
    model::HashKey,
};
use rkcl_local::Local;
use rkcl_local::testkit::{lease_key, lease_store_conformance, lease_table, sample_lease};

fn seq(text: &str) -> SequenceNumber {
    text.parse().unwrap()
}

#[tokio::test]
async fn the_in_memory_store_conforms() {
    lease_store_conformance(&InMemoryLeaseStore::new()).await;
}

#[tokio::test]
async fn the_dynamodb_store_conforms_and_counts_its_requests() {
    let local = Local::start().await.unwrap();
    let store = lease_table(&local, "conformance").await;
    // A second start finds the table and does not create it again.
    store.ensure_table(Duration::from_secs(10)).await.unwrap();
    lease_store_conformance(&store).await;
    let requests = store.requests();
    assert!(requests.update_item >= 15, "{requests:?}");
    assert_eq!(requests.put_item, 4);
    assert!(
        requests.get_item >= 5 && requests.scan >= 1 && requests.delete_item == 3,
        "{requests:?}"
    );
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

#[tokio::test]
async fn rkcl_writes_the_kcl_schema_attribute_by_attribute() {
    let local = Local::start().await.unwrap();
    let store = lease_table(&local, "schema").await;
    let mut lease = sample_lease("shardId-000000000007");
    lease.child_shard_ids = vec![ShardId::from("shardId-000000000009")];
    lease.pending_checkpoint = Some(ExtendedSequenceNumber::new(seq("42"), 3));
    assert!(store.create_if_absent(&lease).await.unwrap());
    let taken = store.take(&lease, "worker-1").await.unwrap().unwrap();
    store
        .update_checkpoint(
            &taken,
            &ExtendedSequenceNumber::new(
                seq("12345678901234567890123456789012345678901234567890"),
                4,
            ),
        )
        .await
        .unwrap()
        .unwrap();
    let item = local
        .dynamodb_client()
        .get_item()
        .table_name("schema")
        .key("leaseKey", s("shardId-000000000007"))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let expected: HashMap<&str, AttributeValue> = HashMap::from([
        ("leaseKey", s("shardId-000000000007")),
        ("leaseOwner", s("worker-1")),
        ("leaseCounter", n(2)),
        (
            "checkpoint",
            s("12345678901234567890123456789012345678901234567890"),
        ),
        ("checkpointSubSequenceNumber", n(4)),
        ("ownerSwitchesSinceCheckpoint", n(0)),
        ("startingHashKey", s("0")),
        ("endingHashKey", s(&(u128::MAX / 2).to_string())),
    ]);
    for (name, value) in &expected {
        assert_eq!(item.get(*name), Some(value), "attribute {name}");
    }
    let mut parents = item["parentShardId"].as_ss().unwrap().clone();
    parents.sort();
    assert_eq!(
        parents,
        vec!["shardId-000000000000", "shardId-000000000001"]
    );
    assert_eq!(
        item["childShardIds"].as_ss().unwrap(),
        &vec!["shardId-000000000009".to_owned()]
    );
    // The checkpoint cleared the pending checkpoint, as the KCL does.
    assert!(!item.contains_key("pendingCheckpoint"));
    assert!(!item.contains_key("pendingCheckpointSubSequenceNumber"));
    assert_eq!(item.len(), expected.len() + 2, "{item:?}");
}

#[tokio::test]
async fn a_table_written_by_the_kcl_is_read_and_its_other_items_left_alone() {
    let local = Local::start().await.unwrap();
    let store = lease_table(&local, "kcl-app").await;
    let client = local.dynamodb_client();
    let put = |item: Vec<(&str, AttributeValue)>| {
        let client = client.clone();
        let item: HashMap<String, AttributeValue> =
            item.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        async move {
            client
                .put_item()
                .table_name("kcl-app")
                .set_item(Some(item))
                .send()
                .await
                .unwrap()
        }
    };
    // A lease as KCL 2.x writes it, with attributes rkcl does not model.
    put(vec![
        ("leaseKey", s("shardId-000000000003")),
        ("leaseOwner", s("java-worker")),
        ("leaseCounter", n(41)),
        (
            "checkpoint",
            s("49590338271490256608559692538361571095921575989136654311"),
        ),
        ("checkpointSubSequenceNumber", n(2)),
        ("ownerSwitchesSinceCheckpoint", n(1)),
        (
            "parentShardId",
            AttributeValue::Ss(vec!["shardId-000000000001".into()]),
        ),
        (
            "pendingCheckpoint",
            s("49590338271490256608559692538361571095921575989136654400"),
        ),
        ("pendingCheckpointSubSequenceNumber", n(0)),
        (
            "pendingCheckpointState",
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(vec![1, 2])),
        ),
        ("startingHashKey", s("0")),
        (
            "endingHashKey",
            s("170141183460469231731687303715884105727"),
        ),
        ("throughputKBps", AttributeValue::N("12.500000".into())),
    ])
    .await;
    // A KCL 3.5 lease with its entity type, and a finished one.
    put(vec![
        ("leaseKey", s("shardId-000000000004")),
        ("leaseCounter", n(3)),
        ("checkpoint", s("SHARD_END")),
        ("checkpointSubSequenceNumber", n(0)),
        ("ownerSwitchesSinceCheckpoint", n(0)),
        ("entityType", s("LEASE")),
        (
            "childShardIds",
            AttributeValue::Ss(vec![
                "shardId-000000000006".into(),
                "shardId-000000000005".into(),
            ]),
        ),
    ])
    .await;
    // KCL 3.5 items that are not leases.
    put(vec![
        ("leaseKey", s("java-worker")),
        ("entityType", s("WORKER_METRIC_STATS")),
        ("lut", n(1_700_000_000)),
    ])
    .await;
    put(vec![
        ("leaseKey", s("Leader")),
        ("entityType", s("LEADER")),
        ("ownerName", s("java-worker")),
    ])
    .await;
    put(vec![
        ("leaseKey", s("Migration3.0")),
        ("entityType", s("CLIENT_VERSION_MIGRATION")),
        ("cv", s("CLIENT_VERSION_3X")),
    ])
    .await;

    let mut leases = store.list().await.unwrap();
    leases.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(leases.len(), 2, "{leases:?}");
    let java = &leases[0];
    assert_eq!(java.owner.as_deref(), Some("java-worker"));
    assert_eq!(java.counter, 41);
    assert_eq!(
        java.checkpoint,
        ExtendedSequenceNumber::new(
            seq("49590338271490256608559692538361571095921575989136654311"),
            2
        )
    );
    assert_eq!(
        java.pending_checkpoint,
        Some(ExtendedSequenceNumber::new(
            seq("49590338271490256608559692538361571095921575989136654400"),
            0
        ))
    );
    assert_eq!(
        java.parent_shard_ids,
        vec![ShardId::from("shardId-000000000001")]
    );
    assert_eq!(
        java.hash_key_range.unwrap().end(),
        HashKey::from_u128(u128::MAX / 2)
    );
    assert_eq!(leases[1].checkpoint, ExtendedSequenceNumber::ShardEnd);
    assert_eq!(
        leases[1].child_shard_ids,
        vec![
            ShardId::from("shardId-000000000005"),
            ShardId::from("shardId-000000000006")
        ]
    );
    assert!(
        store.get(&lease_key("Leader")).await.unwrap().is_none(),
        "a non-lease item read as a lease"
    );

    // Taking and checkpointing keeps attributes rkcl does not model.
    let taken = store.take(java, "rkcl-worker").await.unwrap().unwrap();
    store
        .update_checkpoint(
            &taken,
            &ExtendedSequenceNumber::new(
                seq("49590338271490256608559692538361571095921575989136654500"),
                0,
            ),
        )
        .await
        .unwrap()
        .unwrap();
    let raw = client
        .get_item()
        .table_name("kcl-app")
        .key("leaseKey", s("shardId-000000000003"))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let throughput: f64 = raw["throughputKBps"].as_n().unwrap().parse().unwrap();
    assert_eq!(throughput, 12.5);
    assert_eq!(raw["leaseCounter"], n(43));
    // Non-lease items are untouched.
    let leader = client
        .get_item()
        .table_name("kcl-app")
        .key("leaseKey", s("Leader"))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(leader.len(), 3);
}

#[tokio::test]
async fn a_malformed_lease_is_a_clear_error() {
    let local = Local::start().await.unwrap();
    let store = lease_table(&local, "broken").await;
    local
        .dynamodb_client()
        .put_item()
        .table_name("broken")
        .item("leaseKey", s("shardId-1"))
        .item("leaseCounter", s("not a number"))
        .item("checkpoint", s("TRIM_HORIZON"))
        .send()
        .await
        .unwrap();
    let err = store.list().await.unwrap_err();
    assert!(matches!(err, rkcl::Error::InvalidInput(_)));
    assert!(
        err.to_string().contains("shardId-1") && err.to_string().contains("leaseCounter"),
        "{err}"
    );
}
