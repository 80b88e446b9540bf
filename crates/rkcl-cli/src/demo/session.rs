//! What both scenarios share while they run: the clock, the stream, the
//! producer task, the tally, the lease-table watch, the workers and events
//! so far, the timeline and the progress lines, and the reshards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rkcl::aws::StreamRef;
use rkcl::shards::Shard;
use rkcl::{DynamoDbLeaseStore, Kinesis};
use rkcl_local::{FaultKind, FaultMeter};
use serde::Serialize;
use tokio::task::JoinHandle;

use super::Settings;
use super::produce::{ProduceSummary, Production, millis, produce};
use super::tally::{Tally, quantile};
use super::watch::{LeaseWatch, SAMPLE_EVERY, Status};

/// The application (lease table) and stream name of the demo.
pub(super) const APP: &str = "rkcl-demo";

/// A timeline point and a progress line every this many samples.
const SAMPLES_PER_POINT: u64 = 5;

/// What happened to the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum EventKind {
    /// A worker stopped without a shutdown.
    Kill,
    /// A shard split in two.
    Split,
    /// Two shards merged.
    Merge,
    /// A worker started.
    Join,
    /// A worker shut down gracefully.
    Leave,
}

impl EventKind {
    /// The lowercase name.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Split => "split",
            Self::Merge => "merge",
            Self::Join => "join",
            Self::Leave => "leave",
        }
    }
}

/// One event of the run.
#[derive(Clone, Debug)]
pub(super) struct Event {
    /// When, in milliseconds of the run.
    pub(super) at_ms: u32,
    /// What.
    pub(super) kind: EventKind,
    /// The worker it happened to, if any.
    pub(super) worker: Option<String>,
    /// A sentence for people.
    pub(super) detail: String,
    /// When the group was settled again (the story).
    pub(super) settled_ms: Option<u32>,
    /// When every shard was held and caught up again (after a kill).
    pub(super) recovered_ms: Option<u32>,
}

/// How a worker ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum WorkerEnd {
    /// Killed without a shutdown.
    Killed,
    /// Left the group gracefully during the run.
    Left,
    /// Shut down gracefully at the end of the run.
    Stopped,
    /// Exited on its own, or did not stop when asked.
    Failed(String),
}

/// One worker (one process, in the chaos run) of the run.
#[derive(Clone, Debug)]
pub(super) struct WorkerInfo {
    /// The worker id in the lease table.
    pub(super) id: String,
    /// When it started, in milliseconds of the run.
    pub(super) started_ms: u32,
    /// When it was gone (its process exited or it was dropped).
    pub(super) ended_ms: Option<u32>,
    /// How it ended.
    pub(super) end: Option<WorkerEnd>,
}

/// The group at one point of the timeline.
#[derive(Clone, Debug, Serialize)]
pub(super) struct TimelinePoint {
    /// Seconds since the workers started.
    pub(super) seconds: f64,
    /// Records put so far.
    pub(super) produced: usize,
    /// Records delivered at least once so far.
    pub(super) consumed: usize,
    /// Records first delivered per second since the point before.
    pub(super) records_per_second: f64,
    /// Records put per second since the point before.
    pub(super) produced_per_second: f64,
    /// Records put and not yet delivered.
    pub(super) lag: usize,
    /// How old the oldest of them is, in milliseconds.
    pub(super) oldest_undelivered_ms: Option<u32>,
    /// Put-to-delivery latency of the records first delivered since the
    /// point before: median and 99th percentile, in milliseconds.
    pub(super) latency_ms_p50: Option<u32>,
    /// See `latency_ms_p50`.
    pub(super) latency_ms_p99: Option<u32>,
    /// Active leases per live worker.
    pub(super) leases: std::collections::BTreeMap<String, usize>,
    /// Active leases without a live holder.
    pub(super) leases_unheld: usize,
    /// Faults the local services injected since the point before, per kind
    /// (`throttle`, `error`, `reset`, `expired`, `latency`); empty without
    /// a fault layer.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) faults: BTreeMap<&'static str, u64>,
}

impl TimelinePoint {
    /// Faults that failed a request (every kind but added latency) since
    /// the point before.
    pub(super) fn failing_faults(&self) -> u64 {
        self.faults
            .iter()
            .filter(|(kind, _)| **kind != FaultKind::Latency.name())
            .map(|(_, n)| n)
            .sum()
    }
}

