//! The renewer: keeps every held lease alive, learns of handoffs asked of
//! this worker, and reports a lease lost before another worker can take it.

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::LeaseStore;
use super::coordinator::{Loop, pause};
use super::held::Shared;
use crate::backoff::FailureStreak;
use crate::error::Error;
use crate::model::LeaseKey;

/// How many renewals (or releases) are in flight at once.
pub(super) const WRITE_CONCURRENCY: usize = 32;

/// Renews every held lease each `renew_interval`, up to
/// [`WRITE_CONCURRENCY`] at once, until `cancel`.
/// Renewals that fail are retried next round; a round with failures is one
/// failure of the renewer's [`FailureStreak`], so a storm of throttled
/// renewals is one warning at most, not one per lease and round.
pub(super) async fn renew_loop<S: LeaseStore>(shared: &Shared<S>, cancel: &CancellationToken) {
    let mut streak = FailureStreak::new("lease renewal");
    loop {
        shared
            .health
            .beat(Loop::Renewer.name(), shared.config.renew_interval);
        if !pause(cancel, Instant::now() + shared.config.renew_interval).await {
            return;
        }
        let keys = shared.held_keys();
        let renewing = !keys.is_empty();
        let failed: Vec<Error> = futures_util::stream::iter(keys)
            .map(|key| renew_one(shared, key))
            .buffer_unordered(WRITE_CONCURRENCY)
            .filter_map(std::future::ready)
            .collect()
            .await;
        match failed.first() {
            Some(err) => {
                shared.health.lease_table(Err(err.to_string()));
                streak.failed(&format_args!(
                    "{} renewals failed, one with {err}",
                    failed.len()
                ));
            }
            None => {
                if renewing {
                    shared.health.lease_table(Ok(()));
                }
                streak.succeeded();
            }
        }
    }
}

/// One renewal of the held lease `key`, under its write lock.
///
/// A lease a checkpoint wrote in the last half interval is left alone (that
/// write was a renewal). A lease whose handoff ran past `handoff_timeout` is
/// let go. A renewal that loses reports the lease lost; one that fails is
/// retried next round, unless the lease has gone `lease_duration -
/// safety_margin` without a renewal, when it is reported lost too.
async fn renew_one<S: LeaseStore>(shared: &Shared<S>, key: LeaseKey) -> Option<Error> {
    let config = &shared.config;
    let held = shared.held_copy(&key)?;
    let _one_at_a_time = held.write.lock().await;
    let held = shared.held_copy(&key)?;
    let now = Instant::now();
    if now.duration_since(held.renewed) < config.renew_interval / 2 {
        // A checkpoint just moved the counter: that was a renewal.
        return None;
    }
    if let Some(since) = held.handoff_since
        && now.duration_since(since) >= config.handoff_timeout
    {
        shared.lose(&key, "the handoff was not finished in time");
        if let Err(err) = shared.store.release(&held.lease).await {
            tracing::warn!(lease_key = %key, error = %err, "could not release the lease");
        }
        return None;
    }
    match shared.store.renew(&held.lease).await {
        Ok(Some(renewed)) => shared.refresh_noting_handoff(renewed, now),
        Ok(None) => shared.lose(&key, "another worker has the lease"),
        Err(err) => {
            if now.duration_since(held.renewed) >= config.lease_duration - config.safety_margin {
                shared.lose(
                    &key,
                    "not renewed within the lease duration less the safety margin",
                );
            } else {
                tracing::debug!(lease_key = %key, error = %err, "could not renew the lease; will retry");
                return Some(err);
            }
        }
    }
    None
}
