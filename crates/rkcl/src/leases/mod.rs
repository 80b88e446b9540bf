//! Leases: one per shard, in a table the Java KCL can read too.
//!
//! A [`Lease`] says which worker owns a shard and how far it has been
//! processed. A [`LeaseStore`] keeps leases; every write that can race is
//! conditional on the lease counter (and the owner where it matters), and
//! losing such a race is an ordinary outcome (`Ok(None)`), not an error.
//!
//! Stores: [`InMemoryLeaseStore`] here (one process, tests), and
//! [`DynamoDbLeaseStore`](crate::DynamoDbLeaseStore) in the `aws` layer (the
//! production store, with the Java KCL's attribute names and types).

use std::future::Future;

use crate::error::Result;
use crate::model::{ExtendedSequenceNumber, HashKeyRange, LeaseKey, ShardId};

mod access;
mod config;
mod coordinator;
mod held;
mod memory;
mod renewer;
pub(crate) mod taker;
mod taking;

pub(crate) use access::LeaseAccess;
pub use config::{LeaseCoordinatorConfig, LeaseCoordinatorConfigBuilder};
pub use coordinator::{LeaseCoordinator, LeaseEvent};
pub use memory::InMemoryLeaseStore;

/// The lease of one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The shard id, or `account:stream:creationEpoch:shardId` for a lease of
    /// a multi-stream application.
    pub key: LeaseKey,
    /// The worker that holds the lease; `None` while unassigned.
    pub owner: Option<String>,
    /// The fencing counter: it grows on every renewal, take, checkpoint and
    /// release, and every conditional write checks it.
    pub counter: u64,
    /// How far the shard has been processed (a sentinel before the first
    /// checkpoint, `SHARD_END` once a closed shard is done).
    pub checkpoint: ExtendedSequenceNumber,
    /// A prepared checkpoint not yet committed (the KCL's two-phase checkpoint).
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// How many times the owner changed since the last checkpoint.
    pub owner_switches_since_checkpoint: u64,
    /// The shard's parents (stored as the KCL's `parentShardId` set).
    pub parent_shard_ids: Vec<ShardId>,
    /// The shard's children, written when the shard has ended.
    pub child_shard_ids: Vec<ShardId>,
    /// The hash keys of the shard, when known.
    pub hash_key_range: Option<HashKeyRange>,
    /// During a graceful handoff: the previous owner, which checkpoints
    /// before the new owner starts (the KCL 3 `checkpointOwner`).
    pub checkpoint_owner: Option<String>,
}

impl Lease {
    /// A new, unowned lease for `key` at `checkpoint`, counter 0.
    pub fn new(key: LeaseKey, checkpoint: ExtendedSequenceNumber) -> Self {
        Self {
            key,
            owner: None,
            counter: 0,
            checkpoint,
            pending_checkpoint: None,
            owner_switches_since_checkpoint: 0,
            parent_shard_ids: Vec::new(),
            child_shard_ids: Vec::new(),
            hash_key_range: None,
            checkpoint_owner: None,
        }
    }

    /// The shard id: the key itself, or its last part for a multi-stream key.
    pub fn shard_id(&self) -> ShardId {
        self.key.shard_id()
    }

    /// The worker that may write to the lease: the previous owner while a
    /// graceful handoff is in progress (it checkpoints before letting go),
    /// otherwise the owner.
    pub fn holder(&self) -> Option<&str> {
        self.checkpoint_owner.as_deref().or(self.owner.as_deref())
    }

    /// Whether a graceful handoff is in progress: `owner` is the next owner
    /// and `checkpoint_owner` still holds the lease.
    pub fn is_handing_off(&self) -> bool {
        self.checkpoint_owner.is_some()
    }

    /// The fencing token of this copy of the lease: a write that carries it
    /// can be rejected downstream once a later owner has taken the lease.
    pub fn fencing_token(&self) -> FencingToken {
        FencingToken {
            lease_key: self.key.clone(),
            counter: self.counter,
        }
    }
}

/// Proof of ownership at one moment: the lease key and its counter. Counters
/// only grow, so a downstream store that remembers the highest counter seen
/// per lease can refuse a write from a worker that lost the lease.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FencingToken {
    /// The lease key.
    pub lease_key: LeaseKey,
    /// The lease counter when the token was made.
    pub counter: u64,
}

/// Where leases are kept. Implementations: [`InMemoryLeaseStore`] and
/// [`DynamoDbLeaseStore`](crate::DynamoDbLeaseStore).
///
/// Every method that changes a lease takes the copy the caller last saw and
/// succeeds only if the stored lease still has that counter (and, where
/// said, that [holder](Lease::holder)); it returns the lease as now stored,
/// or `None` when the race was lost (someone else changed it, or it is gone).
///
/// A graceful handoff moves a lease in two steps: [`hand_off`](Self::hand_off)
/// names the next owner while the current one stays the holder, and the
/// holder's [`release`](Self::release) (after its final checkpoint) lets the
/// next owner take over.
pub trait LeaseStore: Send + Sync {
    /// Writes `lease` unless a lease with its key exists. `true` if written.
    fn create_if_absent(&self, lease: &Lease) -> impl Future<Output = Result<bool>> + Send;

