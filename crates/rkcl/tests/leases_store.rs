//! The lease stores: one conformance suite for the in-memory store and the
//! DynamoDB store (on the local DynamoDB), and the DynamoDB table checked
//! against the Java KCL's schema both ways.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use rkcl::{
    DynamoDbLeaseStore, ExtendedSequenceNumber, HashKey, HashKeyRange, InMemoryLeaseStore, Lease,
    LeaseStore, SequenceNumber, ShardId,
};
use rkcl_local::Local;

fn seq(text: &str) -> SequenceNumber {
    text.parse().unwrap()
}

fn full_lease(key: &str) -> Lease {
    Lease {
        parent_shard_ids: vec![
            ShardId::from("shardId-000000000000"),
            ShardId::from("shardId-000000000001"),
        ],
        hash_key_range: Some(
            HashKeyRange::new(HashKey::from_u128(0), HashKey::from_u128(u128::MAX / 2)).unwrap(),
        ),
        ..Lease::new(key, ExtendedSequenceNumber::TrimHorizon)
    }
}

/// What every lease store must do.
async fn conformance(store: &impl LeaseStore) {
    let key = "shardId-000000000002";
    let lease = full_lease(key);
    assert!(store.create_if_absent(&lease).await.unwrap());
    assert!(
        !store.create_if_absent(&lease).await.unwrap(),
        "created twice"
    );
    assert_eq!(store.get(key).await.unwrap().as_ref(), Some(&lease));
    assert!(store.get("shardId-999").await.unwrap().is_none());

    // Take, renew; a stale copy loses cleanly.
    let w1 = store
        .take(&lease, "worker-1")
        .await
        .unwrap()
        .expect("unowned lease taken");
    assert_eq!(
        (
            w1.owner.as_deref(),
            w1.counter,
            w1.owner_switches_since_checkpoint
        ),
        (Some("worker-1"), 1, 1)
    );
    assert!(
        store.take(&lease, "worker-2").await.unwrap().is_none(),
        "take with a stale counter"
    );
    let w1 = store.renew(&w1).await.unwrap().expect("renewed");
    assert_eq!(w1.counter, 2);

    // Another worker takes it; the old owner's renew and checkpoint fail.
    let w2 = store.take(&w1, "worker-2").await.unwrap().expect("stolen");
    assert_eq!(
        (
            w2.owner.as_deref(),
            w2.counter,
            w2.owner_switches_since_checkpoint
        ),
        (Some("worker-2"), 3, 2)
    );
    assert!(
        store.renew(&w1).await.unwrap().is_none(),
        "a stale owner renewed"
    );
    let position = ExtendedSequenceNumber::new(
        seq("49590338271490256608559692538361571095921575989136654311"),
        7,
    );
    assert!(
        store
            .update_checkpoint(&w1, &position)
            .await
            .unwrap()
            .is_none(),
        "a zombie checkpointed"
    );

    // The owner checkpoints at (sequence, sub-sequence).
    let w2 = store
        .update_checkpoint(&w2, &position)
        .await
        .unwrap()
        .expect("checkpointed");
    assert_eq!(w2.checkpoint, position);
    assert_eq!((w2.counter, w2.owner_switches_since_checkpoint), (4, 0));
    assert_eq!(store.get(key).await.unwrap().unwrap().checkpoint, position);

    // Release for a fast handoff; then nobody can renew or release it.
    let released = store.release(&w2).await.unwrap().expect("released");
    assert_eq!((released.owner.as_deref(), released.counter), (None, 5));
    assert!(
        store.renew(&released).await.unwrap().is_none(),
        "renewed an unowned lease"
    );
    assert!(
        store.release(&w2).await.unwrap().is_none(),
        "released twice"
    );

    // Evict works on whoever holds it, if the counter matches.
    let w3 = store.take(&released, "worker-3").await.unwrap().unwrap();
    assert!(store.evict(&released).await.unwrap().is_none());
    let evicted = store.evict(&w3).await.unwrap().unwrap();
    assert_eq!(evicted.owner, None);

    // Sentinels and SHARD_END round-trip.
    let w4 = store.take(&evicted, "worker-4").await.unwrap().unwrap();
    let end = store
        .update_checkpoint(&w4, &ExtendedSequenceNumber::ShardEnd)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.get(key).await.unwrap().unwrap().checkpoint,
        ExtendedSequenceNumber::ShardEnd
    );

    // Delete only with the current counter.
    assert!(!store.delete(&w4).await.unwrap());
    assert!(store.delete(&end).await.unwrap());
    assert!(store.get(key).await.unwrap().is_none());

    handoff_conformance(store).await;

    // Multi-stream keys.
    let multi = Lease::new(
        "123456789012:orders:1700000000:shardId-000000000005",
        ExtendedSequenceNumber::Latest,
    );
    assert!(store.create_if_absent(&multi).await.unwrap());
    assert_eq!(multi.shard_id(), ShardId::from("shardId-000000000005"));
    let listed = store.list().await.unwrap();
    assert_eq!(listed, vec![multi.clone()]);

    // Races: of two takes of the same copy, exactly one wins.
    let (a, b) = tokio::join!(store.take(&multi, "a"), store.take(&multi, "b"));
    assert_eq!(
        [a.unwrap().is_some(), b.unwrap().is_some()]
            .iter()
            .filter(|won| **won)
            .count(),
        1
    );
}

