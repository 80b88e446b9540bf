//! The checks made after a run, from what the workers delivered (the tally)
//! and what the lease table said over time (the watch):
//!
//! - **Duplicates explained.** A record delivered again at the position of
//!   its first delivery must lie after the last checkpoint that the first
//!   deliverer's tenure left in the lease table (sampled before the second
//!   delivery): the next holder resumes there. It counts as after a kill
//!   when the first deliverer was killed, otherwise as after a lost lease.
//!   One at or before that checkpoint is unexplained. A record delivered at
//!   another position was written twice by the producer.
//! - **Double holders.** Every stretch of deliveries of a shard by one
//!   worker (a [`Run`]) must come while the lease table names that worker
//!   as the shard's holder: some sample within [`HOLDER_WINDOW_MS`] of its
//!   first and of its last delivery names it, and every sample well inside
//!   the stretch does; and no worker delivers anything later than that
//!   after it was killed. A worker that kept reading a shard after another
//!   took it, or two workers reading one shard at once, fail this.
//! - **Checkpoint regressions** are found while sampling (`watch.rs`).

use std::collections::{BTreeMap, BTreeSet};

use rkcl::ExtendedSequenceNumber;
use serde::Serialize;

use super::session::{WorkerEnd, WorkerInfo};
use super::tally::{Run, Tally};
use super::watch::{LeaseWatch, Observed, Regression};

/// How far from a delivery a lease-table sample may be and still speak for
/// it: a few sample intervals, for the time a sample takes and the time a
/// line takes through the pipe.
pub(super) const HOLDER_WINDOW_MS: u32 = 750;

/// How many examples of each failed check the report lists.
const EXAMPLES: usize = 10;

/// Duplicates, by cause.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct Duplicates {
    /// Every delivery after the first.
    pub(super) total: usize,
    /// Delivered again after the first deliverer was killed, after its last
    /// checkpoint.
    pub(super) after_kill: usize,
    /// Delivered again after the first deliverer lost the lease, after its
    /// last checkpoint.
    pub(super) after_lease_loss: usize,
    /// Delivered again at or before a checkpoint of the first deliverer.
    pub(super) unexplained: usize,
    /// Delivered at two positions: the producer wrote the record twice.
    pub(super) written_twice: usize,
    /// Whether every duplicate is explained.
    pub(super) explained: bool,
}

/// A stretch of deliveries the lease table does not account for.
#[derive(Clone, Debug, Serialize)]
pub(super) struct DoubleHolder {
    /// The shard.
    pub(super) shard: String,
    /// The worker that delivered.
    pub(super) worker: String,
    /// The stretch, in seconds of the run.
    pub(super) from_seconds: f64,
    /// See `from_seconds`.
    pub(super) to_seconds: f64,
    /// What was wrong.
    pub(super) why: String,
}

/// The results of the checks.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Checks {
    /// Checkpoints seen moving backwards.
    pub(super) checkpoint_regressions: usize,
    /// The first of them.
    pub(super) regressions: Vec<Regression>,
    /// Stretches of deliveries by a worker the table did not name as holder.
    pub(super) double_holders: usize,
    /// The first of them.
    pub(super) double_holder_examples: Vec<DoubleHolder>,
    /// Duplicates by cause.
    pub(super) duplicates: Duplicates,
    /// How many times the lease table was sampled.
    pub(super) lease_samples: usize,
    /// Samples that failed.
    pub(super) failed_lease_samples: usize,
}

/// Runs the checks.
pub(super) fn check(tally: &Tally, watch: &LeaseWatch, workers: &[WorkerInfo]) -> Checks {
    let double_holders = double_holders(tally, watch.history(), workers);
    Checks {
        checkpoint_regressions: watch.regressions().len(),
        regressions: watch.regressions().iter().take(EXAMPLES).cloned().collect(),
        double_holders: double_holders.len(),
        double_holder_examples: double_holders.into_iter().take(EXAMPLES).collect(),
        duplicates: duplicates(tally, watch.history(), workers),
        lease_samples: watch.samples(),
        failed_lease_samples: watch.failed_samples(),
    }
}

/// Sorts every duplicate by cause.
fn duplicates(
    tally: &Tally,
    history: &BTreeMap<String, Vec<Observed>>,
    workers: &[WorkerInfo],
) -> Duplicates {
    let killed: BTreeSet<&str> = workers
        .iter()
        .filter(|w| w.end == Some(WorkerEnd::Killed))
        .map(|w| w.id.as_str())
        .collect();
    // Per (shard, holder): (time, highest checkpoint so far) of each sample
    // that named the holder.
    let mut checkpoints: BTreeMap<(&str, &str), Vec<(u32, &ExtendedSequenceNumber)>> =
        BTreeMap::new();
    for (shard, observed) in history {
        for o in observed {
            if let Some(holder) = &o.holder {
                let list = checkpoints.entry((shard, holder)).or_default();
                let highest = match list.last() {
                    Some((_, c)) if *c > &o.checkpoint => *c,
                    _ => &o.checkpoint,
                };
                list.push((o.at_ms, highest));
            }
        }
    }
    let mut result = Duplicates {
        total: tally.lost_and_duplicates().1,
        written_twice: tally.produced_twice(),
        ..Duplicates::default()
    };
    for again in tally.redeliveries() {
        let (shard, first) = (tally.name(again.shard), tally.name(again.first_worker));
        let last_checkpoint = checkpoints.get(&(shard, first)).and_then(|list| {
            let before = list.partition_point(|(at, _)| *at <= again.at_ms);
            before
                .checked_sub(1)
                .and_then(|i| list.get(i))
                .map(|(_, c)| *c)
        });
        if last_checkpoint.is_some_and(|c| again.position <= *c) {
            result.unexplained += 1;
        } else if killed.contains(first) {
            result.after_kill += 1;
        } else {
            result.after_lease_loss += 1;
        }
    }
    result.explained = result.unexplained == 0;
    result
}

