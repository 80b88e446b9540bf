//! Shard sync: one lease per shard, created in the order of the shard
//! hierarchy, and finished parents' leases cleaned up once their children
//! have progressed.
//!
//! Rules, the same on every worker, so workers syncing at once agree:
//! - A shard with a leased parent is a descendant: its lease starts at
//!   `TRIM_HORIZON` (its consumer waits until the parents are finished).
//! - Otherwise, with `TRIM_HORIZON` as initial position every shard gets a
//!   lease at `TRIM_HORIZON`; with `LATEST` or `AT_TIMESTAMP` only open shards
//!   get one, at that position (their closed ancestors are history).
//! - Parents are created before their children, so a child's lease never
//!   exists while a parent that will have a lease has none yet.
//! - A lease at `SHARD_END` is deleted once every child has a lease that
//!   has moved past `TRIM_HORIZON`, or once the shard is no longer listed.

use std::collections::{BTreeSet, HashMap};

use crate::aws::Kinesis;
use crate::aws::StreamRef;
use crate::error::Result;
use crate::leases::{Lease, LeaseStore};
use crate::model::{ExtendedSequenceNumber, InitialPosition, LeaseKey, ShardId, StreamIdentifier};
use crate::shards::Shard;

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SyncSummary {
    pub(crate) created: usize,
    pub(crate) deleted: usize,
}

/// The stream one sync brings in line with the lease table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SyncTarget<'a> {
    /// How calls name the stream.
    pub(crate) stream: &'a StreamRef,
    /// The stream's identifier in a multi-stream table (the prefix of its
    /// lease keys); `None` in a single-stream table, whose keys are shard
    /// ids.
    pub(crate) key_space: Option<&'a StreamIdentifier>,
    /// Where shards without a lease start.
    pub(crate) initial: &'a InitialPosition,
}

/// Lists the stream's shards and brings its leases among `leases` (the
/// whole table, as just read) in line; returns the shards.
pub(crate) async fn sync<S: LeaseStore>(
    kinesis: &Kinesis,
    target: SyncTarget<'_>,
    store: &S,
    leases: &[Lease],
) -> Result<(Vec<Shard>, SyncSummary)> {
    let shards = kinesis.list_shards(target.stream).await?;
    let space = target.key_space.map(ToString::to_string);
    let leases: Vec<Lease> = leases
        .iter()
        .filter(|lease| lease.key.stream_identifier() == space.as_deref())
        .cloned()
        .collect();
    let mut summary = SyncSummary::default();
    for lease in plan_new_leases(&shards, &leases, target.initial, target.key_space) {
        if store.create_if_absent(&lease).await? {
            tracing::info!(lease_key = %lease.key, checkpoint = %lease.checkpoint, "created a lease for a new shard");
            summary.created += 1;
        }
    }
    if summary.created > 0 {
        return Ok((shards, summary));
    }
    for lease in finished_leases_to_delete(&shards, &leases) {
        if store.delete(lease).await? {
            tracing::info!(lease_key = %lease.key, "deleted the lease of a finished shard");
            summary.deleted += 1;
        }
    }
    Ok((shards, summary))
}

/// The leases to create, parents before children.
pub(crate) fn plan_new_leases(
    shards: &[Shard],
    leases: &[Lease],
    initial: &InitialPosition,
    key_space: Option<&StreamIdentifier>,
) -> Vec<Lease> {
    let mut leased: BTreeSet<ShardId> = leases.iter().map(Lease::shard_id).collect();
    let by_id: HashMap<&ShardId, &Shard> = shards.iter().map(|s| (&s.id, s)).collect();
    let finished = with_leased_descendants(shards, &leased);
    let mut created = Vec::new();
    for shard in in_hierarchy_order(shards, &by_id) {
        if leased.contains(&shard.id) || finished.contains(&shard.id) {
            continue;
        }
        let descendant = shard.parents().any(|p| leased.contains(p));
        let checkpoint = if descendant {
            ExtendedSequenceNumber::TrimHorizon
        } else {
            match initial {
                InitialPosition::TrimHorizon => ExtendedSequenceNumber::TrimHorizon,
                InitialPosition::Latest if shard.is_open() => ExtendedSequenceNumber::Latest,
                InitialPosition::AtTimestamp(_) if shard.is_open() => {
                    ExtendedSequenceNumber::AtTimestamp
                }
                _ => continue,
            }
        };
        let key = match key_space {
            Some(stream) => LeaseKey::for_stream_shard(stream, &shard.id),
            None => LeaseKey::for_shard(&shard.id),
        };
        let mut lease = Lease::new(key, checkpoint);
        lease.parent_shard_ids = shard.parents().cloned().collect();
        lease.hash_key_range = Some(shard.hash_key_range);
        leased.insert(shard.id.clone());
        created.push(lease);
    }
    created
}

