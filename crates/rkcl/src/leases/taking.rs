//! The taker loop: scans the lease table, takes available and expired
//! leases, steals for balance as [`taker::plan`] decides, and finishes the
//! handoffs and steals it started.
//!
//! Expiry is judged on this worker's monotonic clock: a lease has expired
//! when the taker saw one counter on it for a whole lease duration.
//! [`TakerState`], the memory between cycles, decides when to run and scan.
//!
//! One file on purpose: the loop and `TakerState` are one algorithm, and the
//! unit tests of `TakerState` sit beside it; without them it is under 350
//! lines.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::coordinator::{Loop, pause};
use super::held::Shared;
use super::taker::{self, Candidate};
use super::{Lease, LeaseCoordinatorConfig, LeaseEvent, LeaseStore};
use crate::backoff::FailureStreak;
use crate::error::Result;
use crate::model::{ExtendedSequenceNumber, LeaseKey};

/// What the taker knows of a lease between cycles: the counter it saw, when
/// it last saw it change (on this worker's monotonic clock), and whether it
/// is another worker's unfinished lease, whose expiry the taker watches.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// The counter last seen.
    counter: u64,
    /// When the taker first saw that counter.
    changed: Instant,
    /// Whether the lease is another worker's and not finished, so its
    /// expiry matters to this worker.
    watched: bool,
}

/// The taker's memory between cycles.
#[derive(Debug, Default)]
struct TakerState {
    /// Every lease in the table at the last scan, by key.
    seen: HashMap<LeaseKey, Seen>,
    /// When the last scan of the whole table was read.
    last_scan: Option<Instant>,
    /// Nothing to take, steal or finish at the last scan.
    settled: bool,
    /// Handoffs to this worker not finished yet, with when they were seen
    /// first.
    pending: HashMap<LeaseKey, Instant>,
    /// Leases stolen without a handoff, started only once the old owner has
    /// had a renewal to notice (so the two never both believe they hold it).
    starting: HashMap<LeaseKey, (Lease, Instant)>,
}

impl TakerState {
    /// Notes `lease` as read at `now`: a new counter restarts its expiry
    /// clock, and it is watched while another worker holds it unfinished.
    fn observe(&mut self, lease: &Lease, worker_id: &str, now: Instant) {
        let watched = lease.holder().is_some_and(|holder| holder != worker_id)
            && lease.checkpoint != ExtendedSequenceNumber::ShardEnd;
        let entry = self.seen.entry(lease.key.clone()).or_insert(Seen {
            counter: lease.counter,
            changed: now,
            watched,
        });
        if entry.counter != lease.counter {
            entry.counter = lease.counter;
            entry.changed = now;
        }
        entry.watched = watched;
    }

    /// Whether the lease `key` kept one counter for longer than
    /// `lease_duration` (a lease never seen has not expired).
    fn expired(&self, key: &str, now: Instant, lease_duration: Duration) -> bool {
        self.seen
            .get(key)
            .is_some_and(|seen| now.duration_since(seen.changed) > lease_duration)
    }

    /// Whether this cycle must read the whole table.
    fn scan_due(&self, now: Instant, config: &LeaseCoordinatorConfig) -> bool {
        !self.settled
            || self
                .last_scan
                .is_none_or(|scan| now.duration_since(scan) >= config.scan_interval)
            || self.seen.values().any(|seen| {
                seen.watched && now.duration_since(seen.changed) > config.lease_duration
            })
    }

    /// When the taker must run next: at the next due scan, when a watched
    /// lease could expire, or after `taker_interval` while the fleet is not
    /// settled or a handoff is pending.
    fn next_cycle(&self, now: Instant, config: &LeaseCoordinatorConfig, jitter: f64) -> Instant {
        let scan = self.last_scan.unwrap_or(now) + config.scan_interval.mul_f64(1.0 + jitter);
        let expiry = self
            .seen
            .values()
            .filter(|seen| seen.watched)
            .map(|seen| seen.changed + config.lease_duration + EXPIRY_SLACK)
            .min();
        let mut next = expiry.map_or(scan, |expiry| expiry.min(scan));
        if !self.settled || !self.pending.is_empty() {
            next = next.min(now + config.taker_interval.mul_f64(1.0 + jitter));
        }
        if let Some(start) = self.starting.values().map(|(_, start)| *start).min() {
            next = next.min(start);
        }
        next.max(now + EXPIRY_SLACK)
    }
}