/// The state of a run in progress.
#[derive(Debug)]
pub(super) struct Session {
    /// The run's settings.
    pub(super) settings: Settings,
    /// The clock of the run (timestamps are milliseconds since it started).
    pub(super) clock: Instant,
    /// The demo's own Kinesis client.
    pub(super) kinesis: Kinesis,
    /// The demo stream.
    pub(super) stream: StreamRef,
    /// Every delivery.
    pub(super) tally: Arc<Mutex<Tally>>,
    /// The lease table over time.
    pub(super) watch: LeaseWatch,
    /// The open shards, as of the last reshard.
    pub(super) open: BTreeSet<String>,
    /// Every worker of the run.
    pub(super) workers: Vec<WorkerInfo>,
    /// Every event of the run.
    pub(super) events: Vec<Event>,
    /// A point per second.
    pub(super) timeline: Vec<TimelinePoint>,
    /// Every random choice comes from here.
    pub(super) rng: StdRng,
    /// The status at the last sample.
    pub(super) status: Status,
    ticker: tokio::time::Interval,
    ticks: u64,
    /// (ms, consumed, produced) at the last timeline point.
    last_point: (u32, usize, usize),
    production: Option<JoinHandle<anyhow::Result<ProduceSummary>>>,
    produced: Option<ProduceSummary>,
    /// No more timeline points (the workers are being stopped).
    frozen: bool,
    /// The local services' fault counts.
    pub(super) faults: FaultMeter,
    /// Faults injected per kind (in `FaultKind::ALL` order) at the last
    /// timeline point.
    last_faults: [u64; FaultKind::ALL.len()],
}

