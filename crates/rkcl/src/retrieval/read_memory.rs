//! The memory all the polling readers of one worker share: a count of
//! bytes held by responses being read, batches fetched ahead and the batch
//! in the consumer's hands, with a cap that readers wait on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// How many bytes a GetRecords response takes while it is read and
/// decoded, per byte of record data: the body (base64 in JSON, a third
/// larger than the data) and the decoded records side by side.
pub(crate) const DECODE_FACTOR: usize = 3;

/// What a user record costs beyond its data: its sequence number, partition
/// key and the structures around them.
pub(crate) const RECORD_OVERHEAD: usize = 160;

/// What one record is assumed to cost before a shard has returned any.
pub(crate) const FIRST_RECORD_COST: usize = 1024 + RECORD_OVERHEAD;

/// The share of the memory one call may reserve: at least this many large
/// calls of a worker can be under way at once.
pub(crate) const CALLS_AT_ONCE: usize = 2;

/// The least a call reserves. A shard whose last call returned little
/// reserves four times what it returned, but not less than this: a quiet
/// shard's calls take little room, and a shard that wakes up asks for four
/// times more records at each call until it reaches its share.
pub(crate) const SMALL_CALL: usize = 64 << 10;

/// What a call reserves at most when the shard's last call held `last`
/// bytes.
pub(crate) fn call_bound(last: usize) -> usize {
    last.saturating_mul(4 * DECODE_FACTOR).max(SMALL_CALL)
}

/// The memory a worker's polling readers hold, against its cap, and the
/// GetRecords calls they have under way.
#[derive(Debug)]
pub(crate) struct ReadMemory {
    capacity: usize,
    held: AtomicUsize,
    freed: Notify,
    calls: Semaphore,
}

impl ReadMemory {
    /// A cap of `capacity` bytes, none held, and of `calls` calls at once.
    pub(crate) fn new(capacity: usize, calls: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            held: AtomicUsize::new(0),
            freed: Notify::new(),
            calls: Semaphore::new(calls.clamp(1, Semaphore::MAX_PERMITS)),
        })
    }

    /// Waits for a free call slot, kept until the permit is dropped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the slot is taken only if the future completes.
    pub(crate) async fn call_slot(&self) -> Option<SemaphorePermit<'_>> {
        self.calls.acquire().await.ok()
    }

    /// The most one call may reserve.
    pub(crate) fn call_share(&self) -> usize {
        (self.capacity / CALLS_AT_ONCE).max(1)
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Waits until at least `least` bytes are free (or nothing is held, so
    /// that a reservation larger than the cap passes alone), then holds as
    /// much as is free up to `most` (never less than `least`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is held unless the future completes.
    pub(crate) async fn reserve(self: &Arc<Self>, least: usize, most: usize) -> Held {
        let most = most.max(least);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let held = self.held.load(Ordering::SeqCst);
            let free = self.capacity.saturating_sub(held);
            if free >= least || held == 0 {
                let take = free.min(most).max(least);
                if self
                    .held
                    .compare_exchange(held, held + take, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return Held {
                        memory: self.clone(),
                        bytes: take,
                    };
                }
                continue;
            }
            freed.await;
        }
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.held.fetch_sub(bytes, Ordering::SeqCst);
            self.freed.notify_waiters();
        }
    }
}

/// Bytes held of a [`ReadMemory`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    memory: Arc<ReadMemory>,
    bytes: usize,
}

impl Held {
    /// The bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `bytes` instead: gives back the difference, or takes it even
    /// beyond the cap (what was read is in memory already; readers then
    /// wait until it is given back).
    pub(crate) fn resize(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.memory.release(self.bytes - bytes);
        } else {
            self.memory
                .held
                .fetch_add(bytes - self.bytes, Ordering::SeqCst);
        }
        self.bytes = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.memory.release(self.bytes);
    }
}

/// The `Limit` of a call that reserved `reserved` bytes on a shard whose
/// records cost `record_cost` each (data and overhead), within 1 and
/// `max_records`.
pub(crate) fn limit_for(reserved: usize, record_cost: usize, max_records: u32) -> u32 {
    let records = reserved / (record_cost.max(1) * DECODE_FACTOR);
    u32::try_from(records)
        .unwrap_or(u32::MAX)
        .clamp(1, max_records.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn readers_wait_for_room_and_a_large_call_passes_alone() {
        let memory = ReadMemory::new(1_000, 1);
        let a = memory.reserve(100, 600).await;
        assert_eq!(a.bytes(), 600);
        // Less than asked, as much as is free.
        let mut b = memory.reserve(100, 600).await;
        assert_eq!(b.bytes(), 400);
        assert_eq!(memory.held(), 1_000);
        let waiting = tokio::time::timeout(Duration::from_millis(50), memory.reserve(100, 100));
        assert!(waiting.await.is_err(), "nothing free");
        // A response larger than its reservation is held beyond the cap.
        b.resize(900);
        assert_eq!(memory.held(), 1_500);
        drop(a);
        let waiting = tokio::time::timeout(Duration::from_millis(50), memory.reserve(200, 200));
        assert!(waiting.await.is_err(), "900 held, 100 free");
        b.resize(100);
        let c = tokio::time::timeout(Duration::from_millis(50), memory.reserve(200, 300))
            .await
            .expect("room after a resize");
        assert_eq!(c.bytes(), 300);
        drop((b, c));
        assert_eq!(memory.held(), 0);
        // More than the cap passes when nothing else is held.
        let huge = memory.reserve(5_000, 5_000).await;
        assert_eq!(huge.bytes(), 5_000);
        drop(huge);
        assert_eq!(memory.held(), 0);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_when_memory_is_given_back() {
        let memory = ReadMemory::new(1_000, 1);
        let held = memory.reserve(1_000, 1_000).await;
        let waiter = tokio::spawn({
            let memory = memory.clone();
            async move { memory.reserve(10, 10).await.bytes() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(held);
        let bytes = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(bytes, 10);
    }

    #[tokio::test]
    async fn calls_wait_for_a_slot() {
        let memory = ReadMemory::new(1_000, 2);
        let a = memory.call_slot().await;
        let _b = memory.call_slot().await;
        let third = tokio::time::timeout(Duration::from_millis(50), memory.call_slot());
        assert!(third.await.is_err(), "two calls under way");
        drop(a);
        tokio::time::timeout(Duration::from_millis(50), memory.call_slot())
            .await
            .expect("a slot after a call ends");
    }

    #[test]
    fn the_limit_fits_the_reservation() {
        // 2 MiB for records of 1 KiB plus overhead, read at three times
        // their size: about 600 records.
        assert_eq!(limit_for(2 << 20, FIRST_RECORD_COST, 10_000), 590);
        // Small records: Kinesis' own limit.
        assert_eq!(limit_for(32 << 20, 200, 10_000), 10_000);
        // Never below one record, never above the configured limit.
        assert_eq!(limit_for(10, 1 << 20, 10_000), 1);
        assert_eq!(limit_for(32 << 20, 200, 500), 500);
    }
}
