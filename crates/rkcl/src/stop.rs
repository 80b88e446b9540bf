//! How a worker tells the work under it to stop: one cancellation tree.
//!
//! The worker's token is the root. Each shard consumer gets a child of it
//! ([`StopSender`], held by the worker) and its reader a child of the
//! shard's. Cancelling the root stops every shard (a shutdown); the worker
//! stops one shard with a reason (a handoff, a lost lease). A processor sees
//! its shard's [`StopSignal`] in its inputs, so code waiting inside a
//! processor call can return when the shard is asked to stop.
//!
//! This module depends on nothing else in the crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio_util::sync::CancellationToken;

/// Why a shard's consumer is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The worker shuts down: finish, checkpoint, let go of the lease.
    Shutdown,
    /// Another worker asked for the lease to balance the fleet: finish,
    /// checkpoint, let go.
    Handoff,
    /// The lease is gone: stop at once, nothing can be checkpointed.
    LeaseLost,
}

impl StopReason {
    fn code(self) -> u8 {
        match self {
            StopReason::Shutdown => 1,
            StopReason::Handoff => 2,
            StopReason::LeaseLost => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(StopReason::Shutdown),
            2 => Some(StopReason::Handoff),
            3 => Some(StopReason::LeaseLost),
            _ => None,
        }
    }
}

/// One shard's stop signal, as its processor sees it. Cheap to clone; every
/// clone sees the same signal.
///
/// Once requested, a stop stays requested. Its reason may still change from
/// [`Shutdown`](StopReason::Shutdown) or [`Handoff`](StopReason::Handoff) to
/// [`LeaseLost`](StopReason::LeaseLost) (a lost lease overrides a request to
/// finish), never the other way.
#[derive(Clone, Debug)]
pub struct StopSignal {
    token: CancellationToken,
    reason: Arc<AtomicU8>,
}

impl StopSignal {
    /// A signal that no one stops: for processors driven by hand (tests,
    /// adapters).
    pub fn never() -> Self {
        Self {
            token: CancellationToken::new(),
            reason: Arc::default(),
        }
    }

    /// Whether a stop has been requested.
    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why the shard is stopping, once a stop has been requested.
    pub fn reason(&self) -> Option<StopReason> {
        if !self.token.is_cancelled() {
            return None;
        }
        // Cancelled through the tree (a shutdown of the worker) without a
        // reason of its own.
        Some(
            StopReason::from_code(self.reason.load(Ordering::Acquire))
                .unwrap_or(StopReason::Shutdown),
        )
    }

    /// Resolves once a stop is requested, with its reason at that moment.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future loses nothing; a later call resolves
    /// at once if the stop was requested meanwhile.
    pub async fn requested(&self) -> StopReason {
        self.token.cancelled().await;
        self.reason().unwrap_or(StopReason::Shutdown)
    }

    /// A token cancelled with this signal, for work under the shard (its
    /// reader).
    pub(crate) fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }
}

/// Equal when both are the same signal (clones of one another).
impl PartialEq for StopSignal {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.reason, &other.reason)
    }
}

impl Eq for StopSignal {}

/// The worker's half of a shard's [`StopSignal`].
#[derive(Debug)]
pub(crate) struct StopSender {
    signal: StopSignal,
}

impl StopSender {
    /// A shard's signal under the worker's token: cancelling `parent` stops
    /// the shard too.
    pub(crate) fn child_of(parent: &CancellationToken) -> Self {
        Self {
            signal: StopSignal {
                token: parent.child_token(),
                reason: Arc::default(),
            },
        }
    }

    /// Asks the shard to stop. A lost lease overrides an earlier reason;
    /// other reasons keep the first one given.
    pub(crate) fn request(&self, reason: StopReason) {
        let code = reason.code();
        if reason == StopReason::LeaseLost {
            self.signal.reason.store(code, Ordering::Release);
        } else {
            let _ =
                self.signal
                    .reason
                    .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        }
        self.signal.token.cancel();
    }

    /// The signal the shard's consumer and processor observe.
    pub(crate) fn signal(&self) -> StopSignal {
        self.signal.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_lease_overrides_a_request_to_finish() {
        let root = CancellationToken::new();
        let sender = StopSender::child_of(&root);
        let signal = sender.signal();
        assert_eq!(signal.reason(), None);
        assert!(!signal.is_requested());
        sender.request(StopReason::Handoff);
        assert_eq!(signal.reason(), Some(StopReason::Handoff));
        sender.request(StopReason::Shutdown);
        assert_eq!(signal.reason(), Some(StopReason::Handoff));
        sender.request(StopReason::LeaseLost);
        assert_eq!(signal.reason(), Some(StopReason::LeaseLost));
        sender.request(StopReason::Handoff);
        assert_eq!(signal.reason(), Some(StopReason::LeaseLost));
        assert!(
            !root.is_cancelled(),
            "a shard's stop does not stop the worker"
        );
    }

    #[tokio::test]
    async fn the_worker_stops_every_shard_and_reader_under_it() {
        let root = CancellationToken::new();
        let (a, b) = (StopSender::child_of(&root), StopSender::child_of(&root));
        let reader = a.signal().child_token();
        let waiting = tokio::spawn({
            let signal = b.signal();
            async move { signal.requested().await }
        });
        root.cancel();
        assert_eq!(waiting.await.unwrap(), StopReason::Shutdown);
        assert_eq!(a.signal().reason(), Some(StopReason::Shutdown));
        assert!(reader.is_cancelled());
        // A lost lease after the shutdown still says so.
        a.request(StopReason::LeaseLost);
        assert_eq!(a.signal().reason(), Some(StopReason::LeaseLost));
    }

    #[test]
    fn a_never_signal_is_never_requested_and_clones_are_one_signal() {
        let never = StopSignal::never();
        assert!(!never.is_requested());
        assert_eq!(never, never.clone());
        assert_ne!(never, StopSignal::never());
    }
}
