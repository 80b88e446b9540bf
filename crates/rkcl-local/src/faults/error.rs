//! Why a fault spec could not be parsed.

use super::plan::{FaultKind, Service};

/// A fault spec that could not be parsed: the part, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad fault `{part}`: {kind}")]
pub struct FaultSpecError {
    part: String,
    kind: FaultSpecErrorKind,
}

impl FaultSpecError {
    pub(super) fn new(part: &str, kind: FaultSpecErrorKind) -> Self {
        Self {
            part: part.to_owned(),
            kind,
        }
    }

    /// The part of the spec at fault, e.g. `kinesis.GetRecords:throttle=2`.
    pub fn part(&self) -> &str {
        &self.part
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &FaultSpecErrorKind {
        &self.kind
    }
}

/// What is wrong with a part of a fault spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FaultSpecErrorKind {
    /// Nothing between two commas, or a trailing comma.
    #[error("empty part (two commas in a row, or a comma at an end)")]
    EmptyPart,
    /// Not shaped `TARGET:KIND=VALUE`.
    #[error("expected TARGET:KIND=VALUE, e.g. kinesis.GetRecords:throttle=2%")]
    Malformed,
    /// A target that is neither `*` nor `SERVICE.OPERATION`.
    #[error("bad target `{0}`: expected *, kinesis.*, dynamodb.* or SERVICE.Operation")]
    BadTarget(String),
    /// A service other than `kinesis` and `dynamodb`.
    #[error("unknown service `{0}`: expected kinesis, dynamodb or *")]
    UnknownService(String),
    /// An operation the service's API does not have.
    #[error("unknown {service} operation `{operation}`{}", suggest(*.service, .operation))]
    UnknownOperation {
        /// The service named.
        service: Service,
        /// The operation named.
        operation: String,
    },
    /// A kind other than throttle, error, latency, reset and expired.
    #[error("unknown fault kind `{0}`: expected throttle, error, latency, reset or expired")]
    UnknownKind(String),
    /// A percentage without `%`, not a number, or outside 0–100.
    #[error("bad percentage `{0}`: expected a number from 0 to 100 followed by %, e.g. 2% or 0.5%")]
    BadPercent(String),
    /// A latency that is not `A..Bms` with `A <= B` (or `Nms`).
    #[error(
        "bad latency `{0}`: expected MIN..MAXms with MIN <= MAX, e.g. 0..300ms, or one value, e.g. 50ms"
    )]
    BadRange(String),
    /// `expired` on a target that is not Kinesis GetRecords, `kinesis.*` or `*`.
    #[error("`expired` applies to kinesis.GetRecords only")]
    NotApplicable,
    /// The same kind twice for one target.
    #[error("the same target has a `{0}` fault already")]
    Duplicate(FaultKind),
}

/// ` (did you mean `GetRecords`?)` when one operation differs only in case,
/// or is the only one that starts with the name or that the name starts
/// with; nothing otherwise.
fn suggest(service: Service, operation: &str) -> String {
    let operations = service.operations();
    let lower = operation.to_ascii_lowercase();
    let same_but_case = operations
        .iter()
        .find(|op| op.eq_ignore_ascii_case(operation));
    let mut prefixed = operations.iter().filter(|op| {
        let op = op.to_ascii_lowercase();
        !lower.is_empty() && (op.starts_with(&lower) || lower.starts_with(&op))
    });
    let only_prefixed = match (prefixed.next(), prefixed.next()) {
        (Some(op), None) => Some(op),
        _ => None,
    };
    same_but_case
        .or(only_prefixed)
        .map_or_else(String::new, |op| format!(" (did you mean `{op}`?)"))
}