    /// Every lease (items that are not leases are skipped, never changed).
    fn list(&self) -> impl Future<Output = Result<Vec<Lease>>> + Send;

    /// The lease with this key.
    fn get(&self, key: &LeaseKey) -> impl Future<Output = Result<Option<Lease>>> + Send;

    /// Bumps the counter if the lease is still held by `lease`'s holder.
    /// When the counter moved but the holder did not (a handoff began or
    /// was withdrawn, or an earlier renewal landed and its answer was lost),
    /// the stored copy is renewed and returned, so the holder learns of the
    /// handoff here.
    fn renew(&self, lease: &Lease) -> impl Future<Output = Result<Option<Lease>>> + Send;

    /// Makes `new_owner` the owner if the counter is unchanged: bumps the
    /// counter, counts an owner switch when the owner changes, and clears a
    /// handoff in progress.
    fn take(
        &self,
        lease: &Lease,
        new_owner: &str,
    ) -> impl Future<Output = Result<Option<Lease>>> + Send;

    /// Starts a graceful handoff of a lease held by another worker: if the
    /// counter is unchanged and no handoff is in progress, `new_owner`
    /// becomes the owner and the current owner becomes the
    /// `checkpoint_owner`, which still holds the lease until it releases it.
    /// Bumps the counter and counts an owner switch.
    fn hand_off(
        &self,
        lease: &Lease,
        new_owner: &str,
    ) -> impl Future<Output = Result<Option<Lease>>> + Send;

    /// Withdraws a handoff the next owner no longer wants (it is shutting
    /// down): if the counter is unchanged and `lease.owner` is the next
    /// owner of a handoff in progress, the holder becomes the owner again
    /// and keeps the lease. Bumps the counter.
    fn withdraw_handoff(&self, lease: &Lease)
    -> impl Future<Output = Result<Option<Lease>>> + Send;

    /// Lets go of a lease if `lease` is still held by its holder at its
    /// counter; bumps the counter. Without a handoff the owner is cleared, so
    /// another worker can take it at once; during a handoff the
    /// `checkpoint_owner` is cleared, so the next owner starts.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<Option<Lease>>> + Send;

    /// Clears the owner whoever holds it, if the counter is unchanged (for
    /// operators and leader-style reassignment); bumps the counter.
    fn evict(&self, lease: &Lease) -> impl Future<Output = Result<Option<Lease>>> + Send;

    /// Stores `checkpoint` if `lease` is still held by its holder at its
    /// counter: bumps the counter, resets the owner-switch count, clears a
    /// pending checkpoint.
    fn update_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &ExtendedSequenceNumber,
    ) -> impl Future<Output = Result<Option<Lease>>> + Send;

    /// Deletes the lease if its counter is unchanged. `true` if deleted.
    fn delete(&self, lease: &Lease) -> impl Future<Output = Result<bool>> + Send;
}

/// A shared store is a store: several workers of one process (or tests) can
/// use one [`InMemoryLeaseStore`].
impl<S: LeaseStore> LeaseStore for std::sync::Arc<S> {
    fn create_if_absent(&self, lease: &Lease) -> impl Future<Output = Result<bool>> + Send {
        (**self).create_if_absent(lease)
    }

    fn list(&self) -> impl Future<Output = Result<Vec<Lease>>> + Send {
        (**self).list()
    }

    fn get(&self, key: &LeaseKey) -> impl Future<Output = Result<Option<Lease>>> + Send {
        (**self).get(key)
    }

    fn renew(&self, lease: &Lease) -> impl Future<Output = Result<Option<Lease>>> + Send {
        (**self).renew(lease)
    }

    fn take(
        &self,
        lease: &Lease,
        new_owner: &str,
    ) -> impl Future<Output = Result<Option<Lease>>> + Send {
        (**self).take(lease, new_owner)
    }

    fn hand_off(
        &self,
        lease: &Lease,
        new_owner: &str,
    ) -> impl Future<Output = Result<Option<Lease>>> + Send {
        (**self).hand_off(lease, new_owner)
    }

    fn withdraw_handoff(
        &self,
        lease: &Lease,
    ) -> impl Future<Output = Result<Option<Lease>>> + Send {
        (**self).withdraw_handoff(lease)
    }

    fn release(&self, lease: &Lease) -> impl Future<Output = Result<Option<Lease>>> + Send {
        (**self).release(lease)
    }

    fn evict(&self, lease: &Lease) -> impl Future<Output = Result<Option<Lease>>> + Send {
        (**self).evict(lease)
    }

    fn update_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &ExtendedSequenceNumber,
    ) -> impl Future<Output = Result<Option<Lease>>> + Send {
        (**self).update_checkpoint(lease, checkpoint)
    }

    fn delete(&self, lease: &Lease) -> impl Future<Output = Result<bool>> + Send {
        (**self).delete(lease)
    }
}
