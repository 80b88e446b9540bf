//! Which leases a worker takes and steals: pure decisions, no IO.
//!
//! Each cycle a worker looks at the table and decides, on its own, what to
//! take. The rules converge the fleet to ⌊n/w⌋ or ⌈n/w⌉ leases per worker
//! without a leader:
//!
//! - Finished leases (`SHARD_END`) are no load and are never taken.
//! - The target is ⌈n/w⌉ over the unfinished leases and the workers that
//!   hold one (plus this one), capped by the worker's maximum.
//! - Available leases (unowned or expired) are taken first, up to the target.
//! - With none available, a worker below target steals from the most loaded
//!   worker: as many as that worker holds above the target, and one when it
//!   needs more than one. A worker one short of a target nobody exceeds does
//!   not steal, so a balanced fleet stays still. A lease being handed over
//!   is not stolen again.

use std::collections::BTreeMap;

use rand::Rng;
use rand::seq::SliceRandom;

use super::Lease;
use crate::model::{ExtendedSequenceNumber, LeaseKey};

/// A lease as the taker sees it in one cycle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate<'a> {
    pub(crate) lease: &'a Lease,
    /// Whether the owner has not renewed it for a lease duration, judged on
    /// this worker's monotonic clock.
    pub(crate) expired: bool,
}

impl Candidate<'_> {
    fn is_available(&self) -> bool {
        self.lease.owner.is_none() || self.expired
    }

    fn is_finished(&self) -> bool {
        self.lease.checkpoint == ExtendedSequenceNumber::ShardEnd
    }
}

/// What one worker decided in one cycle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TakePlan {
    /// Keys of available leases to take.
    pub(crate) take: Vec<LeaseKey>,
    /// Keys of leases held by another worker to steal for balance.
    pub(crate) steal: Vec<LeaseKey>,
}

