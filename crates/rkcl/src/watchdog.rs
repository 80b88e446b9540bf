//! The stalled-shard watchdog: what each shard's consumer is doing and
//! since when, and the judgement of when that is a stall.
//!
//! Each shard's consumer writes its progress as it goes (the state
//! it entered, a call into the processor starting and ending, every event
//! of its reader); the worker reads them every
//! [`WatchdogConfig::check_interval`] and judges each with
//! the rules below. A shard is stalled when
//!
//! - its processor has not returned from a call for
//!   [`processor_timeout`](WatchdogConfig::processor_timeout),
//! - its reader has brought no event at all (not even an empty batch) for
//!   [`reader_timeout`](WatchdogConfig::reader_timeout), or no records
//!   for as long while the last batch was behind the tip
//!   (`MillisBehindLatest` > 0), or
//! - it has waited for its parent shards to finish for
//!   [`parents_timeout`](WatchdogConfig::parents_timeout).
//!
//! The worker logs one warning when a stall starts (shard, lease, state,
//! how long) and one line when it ends, sets `rkcl_shards_stalled`, and
//! acts as configured: a stalled reader is interrupted and reopened after
//! the last record delivered ([`StallAction::RestartReader`]); a stalled
//! processor's consumer is stopped without waiting for the call and its
//! lease released, so that this or another worker starts the shard again
//! from its checkpoint ([`StallAction::ReleaseLease`]). Nothing is lost
//! either way: records past the checkpoint are delivered again.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What the worker does about a stalled shard, beyond a warning and the
/// `rkcl_shards_stalled` gauge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StallAction {
    /// Warn and count only.
    #[default]
    Warn,
    /// Interrupt the shard's reader and open it again after the last
    /// record delivered (a new iterator, or a new subscription). Applies to
    /// reader stalls.
    RestartReader,
    /// Stop the shard's consumer without waiting for its processor and
    /// release the lease, so a worker (this one or another) takes the shard
    /// again from its checkpoint. A processor blocked in synchronous code
    /// cannot be interrupted; its thread stays blocked.
    ReleaseLease,
}

/// When the watchdog calls a shard stalled, and what it does then.
///
/// ```
/// use std::time::Duration;
/// use rkcl::watchdog::{StallAction, WatchdogConfig};
/// let config = WatchdogConfig::builder()
///     .processor_timeout(Duration::from_secs(120))
///     .on_stalled_processor(StallAction::ReleaseLease)
///     .build()?;
/// assert_eq!(config.on_stalled_reader, StallAction::RestartReader);
/// # Ok::<(), rkcl::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchdogConfig {
    /// How often the worker judges its shards. Default: 1 s.
    pub check_interval: Duration,
    /// A call into the processor that has not returned for this long is a
    /// stall. Default: 5 minutes.
    pub processor_timeout: Duration,
    /// A reader that brought no event for this long, or no records for
    /// this long while behind the tip, is a stall. Default: 2 minutes.
    pub reader_timeout: Duration,
    /// A child shard that has waited this long for its parents is a stall.
    /// Default: 30 minutes.
    pub parents_timeout: Duration,
    /// What to do about a stalled processor. Default: [`StallAction::Warn`].
    pub on_stalled_processor: StallAction,
    /// What to do about a stalled reader. Default:
    /// [`StallAction::RestartReader`] (nothing is lost by it).
    pub on_stalled_reader: StallAction,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(1),
            processor_timeout: Duration::from_secs(300),
            reader_timeout: Duration::from_secs(120),
            parents_timeout: Duration::from_secs(1800),
            on_stalled_processor: StallAction::Warn,
            on_stalled_reader: StallAction::RestartReader,
        }
    }
}

crate::config::config_builder! {
    /// Builds a [`WatchdogConfig`]; [`build`](Self::build) validates it.
    WatchdogConfigBuilder => WatchdogConfig {
        check_interval: Duration,
        processor_timeout: Duration,
        reader_timeout: Duration,
        parents_timeout: Duration,
        on_stalled_processor: StallAction,
        on_stalled_reader: StallAction,
    }
}

