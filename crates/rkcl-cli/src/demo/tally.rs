//! What came out of the workers, counted by the demo itself: every delivery
//! of every record, whatever the worker says about it.
//!
//! Record `i` is written with partition key `key-{i % KEYS}` and the data
//! `"{key}:{number}:{produced_ms}"`, where `number = i / KEYS` and
//! `produced_ms` is when the demo put it (milliseconds since the run's
//! clock started). So a delivery names its record, its key, its place in the
//! key's order and its age, and the tally needs no other bookkeeping from
//! the producer than when each record was written.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use rkcl::ExtendedSequenceNumber;

/// How many distinct partition keys the demo writes.
pub(super) const KEYS: usize = 1_000;

/// The partition key of record `index`.
pub(super) fn partition_key(index: usize) -> String {
    format!("key-{}", index % KEYS)
}

/// The data of record `index`, written at `produced_ms`.
pub(super) fn record_data(index: usize, produced_ms: u32) -> String {
    format!("{}:{}:{produced_ms}", index % KEYS, index / KEYS)
}

/// Reads the data of a demo record: (record index, key, produced_ms).
fn parse_record(data: &[u8]) -> Option<(usize, usize, u32)> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.split(':');
    let key: usize = parts.next()?.parse().ok()?;
    let number: usize = parts.next()?.parse().ok()?;
    let produced_ms = parts.next()?.parse().ok()?;
    if key >= KEYS || parts.next().is_some() {
        return None;
    }
    Some((
        number.checked_mul(KEYS)?.checked_add(key)?,
        key,
        produced_ms,
    ))
}

/// A worker or shard, by its place in the tally's list of names.
pub(super) type NameId = u16;

/// The first delivery of a record: who, and where (a hash of the shard and
/// the position, so a later delivery can tell a re-delivery of the same
/// Kinesis record from a second copy written by the producer).
#[derive(Clone, Copy, Debug, Default)]
struct First {
    worker: NameId,
    position: u64,
}

/// A record delivered again at the position of its first delivery.
#[derive(Clone, Debug)]
pub(super) struct Redelivery {
    /// When it was delivered again, in milliseconds of the run.
    pub(super) at_ms: u32,
    /// The worker that delivered it first.
    pub(super) first_worker: NameId,
    /// The shard both deliveries came from.
    pub(super) shard: NameId,
    /// The record's position in the shard.
    pub(super) position: ExtendedSequenceNumber,
}

/// A stretch of deliveries of one shard by one worker, with no other
/// worker's delivery of that shard in between and no pause over
/// [`RUN_GAP_MS`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Run {
    /// The worker.
    pub(super) worker: NameId,
    /// Its first delivery in the stretch, in milliseconds of the run.
    pub(super) first_ms: u32,
    /// Its last delivery in the stretch.
    pub(super) last_ms: u32,
}

/// A pause in a worker's deliveries of a shard that starts a new [`Run`]:
/// records arrive several times a second while a worker reads a shard.
pub(super) const RUN_GAP_MS: u32 = 1_000;

/// Every delivery, counted.
#[derive(Debug)]
pub(super) struct Tally {
    /// Deliveries per record index.
    seen: Vec<u32>,
    /// When each record was put (milliseconds of the run), once it was.
    produced_ms: Vec<u32>,
    /// How many records have been put, a prefix of the indexes.
    produced: usize,
    /// Records delivered at least once.
    unique: usize,
    /// The lowest index not yet delivered.
    first_unseen: usize,
    /// The highest number first delivered per key.
    highest: Vec<Option<usize>>,
    /// First deliveries below the highest number of their key.
    out_of_order: usize,
    /// Every delivery of a demo record, duplicates included.
    deliveries: usize,
    /// Deliveries that were not demo records (or of a record not produced).
    unknown: usize,
    /// Names of workers and shards, by id.
    names: Vec<String>,
    ids: BTreeMap<String, NameId>,
    /// Deliveries per worker id.
    per_worker: BTreeMap<NameId, usize>,
    /// The first delivery of each record.
    first: Vec<First>,
    /// Deliveries again at the first position.
    redeliveries: Vec<Redelivery>,
    /// Deliveries again at another position: the record was written twice.
    produced_twice: usize,
    /// Put-to-delivery latency of every first delivery, in milliseconds.
    latencies_ms: Vec<u32>,
    /// The same, since the last [`take_interval_latencies`](Self::take_interval_latencies).
    interval_latencies_ms: Vec<u32>,
    /// Runs of deliveries per shard id.
    runs: BTreeMap<NameId, Vec<Run>>,
}

