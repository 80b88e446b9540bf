//! One worker's lease loops: the renewer keeps held leases, the taker takes
//! available ones and steals for balance.
//!
//! All writes to a held lease (renewals, checkpoints, releases) go through
//! the coordinator, one at a time per lease, so they never race each other
//! and every write carries the latest counter.
//!
//! This module holds the handle, [`LeaseCoordinator`], with its start and
//! shutdown and the writes a worker makes to the leases it holds, and
//! [`LeaseEvent`]. The loops live beside it: the renewer in `renewer.rs`,
//! the taker loop in `taking.rs`; the state they share in `held.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::access::SHARD_CALL_CONCURRENCY;
use super::held::Shared;
use super::renewer::{WRITE_CONCURRENCY, renew_loop};
use super::taking::take_loop;
use super::{FencingToken, Lease, LeaseCoordinatorConfig, LeaseStore};
use crate::error::{Error, Result};
use crate::health::Health;
use crate::model::{ExtendedSequenceNumber, LeaseKey};

/// A change in the leases this worker holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The worker now holds the lease; the token fences its writes.
    Acquired {
        /// The lease as taken.
        lease: Box<Lease>,
        /// The counter at acquisition, for downstream fencing.
        token: FencingToken,
    },
    /// Another worker asked for the lease to balance the fleet. The worker
    /// still holds it: finish the work in hand, checkpoint, then call
    /// [`LeaseCoordinator::release`]. Without a release within the handoff
    /// timeout the lease is let go anyway and [`LeaseEvent::Lost`] follows.
    HandoffRequested {
        /// The lease key.
        key: LeaseKey,
        /// The worker that takes over.
        next_owner: String,
    },
    /// The worker no longer holds the lease (taken by another, or not
    /// renewed in time). Stop its work; do not checkpoint.
    Lost {
        /// The lease key.
        key: LeaseKey,
    },
}

/// One worker's lease loops.
///
/// The renewer renews every held lease each `renew_interval` and reports a
/// lease lost when a renewal loses, or when it has not been renewed for
/// `lease_duration - safety_margin` (before any other worker, which waits a
/// full `lease_duration` since it saw the counter change, could take it).
/// The taker judges expiry on the local monotonic clock (no clock sync),
/// and takes and steals as its pure planner decides (fair shares, balanced steals); it scans the
/// table only when a scan can change something (see
/// [`LeaseCoordinatorConfig::scan_interval`]).
///
/// Shutdown releases every held lease so other workers take them within one
/// scan interval. Clones share the same loops; the loops stop when the last
/// clone is dropped (the leases then expire) or at [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct LeaseCoordinator<S> {
    /// The state the loops and every clone share.
    pub(super) shared: Arc<Shared<S>>,
    /// The loops' tasks, stopped when the last clone is dropped.
    running: Arc<Running>,
}

impl<S> Clone for LeaseCoordinator<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            running: self.running.clone(),
        }
    }
}

/// The loops' tasks; dropping the last handle stops them.
#[derive(Debug)]
struct Running {
    /// Stops the loops between rounds.
    cancel: CancellationToken,
    /// The renewer and the taker; taken (and joined) by the first shutdown.
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl<S: LeaseStore + 'static> LeaseCoordinator<S> {
    /// Starts the loops; lease changes arrive on the returned receiver.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `config` does not validate.
    pub fn start(
        store: S,
        config: LeaseCoordinatorConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<LeaseEvent>)> {
        Self::start_scoped(store, config, None)
    }

