//! `rkcl demo --chaos`: the workers are `rkcl consume` processes
//! (`processes.rs`), children of the demo; each writes JSON lines to a pipe
//! the demo reads. One is
//! killed with SIGKILL every `--kill-every` and restarted under a new
//! worker id, a shard is split and two are merged while records flow, a
//! worker joins and one leaves with SIGTERM, at times drawn from the seed.
//! What the pipes carried is checked against what was produced.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::bail;
use rand::Rng;
use rand::seq::IndexedRandom;

use super::Settings;
use super::processes::Processes;
use super::produce::millis;
use super::report::{ChaosReport, Report};
use super::session::{EventKind, Session};

/// How many workers start together.
const FIRST_WORKERS: usize = 3;
/// When the chaos events happen, in milliseconds of the run.
#[derive(Clone, Debug)]
struct Plan {
    /// (time, event), in time order.
    events: VecDeque<(u32, EventKind)>,
}

impl Plan {
    /// The split, join, merge and leave at seeded times within production
    /// (the kills follow `--kill-every` on their own).
    fn new(settings: &Settings, rng: &mut impl Rng) -> Self {
        let production_ms = settings.records as f64 * 1000.0 / settings.rate as f64;
        let mut at = |from: f64| {
            millis(Duration::from_secs_f64(
                production_ms * (from + rng.random_range(0.0..0.1)) / 1000.0,
            ))
        };
        let mut events: Vec<(u32, EventKind)> = vec![
            (at(0.2), EventKind::Split),
            (at(0.35), EventKind::Join),
            (at(0.5), EventKind::Merge),
            (at(0.65), EventKind::Leave),
        ];
        events.sort_by_key(|(ms, _)| *ms);
        Self {
            events: events.into(),
        }
    }
}

/// Runs the chaos scenario on `local`; SIGTERM or Ctrl-C stops it (the
/// worker processes are killed with it).
pub(super) async fn run(local: &rkcl_local::Local, settings: Settings) -> anyhow::Result<Report> {
    tokio::select! {
        report = chaos(local, settings) => report,
        () = rkcl::scheduler::wait_for_signal() => bail!("interrupted"),
    }
}

/// The chaos run itself: its future owns the worker processes, so dropping
/// it kills them.
async fn chaos(local: &rkcl_local::Local, settings: Settings) -> anyhow::Result<Report> {
    let mut session = Session::open(local, settings.clone()).await?;
    let mut fleet = Processes::new(local, settings.lease_duration, FIRST_WORKERS + 1)?;
    let mut plan = Plan::new(&settings, &mut session.rng);
    session.start_production();
    for slot in 0..FIRST_WORKERS {
        fleet.spawn(&mut session, slot, &format!("worker-{}", slot + 1))?;
    }
    session.progress(&format!(
        "{FIRST_WORKERS} rkcl consume processes started; producing {} records at {}/s; \
         a SIGKILL every {} s",
        settings.records,
        settings.rate,
        settings.kill_every.as_secs_f64()
    ));
    let kill_every = millis(settings.kill_every);
    let mut next_kill = kill_every;
    let mut recovering: Vec<usize> = Vec::new();
    let mut settling: Vec<usize> = Vec::new();
    let mut drained_since: Option<Instant> = None;
    loop {
        session.tick().await?;
        fleet.reap(&mut session);
        note_recoveries(&mut session, &mut recovering, &mut settling);
        let now = session.now_ms();
        if now >= next_kill && !session.production_done() {
            next_kill = next_kill.saturating_add(kill_every);
            // A worker that holds leases, when one does: its kill is a
            // failover.
            let running = fleet.running();
            let holding = holding(&session, &running);
            let candidates = if holding.is_empty() { running } else { holding };
            if let Some(victim) = candidates.choose(&mut session.rng).cloned() {
                let replacement = fleet.kill_and_restart(&mut session, &victim)?;
                let event = session.event(
                    EventKind::Kill,
                    Some(&victim),
                    format!("SIGKILL {victim}; restarted as {replacement}"),
                );
                recovering.push(event);
                settling.push(event);
            }
        }
        if plan.events.front().is_some_and(|(at, _)| now >= *at)
            && let Some((at, kind)) = plan.events.pop_front()
        {
            match chaos_event(&mut session, &mut fleet, kind).await? {
                Done::Happened(event) => settling.push(event),
                Done::Postponed if now.saturating_sub(at) < millis(settings.settle_timeout()) => {
                    plan.events.push_front((at, kind));
                }
                Done::Postponed => {
                    session.progress(&format!("no worker to {}; skipped", kind.name()));
                }
                Done::Skipped => {}
            }
        }
        let finished = session.production_done() && plan.events.is_empty();
        if finished && session.all_delivered() && session.status.settled() {
            break;
        }
        if finished {
            let since = *drained_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= settings.settle_timeout() {
                session.progress("the group did not settle; stopping anyway");
                break;
            }
        }
    }
    let balanced = session.status.settled();
    let leases_at_end = session.status.held.clone();
    session.progress("stopping every worker with SIGTERM");
    session.freeze_timeline();
    fleet.stop_all(&mut session).await?;
    let mut report = Report::build(&session, balanced, leases_at_end);
    report.chaos = Some(ChaosReport {
        kill_every_seconds: settings.kill_every.as_secs_f64(),
        restarts: fleet.restarts(),
        unparsed_lines: fleet.unparsed_lines(),
        released_at_end: session
            .watch
            .history()
            .values()
            .all(|h| h.last().is_none_or(|o| o.owner.is_none())),
    });
    Ok(report)
}

