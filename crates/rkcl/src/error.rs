//! The one error type of the library.
//!
//! Variants are what a caller branches on: a throttled call is retried, a
//! missing stream is reported, a lost lease stops the shard's work. Expected
//! outcomes of races (a lease taken by another worker) are not errors; they
//! are ordinary return values of the functions that can lose them.

/// Which AWS service an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Service {
    /// Amazon Kinesis Data Streams.
    Kinesis,
    /// Amazon DynamoDB (the lease table).
    DynamoDb,
    /// Amazon CloudWatch (metrics).
    CloudWatch,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Kinesis => "Kinesis",
            Service::DynamoDb => "DynamoDB",
            Service::CloudWatch => "CloudWatch",
        })
    }
}

/// Everything that can go wrong in rkcl.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The service asked us to slow down (throttling or exceeded throughput).
    #[error("{service} throttled the request: {message}")]
    Throttled {
        /// The service that throttled.
        service: Service,
        /// The service's message.
        message: String,
    },
    /// A shard iterator was used after it expired; get a new one.
    #[error("the shard iterator expired: {message}")]
    ExpiredIterator {
        /// The service's message.
        message: String,
    },
    /// A stream, shard, table or item does not exist.
    #[error("{service}: not found: {message}")]
    ResourceNotFound {
        /// The service that answered.
        service: Service,
        /// The service's message.
        message: String,
    },
    /// The resource is busy or not in a state that allows the operation:
    /// a stream consumer still being created or being deleted, a shard
    /// already subscribed to by the same consumer, a stream that exists
    /// already or is being updated.
    ///
    /// Not retryable as such: the same call fails the same way while the
    /// state lasts, and some states last (a stream that exists). Callers
    /// that know the state is passing (a subscription being replaced, a
    /// consumer being registered) wait and try again.
    #[error("{service}: resource in use: {message}")]
    ResourceInUse {
        /// The service that answered.
        service: Service,
        /// The service's message.
        message: String,
    },
    /// The credentials in use may not perform the operation (IAM or KMS).
    #[error("{service}: access denied: {message}")]
    AccessDenied {
        /// The service that refused.
        service: Service,
        /// The service's message.
        message: String,
    },
    /// No credentials could be found, or they were rejected as invalid.
    #[error("no valid AWS credentials: {message}")]
    Credentials {
        /// What the credential chain or the service said.
        message: String,
    },
    /// The service rejected the request as invalid; retrying will not help.
    #[error("{service} rejected the request: {message}")]
    InvalidRequest {
        /// The service that answered.
        service: Service,
        /// The error code and message.
        message: String,
    },
    /// The service failed (5xx) or gave an error code not known here.
    #[error("{service} failed: {code}: {message}")]
    Service {
        /// The service that failed.
        service: Service,
        /// The error code, such as `InternalFailure`.
        code: String,
        /// The service's message.
        message: String,
        /// Whether a retry may succeed.
        retryable: bool,
    },
    /// The endpoint could not be reached or the connection broke.
    #[error("could not reach {service}: {message}")]
    Transport {
        /// The service that was being called.
        service: Service,
        /// What went wrong.
        message: String,
    },
    /// A user record does not fit in a Kinesis record.
    #[error("a user record of {size} bytes does not fit in an aggregate of at most {max} bytes")]
    RecordTooLarge {
        /// The encoded size the record needs.
        size: usize,
        /// The largest size allowed.
        max: usize,
    },
    /// Input from a user or a file is malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// This worker no longer holds the lease (another worker took it, or it
    /// could not be renewed in time); the write was refused.
    #[error("the lease {lease_key} is no longer held by this worker")]
    LeaseLost {
        /// The lease key.
        lease_key: String,
    },
    /// A checkpoint was refused: it would move backwards, or past the
    /// records delivered so far.
    #[error("invalid checkpoint for lease {lease_key}: {message}")]
    InvalidCheckpoint {
        /// The lease key.
        lease_key: String,
        /// What was wrong.
        message: String,
    },
    /// Entries of a PutRecords batch still failed after every retry.
    #[error("{failed} records could not be written after {attempts} attempts: {last_error}")]
    PutFailed {
        /// How many user records were not written.
        failed: usize,
        /// How many attempts were made.
        attempts: u32,
        /// The last error code and message Kinesis gave.
        last_error: String,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Throttled { .. } | Error::ExpiredIterator { .. } | Error::Transport { .. } => {
                true
            }
            Error::Service { retryable, .. } => *retryable,
            Error::ResourceNotFound { .. }
            | Error::ResourceInUse { .. }
            | Error::AccessDenied { .. }
            | Error::Credentials { .. }
            | Error::InvalidRequest { .. }
            | Error::RecordTooLarge { .. }
            | Error::InvalidInput(_)
            | Error::Config(_)
            | Error::LeaseLost { .. }
            | Error::InvalidCheckpoint { .. }
            | Error::PutFailed { .. } => false,
        }
    }
}

/// The result type of rkcl.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds() {
        assert!(
            Error::Throttled {
                service: Service::Kinesis,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            !Error::AccessDenied {
                service: Service::DynamoDb,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            Error::Service {
                service: Service::Kinesis,
                code: "InternalFailure".into(),
                message: String::new(),
                retryable: true
            }
            .is_retryable()
        );
        assert!(!Error::Config("x".into()).is_retryable());
        assert!(
            !Error::ResourceInUse {
                service: Service::Kinesis,
                message: String::new()
            }
            .is_retryable()
        );
    }
}
