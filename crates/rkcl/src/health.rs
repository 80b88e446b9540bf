//! A worker's health, for liveness and readiness probes.
//!
//! The worker's loops write here as they run (each loop beats once a round;
//! the lease loops say whether the lease table answered; the watchdog
//! counts stalled shards) and [`Health::liveness`] and
//! [`Health::readiness`] judge it. The HTTP listener of
//! [`observe`](crate::observe) serves the verdicts as `/healthz` and
//! `/readyz`.
//!
//! - **Alive**: every loop has beaten within its allowance (five of its
//!   rounds, and at least a minute), so a probe restarts a process whose
//!   loops hang, not one that is merely slow.
//! - **Ready**: alive, started and not shutting down; the lease table has
//!   not failed without a break for longer than a lease duration; the
//!   worker holds a lease or may take one; no shard is stalled.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The least time a loop may go without a beat before the worker is judged
/// not alive.
const LEAST_ALLOWANCE: Duration = Duration::from_secs(60);

/// How many of its rounds a loop may miss.
const ROUNDS_ALLOWED: u32 = 5;

#[derive(Debug)]
struct Beat {
    last: Instant,
    every: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    loops: Mutex<BTreeMap<&'static str, Beat>>,
    /// Since when every lease-table call has failed; `None` while it answers.
    table_failing_since: Mutex<Option<(Instant, String)>>,
    lease_duration: Mutex<Duration>,
    started: AtomicBool,
    stopping: AtomicBool,
    may_take: AtomicBool,
    held: AtomicUsize,
    stalled: AtomicUsize,
}

/// A worker's health: written by its loops, judged by probes. Cheap to
/// clone; clones share the state.
///
/// ```
/// use std::time::Duration;
/// let health = rkcl::health::Health::new();
/// assert!(!health.readiness().ok, "not started yet");
/// health.beat("worker", Duration::from_secs(1));
/// assert!(health.liveness().ok);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

/// One check of a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`loop renewer`, `lease table`, `stalled shards`...).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, in a few words.
    pub detail: String,
}

/// A probe's answer: whether every check passed, and each check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether every check passed.
    pub ok: bool,
    /// Every check, passed or not.
    pub checks: Vec<Check>,
}

impl Verdict {
    fn of(checks: Vec<Check>) -> Self {
        Self {
            ok: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

impl fmt::Display for Verdict {
    /// One line per check: `ok loop renewer: beat 1.2 s ago`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(
                f,
                "{} {}: {}",
                if check.ok { "ok" } else { "FAIL" },
                check.name,
                check.detail
            )?;
        }
        Ok(())
    }
}

impl Health {
    /// A health with nothing reported yet (alive, not ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Loop `name`, which runs a round every `every`, has just run one.
    pub fn beat(&self, name: &'static str, every: Duration) {
        let mut loops = self
            .inner
            .loops
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loops.insert(
            name,
            Beat {
                last: Instant::now(),
                every,
            },
        );
    }

    /// Loop `name` has ended (a stopped loop is not a hung one).
    pub(crate) fn loop_ended(&self, name: &'static str) {
        let mut loops = self
            .inner
            .loops
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loops.remove(name);
    }