/// How long after a watched lease could expire the taker looks at it, so
/// the check lands after the expiry, not on it.
const EXPIRY_SLACK: Duration = Duration::from_millis(10);

/// Runs taker cycles until `cancel`: a full scan when one is due, otherwise
/// one read per pending handoff; then starts the stolen leases whose wait is
/// over. A failed cycle unsettles the taker, so the next one scans soon.
pub(super) async fn take_loop<S: LeaseStore>(shared: &Shared<S>, cancel: &CancellationToken) {
    let config = &shared.config;
    let mut rng = config
        .rng_seed
        .map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64);
    let mut state = TakerState::default();
    let mut streak = FailureStreak::new("taker cycle");
    loop {
        let now = Instant::now();
        shared.health.beat(
            Loop::Taker.name(),
            config.scan_interval.max(config.lease_duration),
        );
        let scanning = state.scan_due(now, config);
        let cycle = if scanning {
            scan_and_take(shared, &mut state, &mut rng).await
        } else {
            finish_handoffs(shared, &mut state).await
        };
        let cycle = match cycle {
            Ok(()) => start_stolen(shared, &mut state).await,
            failed => failed,
        };
        match cycle {
            Ok(()) => {
                if scanning {
                    shared.health.lease_table(Ok(()));
                }
                streak.succeeded();
            }
            Err(err) => {
                shared.health.lease_table(Err(err.to_string()));
                state.settled = false;
                streak.failed(&err);
            }
        }
        // Up to a tenth of jitter so workers do not stampede.
        let jitter = rng.random_range(0.0..0.1);
        if !pause(cancel, state.next_cycle(Instant::now(), config, jitter)).await {
            return;
        }
    }
}

/// Takes `lease` for this worker; `true` if taken.
async fn acquire<S: LeaseStore>(shared: &Shared<S>, lease: &Lease, how: &str) -> Result<bool> {
    let Some(taken) = shared.store.take(lease, &shared.config.worker_id).await? else {
        return Ok(false);
    };
    tracing::info!(lease_key = %taken.key, counter = taken.counter, how, "took the lease");
    let token = taken.fencing_token();
    shared.insert(taken.clone());
    let _ = shared.events.send(LeaseEvent::Acquired {
        lease: Box::new(taken),
        token,
    });
    Ok(true)
}

/// Whether a handoff to this worker may finish: the old owner let go, or it
/// had its time and more.
fn handoff_done(
    lease: &Lease,
    since: Instant,
    now: Instant,
    config: &LeaseCoordinatorConfig,
) -> bool {
    !lease.is_handing_off()
        || now.duration_since(since) > config.handoff_timeout + config.lease_duration
}

/// Between scans: one read per pending handoff, no scan.
async fn finish_handoffs<S: LeaseStore>(shared: &Shared<S>, state: &mut TakerState) -> Result<()> {
    let config = &shared.config;
    let pending: Vec<(LeaseKey, Instant)> =
        state.pending.iter().map(|(k, t)| (k.clone(), *t)).collect();
    for (key, since) in pending {
        let now = Instant::now();
        match shared.store.get(&key).await? {
            Some(lease) if lease.owner.as_deref() == Some(config.worker_id.as_str()) => {
                state.observe(&lease, &config.worker_id, now);
                if handoff_done(&lease, since, now, config) {
                    state.pending.remove(&key);
                    acquire(shared, &lease, "handed over").await?;
                }
            }
            _ => {
                state.pending.remove(&key);
            }
        }
    }
    Ok(())
}