/// Shards with a leased child, grandchild, ...: finished history, whose
/// leases may already have been cleaned up and must not come back.
fn with_leased_descendants(shards: &[Shard], leased: &BTreeSet<ShardId>) -> BTreeSet<ShardId> {
    let mut finished = BTreeSet::new();
    let mut frontier: Vec<&ShardId> = leased.iter().collect();
    while let Some(id) = frontier.pop() {
        if let Some(shard) = shards.iter().find(|s| &s.id == id) {
            for parent in shard.parents() {
                if finished.insert(parent.clone()) {
                    frontier.push(parent);
                }
            }
        }
    }
    finished
}

/// Shards ordered so that every listed parent comes before its children.
fn in_hierarchy_order<'a>(
    shards: &'a [Shard],
    by_id: &HashMap<&ShardId, &'a Shard>,
) -> Vec<&'a Shard> {
    fn depth(shard: &Shard, by_id: &HashMap<&ShardId, &Shard>, seen: usize) -> usize {
        if seen > by_id.len() {
            return seen;
        }
        shard
            .parents()
            .filter_map(|p| by_id.get(p))
            .map(|parent| 1 + depth(parent, by_id, seen + 1))
            .max()
            .unwrap_or(0)
    }
    let mut ordered: Vec<(usize, &Shard)> =
        shards.iter().map(|s| (depth(s, by_id, 0), s)).collect();
    ordered.sort_by_key(|(depth, _)| *depth);
    ordered.into_iter().map(|(_, shard)| shard).collect()
}

