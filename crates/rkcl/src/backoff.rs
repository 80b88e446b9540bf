//! Capped exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// Pauses between retries: attempt `n` waits a random time between zero and
/// `min(base * 2^(n-1), max)` ("full jitter"), so many clients that failed
/// together do not retry together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The ceiling of the pause before retry number `attempt` (1-based).
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << exponent).min(self.max)
    }

    /// A random pause for retry number `attempt` (1-based).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt)
            .mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// Sleeps before retry number `attempt`.
    pub(crate) async fn sleep(&self, attempt: u32) {
        tokio::time::sleep(self.delay(attempt)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(2), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(4), Duration::from_millis(800));
        assert_eq!(backoff.ceiling(5), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(1000), Duration::from_secs(1));
        for attempt in 1..10 {
            assert!(backoff.delay(attempt) <= backoff.ceiling(attempt));
        }
    }
}