/// Starts the leases stolen without a handoff whose wait is over, if
/// nobody changed them meanwhile.
async fn start_stolen<S: LeaseStore>(shared: &Shared<S>, state: &mut TakerState) -> Result<()> {
    let now = Instant::now();
    let due: Vec<LeaseKey> = state
        .starting
        .iter()
        .filter(|(_, (_, start))| *start <= now)
        .map(|(key, _)| key.clone())
        .collect();
    for key in due {
        let Some((taken, _)) = state.starting.remove(&key) else {
            continue;
        };
        match shared.store.get(&key).await? {
            Some(stored) if stored.counter == taken.counter && stored.owner == taken.owner => {
                let token = stored.fencing_token();
                shared.insert(stored.clone());
                tracing::info!(lease_key = %key, counter = stored.counter, "started the stolen lease");
                let _ = shared.events.send(LeaseEvent::Acquired {
                    lease: Box::new(stored),
                    token,
                });
            }
            _ => {
                tracing::info!(lease_key = %key, "the stolen lease changed hands before it started")
            }
        }
    }
    Ok(())
}

/// One full cycle: scan, finish handoffs, take and steal as planned.
async fn scan_and_take<S: LeaseStore>(
    shared: &Shared<S>,
    state: &mut TakerState,
    rng: &mut StdRng,
) -> Result<()> {
    let config = &shared.config;
    let me = config.worker_id.as_str();
    let mut leases = shared.store.list().await?;
    // Leases of streams this worker does not read are neither taken nor
    // counted in the fair share.
    leases.retain(|lease| shared.in_scope(&lease.key));
    let now = Instant::now();
    state.last_scan = Some(now);
    state
        .seen
        .retain(|key, _| leases.iter().any(|l| &l.key == key));
    for lease in &leases {
        state.observe(lease, me, now);
    }

    // Handoffs to this worker: the ones it started and any it finds.
    let held = shared.held_keys();
    state.pending.retain(|key, _| {
        leases
            .iter()
            .any(|l| &l.key == key && l.owner.as_deref() == Some(me))
    });
    for lease in &leases {
        if lease.owner.as_deref() == Some(me)
            && lease.is_handing_off()
            && !held.contains(&lease.key)
        {
            state.pending.entry(lease.key.clone()).or_insert(now);
        }
    }
    for lease in &leases {
        if let Some(since) = state.pending.get(&lease.key).copied()
            && (handoff_done(lease, since, now, config)
                || state.expired(lease.key.as_str(), now, config.lease_duration))
        {
            state.pending.remove(&lease.key);
            acquire(shared, lease, "handed over").await?;
        }
    }

    let held = shared.held_keys();
    let candidates: Vec<Candidate<'_>> = leases
        .iter()
        .map(|lease| {
            let mine = held.contains(&lease.key);
            let pending =
                state.pending.contains_key(&lease.key) || state.starting.contains_key(&lease.key);
            let expired = !mine
                && lease.holder().is_some()
                && state.expired(lease.key.as_str(), now, config.lease_duration);
            // A lease the table says is ours but we do not hold (a restart
            // with the same id) is taken back like an available one.
            let orphaned = !mine && !pending && lease.holder() == Some(me);
            Candidate {
                lease,
                expired: expired || orphaned,
            }
        })
        .collect();
    let plan = taker::plan(
        me,
        &candidates,
        config.max_leases,
        config.max_steals_per_cycle,
        rng,
    );
    for key in &plan.take {
        if let Some(lease) = leases.iter().find(|l| &l.key == key) {
            acquire(shared, lease, "available").await?;
        }
    }
    for key in &plan.steal {
        let Some(lease) = leases.iter().find(|l| &l.key == key) else {
            continue;
        };
        if !config.graceful_handoff {
            // The old owner learns at its next renewal attempt, at most one
            // and a half renew intervals away (a lease a checkpoint just
            // wrote skips one tick); start after that.
            if let Some(taken) = shared.store.take(lease, me).await? {
                tracing::info!(lease_key = %key, counter = taken.counter, "stole the lease");
                state.observe(&taken, me, now);
                let start = now + config.renew_interval.mul_f64(1.5) + EXPIRY_SLACK;
                state.starting.insert(key.clone(), (taken, start));
            }
        } else if let Some(handed) = shared.store.hand_off(lease, me).await? {
            tracing::info!(lease_key = %key, from = ?handed.checkpoint_owner, "asked for the lease");
            state.observe(&handed, me, now);
            state.pending.insert(key.clone(), now);
        }
    }
    state.settled = plan.take.is_empty()
        && plan.steal.is_empty()
        && state.pending.is_empty()
        && state.starting.is_empty();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "me";

    /// The defaults of a 10 s lease: scan every 5 s, taker interval 2 s.
    fn config() -> LeaseCoordinatorConfig {
        LeaseCoordinatorConfig::with_lease_duration(ME, Duration::from_secs(10))
    }

    /// A clock for one test: the instant `s` seconds after its start.
    fn clock() -> impl Fn(f64) -> Instant {
        let start = Instant::now();
        move |s| start + Duration::from_secs_f64(s)
    }

    /// A lease of `owner` at `counter`, not finished.
    fn lease(key: &str, owner: Option<&str>, counter: u64) -> Lease {
        let mut lease = Lease::new(
            crate::model::LeaseKey::parse(key).unwrap(),
            ExtendedSequenceNumber::TrimHorizon,
        );
        lease.owner = owner.map(str::to_owned);
        lease.counter = counter;
        lease
    }

    /// A settled taker whose last scan was at `at`.
    fn settled(at: Instant) -> TakerState {
        TakerState {
            settled: true,
            last_scan: Some(at),
            ..TakerState::default()
        }
    }

    #[test]
    fn observe_restarts_the_clock_only_when_the_counter_moves() {
        let t = clock();
        let mut state = TakerState::default();
        state.observe(&lease("a", Some("other"), 1), ME, t(0.0));
        state.observe(&lease("a", Some("other"), 1), ME, t(3.0));
        assert_eq!(state.seen["a"].changed, t(0.0));
        state.observe(&lease("a", Some("other"), 2), ME, t(4.0));
        assert_eq!(state.seen["a"].changed, t(4.0));
        assert_eq!(state.seen["a"].counter, 2);
    }

    #[test]
    fn observe_watches_only_another_holders_unfinished_lease() {
        let t = clock();
        let mut finished = lease("finished", Some("other"), 1);
        finished.checkpoint = ExtendedSequenceNumber::ShardEnd;
        // Handing over to this worker: the old owner still holds it.
        let mut to_me = lease("to-me", Some(ME), 1);
        to_me.checkpoint_owner = Some("other".into());
        // Handing over from this worker: this worker still holds it.
        let mut from_me = lease("from-me", Some("other"), 1);
        from_me.checkpoint_owner = Some(ME.into());
        let cases = [
            (lease("theirs", Some("other"), 1), true),
            (lease("mine", Some(ME), 1), false),
            (lease("free", None, 1), false),
            (finished, false),
            (to_me, true),
            (from_me, false),
        ];
        let mut state = TakerState::default();
        for (lease, watched) in &cases {
            state.observe(lease, ME, t(0.0));
            assert_eq!(state.seen[&lease.key].watched, *watched, "{}", lease.key);
        }
        // Released by its owner: no longer watched.
        state.observe(&lease("theirs", None, 2), ME, t(1.0));
        assert!(!state.seen["theirs"].watched);
    }

    #[test]
    fn a_lease_expires_after_a_whole_lease_duration_on_one_counter() {
        let (t, ten) = (clock(), config().lease_duration);
        let mut state = TakerState::default();
        assert!(!state.expired("a", t(60.0), ten), "never seen");
        state.observe(&lease("a", Some("other"), 1), ME, t(0.0));
        assert!(!state.expired("a", t(10.0), ten));
        assert!(state.expired("a", t(10.001), ten));
        // A renewal seen at 8 s restarts the clock.
        state.observe(&lease("a", Some("other"), 2), ME, t(8.0));
        assert!(!state.expired("a", t(10.001), ten));
        assert!(state.expired("a", t(18.001), ten));
    }

    #[test]
    fn a_scan_is_due_unsettled_after_the_scan_interval_or_at_a_watched_expiry() {
        let (t, config) = (clock(), config());
        assert!(TakerState::default().scan_due(t(0.0), &config), "unsettled");
        let never_scanned = TakerState {
            settled: true,
            ..TakerState::default()
        };
        assert!(never_scanned.scan_due(t(0.0), &config));
        assert!(!settled(t(0.0)).scan_due(t(4.9), &config));
        assert!(settled(t(0.0)).scan_due(t(5.0), &config));

        // Scanned 2 s ago, but a watched lease kept its counter 10 s.
        let mut watching = settled(t(8.0));
        watching.observe(&lease("a", Some("other"), 1), ME, t(0.0));
        assert!(!watching.scan_due(t(10.0), &config));
        assert!(watching.scan_due(t(10.001), &config));
        // The same age on a lease this worker holds is no reason to scan.
        let mut holding = settled(t(8.0));
        holding.observe(&lease("a", Some(ME), 1), ME, t(0.0));
        assert!(!holding.scan_due(t(10.001), &config));
    }

    #[test]
    fn a_settled_taker_sleeps_until_the_next_scan_or_a_watched_expiry() {
        let (t, config) = (clock(), config());
        assert_eq!(settled(t(0.0)).next_cycle(t(1.0), &config, 0.0), t(5.0));
        assert_eq!(settled(t(0.0)).next_cycle(t(1.0), &config, 0.1), t(5.5));

        // Scanned at 8 s, so the next scan is at 13 s.
        let next = |holder: &str, seen: Instant| {
            let mut state = settled(t(8.0));
            state.observe(&lease("a", Some(holder), 1), ME, seen);
            state.next_cycle(t(8.0), &config, 0.0)
        };
        // Another worker's lease seen at 0 s could expire at 10 s.
        assert_eq!(next("other", t(0.0)), t(10.0) + EXPIRY_SLACK);
        // Seen at 8 s, it could expire only after the scan.
        assert_eq!(next("other", t(8.0)), t(13.0));
        // A lease this worker holds is not watched, however old its counter.
        assert_eq!(next(ME, t(0.0)), t(13.0));
    }

    #[test]
    fn work_in_hand_brings_the_next_cycle_forward() {
        let (t, config) = (clock(), config());
        let unsettled = TakerState {
            last_scan: Some(t(0.0)),
            ..TakerState::default()
        };
        assert_eq!(unsettled.next_cycle(t(0.0), &config, 0.0), t(2.0));
        assert_eq!(unsettled.next_cycle(t(0.0), &config, 0.1), t(2.2));

        let mut pending = settled(t(0.0));
        pending
            .pending
            .insert(LeaseKey::parse("a").unwrap(), t(0.0));
        assert_eq!(pending.next_cycle(t(0.0), &config, 0.0), t(2.0));

        // A lease stolen without a handoff, to start at 1 s.
        let mut stolen = settled(t(0.0));
        let taken = lease("a", Some(ME), 2);
        stolen
            .starting
            .insert(LeaseKey::parse("a").unwrap(), (taken, t(1.0)));
        assert_eq!(stolen.next_cycle(t(0.0), &config, 0.0), t(1.0));
    }

    #[test]
    fn the_next_cycle_is_never_earlier_than_the_slack() {
        let (t, config) = (clock(), config());
        let now = t(20.0);
        // A stolen lease whose start has passed.
        let mut stolen = settled(t(19.0));
        let taken = lease("a", Some(ME), 2);
        stolen
            .starting
            .insert(LeaseKey::parse("a").unwrap(), (taken, t(0.0)));
        assert_eq!(stolen.next_cycle(now, &config, 0.0), now + EXPIRY_SLACK);
        // A watched lease that could have expired long ago.
        let mut watching = settled(t(19.0));
        watching.observe(&lease("b", Some("other"), 1), ME, t(0.0));
        assert_eq!(watching.next_cycle(now, &config, 0.0), now + EXPIRY_SLACK);
    }
}
