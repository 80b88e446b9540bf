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

/// How many times [`retry`] tries a call that keeps failing with retryable
/// errors before it gives up.
pub(crate) const RETRY_ATTEMPTS: u32 = 20;

/// Calls `op` until it succeeds, fails with an error that retrying cannot
/// fix, or has failed [`RETRY_ATTEMPTS`] times, pausing with `backoff`
/// between tries.
pub(crate) async fn retry<T, F, Fut>(
    backoff: Backoff,
    what: &'static str,
    op: F,
) -> crate::error::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<T>>,
{
    retry_up_to(RETRY_ATTEMPTS, backoff, what, op).await
}

/// As [`retry`], giving up after `attempts` tries (at least one).
pub(crate) async fn retry_up_to<T, F, Fut>(
    attempts: u32,
    backoff: Backoff,
    what: &'static str,
    mut op: F,
) -> crate::error::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<T>>,
{
    let mut streak = FailureStreak::new(what);
    loop {
        match op().await {
            Ok(value) => {
                streak.succeeded();
                return Ok(value);
            }
            Err(err) if err.is_retryable() && streak.failures() + 1 < attempts => {
                let failures = streak.failed(&err);
                backoff.sleep(failures).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// How long a streak of failures of one operation may last before it is
/// worth one warning.
pub(crate) const STREAK_WARN_AFTER: Duration = Duration::from_secs(30);

/// Consecutive failures of one operation that is retried (a throttled call,
/// a 5xx, a dropped connection): each failure is logged once at `debug`
/// with its attempt number, a streak that lasts past
/// [`STREAK_WARN_AFTER`] is worth one warning, and the end of a streak one
/// `info` line with how many failures it held and how long it lasted. So a
/// fault storm is visible without a warning per throttled call.
#[derive(Debug)]
pub(crate) struct FailureStreak {
    operation: &'static str,
    failures: u32,
    since: Option<tokio::time::Instant>,
    warned: bool,
}

impl FailureStreak {
    /// No failures yet of `operation`.
    pub(crate) fn new(operation: &'static str) -> Self {
        Self {
            operation,
            failures: 0,
            since: None,
            warned: false,
        }
    }

    /// How many failures in a row so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// One more failure; the number of failures in a row.
    pub(crate) fn failed(&mut self, error: &dyn std::fmt::Display) -> u32 {
        self.failures += 1;
        let now = tokio::time::Instant::now();
        let since = *self.since.get_or_insert(now);
        tracing::debug!(operation = self.operation, attempt = self.failures, error = %error, "failed; will retry");
        if !self.warned && now.duration_since(since) >= STREAK_WARN_AFTER {
            self.warned = true;
            tracing::warn!(
                operation = self.operation,
                failures = self.failures,
                error = %error,
                "still failing after {} s; retrying",
                now.duration_since(since).as_secs()
            );
        }
        self.failures
    }

    /// A success: ends a streak, if one was running.
    pub(crate) fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                operation = self.operation,
                failures = self.failures,
                lasted_ms = since.elapsed().as_millis() as u64,
                "recovered after a streak of failures"
            );
        }
        self.failures = 0;
        self.warned = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_streak_counts_failures_and_ends_at_a_success() {
        let error = crate::error::Error::Throttled {
            service: crate::error::Service::Kinesis,
            message: String::new(),
        };
        let mut streak = FailureStreak::new("GetRecords");
        assert_eq!(streak.failed(&error), 1);
        assert_eq!(streak.failed(&error), 2);
        assert!(!streak.warned);
        tokio::time::advance(STREAK_WARN_AFTER).await;
        assert_eq!(streak.failed(&error), 3);
        assert!(streak.warned, "a long streak is worth one warning");
        streak.succeeded();
        assert_eq!(streak.failures(), 0);
        assert!(!streak.warned && streak.since.is_none());
        streak.succeeded();
        assert_eq!(streak.failed(&error), 1, "a new streak starts at one");
    }

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

    #[tokio::test(start_paused = true)]
    async fn retries_only_what_retrying_can_fix() {
        let backoff = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        let throttled = || crate::error::Error::Throttled {
            service: crate::error::Service::Kinesis,
            message: String::new(),
        };
        let mut calls = 0;
        let value = retry(backoff, "test", || {
            calls += 1;
            let n = calls;
            async move { if n < 3 { Err(throttled()) } else { Ok(n) } }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);

        let mut calls = 0;
        let result: crate::error::Result<()> = retry(backoff, "test", || {
            calls += 1;
            async { Err(crate::error::Error::Config("no".into())) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 1);

        let mut calls = 0;
        let result: crate::error::Result<()> = retry(backoff, "test", || {
            calls += 1;
            async { Err(throttled()) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, RETRY_ATTEMPTS);
    }
}
