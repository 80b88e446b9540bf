//! Decides, request by request, which fault an operation gets, and counts
//! what it injected. Pure: no IO, so decisions are tested without a server.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::plan::{FaultKind, FaultPlan, OperationFaults, Service};

/// What the fault layer does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Forward it and pass the answer back.
    Forward,
    /// Answer with a throttling error.
    Throttle,
    /// Answer with `ExpiredIteratorException`.
    Expired,
    /// Answer with a 500 (or a 503 when `unavailable`).
    Error { unavailable: bool },
    /// Forward it, then drop the connection in the middle of the answer.
    Reset,
}

/// The decision for one request: a delay first, then an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) delay: Option<Duration>,
    pub(crate) outcome: Outcome,
}

impl Decision {
    pub(crate) const FORWARD: Decision = Decision {
        delay: None,
        outcome: Outcome::Forward,
    };
}

/// One operation's faults, random numbers and counts.
#[derive(Debug)]
struct OperationState {
    faults: OperationFaults,
    rng: StdRng,
    counts: [u64; FaultKind::ALL.len()],
    /// Every request of the operation, faulted or not.
    requests: u64,
}

/// The fault layer's state, shared by both services' proxies.
///
/// Each operation draws from its own random number generator, seeded from
/// the plan's seed and the operation's name. The n-th GetRecords call of a
/// run therefore meets the same fault in every run with the same seed, even
/// when other operations interleave differently.
#[derive(Debug)]
pub(crate) struct Injector {
    plan: FaultPlan,
    seed: u64,
    /// Per service (by [`Service::index`]), per operation name.
    operations: Mutex<[HashMap<String, OperationState>; 2]>,
}

impl Injector {
    pub(crate) fn new(plan: FaultPlan, seed: u64) -> Self {
        Self {
            plan,
            seed,
            operations: Mutex::new([HashMap::new(), HashMap::new()]),
        }
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    pub(crate) fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    fn lock(&self) -> MutexGuard<'_, [HashMap<String, OperationState>; 2]> {
        // The state stays consistent whatever panicked while it was held:
        // each update is a draw and an increment.
        self.operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides the fault of the next request of `operation` and counts it.
    ///
    /// Every request draws the same numbers (one for the outcome, one for
    /// the latency when it has one), whatever the outcome, so a run with
    /// the same seed and the same calls meets the same faults.
    pub(crate) fn decide(&self, service: Service, operation: &str) -> Decision {
        let mut operations = self.lock();
        let Some(by_name) = operations.get_mut(service.index()) else {
            return Decision::FORWARD;
        };
        if !by_name.contains_key(operation) {
            let state = OperationState {
                faults: self.plan.resolve(service, operation),
                rng: StdRng::seed_from_u64(self.seed ^ name_hash(service, operation)),
                counts: [0; FaultKind::ALL.len()],
                requests: 0,
            };
            by_name.insert(operation.to_owned(), state);
        }
        let Some(state) = by_name.get_mut(operation) else {
            return Decision::FORWARD;
        };
        state.requests += 1;
        let draw = state.rng.random::<f64>() * 100.0;
        let delay = state
            .faults
            .latency_ms
            .map(|(min, max)| Duration::from_millis(state.rng.random_range(min..=max)));
        let outcome = pick(&state.faults, draw);
        let mut count = |kind: FaultKind| {
            if let Some(n) = state.counts.get_mut(kind.index()) {
                *n += 1;
            }
        };
        if delay.is_some() {
            count(FaultKind::Latency);
        }
        match outcome {
            Outcome::Forward => {}
            Outcome::Throttle => count(FaultKind::Throttle),
            Outcome::Expired => count(FaultKind::Expired),
            Outcome::Error { .. } => count(FaultKind::Error),
            Outcome::Reset => count(FaultKind::Reset),
        }
        Decision { delay, outcome }
    }

    /// What has been injected so far.
    pub(crate) fn counts(&self) -> FaultCounts {
        let operations = self.lock();
        let mut counts = BTreeMap::new();
        for (service, by_name) in Service::ALL.into_iter().zip(operations.iter()) {
            for (operation, state) in by_name {
                for (kind, n) in FaultKind::ALL.into_iter().zip(state.counts) {
                    if n > 0 {
                        counts.insert((service, operation.clone(), kind), n);
                    }
                }
            }
        }
        FaultCounts { counts }
    }

    /// How many requests each operation got so far, faulted or not.
    pub(crate) fn requests(&self) -> RequestCounts {
        let operations = self.lock();
        let mut counts = BTreeMap::new();
        for (service, by_name) in Service::ALL.into_iter().zip(operations.iter()) {
            for (operation, state) in by_name {
                counts.insert((service, operation.clone()), state.requests);
            }
        }
        RequestCounts { counts }
    }
}

/// Throttle, expired, error and reset take consecutive slices of 0..100;
/// the draw falls in one of them or after them all. An error in the first
/// half of its slice is a 500, in the second a 503.
fn pick(faults: &OperationFaults, draw: f64) -> Outcome {
    let mut edge = faults.throttle;
    if draw < edge {
        return Outcome::Throttle;
    }
    edge += faults.expired;
    if draw < edge {
        return Outcome::Expired;
    }
    let error_start = edge;
    edge += faults.error;
    if draw < edge {
        return Outcome::Error {
            unavailable: draw >= error_start + faults.error / 2.0,
        };
    }
    edge += faults.reset;
    if draw < edge {
        return Outcome::Reset;
    }
    Outcome::Forward
}

/// A hash of `service.Operation` that stays the same across Rust versions
/// and platforms, so seeds replay everywhere.
fn name_hash(service: Service, operation: &str) -> u64 {
    fnv1a(
        service
            .name()
            .bytes()
            .chain(std::iter::once(b'.'))
            .chain(operation.bytes()),
    )
}

/// The 64-bit FNV-1a hash.
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A handle on the fault layer's counts that can be kept apart from the
/// [`Local`](crate::Local) it came from (for a task that samples them over
/// time). Cheap to clone; without a fault layer every snapshot is empty.
#[derive(Clone, Debug, Default)]
pub struct FaultMeter {
    injector: Option<Arc<Injector>>,
}

impl FaultMeter {
    pub(crate) fn new(injector: Option<Arc<Injector>>) -> Self {
        Self { injector }
    }