    /// As [`start`](Self::start), taking only leases of the streams in
    /// `scope` (stream identifiers) when it is `Some`: a multi-stream worker
    /// never takes a lease of a stream it does not read.
    pub(crate) fn start_scoped(
        store: S,
        config: LeaseCoordinatorConfig,
        scope: Option<std::collections::HashSet<String>>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<LeaseEvent>)> {
        config.validate()?;
        let (events, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            store,
            config,
            held: Mutex::new(BTreeMap::new()),
            events,
            shard_calls: tokio::sync::Semaphore::new(SHARD_CALL_CONCURRENCY),
            health: Health::new(),
            scope: std::sync::RwLock::new(scope),
        });
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let span = tracing::info_span!("leases", worker_id = %shared.config.worker_id);
        for looped in [Loop::Renewer, Loop::Taker] {
            let (shared, cancel) = (shared.clone(), cancel.clone());
            tasks.spawn(tracing::Instrument::instrument(
                async move { looped.run(&shared, &cancel).await },
                span.clone(),
            ));
        }
        Ok((
            Self {
                shared,
                running: Arc::new(Running {
                    cancel,
                    tasks: Mutex::new(Some(tasks)),
                }),
            },
            receiver,
        ))
    }

    /// The health the lease loops report to (each round, and whether the
    /// lease table answered); the scheduler adds its own loops to it.
    pub fn health(&self) -> Health {
        self.shared.health.clone()
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.shared.config.worker_id
    }

    /// The leases held now, as last written.
    pub fn held(&self) -> Vec<Lease> {
        self.shared
            .held
            .lock()
            .map(|held| held.values().map(|h| h.lease.clone()).collect())
            .unwrap_or_default()
    }

    /// The held copy of one lease.
    pub fn lease(&self, key: &LeaseKey) -> Option<Lease> {
        self.shared.held_copy(key).map(|held| held.lease)
    }

    /// Stores a checkpoint in a held lease, fenced by its counter. Also
    /// counts as a renewal. Writes to one lease go one at a time; the stored
    /// checkpoint again is answered without a write.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when this worker no longer holds the lease (the
    /// lease is then dropped and [`LeaseEvent::Lost`] sent);
    /// [`Error::InvalidCheckpoint`] when the checkpoint would move backwards; the
    /// store's error when the write failed (retry it).
    pub async fn checkpoint(
        &self,
        key: &LeaseKey,
        position: &ExtendedSequenceNumber,
    ) -> Result<Lease> {
        let shared = &self.shared;
        let lost = || Error::LeaseLost {
            lease_key: key.to_string(),
        };
        let write = shared.held_copy(key).ok_or_else(lost)?.write;
        let _one_at_a_time = write.lock().await;
        let held = shared.held_copy(key).ok_or_else(lost)?;
        // The one check that a checkpoint never moves backwards, under the
        // lease's write lock; the same position again needs no write.
        if position < &held.lease.checkpoint {
            return Err(Error::InvalidCheckpoint {
                lease_key: key.to_string(),
                message: format!("{position} is before the stored {}", held.lease.checkpoint),
            });
        }
        if position == &held.lease.checkpoint {
            return Ok(held.lease);
        }
        let started = Instant::now();
        if let Some(lease) = shared
            .store
            .update_checkpoint(&held.lease, position)
            .await?
        {
            shared.refresh_noting_handoff(lease.clone(), started);
            return Ok(lease);
        }
        // The counter moved under us: a handoff began (this worker still
        // holds the lease), or an earlier attempt landed and its answer was
        // lost. Anything else means the lease is gone.
        let me = Some(shared.config.worker_id.as_str());
        match shared.store.get(key).await? {
            Some(stored) if stored.holder() == me && &stored.checkpoint == position => {
                shared.refresh_noting_handoff(stored.clone(), started);
                Ok(stored)
            }
            Some(stored) if stored.holder() == me && stored.counter > held.lease.counter => {
                shared.refresh_noting_handoff(stored.clone(), started);
                match shared.store.update_checkpoint(&stored, position).await? {
                    Some(lease) => {
                        shared.refresh_noting_handoff(lease.clone(), started);
                        Ok(lease)
                    }
                    None => {
                        shared.lose(key, "a checkpoint found the lease taken");
                        Err(lost())
                    }
                }
            }
            _ => {
                shared.lose(key, "a checkpoint found the lease taken");
                Err(lost())
            }
        }
    }

    /// Lets go of a held lease: during a handoff the next owner starts,
    /// otherwise the lease becomes available to every worker. No
    /// [`LeaseEvent`] follows. `false` when it was not held (any more).
    ///
    /// # Errors
    ///
    /// The store's error when the write failed; the lease stays held (and
    /// renewed) so the release can be retried.
    pub async fn release(&self, key: &LeaseKey) -> Result<bool> {
        release_one(&self.shared, key).await
    }

    /// The lease store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// From now on, takes only leases of the streams in `scope` (stream
    /// identifiers); leases already held are kept until released.
    pub(crate) fn set_scope(&self, scope: std::collections::HashSet<String>) {
        if let Ok(mut current) = self.shared.scope.write() {
            *current = Some(scope);
        }
    }

    /// Stops the loops (of every clone) and releases every held lease for
    /// immediate pick-up. Leases this worker claimed but had not started
    /// (handoffs to it still pending, leases stolen and waiting for the old
    /// owner to notice) are given back too: a pending handoff is withdrawn,
    /// so the old owner keeps the lease. Returns the keys that could not be
    /// let go (they expire instead).
    pub async fn shutdown(&self) -> Vec<LeaseKey> {
        self.running.cancel.cancel();
        let tasks = self.running.tasks.lock().ok().and_then(|mut t| t.take());
        if let Some(mut tasks) = tasks {
            while tasks.join_next().await.is_some() {}
        }
        let shared = &self.shared;
        let failed = Mutex::new(Vec::new());
        futures_util::stream::iter(shared.held_keys())
            .for_each_concurrent(WRITE_CONCURRENCY, |key| {
                let failed = &failed;
                async move {
                    if let Err(err) = release_one(shared, &key).await {
                        tracing::warn!(lease_key = %key, error = %err, "could not release the lease");
                        shared.remove(&key);
                        if let Ok(mut failed) = failed.lock() {
                            failed.push(key);
                        }
                    }
                }
            })
            .await;
        let mut failed = failed.into_inner().unwrap_or_default();
        if let Err(err) = give_back_claims(shared, &failed).await {
            tracing::warn!(error = %err, "could not give back the leases claimed but not started");
        }
        failed.sort();
        failed
    }
}

