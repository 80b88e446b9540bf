//! Limits on records and bytes in flight (delivered, not yet below the
//! commit watermark). A shard that reaches a limit waits before it delivers
//! more, and so stops fetching.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// A limit of records and bytes, as permits.
#[derive(Debug)]
pub(crate) struct Budget {
    records: Semaphore,
    bytes: Semaphore,
}

impl Budget {
    pub(crate) fn new(max_records: usize, max_bytes: usize) -> Self {
        Self {
            records: Semaphore::new(max_records.min(Semaphore::MAX_PERMITS)),
            bytes: Semaphore::new(max_bytes.min(Semaphore::MAX_PERMITS)),
        }
    }

    fn release(&self, records: usize, bytes: usize) {
        self.records.add_permits(records);
        self.bytes.add_permits(bytes);
    }
}

/// A shard's own limit and the worker's total one.
#[derive(Debug)]
pub(crate) struct ShardBudget {
    shard: Budget,
    total: Arc<Budget>,
    /// The most bytes one record counts for: the smaller byte limit, so a
    /// record larger than a limit passes when nothing else is in flight.
    max_cost: usize,
}

impl ShardBudget {
    pub(crate) fn new(max_records: usize, max_bytes: usize, total: (Arc<Budget>, usize)) -> Self {
        let (total, total_max_bytes) = total;
        Self {
            shard: Budget::new(max_records, max_bytes),
            total,
            max_cost: max_bytes.min(total_max_bytes).min(u32::MAX as usize),
        }
    }

    /// What a record of `bytes` counts for.
    pub(crate) fn cost(&self, bytes: usize) -> usize {
        bytes.min(self.max_cost)
    }

    /// Waits until one record of `cost` (from [`cost`](Self::cost)) fits
    /// both limits. Cancel-safe: nothing is taken unless everything is.
    pub(crate) async fn acquire(&self, cost: usize) {
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        let permits = (
            self.shard.records.acquire().await,
            self.shard.bytes.acquire_many(cost).await,
            self.total.records.acquire().await,
            self.total.bytes.acquire_many(cost).await,
        );
        if let (Ok(a), Ok(b), Ok(c), Ok(d)) = permits {
            a.forget();
            b.forget();
            c.forget();
            d.forget();
        }
    }

    /// Takes room for `records` records costing `cost` in all at once, if
    /// there is room now.
    pub(crate) fn try_acquire(&self, records: usize, cost: usize) -> bool {
        let (Ok(records), Ok(cost)) = (u32::try_from(records), u32::try_from(cost)) else {
            return false;
        };
        let permits = (
            self.shard.records.try_acquire_many(records),
            self.shard.bytes.try_acquire_many(cost),
            self.total.records.try_acquire_many(records),
            self.total.bytes.try_acquire_many(cost),
        );
        if let (Ok(a), Ok(b), Ok(c), Ok(d)) = permits {
            a.forget();
            b.forget();
            c.forget();
            d.forget();
            true
        } else {
            false
        }
    }

    /// Gives back what passed below the watermark (costs as acquired).
    pub(crate) fn release(&self, records: usize, cost: usize) {
        self.shard.release(records, cost);
        self.total.release(records, cost);
    }

    /// Gives back to the total what is still in flight when the shard's
    /// stream ends (the shard's own limit ends with it).
    pub(crate) fn release_total(&self, records: usize, cost: usize) {
        self.total.release(records, cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_budget_waits_until_records_pass() {
        let total = Arc::new(Budget::new(3, 1000));
        let a = ShardBudget::new(2, 1000, (total.clone(), 1000));
        let b = ShardBudget::new(2, 1000, (total.clone(), 1000));
        a.acquire(10).await;
        a.acquire(10).await;
        // a's own limit.
        let blocked = tokio::time::timeout(Duration::from_millis(50), a.acquire(10)).await;
        assert!(blocked.is_err());
        b.acquire(10).await;
        // The total limit.
        let blocked = tokio::time::timeout(Duration::from_millis(50), b.acquire(10)).await;
        assert!(blocked.is_err());
        a.release(1, 10);
        tokio::time::timeout(Duration::from_millis(50), b.acquire(10))
            .await
            .expect("room after a release");
    }

    #[tokio::test]
    async fn bytes_are_limited_and_a_huge_record_still_passes_alone() {
        let total = Arc::new(Budget::new(100, 100));
        let shard = ShardBudget::new(100, 1000, (total, 100));
        shard.acquire(60).await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), shard.acquire(60)).await;
        assert!(blocked.is_err(), "the total byte limit");
        shard.release(1, 60);
        let huge = shard.cost(5000);
        assert_eq!(huge, 100);
        tokio::time::timeout(Duration::from_millis(50), shard.acquire(huge))
            .await
            .expect("a record over the limit passes when nothing is in flight");
        shard.release(1, huge);
        // A batch at once only when all of it fits; nothing taken otherwise.
        assert!(!shard.try_acquire(2, 101));
        assert!(shard.try_acquire(2, 100));
        shard.release(2, 100);
        // Nothing leaked: the whole limit is free again.
        tokio::time::timeout(Duration::from_millis(50), shard.acquire(100))
            .await
            .expect("everything given back");
    }
}
