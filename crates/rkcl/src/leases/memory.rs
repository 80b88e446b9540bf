//! A lease store in memory, for one process and for tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Lease, LeaseStore};
use crate::error::{Error, Result};
use crate::model::{ExtendedSequenceNumber, LeaseKey};

/// Leases in a map behind a lock, with the same conditional semantics as the
/// DynamoDB store.
#[derive(Debug, Default)]
pub struct InMemoryLeaseStore {
    leases: Mutex<BTreeMap<LeaseKey, Lease>>,
}

impl InMemoryLeaseStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `change` to the stored lease if `condition` holds for it.
    fn update(
        &self,
        key: &LeaseKey,
        condition: impl FnOnce(&Lease) -> bool,
        change: impl FnOnce(&mut Lease),
    ) -> Result<Option<Lease>> {
        let mut leases = self.lock()?;
        let Some(stored) = leases.get_mut(key) else {
            return Ok(None);
        };
        if !condition(stored) {
            return Ok(None);
        }
        change(stored);
        Ok(Some(stored.clone()))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<LeaseKey, Lease>>> {
        self.leases
            .lock()
            .map_err(|_| Error::Config("the in-memory lease store was poisoned by a panic".into()))
    }
}

/// Whether the stored lease is still the one the caller saw: same counter
/// and, when `check_holder`, held by the same worker.
fn unchanged(stored: &Lease, seen: &Lease, check_holder: bool) -> bool {
    stored.counter == seen.counter
        && (!check_holder || (stored.holder().is_some() && stored.holder() == seen.holder()))
}

impl LeaseStore for InMemoryLeaseStore {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool> {
        let mut leases = self.lock()?;
        if leases.contains_key(&lease.key) {
            return Ok(false);
        }
        leases.insert(lease.key.clone(), lease.clone());
        Ok(true)
    }

    async fn list(&self) -> Result<Vec<Lease>> {
        Ok(self.lock()?.values().cloned().collect())
    }

    async fn get(&self, key: &LeaseKey) -> Result<Option<Lease>> {
        Ok(self.lock()?.get(key).cloned())
    }

    async fn renew(&self, lease: &Lease) -> Result<Option<Lease>> {
        self.update(
            &lease.key,
            |stored| stored.holder().is_some() && stored.holder() == lease.holder(),
            |stored| stored.counter += 1,
        )
    }

    async fn take(&self, lease: &Lease, new_owner: &str) -> Result<Option<Lease>> {
        self.update(
            &lease.key,
            |stored| unchanged(stored, lease, false),
            |stored| {
                if stored.owner.as_deref() != Some(new_owner) {
                    stored.owner_switches_since_checkpoint += 1;
                }
                stored.owner = Some(new_owner.to_owned());
                stored.counter += 1;
                stored.checkpoint_owner = None;
            },
        )
    }

    async fn hand_off(&self, lease: &Lease, new_owner: &str) -> Result<Option<Lease>> {
        self.update(
            &lease.key,
            |stored| {
                unchanged(stored, lease, false)
                    && !stored.is_handing_off()
                    && stored.owner.is_some()
                    && stored.owner == lease.owner
                    && stored.owner.as_deref() != Some(new_owner)
            },
            |stored| {
                stored.checkpoint_owner = stored.owner.replace(new_owner.to_owned());
                stored.owner_switches_since_checkpoint += 1;
                stored.counter += 1;
            },
        )
    }

    async fn withdraw_handoff(&self, lease: &Lease) -> Result<Option<Lease>> {
        self.update(
            &lease.key,
            |stored| {
                unchanged(stored, lease, false)
                    && stored.is_handing_off()
                    && stored.owner.is_some()
                    && stored.owner == lease.owner
            },
            |stored| {
                stored.owner = stored.checkpoint_owner.take();
                stored.counter += 1;
            },
        )
    }

    async fn release(&self, lease: &Lease) -> Result<Option<Lease>> {
        self.update(
            &lease.key,
            |stored| unchanged(stored, lease, true),
            |stored| {
                if stored.checkpoint_owner.take().is_none() {
                    stored.owner = None;
                }
                stored.counter += 1;
            },
        )
    }

    async fn evict(&self, lease: &Lease) -> Result<Option<Lease>> {
        self.update(
            &lease.key,
            |stored| unchanged(stored, lease, false),
            |stored| {
                stored.owner = None;
                stored.checkpoint_owner = None;
                stored.counter += 1;
            },
        )
    }

    async fn update_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &ExtendedSequenceNumber,
    ) -> Result<Option<Lease>> {
        self.update(
            &lease.key,
            |stored| unchanged(stored, lease, true),
            |stored| {
                stored.checkpoint = checkpoint.clone();
                stored.pending_checkpoint = None;
                stored.owner_switches_since_checkpoint = 0;
                stored.counter += 1;
            },
        )
    }

    async fn delete(&self, lease: &Lease) -> Result<bool> {
        let mut leases = self.lock()?;
        match leases.get(&lease.key) {
            Some(stored) if stored.counter == lease.counter => {
                leases.remove(&lease.key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
