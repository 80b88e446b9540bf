//! Turning SDK errors into [`Error`].

use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

use crate::error::{Error, Service};

/// Maps any SDK error of a call to `service` to an [`Error`] a caller can
/// branch on.
pub(crate) fn from_sdk<E>(service: Service, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    convert(service, err, |raw| Some(raw.status().as_u16()))
}

/// Maps an error read from an event stream (SubscribeToShard's events) to
/// an [`Error`]: as [`from_sdk`], without an HTTP status (the error came in
/// a message of a stream that had answered 200).
pub(crate) fn from_event_stream<E, R>(service: Service, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    convert(service, err, |_| None)
}

fn convert<E, R>(service: Service, err: SdkError<E, R>, status: impl Fn(&R) -> Option<u16>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let full = chain(&err);
    match &err {
        SdkError::ServiceError(service_err) => {
            let inner = service_err.err();
            let code = inner.code().unwrap_or("Unknown").to_owned();
            let message = inner.message().unwrap_or_default().to_owned();
            classify(service, &code, message, status(service_err.raw()))
        }
        SdkError::TimeoutError(_) => Error::Transport {
            service,
            message: full,
        },
        SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
            Error::Transport {
                service,
                message: full,
            }
        }
        _ if mentions_credentials(&full) => Error::Credentials { message: full },
        SdkError::DispatchFailure(_) => Error::Transport {
            service,
            message: full,
        },
        SdkError::ResponseError(_) => Error::Service {
            service,
            code: "ResponseError".to_owned(),
            message: full,
            retryable: true,
        },
        _ => Error::InvalidRequest {
            service,
            message: full,
        },
    }
}

/// The error and its sources as one line, without debug dumps.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

fn mentions_credentials(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("credential") || lower.contains("no identity")
}

/// Classifies an error code the way the Kinesis and DynamoDB APIs document
/// them. `status` is the HTTP status when known.
pub(crate) fn classify(
    service: Service,
    code: &str,
    message: String,
    status: Option<u16>,
) -> Error {
    match code {
        "ThrottlingException"
        | "Throttling"
        | "ProvisionedThroughputExceededException"
        | "LimitExceededException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "KMSThrottlingException" => Error::Throttled { service, message },
        "ExpiredIteratorException" => Error::ExpiredIterator { message },
        "ResourceNotFoundException" => Error::ResourceNotFound { service, message },
        "AccessDeniedException"
        | "KMSAccessDeniedException"
        | "KMSDisabledException"
        | "KMSInvalidStateException"
        | "KMSNotFoundException"
        | "KMSOptInRequired" => Error::AccessDenied {
            service,
            message: format!("{code}: {message}"),
        },
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "MissingAuthenticationToken"
        | "InvalidClientTokenId"
        | "IncompleteSignature" => Error::Credentials {
            message: format!("{code}: {message}"),
        },
        "ResourceInUseException" => Error::ResourceInUse { service, message },
        "ValidationException" | "InvalidArgumentException" | "SerializationException" => {
            Error::InvalidRequest {
                service,
                message: format!("{code}: {message}"),
            }
        }
        _ => {
            let retryable = status.is_some_and(|s| s >= 500)
                || matches!(
                    code,
                    "InternalFailure"
                        | "InternalServerError"
                        | "ServiceUnavailable"
                        | "ServiceUnavailableException"
                        | "InternalFailureException"
                );
            Error::Service {
                service,
                code: code.to_owned(),
                message,
                retryable,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        let kind = |code| classify(Service::Kinesis, code, String::new(), None);
        assert!(matches!(
            kind("ProvisionedThroughputExceededException"),
            Error::Throttled { .. }
        ));
        assert!(matches!(
            kind("ExpiredIteratorException"),
            Error::ExpiredIterator { .. }
        ));
        assert!(matches!(
            kind("ResourceNotFoundException"),
            Error::ResourceNotFound { .. }
        ));
        assert!(matches!(
            kind("KMSAccessDeniedException"),
            Error::AccessDenied { .. }
        ));
        assert!(matches!(
            kind("UnrecognizedClientException"),
            Error::Credentials { .. }
        ));
        assert!(matches!(
            kind("InvalidArgumentException"),
            Error::InvalidRequest { .. }
        ));
        assert!(matches!(
            kind("ResourceInUseException"),
            Error::ResourceInUse { .. }
        ));
        assert!(!kind("ResourceInUseException").is_retryable());
        assert!(kind("InternalFailureException").is_retryable());
        assert!(kind("InternalFailure").is_retryable());
        assert!(!kind("SomethingNew").is_retryable());
        assert!(
            classify(Service::Kinesis, "SomethingNew", String::new(), Some(503)).is_retryable()
        );
    }
}
