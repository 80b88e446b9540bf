//! Shards as ListShards describes them, and a map from hash key to shard.

use crate::model::{HashKey, HashKeyRange, SequenceNumber, ShardId};

/// One shard of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The shard's id.
    pub id: ShardId,
    /// The shard it was split from, or the first of the two it was merged from.
    pub parent_shard_id: Option<ShardId>,
    /// The second shard of a merge.
    pub adjacent_parent_shard_id: Option<ShardId>,
    /// The hash keys the shard receives.
    pub hash_key_range: HashKeyRange,
    /// The first sequence number of the shard.
    pub starting_sequence_number: SequenceNumber,
    /// The last sequence number of a closed shard; `None` while it is open.
    pub ending_sequence_number: Option<SequenceNumber>,
}

impl Shard {
    /// Whether the shard still receives records.
    pub fn is_open(&self) -> bool {
        self.ending_sequence_number.is_none()
    }

    /// The shard's parents: none, one (a split child) or two (a merge child).
    pub fn parents(&self) -> impl Iterator<Item = &ShardId> {
        self.parent_shard_id
            .iter()
            .chain(self.adjacent_parent_shard_id.iter())
    }
}

/// The open shards of a stream by hash-key range: which shard a record with
/// a given hash key goes to.
#[derive(Clone, Debug, Default)]
pub struct ShardMap {
    /// Open shards sorted by the start of their range.
    open: Vec<Shard>,
}

impl ShardMap {
    /// A map of the open shards among `shards`.
    pub fn new(shards: impl IntoIterator<Item = Shard>) -> Self {
        let mut open: Vec<Shard> = shards.into_iter().filter(Shard::is_open).collect();
        open.sort_by_key(|shard| shard.hash_key_range.start());
        Self { open }
    }

    /// The open shard whose range holds `key`, if any.
    pub fn shard_for(&self, key: HashKey) -> Option<&Shard> {
        let after = self
            .open
            .partition_point(|shard| shard.hash_key_range.start() <= key);
        let candidate = self.open.get(after.checked_sub(1)?)?;
        candidate.hash_key_range.contains(key).then_some(candidate)
    }

    /// The open shard with the given id.
    pub fn get(&self, id: &ShardId) -> Option<&Shard> {
        self.open.iter().find(|shard| &shard.id == id)
    }

    /// The open shards, by start of range.
    pub fn open_shards(&self) -> &[Shard] {
        &self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, start: u128, end: u128, open: bool) -> Shard {
        Shard {
            id: ShardId::from(id),
            parent_shard_id: None,
            adjacent_parent_shard_id: None,
            hash_key_range: HashKeyRange::new(HashKey::from_u128(start), HashKey::from_u128(end))
                .unwrap(),
            starting_sequence_number: SequenceNumber::from_u128(0),
            ending_sequence_number: (!open).then(|| SequenceNumber::from_u128(9)),
        }
    }

    #[test]
    fn finds_the_open_shard_of_a_key() {
        let map = ShardMap::new([
            shard("b", 100, u128::MAX, true),
            shard("a", 0, 99, true),
            shard("old", 0, u128::MAX, false),
        ]);
        assert_eq!(
            map.shard_for(HashKey::from_u128(0)).unwrap().id.as_str(),
            "a"
        );
        assert_eq!(
            map.shard_for(HashKey::from_u128(99)).unwrap().id.as_str(),
            "a"
        );
        assert_eq!(
            map.shard_for(HashKey::from_u128(100)).unwrap().id.as_str(),
            "b"
        );
        assert_eq!(map.shard_for(HashKey::MAX).unwrap().id.as_str(), "b");
        assert!(map.get(&ShardId::from("old")).is_none());
    }

    #[test]
    fn a_gap_has_no_shard() {
        let map = ShardMap::new([shard("a", 10, 20, true)]);
        assert!(map.shard_for(HashKey::from_u128(5)).is_none());
        assert!(map.shard_for(HashKey::from_u128(21)).is_none());
    }
}