/// Decides what `worker` takes and steals this cycle.
pub(crate) fn plan(
    worker: &str,
    candidates: &[Candidate<'_>],
    max_leases: usize,
    max_steals: usize,
    rng: &mut impl Rng,
) -> TakePlan {
    let active: Vec<&Candidate<'_>> = candidates.iter().filter(|c| !c.is_finished()).collect();
    let mut held: BTreeMap<&str, Vec<&LeaseKey>> = BTreeMap::new();
    held.entry(worker).or_default();
    for candidate in active.iter().filter(|c| !c.is_available()) {
        if let Some(owner) = candidate.lease.owner.as_deref() {
            held.entry(owner).or_default().push(&candidate.lease.key);
        }
    }
    let workers = held.len();
    let target = active.len().div_ceil(workers).min(max_leases);
    let mine = held.get(worker).map_or(0, Vec::len);
    let need = target.saturating_sub(mine);
    if need == 0 {
        return TakePlan::default();
    }

    let mut available: Vec<&LeaseKey> = active
        .iter()
        .filter(|c| c.is_available())
        .map(|c| &c.lease.key)
        .collect();
    if !available.is_empty() {
        // Shuffled, so workers starting together do not all race for the
        // same leases.
        available.shuffle(rng);
        available.truncate(need);
        return TakePlan {
            take: available.into_iter().cloned().collect(),
            steal: Vec::new(),
        };
    }

    let Some((_, most)) = held
        .iter()
        .filter(|(owner, _)| **owner != worker)
        .max_by_key(|(owner, keys)| (keys.len(), std::cmp::Reverse(**owner)))
    else {
        return TakePlan::default();
    };
    let excess = most.len().saturating_sub(target);
    let count = match (excess, need) {
        (0, 1) | (0, 0) => 0,
        (0, _) => 1,
        (excess, need) => excess.min(need),
    }
    .min(max_steals);
    // A lease already being handed over is not stolen again.
    let mut victims: Vec<&LeaseKey> = most
        .iter()
        .copied()
        .filter(|key| {
            !active
                .iter()
                .any(|c| &c.lease.key == *key && c.lease.is_handing_off())
        })
        .collect();
    victims.shuffle(rng);
    victims.truncate(count);
    TakePlan {
        take: Vec::new(),
        steal: victims.into_iter().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// A fleet of workers sharing a table, each cycle in random order.
    struct Fleet {
        leases: Vec<Lease>,
        workers: Vec<String>,
        rng: StdRng,
    }

    impl Fleet {
        fn new(leases: usize, workers: usize, seed: u64) -> Self {
            Self {
                leases: (0..leases)
                    .map(|i| {
                        Lease::new(
                            crate::model::LeaseKey::parse(format!("shardId-{i:012}")).unwrap(),
                            ExtendedSequenceNumber::TrimHorizon,
                        )
                    })
                    .collect(),
                workers: (0..workers).map(|i| format!("worker-{i}")).collect(),
                rng: StdRng::seed_from_u64(seed),
            }
        }

        /// One taker cycle of every worker, applying plans like the store
        /// would (a take or steal of a changed lease loses).
        fn cycle(&mut self, max_steals: usize) {
            let mut order = self.workers.clone();
            order.shuffle(&mut self.rng);
            for worker in order {
                let snapshot = self.leases.clone();
                let candidates: Vec<Candidate<'_>> = snapshot
                    .iter()
                    .map(|lease| Candidate {
                        lease,
                        expired: lease
                            .owner
                            .as_ref()
                            .is_some_and(|o| !self.workers.contains(o)),
                    })
                    .collect();
                let plan = plan(&worker, &candidates, usize::MAX, max_steals, &mut self.rng);
                for key in plan.take.iter().chain(&plan.steal) {
                    let seen = snapshot.iter().find(|l| &l.key == key).unwrap();
                    let stored = self.leases.iter_mut().find(|l| &l.key == key).unwrap();
                    if stored.counter == seen.counter {
                        stored.owner = Some(worker.clone());
                        stored.counter += 1;
                    }
                }
            }
        }

        fn counts(&self) -> Vec<usize> {
            self.workers
                .iter()
                .map(|w| {
                    self.leases
                        .iter()
                        .filter(|l| l.owner.as_ref() == Some(w))
                        .count()
                })
                .collect()
        }

        fn balanced(&self) -> bool {
            let (n, w) = (self.leases.len(), self.workers.len());
            let (low, high) = (n / w, n.div_ceil(w));
            self.counts().iter().all(|&c| c == low || c == high)
                && self
                    .leases
                    .iter()
                    .all(|l| l.owner.as_ref().is_some_and(|o| self.workers.contains(o)))
        }

        /// Cycles until balanced, and then some more to check it stays so;
        /// the number of cycles it took.
        fn converge(&mut self, limit: usize) -> usize {
            for cycle in 1..=limit {
                self.cycle(1);
                if self.balanced() {
                    let before: Vec<_> = self.leases.iter().map(|l| l.owner.clone()).collect();
                    for _ in 0..3 {
                        self.cycle(1);
                    }
                    let after: Vec<_> = self.leases.iter().map(|l| l.owner.clone()).collect();
                    assert_eq!(before, after, "a balanced fleet kept moving leases");
                    return cycle;
                }
            }
            panic!("not balanced after {limit} cycles: {:?}", self.counts());
        }
    }

    #[test]
    fn fleets_of_every_size_converge_to_fair_shares() {
        for workers in [1, 2, 3, 5, 8] {
            for leases in [1, 7, 32, 100] {
                let mut fleet = Fleet::new(leases, workers, 7);
                let cycles = fleet.converge(leases + 10);
                assert!(
                    cycles <= leases + 10,
                    "{workers} workers, {leases} leases: {cycles} cycles"
                );
            }
        }
    }

    #[test]
    fn joining_and_leaving_workers_reconverge() {
        let mut fleet = Fleet::new(32, 3, 11);
        fleet.converge(50);
        fleet.workers.push("worker-new".into());
        fleet.converge(50);
        // A worker dies: its leases expire and the others share them.
        fleet.workers.remove(0);
        fleet.converge(50);
        assert_eq!(fleet.counts().iter().sum::<usize>(), 32);
    }

    #[test]
    fn finished_leases_are_not_load() {
        let mut done = Lease::new(
            crate::model::LeaseKey::parse("shardId-0").unwrap(),
            ExtendedSequenceNumber::ShardEnd,
        );
        done.owner = None;
        let mine = Lease {
            owner: Some("me".into()),
            ..Lease::new(
                crate::model::LeaseKey::parse("shardId-1").unwrap(),
                ExtendedSequenceNumber::TrimHorizon,
            )
        };
        let candidates = [
            Candidate {
                lease: &done,
                expired: false,
            },
            Candidate {
                lease: &mine,
                expired: false,
            },
        ];
        let plan = plan(
            "me",
            &candidates,
            usize::MAX,
            1,
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(plan, TakePlan::default());
    }

    #[test]
    fn the_maximum_per_worker_is_kept() {
        let leases: Vec<Lease> = (0..10)
            .map(|i| {
                Lease::new(
                    crate::model::LeaseKey::parse(format!("shardId-{i}")).unwrap(),
                    ExtendedSequenceNumber::TrimHorizon,
                )
            })
            .collect();
        let candidates: Vec<_> = leases
            .iter()
            .map(|lease| Candidate {
                lease,
                expired: false,
            })
            .collect();
        let plan = plan("me", &candidates, 4, 1, &mut StdRng::seed_from_u64(1));
        assert_eq!(plan.take.len(), 4);
    }

    proptest! {
        #[test]
        fn any_fleet_converges_and_no_lease_has_two_owners(
            leases in 1usize..60,
            workers in 1usize..9,
            seed in any::<u64>(),
        ) {
            let mut fleet = Fleet::new(leases, workers, seed);
            fleet.converge(leases + 10);
            // Owners are single by construction of the table; check the
            // counts add up.
            prop_assert_eq!(fleet.counts().iter().sum::<usize>(), leases);
        }
    }
}