    /// How many faults have been injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.injector
            .as_ref()
            .map_or_else(FaultCounts::default, |injector| injector.counts())
    }

    /// How many requests each service got so far, by operation, faulted or
    /// not; empty without a fault layer.
    pub fn requests(&self) -> RequestCounts {
        self.injector
            .as_ref()
            .map_or_else(RequestCounts::default, |injector| injector.requests())
    }

    /// Whether a fault layer is in front of the services.
    pub fn is_active(&self) -> bool {
        self.injector.is_some()
    }
}

/// How many faults the fault layer injected, per service, operation and
/// kind. A snapshot: take another to see later faults.
///
/// Its [`Display`](fmt::Display) is one line per operation and kind,
/// `kinesis.GetRecords throttle 12`, or `none`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    counts: BTreeMap<(Service, String, FaultKind), u64>,
}

impl FaultCounts {
    /// How many faults of `kind` the operation got.
    pub fn get(&self, service: Service, operation: &str, kind: FaultKind) -> u64 {
        self.iter()
            .find(|&(s, op, k, _)| s == service && op == operation && k == kind)
            .map_or(0, |(_, _, _, n)| n)
    }

    /// How many faults of `kind` all operations of both services got.
    pub fn total(&self, kind: FaultKind) -> u64 {
        self.iter()
            .filter(|&(_, _, k, _)| k == kind)
            .map(|(_, _, _, n)| n)
            .sum()
    }

    /// Whether nothing was injected.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Each service, operation and kind that got faults, with how many,
    /// ordered by service, operation and kind.
    pub fn iter(&self) -> impl Iterator<Item = (Service, &str, FaultKind, u64)> + '_ {
        self.counts
            .iter()
            .map(|((service, operation, kind), n)| (*service, operation.as_str(), *kind, *n))
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, (service, operation, kind, n)) in self.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{service}.{operation} {kind} {n}")?;
        }
        Ok(())
    }
}

/// How many requests each service got, by operation, as the layer in front
/// of the local servers saw them (faulted ones included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    counts: BTreeMap<(Service, String), u64>,
}

