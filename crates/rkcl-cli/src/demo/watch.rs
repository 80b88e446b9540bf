//! The lease table as the demo sees it: sampled every [`SAMPLE_EVERY`],
//! kept as a history per lease, checked for checkpoints that move backwards,
//! and summed up as a [`Status`]: who holds what, whether the group is
//! balanced, whether anything is unheld or being handed over.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rkcl::leases::{Lease, LeaseStore};
use rkcl::{DynamoDbLeaseStore, ExtendedSequenceNumber};
use serde::Serialize;

use super::produce::millis;

/// How often the lease table is sampled.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// One lease as one sample saw it.
#[derive(Clone, Debug)]
pub(super) struct Observed {
    /// When the sample's answer arrived, in milliseconds of the run.
    pub(super) at_ms: u32,
    /// The worker that may write to the lease (the previous owner during a
    /// handoff).
    pub(super) holder: Option<String>,
    /// The lease's owner.
    pub(super) owner: Option<String>,
    /// The checkpoint.
    pub(super) checkpoint: ExtendedSequenceNumber,
}

/// A checkpoint seen lower than in the sample before.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Regression {
    /// The lease (shard id).
    pub(super) lease: String,
    /// When it was seen, in seconds of the run.
    pub(super) seconds: f64,
    /// The checkpoint before.
    pub(super) from: String,
    /// The checkpoint after.
    pub(super) to: String,
    /// The owner before and after.
    pub(super) owners: (Option<String>, Option<String>),
}

/// Samples the lease table and keeps what it saw.
#[derive(Debug)]
pub(super) struct LeaseWatch {
    store: DynamoDbLeaseStore,
    /// Observations per lease (shard id), oldest first.
    history: BTreeMap<String, Vec<Observed>>,
    /// When each sample's answer arrived.
    sample_times: Vec<u32>,
    regressions: Vec<Regression>,
    failed_samples: usize,
}

impl LeaseWatch {
    /// A watch on `store`.
    pub(super) fn new(store: DynamoDbLeaseStore) -> Self {
        Self {
            store,
            history: BTreeMap::new(),
            sample_times: Vec::new(),
            regressions: Vec::new(),
            failed_samples: 0,
        }
    }

    /// Reads the whole table once and records it; `None` when the read
    /// failed (counted, and the next sample tries again).
    pub(super) async fn sample(&mut self, clock: Instant) -> Option<Vec<Lease>> {
        let leases = match self.store.list().await {
            Ok(leases) => leases,
            Err(err) => {
                tracing::debug!(error = %err, "could not sample the lease table");
                self.failed_samples += 1;
                return None;
            }
        };
        let at_ms = millis(clock.elapsed());
        self.sample_times.push(at_ms);
        for lease in &leases {
            let observed = Observed {
                at_ms,
                holder: lease.holder().map(str::to_owned),
                owner: lease.owner.clone(),
                checkpoint: lease.checkpoint.clone(),
            };
            let history = self
                .history
                .entry(lease.shard_id().as_str().to_owned())
                .or_default();
            if let Some(before) = history.last()
                && observed.checkpoint < before.checkpoint
            {
                self.regressions.push(Regression {
                    lease: lease.shard_id().as_str().to_owned(),
                    seconds: f64::from(at_ms) / 1000.0,
                    from: before.checkpoint.to_string(),
                    to: observed.checkpoint.to_string(),
                    owners: (before.owner.clone(), observed.owner.clone()),
                });
            }
            history.push(observed);
        }
        Some(leases)
    }

    /// Observations per lease (shard id), oldest first.
    pub(super) fn history(&self) -> &BTreeMap<String, Vec<Observed>> {
        &self.history
    }

    /// Checkpoints seen moving backwards.
    pub(super) fn regressions(&self) -> &[Regression] {
        &self.regressions
    }

    /// How many samples were taken.
    pub(super) fn samples(&self) -> usize {
        self.sample_times.len()
    }

    /// How many samples failed.
    pub(super) fn failed_samples(&self) -> usize {
        self.failed_samples
    }
}

/// The group at one sample.
#[derive(Clone, Debug, Default)]
pub(super) struct Status {
    /// When, in milliseconds of the run.
    pub(super) at_ms: u32,
    /// Active leases held per live worker (every live worker listed).
    pub(super) held: BTreeMap<String, usize>,
    /// Active leases without a live holder (unowned, or a dead worker's).
    pub(super) unheld: usize,
    /// Leases being handed over.
    pub(super) handoffs: usize,
    /// Open shards without a lease yet.
    pub(super) missing: usize,
    /// Every live worker within one of the fair share.
    pub(super) balanced: bool,
    /// How old the oldest record put and not delivered is.
    pub(super) oldest_undelivered_ms: Option<u32>,
    /// Every record put more than [`CAUGHT_UP_MS`] ago was delivered.
    pub(super) caught_up: bool,
}

