//! The fault spec: `service.Operation:kind=value` parts parsed into a
//! [`FaultPlan`], and the faults a plan gives one operation.

use std::fmt;
use std::str::FromStr;

use super::error::{FaultSpecError, FaultSpecErrorKind};
use super::operations::{DYNAMODB_OPERATIONS, KINESIS_OPERATIONS};

/// One of the two local services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Service {
    /// The embedded Kinesis.
    Kinesis,
    /// The embedded DynamoDB.
    DynamoDb,
}

impl Service {
    /// Both services, Kinesis first.
    pub const ALL: [Service; 2] = [Service::Kinesis, Service::DynamoDb];

    /// The name fault specs use: `kinesis` or `dynamodb`.
    pub const fn name(self) -> &'static str {
        match self {
            Service::Kinesis => "kinesis",
            Service::DynamoDb => "dynamodb",
        }
    }

    /// Every operation of the service's API, as the `X-Amz-Target` header
    /// names it (`GetRecords`, `UpdateItem`). Taken from the AWS SDK for
    /// Rust this crate is built with.
    pub const fn operations(self) -> &'static [&'static str] {
        match self {
            Service::Kinesis => KINESIS_OPERATIONS,
            Service::DynamoDb => DYNAMODB_OPERATIONS,
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|service| service.name().eq_ignore_ascii_case(name))
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Service::Kinesis => 0,
            Service::DynamoDb => 1,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The one operation `expired` applies to.
const EXPIRED_OPERATION: (Service, &str) = (Service::Kinesis, "GetRecords");

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FaultKind {
    /// A delay added before the request is forwarded (`latency=A..Bms`).
    Latency,
    /// A throttling error (`throttle=P%`).
    Throttle,
    /// `ExpiredIteratorException` from Kinesis GetRecords (`expired=P%`).
    Expired,
    /// A 500 or 503 server error (`error=P%`).
    Error,
    /// The connection dropped mid-response (`reset=P%`).
    Reset,
}

impl FaultKind {
    /// Every kind, in the order a request meets them.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Latency,
        FaultKind::Throttle,
        FaultKind::Expired,
        FaultKind::Error,
        FaultKind::Reset,
    ];

    /// The name fault specs use: `latency`, `throttle`, `expired`, `error`
    /// or `reset`.
    pub const fn name(self) -> &'static str {
        match self {
            FaultKind::Latency => "latency",
            FaultKind::Throttle => "throttle",
            FaultKind::Expired => "expired",
            FaultKind::Error => "error",
            FaultKind::Reset => "reset",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            FaultKind::Latency => 0,
            FaultKind::Throttle => 1,
            FaultKind::Expired => 2,
            FaultKind::Error => 3,
            FaultKind::Reset => 4,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which requests a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// `*`: every operation of both services.
    All,
    /// `kinesis.*`: every operation of one service.
    Service(Service),
    /// `kinesis.GetRecords`: one operation.
    Operation(Service, &'static str),
}

impl Target {
    /// How specific the target is: a rule for one operation beats one for
    /// its service, which beats `*`.
    fn specificity(self) -> u8 {
        match self {
            Target::All => 0,
            Target::Service(_) => 1,
            Target::Operation(..) => 2,
        }
    }

    fn matches(self, service: Service, operation: &str) -> bool {
        match self {
            Target::All => true,
            Target::Service(s) => s == service,
            Target::Operation(s, op) => s == service && op == operation,
        }
    }

    fn parse(text: &str) -> Result<Self, FaultSpecErrorKind> {
        if text == "*" {
            return Ok(Target::All);
        }
        let Some((service, operation)) = text.split_once('.') else {
            return Err(FaultSpecErrorKind::BadTarget(text.to_owned()));
        };
        let service = Service::parse(service)
            .ok_or_else(|| FaultSpecErrorKind::UnknownService(service.to_owned()))?;
        if operation == "*" {
            return Ok(Target::Service(service));
        }
        match service.operations().iter().find(|op| **op == operation) {
            Some(op) => Ok(Target::Operation(service, op)),
            None => Err(FaultSpecErrorKind::UnknownOperation {
                service,
                operation: operation.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("*"),
            Target::Service(service) => write!(f, "{service}.*"),
            Target::Operation(service, op) => write!(f, "{service}.{op}"),
        }
    }
}

/// One fault with its value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Latency { min_ms: u64, max_ms: u64 },
    Percent(FaultKind, f64),
}

impl Fault {
    fn kind(self) -> FaultKind {
        match self {
            Fault::Latency { .. } => FaultKind::Latency,
            Fault::Percent(kind, _) => kind,
        }
    }

    fn parse(kind: &str, value: &str) -> Result<Self, FaultSpecErrorKind> {
        let kind = FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == kind)
            .ok_or_else(|| FaultSpecErrorKind::UnknownKind(kind.to_owned()))?;
        match kind {
            FaultKind::Latency => parse_latency(value),
            _ => parse_percent(value).map(|p| Fault::Percent(kind, p)),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::Latency { min_ms, max_ms } if min_ms == max_ms => {
                write!(f, "latency={min_ms}ms")
            }
            Fault::Latency { min_ms, max_ms } => write!(f, "latency={min_ms}..{max_ms}ms"),
            Fault::Percent(kind, percent) => write!(f, "{kind}={percent}%"),
        }
    }
}

fn parse_percent(value: &str) -> Result<f64, FaultSpecErrorKind> {
    let bad = || FaultSpecErrorKind::BadPercent(value.to_owned());
    let number = value.strip_suffix('%').ok_or_else(bad)?;
    let percent: f64 = number.parse().map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&percent) {
        return Err(bad());
    }
    // `-0%` is written back as `0%`.
    Ok(percent + 0.0)
}

fn parse_latency(value: &str) -> Result<Fault, FaultSpecErrorKind> {
    let bad = || FaultSpecErrorKind::BadRange(value.to_owned());
    let range = value.strip_suffix("ms").ok_or_else(bad)?;
    let (min, max) = range.split_once("..").unwrap_or((range, range));
    let min_ms: u64 = min.parse().map_err(|_| bad())?;
    let max_ms: u64 = max.parse().map_err(|_| bad())?;
    if min_ms > max_ms {
        return Err(bad());
    }
    Ok(Fault::Latency { min_ms, max_ms })
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Rule {
    target: Target,
    fault: Fault,
}

/// Which faults to inject into which operations of the local services.
///
/// A plan is parsed from a spec: comma-separated parts
/// `TARGET:KIND=VALUE`, where `TARGET` is `*` (every operation of both
/// services), `kinesis.*` or `dynamodb.*` (every operation of one), or
/// `kinesis.GetRecords`, `dynamodb.UpdateItem`, ... (one operation, named
/// as in the AWS API), and `KIND=VALUE` is one of:
///
/// - `throttle=P%`: Kinesis answers `ProvisionedThroughputExceededException`
///   for GetRecords, SubscribeToShard, PutRecord and PutRecords and
///   `LimitExceededException` for the others; DynamoDB answers
///   `ProvisionedThroughputExceededException` for item reads and writes
///   (GetItem, PutItem, UpdateItem, DeleteItem, Query, Scan, the batch and
///   transaction calls) and `ThrottlingException` for the others. All are
///   HTTP 400.
/// - `error=P%`: HTTP 500 (`InternalFailure`, DynamoDB's
///   `InternalServerError`) or 503 (`ServiceUnavailable`), half each.
/// - `latency=A..Bms` (or `latency=Nms`): a delay drawn uniformly from
///   `A..=B` milliseconds before the request is forwarded.
/// - `reset=P%`: the request is served, then the connection is dropped
///   after the response head and part of its body.
/// - `expired=P%`: `ExpiredIteratorException`; Kinesis GetRecords only
///   (under `*` and `kinesis.*` it touches GetRecords alone).
///
/// For each kind, the most specific rule that matches an operation applies:
/// `kinesis.GetRecords:throttle=5%,*:throttle=1%` throttles GetRecords at
/// 5 % and everything else at 1 %. A request meets its latency first, then
/// one draw decides among throttle, expired, error and reset in that order;
/// if their percentages add up to more than 100, the later kinds get what is
/// left. Faulted answers (all but latency and reset) never reach the server,
/// so a throttled write writes nothing.
///
/// ```
/// let plan: rkcl_local::FaultPlan =
///     "kinesis.GetRecords:throttle=2%,dynamodb.UpdateItem:error=1%,*:latency=0..300ms,*:reset=0.2%"
///         .parse()
///         .unwrap();
/// assert!(!plan.is_empty());
///
/// let err = rkcl_local::FaultPlan::parse("kinesis.GetRecords:throttle=2").unwrap_err();
/// assert_eq!(err.part(), "kinesis.GetRecords:throttle=2");
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    rules: Vec<Rule>,
}

impl FaultPlan {
    /// A plan that injects nothing (the local services still run behind
    /// the fault layer when it is given to
    /// [`LocalBuilder::faults`](crate::LocalBuilder::faults)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a spec such as `kinesis.GetRecords:throttle=2%,*:latency=0..300ms`
    /// (see [`FaultPlan`] for the grammar). An empty or blank spec is an
    /// empty plan.
    ///
    /// # Errors
    ///
    /// [`FaultSpecError`] naming the first bad part and what is wrong with
    /// it: an empty part, a part not shaped `TARGET:KIND=VALUE`, an unknown
    /// service, operation or kind, a percentage outside 0–100 % or without
    /// `%`, a latency range that is not `A..Bms` with `A <= B`, `expired` on
    /// anything but Kinesis GetRecords, or the same kind twice for one
    /// target.
    pub fn parse(spec: &str) -> Result<Self, FaultSpecError> {
        let mut plan = Self::new();
        if spec.trim().is_empty() {
            return Ok(plan);
        }
        for part in spec.split(',') {
            let part = part.trim();
            let rule = parse_rule(part).map_err(|kind| FaultSpecError::new(part, kind))?;
            if plan
                .rules
                .iter()
                .any(|r| r.target == rule.target && r.fault.kind() == rule.fault.kind())
            {
                return Err(FaultSpecError::new(
                    part,
                    FaultSpecErrorKind::Duplicate(rule.fault.kind()),
                ));
            }
            plan.rules.push(rule);
        }
        Ok(plan)
    }

    /// Whether the plan injects nothing.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The faults of one operation: for each kind, the most specific rule.
    pub(crate) fn resolve(&self, service: Service, operation: &str) -> OperationFaults {
        let mut best: [Option<(u8, Fault)>; 5] = [None; 5];
        for rule in &self.rules {
            let kind = rule.fault.kind();
            if !rule.target.matches(service, operation)
                || (kind == FaultKind::Expired && (service, operation) != EXPIRED_OPERATION)
            {
                continue;
            }
            let specificity = rule.target.specificity();
            if let Some(slot) = best.get_mut(kind.index())
                && slot.is_none_or(|(s, _)| s < specificity)
            {
                *slot = Some((specificity, rule.fault));
            }
        }
        let mut faults = OperationFaults::default();
        for (_, fault) in best.into_iter().flatten() {
            match fault {
                Fault::Latency { min_ms, max_ms } => faults.latency_ms = Some((min_ms, max_ms)),
                Fault::Percent(FaultKind::Throttle, p) => faults.throttle = p,
                Fault::Percent(FaultKind::Expired, p) => faults.expired = p,
                Fault::Percent(FaultKind::Error, p) => faults.error = p,
                Fault::Percent(FaultKind::Reset, p) => faults.reset = p,
                Fault::Percent(FaultKind::Latency, _) => {}
            }
        }
        faults
    }
}

fn parse_rule(part: &str) -> Result<Rule, FaultSpecErrorKind> {
    if part.is_empty() {
        return Err(FaultSpecErrorKind::EmptyPart);
    }
    let (target, fault) = part.split_once(':').ok_or(FaultSpecErrorKind::Malformed)?;
    let (kind, value) = fault.split_once('=').ok_or(FaultSpecErrorKind::Malformed)?;
    let target = Target::parse(target)?;
    let fault = Fault::parse(kind, value)?;
    if fault.kind() == FaultKind::Expired {
        let applies = match target {
            Target::All => true,
            Target::Service(service) => service == EXPIRED_OPERATION.0,
            Target::Operation(service, op) => (service, op) == EXPIRED_OPERATION,
        };
        if !applies {
            return Err(FaultSpecErrorKind::NotApplicable);
        }
    }
    Ok(Rule { target, fault })
}

impl FromStr for FaultPlan {
    type Err = FaultSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        Self::parse(spec)
    }
}