    /// A lease-table call answered (`Ok`) or failed (with what).
    pub(crate) fn lease_table(&self, outcome: Result<(), String>) {
        let mut failing = self
            .inner
            .table_failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(()) => *failing = None,
            Err(error) => match &mut *failing {
                Some((_, last)) => *last = error,
                None => *failing = Some((Instant::now(), error)),
            },
        }
    }

    /// The worker started with this lease duration; `may_take` when it may
    /// hold leases (its lease limit is above zero).
    pub(crate) fn started(&self, lease_duration: Duration, may_take: bool) {
        *self
            .inner
            .lease_duration
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = lease_duration;
        self.inner.may_take.store(may_take, Ordering::Relaxed);
        self.inner.started.store(true, Ordering::Relaxed);
    }

    /// The worker is shutting down.
    pub(crate) fn stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    /// The worker holds `n` leases.
    pub(crate) fn held(&self, n: usize) {
        self.inner.held.store(n, Ordering::Relaxed);
    }

    /// `n` shards are stalled now.
    pub(crate) fn stalled(&self, n: usize) {
        self.inner.stalled.store(n, Ordering::Relaxed);
    }

    /// Whether the process's loops are running.
    pub fn liveness(&self) -> Verdict {
        let now = Instant::now();
        let loops = self
            .inner
            .loops
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let checks = loops
            .iter()
            .map(|(name, beat)| {
                let ago = now.saturating_duration_since(beat.last);
                let allowance = (beat.every * ROUNDS_ALLOWED).max(LEAST_ALLOWANCE);
                Check {
                    name: format!("loop {name}"),
                    ok: ago <= allowance,
                    detail: format!(
                        "last round {:.1} s ago (allowed {:.0} s)",
                        ago.as_secs_f64(),
                        allowance.as_secs_f64()
                    ),
                }
            })
            .collect();
        Verdict::of(checks)
    }

    /// Whether the worker can do its work: see the module docs.
    pub fn readiness(&self) -> Verdict {
        let mut checks = self.liveness().checks;
        let started = self.inner.started.load(Ordering::Relaxed);
        let stopping = self.inner.stopping.load(Ordering::Relaxed);
        checks.push(Check {
            name: "worker".into(),
            ok: started && !stopping,
            detail: match (started, stopping) {
                (_, true) => "shutting down".into(),
                (false, _) => "not started".into(),
                (true, false) => "running".into(),
            },
        });
        let lease_duration = *self
            .inner
            .lease_duration
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let failing = self
            .inner
            .table_failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        checks.push(match failing {
            None => Check {
                name: "lease table".into(),
                ok: true,
                detail: "answering".into(),
            },
            Some((since, error)) => {
                let failing_for = since.elapsed();
                Check {
                    name: "lease table".into(),
                    ok: failing_for <= lease_duration,
                    detail: format!("failing for {:.1} s: {error}", failing_for.as_secs_f64()),
                }
            }
        });
        let held = self.inner.held.load(Ordering::Relaxed);
        let may_take = self.inner.may_take.load(Ordering::Relaxed);
        checks.push(Check {
            name: "leases".into(),
            ok: held > 0 || may_take,
            detail: format!(
                "{held} held{}",
                if may_take { ", may take more" } else { "" }
            ),
        });
        let stalled = self.inner.stalled.load(Ordering::Relaxed);
        checks.push(Check {
            name: "stalled shards".into(),
            ok: stalled == 0,
            detail: stalled.to_string(),
        });
        Verdict::of(checks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<'a>(verdict: &'a Verdict, name: &str) -> &'a Check {
        verdict
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}: {verdict}"))
    }

    #[test]
    fn ready_once_started_and_not_while_stalled_stopping_or_cut_off() {
        let health = Health::new();
        assert!(!health.readiness().ok);
        health.started(Duration::from_millis(50), true);
        health.beat("renewer", Duration::from_secs(1));
        assert!(health.readiness().ok, "{}", health.readiness());

        health.stalled(1);
        assert!(!check(&health.readiness(), "stalled shards").ok);
        health.stalled(0);

        // A failure is tolerated for a lease duration, then it is not.
        health.lease_table(Err("throttled".into()));
        assert!(health.readiness().ok);
        std::thread::sleep(Duration::from_millis(60));
        let verdict = health.readiness();
        assert!(!check(&verdict, "lease table").ok, "{verdict}");
        assert!(check(&verdict, "lease table").detail.contains("throttled"));
        health.lease_table(Ok(()));
        assert!(health.readiness().ok);

        health.stopping();
        assert!(!health.readiness().ok);
        assert!(health.liveness().ok, "stopping is still alive");
    }

    #[test]
    fn a_worker_that_may_not_take_leases_is_ready_only_while_it_holds_one() {
        let health = Health::new();
        health.started(Duration::from_secs(10), false);
        assert!(!health.readiness().ok);
        health.held(2);
        assert!(health.readiness().ok);
    }

    #[test]
    fn a_loop_that_stops_beating_is_not_alive() {
        let health = Health::new();
        {
            let mut loops = health.inner.loops.lock().unwrap();
            loops.insert(
                "taker",
                Beat {
                    last: Instant::now() - Duration::from_secs(120),
                    every: Duration::from_secs(10),
                },
            );
        }
        let verdict = health.liveness();
        assert!(!verdict.ok, "{verdict}");
        health.beat("taker", Duration::from_secs(10));
        assert!(health.liveness().ok);
        health.loop_ended("taker");
        assert!(health.liveness().checks.is_empty());
    }
}