/// A graceful handoff: the old owner keeps the lease (and may checkpoint)
/// until it releases it; the next owner cannot write before that.
async fn handoff_conformance(store: &impl LeaseStore) {
    let key = "shardId-000000000007";
    let lease = Lease::new(key, ExtendedSequenceNumber::TrimHorizon);
    assert!(store.create_if_absent(&lease).await.unwrap());
    assert!(
        store.hand_off(&lease, "new").await.unwrap().is_none(),
        "handed off an unowned lease"
    );
    let old = store.take(&lease, "old").await.unwrap().unwrap();
    let pending = store
        .hand_off(&old, "new")
        .await
        .unwrap()
        .expect("handoff started");
    assert_eq!(
        (
            pending.owner.as_deref(),
            pending.checkpoint_owner.as_deref(),
            pending.holder(),
            pending.counter,
            pending.owner_switches_since_checkpoint,
        ),
        (Some("new"), Some("old"), Some("old"), old.counter + 1, 2)
    );
    assert!(
        store.hand_off(&pending, "third").await.unwrap().is_none(),
        "a second handoff while one is in progress"
    );

    // The old owner's stale copy still renews: it learns of the handoff.
    let adopted = store
        .renew(&old)
        .await
        .unwrap()
        .expect("the holder keeps the lease during a handoff");
    assert_eq!(adopted.checkpoint_owner.as_deref(), Some("old"));
    assert_eq!(adopted.counter, pending.counter + 1);

    // The next owner cannot renew or checkpoint yet.
    let early = Lease {
        checkpoint_owner: None,
        ..adopted.clone()
    };
    assert!(store.renew(&early).await.unwrap().is_none());
    let position = ExtendedSequenceNumber::new(seq("12345"), 3);
    assert!(
        store
            .update_checkpoint(&early, &position)
            .await
            .unwrap()
            .is_none()
    );

    // The old owner checkpoints and lets go; the owner stays the next one.
    let checkpointed = store
        .update_checkpoint(&adopted, &position)
        .await
        .unwrap()
        .expect("the holder checkpoints");
    assert_eq!(checkpointed.checkpoint, position);
    let handed = store
        .release(&checkpointed)
        .await
        .unwrap()
        .expect("released to the next owner");
    assert_eq!(
        (
            handed.owner.as_deref(),
            handed.checkpoint_owner.as_deref(),
            handed.counter
        ),
        (Some("new"), None, checkpointed.counter + 1)
    );
    assert!(
        store.renew(&checkpointed).await.unwrap().is_none(),
        "the old owner renewed after letting go"
    );
    let new = store
        .renew(&handed)
        .await
        .unwrap()
        .expect("new owner renews");
    assert_eq!(new.checkpoint, position);

    // The next owner withdraws a handoff it no longer wants: the holder owns
    // the lease again, and its copy from during the handoff still renews.
    let asked = store.hand_off(&new, "leaving").await.unwrap().unwrap();
    let during = store.renew(&asked).await.unwrap().unwrap();
    assert!(
        store.withdraw_handoff(&new).await.unwrap().is_none(),
        "withdrew with a stale copy"
    );
    let withdrawn = store
        .withdraw_handoff(&during)
        .await
        .unwrap()
        .expect("handoff withdrawn");
    assert_eq!(
        (
            withdrawn.owner.as_deref(),
            withdrawn.checkpoint_owner.as_deref(),
            withdrawn.counter
        ),
        (Some("new"), None, during.counter + 1)
    );
    assert!(
        store.withdraw_handoff(&withdrawn).await.unwrap().is_none(),
        "withdrew without a handoff"
    );
    let kept = store
        .renew(&during)
        .await
        .unwrap()
        .expect("the holder keeps the lease after a withdrawn handoff");
    assert_eq!(
        (kept.owner.as_deref(), kept.checkpoint_owner.as_deref()),
        (Some("new"), None)
    );
    let leaving = Lease {
        checkpoint_owner: None,
        ..during.clone()
    };
    assert!(
        store.renew(&leaving).await.unwrap().is_none(),
        "the withdrawn next owner renewed"
    );

    // An operator's evict ends a handoff too.
    let again = store.hand_off(&kept, "other").await.unwrap().unwrap();
    let evicted = store.evict(&again).await.unwrap().unwrap();
    assert_eq!((&evicted.owner, &evicted.checkpoint_owner), (&None, &None));
    assert!(store.delete(&evicted).await.unwrap());
}

#[tokio::test]
async fn the_in_memory_store_conforms() {
    conformance(&InMemoryLeaseStore::new()).await;
}

async fn dynamodb_store(local: &Local, table: &str) -> DynamoDbLeaseStore {
    let store = DynamoDbLeaseStore::new(local.dynamodb_client(), table);
    store.ensure_table(Duration::from_secs(10)).await.unwrap();
    store
}

#[tokio::test]
async fn the_dynamodb_store_conforms_and_counts_its_requests() {
    let local = Local::start().await.unwrap();
    let store = dynamodb_store(&local, "conformance").await;
    // A second start finds the table and does not create it again.
    store.ensure_table(Duration::from_secs(10)).await.unwrap();
    conformance(&store).await;
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
    let store = dynamodb_store(&local, "schema").await;
    let mut lease = full_lease("shardId-000000000007");
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
    let store = dynamodb_store(&local, "kcl-app").await;
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
        store.get("Leader").await.unwrap().is_none(),
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
    let store = dynamodb_store(&local, "broken").await;
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