impl WatchdogConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> WatchdogConfigBuilder {
        WatchdogConfigBuilder {
            config: Self::default(),
        }
    }

    /// Checks that every timeout and the check interval are above zero.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::error::Error::Config) naming the setting.
    pub fn validate(&self) -> crate::error::Result<()> {
        for (name, value) in [
            ("check_interval", self.check_interval),
            ("processor_timeout", self.processor_timeout),
            ("reader_timeout", self.reader_timeout),
            ("parents_timeout", self.parents_timeout),
        ] {
            if value.is_zero() {
                return Err(crate::error::Error::Config(format!(
                    "watchdog {name} must be above zero"
                )));
            }
        }
        Ok(())
    }
}

/// Why a shard is stalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StallCause {
    /// A processor call has not returned.
    Processor,
    /// The reader brings nothing.
    Reader,
    /// The shard waits for its parents.
    Parents,
}

impl StallCause {
    /// Every cause, as the `cause` label of `rkcl_shards_stalled` takes
    /// them.
    pub const ALL: [StallCause; 3] = [
        StallCause::Processor,
        StallCause::Reader,
        StallCause::Parents,
    ];

    /// Its name in logs and metric labels: `processor`, `reader` or
    /// `parents`.
    pub const fn name(self) -> &'static str {
        match self {
            StallCause::Processor => "processor",
            StallCause::Reader => "reader",
            StallCause::Parents => "parents",
        }
    }
}

impl fmt::Display for StallCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stall found: why, in what state, since how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stall {
    pub(crate) cause: StallCause,
    /// The consumer's state, or the processor call that hangs.
    pub(crate) doing: &'static str,
    pub(crate) for_how_long: Duration,
}

#[derive(Debug)]
struct Progress {
    state: &'static str,
    entered: Instant,
    /// The processor call under way, and since when.
    call: Option<(&'static str, Instant)>,
    last_event: Instant,
    last_records: Instant,
    millis_behind_latest: Option<u64>,
}

/// What one shard's consumer is doing, as it writes it; read by the
/// worker's watchdog.
#[derive(Debug)]
pub(crate) struct ShardProgress {
    progress: Mutex<Progress>,
    restart_reader: Notify,
}

impl Default for ShardProgress {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            progress: Mutex::new(Progress {
                state: "starting",
                entered: now,
                call: None,
                last_event: now,
                last_records: now,
                millis_behind_latest: None,
            }),
            restart_reader: Notify::new(),
        }
    }
}

