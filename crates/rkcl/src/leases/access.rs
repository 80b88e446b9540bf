//! What a shard's consumer needs of the lease layer: [`LeaseAccess`], and
//! its implementation by [`LeaseCoordinator`], whose calls share a few
//! permits per worker.

use futures_util::future::BoxFuture;

use super::{Lease, LeaseCoordinator, LeaseStore};
use crate::error::Result;
use crate::model::{ExtendedSequenceNumber, LeaseKey};

/// How many calls of shard consumers (checkpoint, release, read) are in
/// flight at once. At a shutdown every shard checkpoints and releases at the
/// same moment; unbounded, a worker of 1,000 shards would open a connection
/// (a socket and its buffers) for each call.
pub(super) const SHARD_CALL_CONCURRENCY: usize = 64;

/// What a shard's consumer needs of the lease layer, without naming the
/// store type: checkpoint and release a held lease, read any lease.
pub(crate) trait LeaseAccess: Send + Sync + std::fmt::Debug {
    /// Stores a checkpoint in the held lease `key`, as
    /// [`LeaseCoordinator::checkpoint`] does.
    fn checkpoint<'a>(
        &'a self,
        key: &'a LeaseKey,
        position: &'a ExtendedSequenceNumber,
    ) -> BoxFuture<'a, Result<Lease>>;

    /// Lets go of the held lease `key`, as [`LeaseCoordinator::release`]
    /// does.
    fn release<'a>(&'a self, key: &'a LeaseKey) -> BoxFuture<'a, Result<bool>>;

    /// Reads the lease `key` from the store, whoever holds it.
    fn read<'a>(&'a self, key: &'a LeaseKey) -> BoxFuture<'a, Result<Option<Lease>>>;

    /// The leases held now, as last written.
    fn held(&self) -> Vec<Lease>;
}

impl<S: LeaseStore + std::fmt::Debug + 'static> LeaseAccess for LeaseCoordinator<S> {
    fn checkpoint<'a>(
        &'a self,
        key: &'a LeaseKey,
        position: &'a ExtendedSequenceNumber,
    ) -> BoxFuture<'a, Result<Lease>> {
        Box::pin(async move {
            let _permit = self.shared.shard_calls.acquire().await;
            LeaseCoordinator::checkpoint(self, key, position).await
        })
    }

    fn release<'a>(&'a self, key: &'a LeaseKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let _permit = self.shared.shard_calls.acquire().await;
            LeaseCoordinator::release(self, key).await
        })
    }

    fn read<'a>(&'a self, key: &'a LeaseKey) -> BoxFuture<'a, Result<Option<Lease>>> {
        Box::pin(async move {
            let _permit = self.shared.shard_calls.acquire().await;
            self.shared.store.get(key).await
        })
    }

    fn held(&self) -> Vec<Lease> {
        LeaseCoordinator::held(self)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::leases::{InMemoryLeaseStore, LeaseCoordinatorConfig};

    #[tokio::test(start_paused = true)]
    async fn shard_consumer_calls_wait_for_a_permit() {
        let (coordinator, _events) = LeaseCoordinator::start(
            InMemoryLeaseStore::new(),
            LeaseCoordinatorConfig::new("worker"),
        )
        .unwrap();
        let access: &dyn LeaseAccess = &coordinator;
        let all = coordinator
            .shared
            .shard_calls
            .acquire_many(SHARD_CALL_CONCURRENCY as u32)
            .await
            .unwrap();
        let key = LeaseKey::parse("shardId-0").unwrap();
        let mut read = access.read(&key);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut read)
                .await
                .is_err(),
            "a read ran without a permit"
        );
        drop(all);
        assert!(read.await.unwrap().is_none());
        coordinator.shutdown().await;
    }
}