impl Session {
    /// Creates the demo stream and lease table on `local` and starts the
    /// clock.
    pub(super) async fn open(
        local: &rkcl_local::Local,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        let kinesis = Kinesis::new(local.kinesis_client());
        let stream = StreamRef::parse(APP);
        kinesis
            .create_stream(stream.name(), settings.shards)
            .await?;
        kinesis
            .wait_until_active(&stream, Duration::from_secs(30))
            .await?;
        let store = DynamoDbLeaseStore::new(local.dynamodb_client(), APP);
        store.ensure_table(Duration::from_secs(30)).await?;
        let mut ticker = tokio::time::interval(SAMPLE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut session = Self {
            tally: Arc::new(Mutex::new(Tally::new(settings.records))),
            rng: StdRng::seed_from_u64(settings.seed),
            settings,
            clock: Instant::now(),
            kinesis,
            stream,
            watch: LeaseWatch::new(store),
            open: BTreeSet::new(),
            workers: Vec::new(),
            events: Vec::new(),
            timeline: Vec::new(),
            status: Status::default(),
            ticker,
            ticks: 0,
            last_point: (0, 0, 0),
            production: None,
            produced: None,
            frozen: false,
            faults: local.fault_meter(),
            last_faults: [0; FaultKind::ALL.len()],
        };
        session.open = session.open_shards().await?.into_iter().collect();
        session.progress(&format!(
            "stream {} with {} shards is active; seed {} (repeat the run with --seed {})",
            session.stream, session.settings.shards, session.settings.seed, session.settings.seed
        ));
        Ok(session)
    }

    /// Milliseconds since the clock started.
    pub(super) fn now_ms(&self) -> u32 {
        millis(self.clock.elapsed())
    }

    /// Shows a progress line with the time of the run.
    pub(super) fn progress(&self, text: &str) {
        let seconds = self.clock.elapsed().as_secs_f64();
        self.settings.progress(&format!("{seconds:5.1} s  {text}"));
    }

    /// Restarts the clock (when the workers start) and starts producing.
    pub(super) fn start_production(&mut self) {
        self.clock = Instant::now();
        let production = Production {
            kinesis: self.kinesis.clone(),
            stream: self.stream.clone(),
            records: self.settings.records,
            rate: self.settings.rate,
        };
        self.production = Some(tokio::spawn(produce(
            production,
            self.tally.clone(),
            self.clock,
        )));
    }

    /// Whether every record has been put.
    pub(super) fn production_done(&self) -> bool {
        self.produced.is_some()
    }

    /// What the producer did, once it is done.
    pub(super) fn produced(&self) -> ProduceSummary {
        self.produced.unwrap_or_default()
    }

    /// Whether every record was put and delivered.
    pub(super) fn all_delivered(&self) -> bool {
        self.production_done()
            && self
                .tally
                .lock()
                .is_ok_and(|t| t.unique() >= self.settings.records)
    }

    /// The workers not gone.
    pub(super) fn live(&self) -> BTreeSet<String> {
        self.workers
            .iter()
            .filter(|w| w.ended_ms.is_none())
            .map(|w| w.id.clone())
            .collect()
    }

    /// Adds a worker that starts now.
    pub(super) fn add_worker(&mut self, id: &str) {
        let started_ms = self.now_ms();
        if let Ok(mut tally) = self.tally.lock() {
            tally.name_id(id);
        }
        self.workers.push(WorkerInfo {
            id: id.to_owned(),
            started_ms,
            ended_ms: None,
            end: None,
        });
    }

    /// Marks a worker as gone.
    pub(super) fn end_worker(&mut self, id: &str, end: WorkerEnd) {
        let now = self.now_ms();
        if let Some(worker) = self
            .workers
            .iter_mut()
            .find(|w| w.id == id && w.ended_ms.is_none())
        {
            worker.ended_ms = Some(now);
            worker.end = Some(end);
        }
    }

    /// Records an event and shows it; returns its index.
    pub(super) fn event(&mut self, kind: EventKind, worker: Option<&str>, detail: String) -> usize {
        self.progress(&format!("▶ {detail}"));
        self.events.push(Event {
            at_ms: self.now_ms(),
            kind,
            worker: worker.map(str::to_owned),
            detail,
            settled_ms: None,
            recovered_ms: None,
        });
        self.events.len() - 1
    }

    /// Waits for the next sample time, samples the lease table, and every
    /// second adds a timeline point and shows a progress line.
    ///
    /// # Errors
    ///
    /// When the producer failed.
    pub(super) async fn tick(&mut self) -> anyhow::Result<()> {
        self.ticker.tick().await;
        self.check_production().await?;
        if let Some(leases) = self.watch.sample(self.clock).await {
            let now = self.now_ms();
            let oldest = self
                .tally
                .lock()
                .ok()
                .and_then(|t| t.oldest_undelivered_ms(now));
            self.status = super::watch::Status::of(&leases, &self.live(), &self.open, oldest, now);
        }
        self.ticks += 1;
        if self.ticks.is_multiple_of(SAMPLES_PER_POINT) && !self.frozen {
            self.point();
        }
        Ok(())
    }

    async fn check_production(&mut self) -> anyhow::Result<()> {
        if self
            .production
            .as_ref()
            .is_some_and(JoinHandle::is_finished)
            && let Some(handle) = self.production.take()
        {
            let summary = handle
                .await
                .context("the producer stopped")?
                .context("could not produce")?;
            self.produced = Some(summary);
            self.progress(&format!("produced all {} records", self.settings.records));
        }
        Ok(())
    }

    /// Adds a timeline point and shows it.
    fn point(&mut self) {
        let now = self.now_ms();
        let (produced, consumed, mut latencies) = match self.tally.lock() {
            Ok(mut tally) => (
                tally.produced_count(),
                tally.unique(),
                tally.take_interval_latencies(),
            ),
            Err(_) => return,
        };
        latencies.sort_unstable();
        let (last_ms, last_consumed, last_produced) = self.last_point;
        let seconds = f64::from(now.saturating_sub(last_ms)).max(1.0) / 1000.0;
        let point = TimelinePoint {
            seconds: f64::from(now) / 1000.0,
            produced,
            consumed,
            records_per_second: consumed.saturating_sub(last_consumed) as f64 / seconds,
            produced_per_second: produced.saturating_sub(last_produced) as f64 / seconds,
            lag: produced.saturating_sub(consumed),
            oldest_undelivered_ms: self.status.oldest_undelivered_ms,
            latency_ms_p50: (!latencies.is_empty()).then(|| quantile(&latencies, 0.5)),
            latency_ms_p99: (!latencies.is_empty()).then(|| quantile(&latencies, 0.99)),
            leases: self.status.held.clone(),
            leases_unheld: self.status.unheld,
            faults: self.faults_since_last_point(),
        };
        self.last_point = (now, consumed, produced);
        let state = if self.status.settled() {
            "settled"
        } else if self.status.recovered() {
            "balancing"
        } else {
            "recovering"
        };
        let oldest = point.oldest_undelivered_ms.map_or_else(String::new, |ms| {
            format!(" ({:.1} s)", f64::from(ms) / 1000.0)
        });
        let faults = if self.faults.is_active() {
            format!("  faults {:>3}", point.failing_faults())
        } else {
            String::new()
        };
        self.progress(&format!(
            "produced {produced:>8}  consumed {consumed:>8}  {:>6.0}/s  lag {:>6}{oldest:<8}  p99 {:>5} ms{faults}  leases {}  {state}",
            point.records_per_second,
            point.lag,
            point.latency_ms_p99.unwrap_or(0),
            self.status.describe_leases(),
        ));
        self.timeline.push(point);
    }

    /// Faults injected per kind since the last call; empty without a fault
    /// layer.
    fn faults_since_last_point(&mut self) -> BTreeMap<&'static str, u64> {
        let mut since = BTreeMap::new();
        if !self.faults.is_active() {
            return since;
        }
        let counts = self.faults.counts();
        for (kind, last) in FaultKind::ALL.into_iter().zip(&mut self.last_faults) {
            let total = counts.total(kind);
            since.insert(kind.name(), total.saturating_sub(*last));
            *last = total;
        }
        since
    }

