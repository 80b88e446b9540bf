//! The shards of a stream as a family tree: parents, children, open or closed.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::ShardId;
use crate::shards::Shard;

/// The shards of a stream with their parent and child links.
///
/// Parents that are no longer listed (trimmed after the retention period)
/// count as finished: a shard whose parents are all absent can be read at
/// once.
#[derive(Clone, Debug, Default)]
pub struct ShardGraph {
    shards: BTreeMap<ShardId, Shard>,
    children: BTreeMap<ShardId, BTreeSet<ShardId>>,
}

impl ShardGraph {
    /// The graph of `shards` as ListShards returned them.
    pub fn new(shards: impl IntoIterator<Item = Shard>) -> Self {
        let mut graph = Self::default();
        graph.extend(shards);
        graph
    }

    /// Adds shards learned later (after a reshard); known ones are updated.
    pub fn extend(&mut self, shards: impl IntoIterator<Item = Shard>) {
        for shard in shards {
            for parent in shard.parents() {
                self.children
                    .entry(parent.clone())
                    .or_default()
                    .insert(shard.id.clone());
            }
            self.shards.insert(shard.id.clone(), shard);
        }
    }

    /// The shard with this id.
    pub fn get(&self, id: &ShardId) -> Option<&Shard> {
        self.shards.get(id)
    }

    /// Every shard, by id.
    pub fn shards(&self) -> impl Iterator<Item = &Shard> {
        self.shards.values()
    }

    /// The children of a shard (two for a split, one for a merge).
    pub fn children(&self, id: &ShardId) -> impl Iterator<Item = &ShardId> {
        self.children.get(id).into_iter().flatten()
    }

    /// The parents of a shard that are still listed.
    pub fn listed_parents<'a>(&'a self, shard: &'a Shard) -> impl Iterator<Item = &'a ShardId> {
        shard
            .parents()
            .filter(|parent| self.shards.contains_key(*parent))
    }

    /// Shards none of whose parents are listed: where reading from the
    /// oldest data starts.
    pub fn roots(&self) -> impl Iterator<Item = &Shard> {
        self.shards
            .values()
            .filter(|shard| self.listed_parents(shard).next().is_none())
    }

    /// The open shards: where reading from the newest data starts.
    pub fn open_shards(&self) -> impl Iterator<Item = &Shard> {
        self.shards.values().filter(|shard| shard.is_open())
    }

    /// Whether every listed parent of `shard` is in `finished`.
    pub fn parents_finished(&self, shard: &Shard, finished: &BTreeSet<ShardId>) -> bool {
        self.listed_parents(shard)
            .all(|parent| finished.contains(parent))
    }
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
            hash_key_range: HashKeyRange::new(HashKey::MIN, HashKey::MAX).unwrap(),
            starting_sequence_number: SequenceNumber::from_u128(1),
            ending_sequence_number: (!open).then(|| SequenceNumber::from_u128(2)),
        }
    }

    #[test]
    fn a_merge_child_waits_for_both_parents() {
        // 0 splits into 1 and 2; 1 and 2 merge into 3. Shard 9 lost its
        // parent to the retention period.
        let graph = ShardGraph::new([
            shard("0", &[], false),
            shard("1", &["0"], false),
            shard("2", &["0"], false),
            shard("3", &["1", "2"], true),
            shard("9", &["gone"], true),
        ]);
        let roots: Vec<_> = graph.roots().map(|s| s.id.as_str()).collect();
        assert_eq!(roots, vec!["0", "9"]);
        let children: Vec<_> = graph
            .children(&ShardId::from("0"))
            .map(ShardId::as_str)
            .collect();
        assert_eq!(children, vec!["1", "2"]);
        let merged = graph.get(&ShardId::from("3")).unwrap();
        let mut finished = BTreeSet::from([ShardId::from("0"), ShardId::from("1")]);
        assert!(!graph.parents_finished(merged, &finished));
        finished.insert(ShardId::from("2"));
        assert!(graph.parents_finished(merged, &finished));
        let open: Vec<_> = graph.open_shards().map(|s| s.id.as_str()).collect();
        assert_eq!(open, vec!["3", "9"]);
    }
}
