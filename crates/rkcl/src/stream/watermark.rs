//! A shard's commit watermark: records are delivered in shard order and
//! committed in any order; the watermark is the position of the last record
//! below which every record is committed. Only that is ever checkpointed.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::model::ExtendedSequenceNumber;

/// What became of a delivered record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// With the user, not committed yet.
    InHand,
    /// Committed.
    Committed,
    /// Dropped without a commit: it holds the watermark back for good (the
    /// shard resumes at it after a restart).
    Abandoned,
}

#[derive(Debug)]
struct Entry {
    position: ExtendedSequenceNumber,
    bytes: usize,
    delivered_at: Instant,
    fate: Fate,
}

/// Records and bytes that passed below the watermark (no longer in flight).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Passed {
    pub(crate) records: usize,
    pub(crate) bytes: usize,
}

/// The oldest record that holds the watermark back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Oldest {
    pub(crate) index: u64,
    pub(crate) position: ExtendedSequenceNumber,
    pub(crate) delivered_at: Instant,
    pub(crate) abandoned: bool,
}

/// Delivered records not yet below the watermark, in delivery order.
#[derive(Debug, Default)]
pub(crate) struct Watermark {
    /// The delivery index of the first entry.
    base: u64,
    entries: VecDeque<Entry>,
    /// Records delivered and neither committed nor dropped.
    in_hand: usize,
    mark: Option<ExtendedSequenceNumber>,
}

impl Watermark {
    /// Takes a record delivered to the user; returns its delivery index.
    pub(crate) fn deliver(
        &mut self,
        position: ExtendedSequenceNumber,
        bytes: usize,
        now: Instant,
    ) -> u64 {
        let index = self.base + self.entries.len() as u64;
        self.entries.push_back(Entry {
            position,
            bytes,
            delivered_at: now,
            fate: Fate::InHand,
        });
        self.in_hand += 1;
        index
    }

    /// Commits the record at `index`; returns what passed below the
    /// watermark. A second commit, or a commit of an unknown index, changes
    /// nothing.
    pub(crate) fn commit(&mut self, index: u64) -> Passed {
        self.settle(index, Fate::Committed);
        self.advance()
    }

    /// Notes that the record at `index` was dropped without a commit.
    pub(crate) fn abandon(&mut self, index: u64) {
        self.settle(index, Fate::Abandoned);
    }

    fn settle(&mut self, index: u64, fate: Fate) {
        let Some(offset) = index.checked_sub(self.base) else {
            return;
        };
        let Some(entry) = usize::try_from(offset)
            .ok()
            .and_then(|offset| self.entries.get_mut(offset))
        else {
            return;
        };
        if entry.fate == Fate::InHand {
            entry.fate = fate;
            self.in_hand -= 1;
        }
    }

    fn advance(&mut self) -> Passed {
        let mut passed = Passed::default();
        while self
            .entries
            .front()
            .is_some_and(|entry| entry.fate == Fate::Committed)
        {
            let Some(entry) = self.entries.pop_front() else {
                break;
            };
            self.base += 1;
            passed.records += 1;
            passed.bytes += entry.bytes;
            self.mark = Some(entry.position);
        }
        passed
    }

    /// The position below which every delivered record is committed, if
    /// any record was.
    pub(crate) fn mark(&self) -> Option<&ExtendedSequenceNumber> {
        self.mark.as_ref()
    }

    /// Records delivered and still with the user (neither committed nor
    /// dropped).
    pub(crate) fn in_hand(&self) -> usize {
        self.in_hand
    }

    /// Whether every delivered record is below the watermark.
    pub(crate) fn is_drained(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records and bytes above the watermark (in flight).
    pub(crate) fn in_flight(&self) -> Passed {
        Passed {
            records: self.entries.len(),
            bytes: self.entries.iter().map(|e| e.bytes).sum(),
        }
    }

    /// The record that holds the watermark back.
    pub(crate) fn oldest(&self) -> Option<Oldest> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, entry)| entry.fate != Fate::Committed)
            .map(|(offset, entry)| Oldest {
                index: self.base + offset as u64,
                position: entry.position.clone(),
                delivered_at: entry.delivered_at,
                abandoned: entry.fate == Fate::Abandoned,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SequenceNumber;
    use proptest::prelude::*;

    fn at(seq: u128, sub: u64) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::new(SequenceNumber::from_u128(seq), sub)
    }

    #[test]
    fn the_mark_stops_below_the_first_uncommitted_record() {
        let now = Instant::now();
        let mut marks = Watermark::default();
        let indexes: Vec<u64> = [(1, 0), (1, 1), (1, 2), (2, 0)]
            .iter()
            .map(|&(seq, sub)| marks.deliver(at(seq, sub), 10, now))
            .collect();
        assert_eq!(marks.commit(indexes[1]), Passed::default());
        assert_eq!(marks.mark(), None);
        assert_eq!(
            marks.commit(indexes[0]),
            Passed {
                records: 2,
                bytes: 20
            }
        );
        // Inside the aggregate: after sub-record 1, not beyond.
        assert_eq!(marks.mark(), Some(&at(1, 1)));
        marks.abandon(indexes[2]);
        assert_eq!(marks.commit(indexes[3]), Passed::default());
        assert_eq!(marks.mark(), Some(&at(1, 1)));
        assert_eq!(marks.in_hand(), 0);
        let oldest = marks.oldest().unwrap();
        assert_eq!((oldest.index, oldest.abandoned), (indexes[2], true));
        // A commit after the drop does not move it either.
        assert_eq!(marks.commit(indexes[2]), Passed::default());
        assert!(!marks.is_drained());
        assert_eq!(
            marks.in_flight(),
            Passed {
                records: 2,
                bytes: 20
            }
        );
    }

    proptest! {
        /// Whatever the commit order, the mark is the last record of the
        /// longest committed prefix, and everything passes exactly once.
        #[test]
        fn the_mark_is_the_committed_prefix(order in Just((0..50u64).collect::<Vec<_>>()).prop_shuffle(), cut in 0..50usize) {
            let now = Instant::now();
            let mut marks = Watermark::default();
            for i in 0..50u128 {
                marks.deliver(at(i / 5, (i % 5) as u64), 1, now);
            }
            let committed: Vec<u64> = order[..cut].to_vec();
            let mut passed = 0;
            for &index in &committed {
                passed += marks.commit(index).records;
            }
            let prefix = (0..50u64).take_while(|i| committed.contains(i)).count();
            prop_assert_eq!(passed, prefix);
            let expected = prefix.checked_sub(1).map(|last| at(last as u128 / 5, (last % 5) as u64));
            prop_assert_eq!(marks.mark().cloned(), expected);
            prop_assert_eq!(marks.in_hand(), 50 - cut);
        }
    }
}