/// Finished leases whose children have all progressed, or whose shard is
/// gone.
pub(crate) fn finished_leases_to_delete<'a>(
    shards: &[Shard],
    leases: &'a [Lease],
) -> Vec<&'a Lease> {
    let by_shard: HashMap<ShardId, &Lease> = leases.iter().map(|l| (l.shard_id(), l)).collect();
    let listed: BTreeSet<&ShardId> = shards.iter().map(|s| &s.id).collect();
    leases
        .iter()
        .filter(|lease| {
            lease.checkpoint == ExtendedSequenceNumber::ShardEnd && lease.owner.is_none()
        })
        .filter(|lease| {
            let id = lease.shard_id();
            if !listed.contains(&id) {
                return true;
            }
            let children: Vec<&Shard> = shards
                .iter()
                .filter(|s| s.parents().any(|p| *p == id))
                .collect();
            !children.is_empty()
                && children.iter().all(|child| {
                    by_shard.get(&child.id).is_some_and(|l| {
                        !matches!(
                            l.checkpoint,
                            ExtendedSequenceNumber::TrimHorizon
                                | ExtendedSequenceNumber::Latest
                                | ExtendedSequenceNumber::AtTimestamp
                        )
                    })
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HashKey, HashKeyRange, SequenceNumber};

    fn shard(id: &str, parents: &[&str], open: bool) -> Shard {
        Shard {
            id: ShardId::from(id),
            parent_shard_id: parents.first().map(|p| ShardId::from(*p)),
            adjacent_parent_shard_id: parents.get(1).map(|p| ShardId::from(*p)),
            hash_key_range: HashKeyRange::new(HashKey::from_u128(0), HashKey::from_u128(u128::MAX))
                .unwrap(),
            starting_sequence_number: SequenceNumber::from_u128(0),
            ending_sequence_number: (!open).then(|| "99".parse().unwrap()),
        }
    }

    fn keys(leases: &[Lease]) -> Vec<(String, ExtendedSequenceNumber)> {
        leases
            .iter()
            .map(|l| (l.key.to_string(), l.checkpoint.clone()))
            .collect()
    }

    #[test]
    fn trim_horizon_leases_every_shard_parents_first() {
        // Listed children first, to check the ordering.
        let shards = [
            shard("c", &["a", "b"], true),
            shard("a", &[], false),
            shard("b", &[], false),
        ];
        let planned = plan_new_leases(&shards, &[], &InitialPosition::TrimHorizon, None);
        let order: Vec<String> = planned.iter().map(|l| l.key.to_string()).collect();
        assert_eq!(order.last().map(String::as_str), Some("c"));
        assert!(
            planned
                .iter()
                .all(|l| l.checkpoint == ExtendedSequenceNumber::TrimHorizon)
        );
        let child = planned.iter().find(|l| l.key == "c").unwrap();
        assert_eq!(
            child.parent_shard_ids,
            vec![ShardId::from("a"), ShardId::from("b")]
        );
    }

    #[test]
    fn latest_skips_closed_ancestors_and_children_of_leased_shards_start_at_trim_horizon() {
        let shards = [shard("a", &[], false), shard("b", &["a"], true)];
        let planned = plan_new_leases(&shards, &[], &InitialPosition::Latest, None);
        assert_eq!(
            keys(&planned),
            vec![("b".to_owned(), ExtendedSequenceNumber::Latest)]
        );
        // Later, b splits: its children start at TRIM_HORIZON.
        let mut later = shards.to_vec();
        later.push(shard("d", &["b"], true));
        let planned_later = plan_new_leases(&later, &planned, &InitialPosition::Latest, None);
        assert_eq!(
            keys(&planned_later),
            vec![("d".to_owned(), ExtendedSequenceNumber::TrimHorizon)]
        );
    }

    #[test]
    fn multi_stream_leases_are_keyed_by_stream_and_children_by_their_parents_stream() {
        let stream = StreamIdentifier::parse("123:orders:17").unwrap();
        let shards = [shard("a", &[], false), shard("b", &["a"], true)];
        let planned = plan_new_leases(&shards, &[], &InitialPosition::TrimHorizon, Some(&stream));
        let keys: Vec<String> = planned.iter().map(|l| l.key.to_string()).collect();
        assert_eq!(keys, ["123:orders:17:a", "123:orders:17:b"]);
        // The child's parents are read as siblings of its own key.
        let child = &planned[1];
        assert_eq!(
            child.key.sibling(&child.parent_shard_ids[0]),
            "123:orders:17:a"
        );
        // Leases of one stream make another stream's shards no descendants.
        let other = StreamIdentifier::parse("123:payments:18").unwrap();
        let later = [shard("c", &["a"], true)];
        assert_eq!(
            keys_only(&plan_new_leases(
                &later,
                &[],
                &InitialPosition::Latest,
                Some(&other)
            )),
            ["123:payments:18:c"]
        );
    }

    fn keys_only(leases: &[Lease]) -> Vec<String> {
        leases.iter().map(|l| l.key.to_string()).collect()
    }

    #[test]
    fn a_cleaned_up_parent_is_not_created_again() {
        let shards = [shard("a", &[], false), shard("b", &["a"], true)];
        let child = Lease::new(
            crate::model::LeaseKey::parse("b").unwrap(),
            ExtendedSequenceNumber::new("5".parse().unwrap(), 0),
        );
        for initial in [InitialPosition::TrimHorizon, InitialPosition::Latest] {
            assert!(
                plan_new_leases(&shards, std::slice::from_ref(&child), &initial, None).is_empty()
            );
        }
    }

    #[test]
    fn a_finished_parent_is_deleted_only_after_its_children_progressed() {
        let shards = [shard("a", &[], false), shard("b", &["a"], true)];
        let mut parent = Lease::new(
            crate::model::LeaseKey::parse("a").unwrap(),
            ExtendedSequenceNumber::ShardEnd,
        );
        let mut child = Lease::new(
            crate::model::LeaseKey::parse("b").unwrap(),
            ExtendedSequenceNumber::TrimHorizon,
        );
        let both = [parent.clone(), child.clone()];
        assert!(finished_leases_to_delete(&shards, &both).is_empty());
        child.checkpoint = ExtendedSequenceNumber::new("5".parse().unwrap(), 0);
        let both = [parent.clone(), child.clone()];
        assert_eq!(finished_leases_to_delete(&shards, &both).len(), 1);
        // Still owned (its consumer is finishing): left alone.
        parent.owner = Some("w".into());
        let both = [parent, child];
        assert!(finished_leases_to_delete(&shards, &both).is_empty());
    }
}