impl RequestCounts {
    /// The requests of one operation, 0 when it had none.
    pub fn get(&self, service: Service, operation: &str) -> u64 {
        self.counts
            .get(&(service, operation.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// All requests of one service.
    pub fn total(&self, service: Service) -> u64 {
        self.iter()
            .filter(|&(s, _, _)| s == service)
            .map(|(_, _, n)| n)
            .sum()
    }

    /// Whether no request was counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Each operation with its count, by service, then operation name.
    pub fn iter(&self) -> impl Iterator<Item = (Service, &str, u64)> + '_ {
        self.counts
            .iter()
            .map(|((service, operation), n)| (*service, operation.as_str(), *n))
    }
}

/// One line per operation, `dynamodb.UpdateItem 1080`; `none` when empty.
impl fmt::Display for RequestCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, (service, operation, n)) in self.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{service}.{operation} {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(throttle: f64, expired: f64, error: f64, reset: f64) -> OperationFaults {
        OperationFaults {
            latency_ms: None,
            throttle,
            expired,
            error,
            reset,
        }
    }

    #[test]
    fn kinds_take_consecutive_slices_of_one_draw() {
        let f = faults(10.0, 10.0, 20.0, 10.0);
        assert_eq!(pick(&f, 0.0), Outcome::Throttle);
        assert_eq!(pick(&f, 9.99), Outcome::Throttle);
        assert_eq!(pick(&f, 10.0), Outcome::Expired);
        assert_eq!(pick(&f, 20.0), Outcome::Error { unavailable: false });
        assert_eq!(pick(&f, 29.99), Outcome::Error { unavailable: false });
        assert_eq!(pick(&f, 30.0), Outcome::Error { unavailable: true });
        assert_eq!(pick(&f, 45.0), Outcome::Reset);
        assert_eq!(pick(&f, 50.0), Outcome::Forward);
        assert_eq!(
            pick(&faults(100.0, 0.0, 0.0, 0.0), 99.999),
            Outcome::Throttle
        );
        assert_eq!(pick(&OperationFaults::default(), 0.0), Outcome::Forward);
    }

    #[test]
    fn one_operations_faults_do_not_depend_on_the_others() {
        let plan = FaultPlan::parse("*:error=30%,*:latency=0..100ms").unwrap();
        let alone = Injector::new(plan.clone(), 9);
        let mixed = Injector::new(plan, 9);
        let mut a = Vec::new();
        let mut b = Vec::new();
        for i in 0..200 {
            a.push(alone.decide(Service::Kinesis, "GetRecords"));
            if i % 3 == 0 {
                mixed.decide(Service::DynamoDb, "UpdateItem");
            }
            b.push(mixed.decide(Service::Kinesis, "GetRecords"));
        }
        assert_eq!(a, b);
        assert!(a.iter().any(|d| d.outcome != Outcome::Forward));
    }

    #[test]
    fn delays_are_drawn_across_their_range() {
        let injector = Injector::new(FaultPlan::parse("*:latency=10..20ms").unwrap(), 3);
        let delays: Vec<_> = (0..200)
            .map(|_| {
                injector
                    .decide(Service::Kinesis, "ListShards")
                    .delay
                    .unwrap()
            })
            .collect();
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(20));
        assert!(delays.iter().all(|d| (min..=max).contains(d)));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(13)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(17)));
        assert_eq!(
            Injector::new(FaultPlan::parse("kinesis.*:latency=5ms").unwrap(), 3)
                .decide(Service::DynamoDb, "GetItem")
                .delay,
            None
        );
    }

    #[test]
    fn counts_follow_the_decisions() {
        let injector = Injector::new(FaultPlan::parse("dynamodb.Scan:reset=50%").unwrap(), 1);
        let resets = (0..100)
            .filter(|_| injector.decide(Service::DynamoDb, "Scan").outcome == Outcome::Reset)
            .count() as u64;
        injector.decide(Service::Kinesis, "ListShards");
        let counts = injector.counts();
        assert!(resets > 0);
        assert_eq!(
            counts.get(Service::DynamoDb, "Scan", FaultKind::Reset),
            resets
        );
        assert_eq!(counts.total(FaultKind::Reset), resets);
        assert_eq!(counts.iter().count(), 1);
        assert_eq!(counts.to_string(), format!("dynamodb.Scan reset {resets}"));
    }

    #[test]
    fn the_name_hash_is_fnv1a() {
        // Changing it would change the faults of every recorded seed.
        assert_eq!(fnv1a(b"a".iter().copied()), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            name_hash(Service::Kinesis, "GetRecords"),
            fnv1a(b"kinesis.GetRecords".iter().copied())
        );
    }
}