/// The workers of `ids` that hold a lease, as of the last sample.
fn holding(session: &Session, ids: &[String]) -> Vec<String> {
    ids.iter()
        .filter(|id| session.status.held.get(*id).is_some_and(|n| *n > 0))
        .cloned()
        .collect()
}

/// What became of a planned event.
enum Done {
    /// It happened: the index of the event.
    Happened(usize),
    /// Not now: no worker to do it to yet.
    Postponed,
    /// Nothing to do (kills follow their own clock, not the plan).
    Skipped,
}

/// Performs one planned event.
async fn chaos_event(
    session: &mut Session,
    fleet: &mut Processes,
    kind: EventKind,
) -> anyhow::Result<Done> {
    Ok(match kind {
        EventKind::Split => {
            let detail = session.split().await?;
            Done::Happened(session.event(kind, None, detail))
        }
        EventKind::Merge => {
            let detail = session.merge().await?;
            Done::Happened(session.event(kind, None, detail))
        }
        EventKind::Join => {
            let slot = FIRST_WORKERS;
            let id = format!("worker-{}", slot + 1);
            fleet.spawn(session, slot, &id)?;
            Done::Happened(session.event(kind, Some(&id), format!("{id} joined")))
        }
        EventKind::Leave => {
            // A worker that holds leases has started (and handles SIGTERM),
            // and its leaving moves leases.
            let holding = holding(session, &fleet.running());
            match holding.choose(&mut session.rng).cloned() {
                Some(id) => {
                    fleet.leave(&id).await?;
                    Done::Happened(session.event(
                        kind,
                        Some(&id),
                        format!("SIGTERM {id}: it leaves gracefully"),
                    ))
                }
                None => Done::Postponed,
            }
        }
        EventKind::Kill => Done::Skipped,
    })
}

/// Marks the kills after which every shard is held and caught up again,
/// and the events after which the group is settled again (the first
/// sample after the event that says so).
fn note_recoveries(session: &mut Session, recovering: &mut Vec<usize>, settling: &mut Vec<usize>) {
    let at_ms = session.status.at_ms;
    let after =
        |session: &Session, index: usize| session.events.get(index).is_none_or(|e| e.at_ms < at_ms);
    if session.status.recovered() {
        let (done, waiting): (Vec<usize>, Vec<usize>) =
            recovering.iter().copied().partition(|&i| after(session, i));
        *recovering = waiting;
        for index in done {
            if let Some(event) = session.events.get_mut(index) {
                event.recovered_ms = Some(at_ms);
                let seconds = f64::from(at_ms.saturating_sub(event.at_ms)) / 1000.0;
                let detail = event.detail.clone();
                session.progress(&format!("recovered {seconds:.1} s after: {detail}"));
            }
        }
    }
    if session.status.settled() {
        let (done, waiting): (Vec<usize>, Vec<usize>) =
            settling.iter().copied().partition(|&i| after(session, i));
        *settling = waiting;
        for index in done {
            if let Some(event) = session.events.get_mut(index) {
                event.settled_ms = Some(at_ms);
            }
        }
    }
}