/// Lets go of every lease the table names this worker for that it does not
/// hold, except `skip`: withdraws handoffs to it, releases the rest.
async fn give_back_claims<S: LeaseStore>(shared: &Shared<S>, skip: &[LeaseKey]) -> Result<()> {
    let me = Some(shared.config.worker_id.as_str());
    for lease in shared.store.list().await? {
        if skip.contains(&lease.key) {
            continue;
        }
        let given_back = if lease.is_handing_off() && lease.owner.as_deref() == me {
            shared.store.withdraw_handoff(&lease).await?
        } else if lease.holder() == me {
            shared.store.release(&lease).await?
        } else {
            continue;
        };
        tracing::info!(lease_key = %lease.key, done = given_back.is_some(), "gave back a lease claimed but not started");
    }
    Ok(())
}

/// Releases the held lease `key` under its write lock; `false` when it was
/// not held (any more). The lease is dropped from the held set before the
/// write and put back if the write fails.
async fn release_one<S: LeaseStore>(shared: &Shared<S>, key: &LeaseKey) -> Result<bool> {
    let Some(held) = shared.held_copy(key) else {
        return Ok(false);
    };
    let _one_at_a_time = held.write.lock().await;
    let Some(held) = shared.held_copy(key) else {
        return Ok(false);
    };
    // Dropped here first, so no moment exists where this worker and the
    // next both believe they hold it; put back if the write fails.
    shared.remove(key);
    let released = match shared.store.release(&held.lease).await {
        Ok(released) => released,
        Err(err) => {
            if let Ok(mut all) = shared.held.lock() {
                all.insert(key.to_owned(), held);
            }
            return Err(err);
        }
    };
    match &released {
        Some(lease) => {
            tracing::info!(lease_key = %key, next_owner = ?lease.owner, "released the lease");
        }
        None => tracing::info!(lease_key = %key, "the lease was already gone"),
    }
    Ok(released.is_some())
}

/// The loops a coordinator runs, one task each.
#[derive(Clone, Copy, Debug)]
pub(super) enum Loop {
    /// Renews held leases ([`renew_loop`]).
    Renewer,
    /// Takes and steals leases ([`take_loop`]).
    Taker,
}

impl Loop {
    /// Its name in health checks.
    pub(super) const fn name(self) -> &'static str {
        match self {
            Loop::Renewer => "lease renewer",
            Loop::Taker => "lease taker",
        }
    }

    /// Runs the loop until `cancel`. Cancellation is seen only between
    /// rounds, never inside a write, so a take or renewal that reached the
    /// store is always known to the coordinator.
    async fn run<S: LeaseStore>(self, shared: &Shared<S>, cancel: &CancellationToken) {
        match self {
            Loop::Renewer => renew_loop(shared, cancel).await,
            Loop::Taker => take_loop(shared, cancel).await,
        }
        shared.health.loop_ended(self.name());
    }
}

/// Sleeps until `deadline`; `false` when cancelled first.
pub(super) async fn pause(cancel: &CancellationToken, deadline: Instant) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep_until(deadline) => true,
    }
}