impl Tally {
    /// An empty tally for `records` records.
    pub(super) fn new(records: usize) -> Self {
        Self {
            seen: vec![0; records],
            produced_ms: vec![0; records],
            produced: 0,
            unique: 0,
            first_unseen: 0,
            highest: vec![None; KEYS],
            out_of_order: 0,
            deliveries: 0,
            unknown: 0,
            names: Vec::new(),
            ids: BTreeMap::new(),
            per_worker: BTreeMap::new(),
            first: vec![First::default(); records],
            redeliveries: Vec::new(),
            produced_twice: 0,
            latencies_ms: Vec::new(),
            interval_latencies_ms: Vec::new(),
            runs: BTreeMap::new(),
        }
    }

    /// The id of a worker or shard name, given on first use.
    pub(super) fn name_id(&mut self, name: &str) -> NameId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = NameId::try_from(self.names.len()).unwrap_or(NameId::MAX);
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), id);
        id
    }

    /// The name of an id ("?" for none).
    pub(super) fn name(&self, id: NameId) -> &str {
        self.names.get(usize::from(id)).map_or("?", String::as_str)
    }

    /// The id of a name already used.
    #[cfg(test)]
    pub(super) fn find(&self, name: &str) -> Option<NameId> {
        self.ids.get(name).copied()
    }

    /// Records `range` as put at `produced_ms`.
    pub(super) fn produced(&mut self, range: std::ops::Range<usize>, produced_ms: u32) {
        let end = range.end.min(self.produced_ms.len());
        if let Some(slots) = self.produced_ms.get_mut(range.start..end) {
            slots.fill(produced_ms);
        }
        self.produced = self.produced.max(end);
    }

    /// Counts one delivery of `data` by `worker` from `shard` at `position`,
    /// `at_ms` into the run.
    pub(super) fn deliver(
        &mut self,
        worker: NameId,
        shard: &str,
        position: &ExtendedSequenceNumber,
        data: &[u8],
        at_ms: u32,
    ) {
        let Some((index, key, produced_ms)) = parse_record(data) else {
            self.unknown += 1;
            return;
        };
        let shard = self.name_id(shard);
        let Some(count) = self.seen.get_mut(index) else {
            self.unknown += 1;
            return;
        };
        *count += 1;
        let count = *count;
        self.deliveries += 1;
        *self.per_worker.entry(worker).or_default() += 1;
        self.extend_run(shard, worker, at_ms);
        let position_hash = hash_position(shard, position);
        if count == 1 {
            self.unique += 1;
            if let Some(first) = self.first.get_mut(index) {
                *first = First {
                    worker,
                    position: position_hash,
                };
            }
            if let Some(highest) = self.highest.get_mut(key) {
                let number = index / KEYS;
                match highest {
                    Some(h) if number < *h => self.out_of_order += 1,
                    _ => *highest = Some(number),
                }
            }
            let latency = at_ms.saturating_sub(produced_ms);
            self.latencies_ms.push(latency);
            self.interval_latencies_ms.push(latency);
            while self.seen.get(self.first_unseen).is_some_and(|c| *c > 0) {
                self.first_unseen += 1;
            }
        } else if let Some(first) = self.first.get(index).copied() {
            if first.position == position_hash {
                self.redeliveries.push(Redelivery {
                    at_ms,
                    first_worker: first.worker,
                    shard,
                    position: position.clone(),
                });
            } else {
                self.produced_twice += 1;
            }
        }
    }

    fn extend_run(&mut self, shard: NameId, worker: NameId, at_ms: u32) {
        let runs = self.runs.entry(shard).or_default();
        match runs.last_mut() {
            Some(run)
                if run.worker == worker && at_ms.saturating_sub(run.last_ms) <= RUN_GAP_MS =>
            {
                run.last_ms = run.last_ms.max(at_ms);
            }
            _ => runs.push(Run {
                worker,
                first_ms: at_ms,
                last_ms: at_ms,
            }),
        }
    }

    /// How many records have been put.
    pub(super) fn produced_count(&self) -> usize {
        self.produced
    }

    /// How many records were delivered at least once.
    pub(super) fn unique(&self) -> usize {
        self.unique
    }

    /// Every delivery, duplicates included.
    pub(super) fn deliveries(&self) -> usize {
        self.deliveries
    }

    /// Deliveries that were not records the demo produced.
    pub(super) fn unknown(&self) -> usize {
        self.unknown
    }

    /// First deliveries that came after a later record of the same key.
    pub(super) fn out_of_order(&self) -> usize {
        self.out_of_order
    }

    /// How old the oldest record put but not yet delivered is, at `now_ms`;
    /// `None` when every record put has been delivered.
    pub(super) fn oldest_undelivered_ms(&self, now_ms: u32) -> Option<u32> {
        if self.first_unseen >= self.produced {
            return None;
        }
        let produced_ms = self.produced_ms.get(self.first_unseen).copied()?;
        Some(now_ms.saturating_sub(produced_ms))
    }

    /// Records put and never delivered, and extra deliveries.
    pub(super) fn lost_and_duplicates(&self) -> (usize, usize) {
        let (mut lost, mut duplicates) = (0, 0);
        for &count in self.seen.iter().take(self.produced) {
            match count {
                0 => lost += 1,
                n => duplicates += n as usize - 1,
            }
        }
        (lost, duplicates)
    }

    /// Deliveries per worker name.
    pub(super) fn per_worker(&self) -> BTreeMap<String, usize> {
        self.per_worker
            .iter()
            .map(|(id, n)| (self.name(*id).to_owned(), *n))
            .collect()
    }

    /// Every put-to-delivery latency, in milliseconds.
    pub(super) fn latencies_ms(&self) -> &[u32] {
        &self.latencies_ms
    }

    /// The latencies since the last call.
    pub(super) fn take_interval_latencies(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.interval_latencies_ms)
    }

    /// Deliveries again at their first position.
    pub(super) fn redeliveries(&self) -> &[Redelivery] {
        &self.redeliveries
    }

    /// Deliveries of a record written twice.
    pub(super) fn produced_twice(&self) -> usize {
        self.produced_twice
    }

    /// Runs of deliveries, by shard id.
    pub(super) fn runs(&self) -> &BTreeMap<NameId, Vec<Run>> {
        &self.runs
    }
}