/// A record delivered within this time of being put counts as caught up.
pub(super) const CAUGHT_UP_MS: u32 = 2_000;

impl Status {
    /// The status of `leases` for the `live` workers and the `open` shards.
    pub(super) fn of(
        leases: &[Lease],
        live: &BTreeSet<String>,
        open: &BTreeSet<String>,
        oldest_undelivered_ms: Option<u32>,
        at_ms: u32,
    ) -> Self {
        let active: Vec<&Lease> = leases
            .iter()
            .filter(|l| l.checkpoint != ExtendedSequenceNumber::ShardEnd)
            .collect();
        let mut held: BTreeMap<String, usize> = live.iter().map(|w| (w.clone(), 0)).collect();
        let mut unheld = 0;
        for lease in &active {
            match lease.holder().and_then(|h| held.get_mut(h)) {
                Some(count) => *count += 1,
                None => unheld += 1,
            }
        }
        let leased: BTreeSet<String> = leases
            .iter()
            .map(|l| l.shard_id().as_str().to_owned())
            .collect();
        let balanced = !held.is_empty() && {
            let (n, w) = (active.len(), held.len());
            let (low, high) = (n / w, n.div_ceil(w));
            held.values().all(|c| (low..=high).contains(c))
        };
        Self {
            at_ms,
            held,
            unheld,
            handoffs: leases.iter().filter(|l| l.is_handing_off()).count(),
            missing: open.iter().filter(|s| !leased.contains(*s)).count(),
            balanced,
            oldest_undelivered_ms,
            caught_up: oldest_undelivered_ms.is_none_or(|age| age <= CAUGHT_UP_MS),
        }
    }

    /// Every shard has a live holder and consumption is caught up.
    pub(super) fn recovered(&self) -> bool {
        self.unheld == 0 && self.missing == 0 && self.caught_up
    }

    /// Recovered, balanced, and no handoff in progress.
    pub(super) fn settled(&self) -> bool {
        self.recovered() && self.balanced && self.handoffs == 0
    }

    /// "worker-1:2 worker-2:1" and what is not held.
    pub(super) fn describe_leases(&self) -> String {
        let mut parts: Vec<String> = self.held.iter().map(|(w, n)| format!("{w}:{n}")).collect();
        if self.unheld > 0 {
            parts.push(format!("unheld:{}", self.unheld));
        }
        if self.handoffs > 0 {
            parts.push(format!("handing-over:{}", self.handoffs));
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkcl::model::LeaseKey;

    fn lease(shard: &str, owner: Option<&str>, finished: bool) -> Lease {
        let mut lease = Lease::new(
            LeaseKey::parse(shard).unwrap(),
            if finished {
                ExtendedSequenceNumber::ShardEnd
            } else {
                ExtendedSequenceNumber::TrimHorizon
            },
        );
        lease.owner = owner.map(str::to_owned);
        lease
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn balanced_means_every_live_worker_within_one_of_the_fair_share() {
        let open = set(&["s1", "s2", "s3", "s4"]);
        let live = set(&["a", "b", "c"]);
        let leases = |owners: [&str; 4]| -> Vec<Lease> {
            ["s1", "s2", "s3", "s4"]
                .iter()
                .zip(owners)
                .map(|(s, o)| lease(s, Some(o), false))
                .collect()
        };
        let status = Status::of(&leases(["a", "a", "b", "c"]), &live, &open, None, 0);
        assert!(status.settled(), "{status:?}");
        let status = Status::of(&leases(["a", "a", "b", "b"]), &live, &open, None, 0);
        assert!(!status.balanced && status.recovered());
        // A dead worker's lease is unheld.
        let status = Status::of(&leases(["a", "x", "b", "c"]), &live, &open, None, 0);
        assert_eq!(status.unheld, 1);
        assert!(!status.recovered());
        // Not caught up: a record 3 s old is still waiting.
        let status = Status::of(&leases(["a", "a", "b", "c"]), &live, &open, Some(3_000), 0);
        assert!(!status.recovered());
    }

    #[test]
    fn finished_leases_do_not_count_and_open_shards_need_a_lease() {
        let live = set(&["a", "b"]);
        let leases = vec![
            lease("s0", None, true),
            lease("s1", Some("a"), false),
            lease("s2", Some("b"), false),
        ];
        let status = Status::of(&leases, &live, &set(&["s1", "s2"]), None, 0);
        assert!(status.settled(), "{status:?}");
        let status = Status::of(&leases, &live, &set(&["s1", "s2", "s3"]), None, 0);
        assert_eq!(status.missing, 1);
        assert!(!status.settled());
    }
}
