//! Waiting until a condition holds.

use std::time::Duration;

use tokio::time::Instant;

/// How often [`eventually`] checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A condition [`eventually`] polls: a closure answering `bool` at once
/// (`FnMut() -> bool`) or a closure returning a future of `bool`
/// (`FnMut() -> impl Future<Output = bool>`).
///
/// `Kind` is [`Immediate`] or [`Awaited`]; it only tells the two kinds of
/// closure apart and is inferred, never written.
pub trait Condition<Kind> {
    /// Evaluates the condition once.
    fn check(&mut self) -> impl Future<Output = bool>;
}

/// Marks a [`Condition`] that answers at once.
#[derive(Debug)]
pub enum Immediate {}

/// Marks a [`Condition`] that answers with a future.
#[derive(Debug)]
pub enum Awaited {}

impl<F> Condition<Immediate> for F
where
    F: FnMut() -> bool,
{
    fn check(&mut self) -> impl Future<Output = bool> {
        std::future::ready(self())
    }
}

impl<F, Fut> Condition<Awaited> for F
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    fn check(&mut self) -> impl Future<Output = bool> {
        self()
    }
}

/// Waits until `condition` holds, checking it at once and then every
/// [`POLL_INTERVAL`], and returns how long that took.
///
/// ```no_run
/// # async fn example(done: std::sync::atomic::AtomicBool, store: rkcl::leases::InMemoryLeaseStore) {
/// use std::sync::atomic::Ordering;
/// use std::time::Duration;
///
/// use rkcl::leases::LeaseStore;
/// use rkcl_local::testkit::eventually;
///
/// eventually("the job is done", Duration::from_secs(10), || done.load(Ordering::SeqCst)).await;
/// eventually("three leases", Duration::from_secs(10), || async {
///     store.list().await.unwrap().len() == 3
/// })
/// .await;
/// # }
/// ```
///
/// # Panics
///
/// With `what` in the message when `timeout` passes first, or when the
/// condition panics.
pub async fn eventually<Kind>(
    what: &str,
    timeout: Duration,
    condition: impl Condition<Kind>,
) -> Duration {
    eventually_every(what, timeout, POLL_INTERVAL, condition).await
}

/// [`eventually`], checking every `interval`: shorter to time an event
/// closely, longer when the check is costly.
///
/// # Panics
///
/// With `what` in the message when `timeout` passes first, or when the
/// condition panics.
pub async fn eventually_every<Kind>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut condition: impl Condition<Kind>,
) -> Duration {
    let started = Instant::now();
    while !condition.check().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(interval).await;
    }
    started.elapsed()
}
