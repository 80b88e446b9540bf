//! Faults on demand: throttling, server errors, latency, dropped
//! connections and expired iterators, injected on the server side of the
//! local services so clients see real HTTP answers.
//!
//! When a [`FaultPlan`] is given to [`LocalBuilder::faults`], each
//! service's public port is served by a small reverse proxy
//! (`proxy.rs`) that forwards to the real server on an internal port of
//! 127.0.0.1. It reads the operation from the `X-Amz-Target` header and
//! asks the injector (`injector.rs`) what to do: the injector resolves the
//! plan (`plan.rs`, with `error.rs` and the `operations.rs` it checks
//! targets against) for the operation once, draws from the operation's own
//! seeded random number generator and counts what it injects.
//!
//! [`LocalBuilder::faults`]: crate::LocalBuilder::faults

mod error;
mod injector;
mod operations;
mod plan;
mod proxy;

pub use error::{FaultSpecError, FaultSpecErrorKind};
pub(crate) use injector::Injector;
pub use injector::{FaultCounts, FaultMeter, RequestCounts};
pub use plan::{FaultKind, FaultPlan, Service};
pub(crate) use proxy::interpose;

/// The seed of the fault layer's random numbers when
/// [`LocalBuilder::fault_seed`](crate::LocalBuilder::fault_seed) is not
/// called: runs are repeatable by default.
pub const DEFAULT_FAULT_SEED: u64 = 0;