/// A hash of a position in a shard.
fn hash_position(shard: NameId, position: &ExtendedSequenceNumber) -> u64 {
    let mut hasher = DefaultHasher::new();
    shard.hash(&mut hasher);
    position.hash(&mut hasher);
    hasher.finish()
}

/// The value at quantile `q` (0 to 1) of sorted `values`; 0 when empty.
pub(super) fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted.get(index).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(sequence: u128) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::new(rkcl::SequenceNumber::from_u128(sequence), 0)
    }

    #[test]
    fn counts_first_deliveries_duplicates_and_order_per_key() {
        let mut tally = Tally::new(3 * KEYS);
        tally.produced(0..3 * KEYS, 10);
        let w = tally.name_id("w1");
        let key_7 = [7, KEYS + 7, 2 * KEYS + 7];
        tally.deliver(w, "s", &at(1), record_data(key_7[0], 10).as_bytes(), 20);
        tally.deliver(w, "s", &at(3), record_data(key_7[2], 10).as_bytes(), 30);
        tally.deliver(w, "s", &at(2), record_data(key_7[1], 10).as_bytes(), 40);
        tally.deliver(w, "s", &at(1), record_data(key_7[0], 10).as_bytes(), 50);
        tally.deliver(w, "s", &at(9), record_data(key_7[0], 10).as_bytes(), 60);
        tally.deliver(w, "s", &at(9), b"not a demo record", 60);
        assert_eq!(tally.unique(), 3);
        assert_eq!(tally.deliveries(), 5);
        assert_eq!(tally.out_of_order(), 1);
        assert_eq!(tally.redeliveries().len(), 1);
        assert_eq!(tally.produced_twice(), 1);
        assert_eq!(tally.unknown(), 1);
        let (lost, duplicates) = tally.lost_and_duplicates();
        assert_eq!((lost, duplicates), (3 * KEYS - 3, 2));
        assert_eq!(tally.latencies_ms(), &[10, 20, 30]);
        // Record 0 is the oldest not delivered, put at 10 ms.
        assert_eq!(tally.oldest_undelivered_ms(110), Some(100));
    }

    #[test]
    fn runs_split_on_another_worker_or_a_pause() {
        let mut tally = Tally::new(KEYS);
        tally.produced(0..KEYS, 0);
        let (a, b) = (tally.name_id("a"), tally.name_id("b"));
        for (worker, index, ms) in [(a, 0, 0), (a, 1, 500), (b, 2, 600), (b, 3, 3_000)] {
            tally.deliver(
                worker,
                "s",
                &at(index as u128),
                record_data(index, 0).as_bytes(),
                ms,
            );
        }
        let shard = tally.find("s").unwrap();
        let runs = &tally.runs()[&shard];
        let spans: Vec<(NameId, u32, u32)> = runs
            .iter()
            .map(|r| (r.worker, r.first_ms, r.last_ms))
            .collect();
        assert_eq!(spans, vec![(a, 0, 500), (b, 600, 600), (b, 3_000, 3_000)]);
    }

    #[test]
    fn quantiles_of_sorted_values() {
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(quantile(&[1, 2, 3, 4, 5], 0.5), 3);
        assert_eq!(quantile(&[1, 2, 3, 4, 5], 1.0), 5);
    }
}