impl ShardProgress {
    fn with<T>(&self, f: impl FnOnce(&mut Progress) -> T) -> T {
        f(&mut self.progress.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The consumer is in `state`. Entering a state other than the one it
    /// was in starts its clocks (the state's and the reader's); the same
    /// state again (the consumer loops in *processing*, once per event)
    /// changes nothing.
    pub(crate) fn entered(&self, state: &'static str) {
        self.entered_at(state, Instant::now());
    }

    fn entered_at(&self, state: &'static str, now: Instant) {
        self.with(|p| {
            if p.state == state {
                return;
            }
            p.state = state;
            p.entered = now;
            p.last_event = now;
            p.last_records = now;
        });
    }

    /// A call into the processor started.
    pub(crate) fn call_started(&self, call: &'static str) {
        self.with(|p| p.call = Some((call, Instant::now())));
    }

    /// The call into the processor returned.
    pub(crate) fn call_ended(&self) {
        self.with(|p| p.call = None);
    }

    /// The reader brought an event: a batch of `records` records read
    /// `millis_behind_latest` behind the tip, or the shard's end.
    pub(crate) fn event(&self, records: usize, millis_behind_latest: Option<u64>) {
        self.event_at(records, millis_behind_latest, Instant::now());
    }

    fn event_at(&self, records: usize, millis_behind_latest: Option<u64>, now: Instant) {
        self.with(|p| {
            p.last_event = now;
            if records > 0 {
                p.last_records = now;
            }
            if millis_behind_latest.is_some() {
                p.millis_behind_latest = millis_behind_latest;
            }
        });
    }

    /// The reader was opened again: its clock starts over.
    pub(crate) fn reader_restarted(&self) {
        self.with(|p| {
            let now = Instant::now();
            p.last_event = now;
            p.last_records = now;
        });
    }

    /// Asks the consumer to open its reader again.
    pub(crate) fn request_reader_restart(&self) {
        self.restart_reader.notify_one();
    }

    /// Resolves when a reader restart has been asked for.
    pub(crate) async fn reader_restart_requested(&self) {
        self.restart_reader.notified().await;
    }

    /// The stall of this shard at `now` under `config`, if it is stalled.
    pub(crate) fn stall(&self, now: Instant, config: &WatchdogConfig) -> Option<Stall> {
        self.with(|p| {
            if let Some((call, since)) = p.call {
                let for_how_long = now.saturating_duration_since(since);
                return (for_how_long >= config.processor_timeout).then_some(Stall {
                    cause: StallCause::Processor,
                    doing: call,
                    for_how_long,
                });
            }
            match p.state {
                "waiting on parents" => {
                    let for_how_long = now.saturating_duration_since(p.entered);
                    (for_how_long >= config.parents_timeout).then_some(Stall {
                        cause: StallCause::Parents,
                        doing: p.state,
                        for_how_long,
                    })
                }
                "processing" => {
                    let silent = now.saturating_duration_since(p.last_event);
                    let behind = p.millis_behind_latest.is_some_and(|ms| ms > 0);
                    let without_records = now.saturating_duration_since(p.last_records);
                    let for_how_long = if behind {
                        silent.max(without_records)
                    } else {
                        silent
                    };
                    (for_how_long >= config.reader_timeout).then_some(Stall {
                        cause: StallCause::Reader,
                        doing: p.state,
                        for_how_long,
                    })
                }
                _ => None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WatchdogConfig {
        WatchdogConfig::builder()
            .processor_timeout(Duration::from_secs(10))
            .reader_timeout(Duration::from_secs(20))
            .parents_timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    #[test]
    fn each_cause_is_judged_by_its_own_timeout() {
        let config = config();
        let progress = ShardProgress::default();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);

        progress.entered_at("waiting on parents", at(0));
        assert_eq!(progress.stall(at(29), &config), None);
        let stall = progress.stall(at(31), &config).map(|s| s.cause);
        assert_eq!(stall, Some(StallCause::Parents));

        progress.entered_at("processing", at(100));
        assert_eq!(progress.stall(at(119), &config), None);
        assert_eq!(
            progress.stall(at(121), &config).map(|s| (s.cause, s.doing)),
            Some((StallCause::Reader, "processing"))
        );
        // Empty batches keep a reader at the tip alive...
        progress.event_at(0, Some(0), at(110));
        assert_eq!(progress.stall(at(121), &config), None);
        // ...but not one that is behind and brings no records.
        progress.event_at(0, Some(5_000), at(120));
        assert_eq!(
            progress.stall(at(121), &config).map(|s| s.cause),
            Some(StallCause::Reader)
        );
        progress.event_at(10, Some(5_000), at(121));
        assert_eq!(progress.stall(at(122), &config), None);
        // The consumer loops in *processing* once per event: that is no new
        // start for the reader's clocks.
        progress.event_at(0, Some(5_000), at(130));
        progress.entered_at("processing", at(130));
        progress.event_at(0, Some(5_000), at(140));
        progress.entered_at("processing", at(140));
        assert_eq!(
            progress.stall(at(142), &config).map(|s| s.cause),
            Some(StallCause::Reader),
            "behind, with no records since 121 s"
        );

        // A processor call that does not return, whatever the state.
        progress.call_started("process_records");
        let stall = progress.stall(Instant::now() + Duration::from_secs(11), &config);
        assert_eq!(
            stall.map(|s| (s.cause, s.doing)),
            Some((StallCause::Processor, "process_records"))
        );
        progress.call_ended();
        assert_eq!(progress.stall(Instant::now(), &config), None);

        progress.entered("shard ending");
        assert_eq!(progress.stall(at(1000), &config), None);
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let err = WatchdogConfig::builder()
            .reader_timeout(Duration::ZERO)
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("reader_timeout"), "{err}");
        assert!(WatchdogConfig::default().validate().is_ok());
    }
}