/// The stretches of deliveries the lease table does not account for.
fn double_holders(
    tally: &Tally,
    history: &BTreeMap<String, Vec<Observed>>,
    workers: &[WorkerInfo],
) -> Vec<DoubleHolder> {
    let killed_at: BTreeMap<&str, u32> = workers
        .iter()
        .filter(|w| w.end == Some(WorkerEnd::Killed))
        .filter_map(|w| Some((w.id.as_str(), w.ended_ms?)))
        .collect();
    let mut found = Vec::new();
    for (shard, runs) in tally.runs() {
        let shard = tally.name(*shard);
        for run in runs {
            let worker = tally.name(run.worker);
            if let Some(&killed) = killed_at.get(worker)
                && run.last_ms > killed.saturating_add(HOLDER_WINDOW_MS)
            {
                found.push(DoubleHolder {
                    shard: shard.to_owned(),
                    worker: worker.to_owned(),
                    from_seconds: f64::from(run.first_ms) / 1000.0,
                    to_seconds: f64::from(run.last_ms) / 1000.0,
                    why: format!("it was killed at {:.1} s", f64::from(killed) / 1000.0),
                });
                continue;
            }
            let Some(observed) = history.get(shard) else {
                continue;
            };
            if !accounted_for(run, worker, observed) {
                let window = around(
                    observed,
                    run.first_ms.saturating_sub(HOLDER_WINDOW_MS),
                    run.last_ms.saturating_add(HOLDER_WINDOW_MS),
                );
                let holders: BTreeSet<String> = window
                    .iter()
                    .map(|o| o.holder.clone().unwrap_or_else(|| "nobody".into()))
                    .collect();
                let holders: Vec<String> = holders.into_iter().collect();
                found.push(DoubleHolder {
                    shard: shard.to_owned(),
                    worker: worker.to_owned(),
                    from_seconds: f64::from(run.first_ms) / 1000.0,
                    to_seconds: f64::from(run.last_ms) / 1000.0,
                    why: format!("the lease table named {}", holders.join(", ")),
                });
            }
        }
    }
    found
}

/// Whether the lease table named `worker` as holder around the start and
/// the end of `run`, and throughout it. Where no sample is near (the
/// sampler was late), the table has nothing to say and the run passes.
fn accounted_for(run: &Run, worker: &str, observed: &[Observed]) -> bool {
    let names = |o: &Observed| o.holder.as_deref() == Some(worker);
    let near = |ms: u32| {
        let window = around(
            observed,
            ms.saturating_sub(HOLDER_WINDOW_MS),
            ms.saturating_add(HOLDER_WINDOW_MS),
        );
        window.is_empty() || window.iter().any(names)
    };
    let inside =
        run.first_ms.saturating_add(HOLDER_WINDOW_MS)..run.last_ms.saturating_sub(HOLDER_WINDOW_MS);
    let throughout =
        inside.is_empty() || around(observed, inside.start, inside.end).iter().all(names);
    near(run.first_ms) && near(run.last_ms) && throughout
}

/// The observations from `from_ms` to `to_ms` (inclusive), of a list in
/// time order.
fn around(observed: &[Observed], from_ms: u32, to_ms: u32) -> &[Observed] {
    let start = observed.partition_point(|o| o.at_ms < from_ms);
    let end = observed.partition_point(|o| o.at_ms <= to_ms);
    observed.get(start..end.max(start)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(at_ms: u32, holder: &str, checkpoint: u128) -> Observed {
        Observed {
            at_ms,
            holder: Some(holder.to_owned()),
            owner: Some(holder.to_owned()),
            checkpoint: ExtendedSequenceNumber::new(rkcl::SequenceNumber::from_u128(checkpoint), 0),
        }
    }

    fn run(first_ms: u32, last_ms: u32) -> Run {
        Run {
            worker: 0,
            first_ms,
            last_ms,
        }
    }

    #[test]
    fn a_run_must_fall_within_the_workers_tenure() {
        let table: Vec<Observed> = (0..50)
            .map(|i| seen(i * 200, if i < 25 { "a" } else { "b" }, 1))
            .collect();
        // a held the shard up to 4.8 s, b from 5 s.
        assert!(accounted_for(&run(100, 4_700), "a", &table));
        assert!(accounted_for(&run(5_100, 9_000), "b", &table));
        // a printing on well into b's tenure, or b before its own.
        assert!(!accounted_for(&run(100, 7_000), "a", &table));
        assert!(!accounted_for(&run(1_000, 3_000), "b", &table));
        // Nothing sampled near: nothing to say.
        assert!(accounted_for(&run(20_000, 20_100), "c", &table));
    }

    #[test]
    fn observations_in_a_window() {
        let table: Vec<Observed> = (0..5).map(|i| seen(i * 200, "a", 1)).collect();
        assert_eq!(around(&table, 150, 450).len(), 2);
        assert_eq!(around(&table, 0, 0).len(), 1);
        assert!(around(&table, 900, 1_000).is_empty());
    }
}