    /// The stream's open shards.
    async fn open_shards(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .kinesis
            .list_shards(&self.stream)
            .await?
            .into_iter()
            .filter(Shard::is_open)
            .map(|s| s.id.as_str().to_owned())
            .collect())
    }

    /// Splits a shard chosen by the seed in two halves; returns what
    /// happened, in words.
    pub(super) async fn split(&mut self) -> anyhow::Result<String> {
        let shards = self.kinesis.list_shards(&self.stream).await?;
        let open: Vec<&Shard> = shards.iter().filter(|s| s.is_open()).collect();
        let Some(shard) = open.choose(&mut self.rng).copied() else {
            bail!("no open shard to split");
        };
        self.kinesis
            .split_shard(&self.stream, &shard.id, shard.hash_key_range.middle())
            .await
            .with_context(|| format!("could not split {}", shard.id))?;
        self.after_reshard(&format!("split {}", shard.id), &[&shard.id])
            .await
    }

    /// Merges two adjacent open shards chosen by the seed; returns what
    /// happened, in words.
    pub(super) async fn merge(&mut self) -> anyhow::Result<String> {
        let shards = self.kinesis.list_shards(&self.stream).await?;
        let mut open: Vec<&Shard> = shards.iter().filter(|s| s.is_open()).collect();
        open.sort_by_key(|s| s.hash_key_range.start());
        let pairs: Vec<(&Shard, &Shard)> = open
            .windows(2)
            .filter_map(|w| match w {
                [a, b]
                    if a.hash_key_range.end().as_u128().checked_add(1)
                        == Some(b.hash_key_range.start().as_u128()) =>
                {
                    Some((*a, *b))
                }
                _ => None,
            })
            .collect();
        let Some((a, b)) = pairs.choose(&mut self.rng).copied() else {
            bail!("no two adjacent open shards to merge");
        };
        self.kinesis
            .merge_shards(&self.stream, &a.id, &b.id)
            .await
            .with_context(|| format!("could not merge {} and {}", a.id, b.id))?;
        self.after_reshard(&format!("merged {} and {}", a.id, b.id), &[&a.id, &b.id])
            .await
    }

    /// Waits until the stream is active again, updates the open shards and
    /// names the children of `parents`.
    async fn after_reshard(
        &mut self,
        what: &str,
        parents: &[&rkcl::ShardId],
    ) -> anyhow::Result<String> {
        self.kinesis
            .wait_until_active(&self.stream, Duration::from_secs(30))
            .await?;
        let shards = self.kinesis.list_shards(&self.stream).await?;
        let children: Vec<&str> = shards
            .iter()
            .filter(|s| s.is_open() && s.parents().any(|p| parents.contains(&p)))
            .map(|s| s.id.as_str())
            .collect();
        self.open = shards
            .iter()
            .filter(|s| s.is_open())
            .map(|s| s.id.as_str().to_owned())
            .collect();
        Ok(format!("{what} into {}", children.join(" and ")))
    }

    /// Ends the timeline with a last point: the run is over and the
    /// workers are being stopped (the lease table is still sampled for the
    /// checks).
    pub(super) fn freeze_timeline(&mut self) {
        // A point over less time than this would show a noisy rate.
        const SHORTEST: u32 = 300;
        if !self.frozen && self.now_ms().saturating_sub(self.last_point.0) >= SHORTEST {
            self.point();
        }
        self.frozen = true;
    }

    /// Stops the producer if it still runs (the run ended before it was
    /// done).
    pub(super) fn stop_production(&mut self) {
        if let Some(handle) = self.production.take() {
            handle.abort();
        }
    }
}
