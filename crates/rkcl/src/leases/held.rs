//! The leases a worker holds, and the state its loops and handles share.
//!
//! [`Shared`] is what every part of the coordinator sees: the store, the
//! configuration, the held leases and the sender of lease events. Its
//! operations take the lock on the held leases only for a moment and never
//! across an `.await`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Lease, LeaseCoordinatorConfig, LeaseEvent};
use crate::health::Health;
use crate::model::LeaseKey;

/// A held lease: the latest copy, when it was last renewed, whether a
/// handoff was asked for, and the lock that keeps its writes one at a time.
#[derive(Clone, Debug)]
pub(super) struct Held {
    /// The lease as last written by this worker.
    pub(super) lease: Lease,
    /// When the write that produced `lease` started (a renewal, a take or a
    /// checkpoint).
    pub(super) renewed: Instant,
    /// When this worker first learned that another worker asked for the
    /// lease; `None` while no handoff is in progress.
    pub(super) handoff_since: Option<Instant>,
    /// Held across each write to the lease, so writes never race each other.
    pub(super) write: Arc<tokio::sync::Mutex<()>>,
}

/// The shared state of a worker's loops.
#[derive(Debug)]
pub(super) struct Shared<S> {
    /// The lease store.
    pub(super) store: S,
    /// The validated configuration.
    pub(super) config: LeaseCoordinatorConfig,
    /// The leases this worker holds, by key.
    pub(super) held: Mutex<BTreeMap<LeaseKey, Held>>,
    /// Where lease events go; the receiver is the caller's.
    pub(super) events: mpsc::UnboundedSender<LeaseEvent>,
    /// Permits for the calls of shard consumers
    /// ([`LeaseAccess`](super::LeaseAccess)).
    pub(super) shard_calls: tokio::sync::Semaphore,
    /// Where the loops report their rounds and the lease table's answers.
    pub(super) health: Health,
    /// The streams whose leases this worker may take, by stream identifier;
    /// `None`: every lease in the table (an application of one stream).
    pub(super) scope: std::sync::RwLock<Option<HashSet<String>>>,
}

impl<S> Shared<S> {
    /// A copy of the held lease `key`, if it is held.
    pub(super) fn held_copy(&self, key: &LeaseKey) -> Option<Held> {
        self.held.lock().ok()?.get(key).cloned()
    }

    /// Whether the taker may take the lease `key`: a multi-stream key of a
    /// stream in scope, or any key when there is no scope.
    pub(super) fn in_scope(&self, key: &LeaseKey) -> bool {
        match self.scope.read() {
            Ok(scope) => match (&*scope, key.stream_identifier()) {
                (None, _) => true,
                (Some(streams), Some(stream)) => streams.contains(stream),
                (Some(_), None) => false,
            },
            Err(_) => false,
        }
    }

    /// The keys of every held lease.
    pub(super) fn held_keys(&self) -> HashSet<LeaseKey> {
        self.held
            .lock()
            .map(|held| held.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Stores a newer copy of a held lease, written at `written`.
    pub(super) fn refresh(&self, lease: Lease, written: Instant) {
        if let Ok(mut held) = self.held.lock()
            && let Some(entry) = held.get_mut(&lease.key)
            && lease.counter >= entry.lease.counter
        {
            entry.lease = lease;
            entry.renewed = written;
        }
    }

    /// Starts holding `lease`, renewed now and with no handoff in progress.
    /// Stores a newer copy of a held lease, written at `written`, and
    /// learns of a handoff the copy shows: one newly begun is announced once
    /// ([`LeaseEvent::HandoffRequested`]) and timed from now; one the next
    /// owner withdrew no longer runs out. Renewals and checkpoints both come
    /// through here, so a worker that checkpoints more often than it renews
    /// still hears of a handoff at once.
    pub(super) fn refresh_noting_handoff(&self, lease: Lease, written: Instant) {
        let key = lease.key.clone();
        let handing_off = lease.is_handing_off();
        let next_owner = lease.owner.clone().unwrap_or_default();
        self.refresh(lease, written);
        let newly = match self.held.lock() {
            Ok(mut all) => match all.get_mut(&key) {
                Some(entry) => {
                    let newly = handing_off && entry.handoff_since.is_none();
                    entry.handoff_since =
                        handing_off.then(|| entry.handoff_since.unwrap_or(written));
                    newly
                }
                None => false,
            },
            Err(_) => false,
        };
        if newly {
            tracing::info!(lease_key = %key, next_owner = %next_owner, "asked to hand the lease over");
            let _ = self
                .events
                .send(LeaseEvent::HandoffRequested { key, next_owner });
        }
    }

    pub(super) fn insert(&self, lease: Lease) {
        if let Ok(mut held) = self.held.lock() {
            held.insert(
                lease.key.clone(),
                Held {
                    lease,
                    renewed: Instant::now(),
                    handoff_since: None,
                    write: Arc::default(),
                },
            );
        }
    }

    /// Stops holding `key` without telling anyone; `true` if it was held.
    pub(super) fn remove(&self, key: &LeaseKey) -> bool {
        self.held
            .lock()
            .map(|mut held| held.remove(key).is_some())
            .unwrap_or(false)
    }

    /// Drops a lease and tells the caller, once.
    pub(super) fn lose(&self, key: &LeaseKey, why: &str) {
        if self.remove(key) {
            tracing::info!(lease_key = %key, why, "lost the lease");
            let _ = self.events.send(LeaseEvent::Lost {
                key: key.to_owned(),
            });
        }
    }
}