/// The spec the plan was parsed from, in canonical form.
impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", rule.target, rule.fault)?;
        }
        Ok(())
    }
}

/// The faults one operation gets from a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct OperationFaults {
    pub(crate) latency_ms: Option<(u64, u64)>,
    pub(crate) throttle: f64,
    pub(crate) expired: f64,
    pub(crate) error: f64,
    pub(crate) reset: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_rule_of_each_kind_applies() {
        let plan = FaultPlan::parse(
            "*:throttle=1%,kinesis.*:throttle=2%,kinesis.GetRecords:throttle=3%,*:latency=5ms,*:expired=4%",
        )
        .unwrap();
        let get_records = plan.resolve(Service::Kinesis, "GetRecords");
        assert_eq!(get_records.throttle, 3.0);
        assert_eq!(get_records.expired, 4.0);
        assert_eq!(get_records.latency_ms, Some((5, 5)));
        let list_shards = plan.resolve(Service::Kinesis, "ListShards");
        assert_eq!(list_shards.throttle, 2.0);
        assert_eq!(list_shards.expired, 0.0, "expired touches GetRecords only");
        let get_item = plan.resolve(Service::DynamoDb, "GetItem");
        assert_eq!(get_item.throttle, 1.0);
        assert_eq!(get_item.error, 0.0);
    }

    #[test]
    fn the_order_of_rules_does_not_change_which_applies() {
        let a = FaultPlan::parse("kinesis.GetRecords:error=3%,*:error=1%").unwrap();
        let b = FaultPlan::parse("*:error=1%,kinesis.GetRecords:error=3%").unwrap();
        assert_eq!(
            a.resolve(Service::Kinesis, "GetRecords"),
            b.resolve(Service::Kinesis, "GetRecords")
        );
        assert_eq!(a.resolve(Service::Kinesis, "GetRecords").error, 3.0);
    }

    #[test]
    fn an_empty_plan_resolves_to_nothing() {
        assert_eq!(
            FaultPlan::new().resolve(Service::DynamoDb, "UpdateItem"),
            OperationFaults::default()
        );
    }

    #[test]
    fn a_slip_in_an_operation_name_is_pointed_out() {
        let err = FaultPlan::parse("kinesis.getRecords:throttle=1%").unwrap_err();
        assert!(
            err.to_string().contains("did you mean `GetRecords`"),
            "{err}"
        );
    }
}
