//! The conformance suite of the `LeaseStore` trait.

use rkcl::{
    ExtendedSequenceNumber, SequenceNumber, ShardId,
    leases::{Lease, LeaseStore},
    model::{HashKey, HashKeyRange, LeaseKey},
};

/// Parses a lease key written in a test.
///
/// # Panics
///
/// When `text` is not a lease key.
pub fn lease_key(text: &str) -> LeaseKey {
    LeaseKey::parse(text).unwrap_or_else(|err| panic!("{err}"))
}

fn seq(text: &str) -> SequenceNumber {
    text.parse().unwrap()
}

/// A lease with every shard attribute a lease can carry set: two parents
/// and the lower half of the hash-key range, at `TRIM_HORIZON`. The
/// conformance suite starts from it; a store's own schema tests can too.
pub fn sample_lease(key: &str) -> Lease {
    Lease {
        parent_shard_ids: vec![
            ShardId::from("shardId-000000000000"),
            ShardId::from("shardId-000000000001"),
        ],
        hash_key_range: Some(
            HashKeyRange::new(HashKey::from_u128(0), HashKey::from_u128(u128::MAX / 2)).unwrap(),
        ),
        ..Lease::new(lease_key(key), ExtendedSequenceNumber::TrimHorizon)
    }
}

/// Checks that `store` does what every [`LeaseStore`] must do; a store that
/// passes works under rkcl's lease coordinator.
///
/// `store` must start empty. The suite creates, reads, takes, renews,
/// steals, checkpoints, releases, evicts and deletes leases; runs graceful
/// handoffs (started, adopted by the holder's renewal, completed by its
/// release, withdrawn, ended by an evict); checks that every write with a
/// stale copy (an old counter or holder) loses as `Ok(None)`/`Ok(false)`
/// and that the counter grows by one with every write; round-trips
/// `SHARD_END` and (sequence, sub-sequence) checkpoints and a multi-stream
/// lease key; and races two takes of one copy, of which exactly one must
/// win. It leaves the store holding that multi-stream lease only.
///
/// ```no_run
/// # async fn example() {
/// rkcl_local::testkit::lease_store_conformance(&rkcl::leases::InMemoryLeaseStore::new()).await;
/// # }
/// ```
///
/// # Panics
///
/// At the first check the store fails, naming it, and on any error the
/// store returns.
pub async fn lease_store_conformance(store: &impl LeaseStore) {
    let key = &lease_key("shardId-000000000002");
    let lease = sample_lease(key.as_str());
    assert!(store.create_if_absent(&lease).await.unwrap());
    assert!(
        !store.create_if_absent(&lease).await.unwrap(),
        "created twice"
    );
    assert_eq!(store.get(key).await.unwrap().as_ref(), Some(&lease));
    assert!(
        store
            .get(&lease_key("shardId-999"))
            .await
            .unwrap()
            .is_none()
    );

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
        lease_key("123456789012:orders:1700000000:shardId-000000000005"),
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
    let key = &lease_key("shardId-000000000007");
    let lease = Lease::new(key.clone(), ExtendedSequenceNumber::TrimHorizon);
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
