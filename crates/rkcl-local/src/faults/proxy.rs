//! The fault layer on the wire: a reverse proxy on a service's public
//! listener that forwards to the real server on an internal port, and
//! answers, delays or cuts requests as the [`Injector`] decides.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::injector::{Injector, Outcome};
use super::plan::Service;
use crate::LocalError;

/// The largest response body read whole to cut it in half (a GetRecords
/// answer is at most 10 MiB of data, base64-encoded in JSON).
const RESET_BODY_LIMIT: usize = 32 << 20;
/// How long a reset waits for the first bytes of a streamed body.
const RESET_FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reset waits between the part of the answer it sends and
/// dropping the connection: long enough for the server to flush that part.
const RESET_PAUSE: Duration = Duration::from_millis(2);
/// How long idle connections to the real server are kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that belong to one connection, not to the message: never
/// forwarded (hyper frames each side's messages itself).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Puts the fault layer in front of a service when there is an injector.
///
/// Serves the proxy on `public` and returns the listener the real server
/// must serve on: a new one on an ephemeral port of 127.0.0.1. Without an
/// injector, returns `public` unchanged.
///
/// # Errors
///
/// [`LocalError::Bind`] when the internal port cannot be bound.
pub(crate) async fn interpose(
    injector: Option<&Arc<Injector>>,
    service: Service,
    public: TcpListener,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<TcpListener, LocalError> {
    let Some(injector) = injector else {
        return Ok(public);
    };
    let service_name = match service {
        Service::Kinesis => "Kinesis",
        Service::DynamoDb => "DynamoDB",
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let bind_error = |source| LocalError::Bind {
        service: service_name,
        addr,
        source,
    };
    let internal = TcpListener::bind(addr).await.map_err(bind_error)?;
    let backend = internal.local_addr().map_err(bind_error)?;

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector);
    let proxy = Arc::new(Proxy {
        service,
        backend: backend.to_string(),
        client,
        injector: Arc::clone(injector),
    });
    let router = axum::Router::new().fallback(handle).with_state(proxy);
    let listener = public.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
    });
    let token = shutdown.clone();
    tasks.spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(token.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, service = service_name, "the fault layer stopped");
        }
    });
    Ok(internal)
}

#[derive(Debug)]
struct Proxy {
    service: Service,
    /// `127.0.0.1:PORT` of the real server.
    backend: String,
    client: Client<HttpConnector, Body>,
    injector: Arc<Injector>,
}

async fn handle(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let Some(operation) = operation(request.headers()) else {
        // Not an AWS API call (no target): passed through untouched.
        return proxy.forward(request).await;
    };
    let decision = proxy.injector.decide(proxy.service, &operation);
    if let Some(delay) = decision.delay {
        tokio::time::sleep(delay).await;
    }
    let (status, error_type, message) = match decision.outcome {
        Outcome::Forward => return proxy.forward(request).await,
        Outcome::Reset => return cut(proxy.forward(request).await).await,
        Outcome::Throttle => throttle_error(proxy.service, &operation),
        Outcome::Expired => (
            StatusCode::BAD_REQUEST,
            "ExpiredIteratorException",
            "Iterator expired (a fault injected by rkcl-local).",
        ),
        Outcome::Error { unavailable: false } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            match proxy.service {
                Service::Kinesis => "InternalFailure",
                Service::DynamoDb => "com.amazonaws.dynamodb.v20120810#InternalServerError",
            },
            "Internal server error (a fault injected by rkcl-local).",
        ),
        Outcome::Error { unavailable: true } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "Service unavailable (a fault injected by rkcl-local).",
        ),
    };
    // Read the request to its end so the connection stays usable: a client
    // whose request was not read may see the next one on it fail.
    if let Err(err) = axum::body::to_bytes(request.into_body(), usize::MAX).await {
        tracing::debug!(error = %err, "could not read a faulted request's body");
    }
    error_response(proxy.service, status, error_type, message)
}

/// The operation an AWS JSON call names: `GetRecords` of
/// `X-Amz-Target: Kinesis_20131202.GetRecords`.
fn operation(headers: &HeaderMap) -> Option<String> {
    let target = headers.get("x-amz-target")?.to_str().ok()?;
    let (_, operation) = target.rsplit_once('.')?;
    Some(operation.to_owned())
}

/// The throttling error AWS gives the operation.
fn throttle_error(service: Service, operation: &str) -> (StatusCode, &'static str, &'static str) {
    match service {
        Service::Kinesis => match operation {
            "GetRecords" | "SubscribeToShard" | "PutRecord" | "PutRecords" => (
                StatusCode::BAD_REQUEST,
                "ProvisionedThroughputExceededException",
                "Rate exceeded for shard (a fault injected by rkcl-local).",
            ),
            _ => (
                StatusCode::BAD_REQUEST,
                "LimitExceededException",
                "Rate exceeded (a fault injected by rkcl-local).",
            ),
        },
        Service::DynamoDb => match operation {
            "GetItem" | "PutItem" | "UpdateItem" | "DeleteItem" | "Query" | "Scan"
            | "BatchGetItem" | "BatchWriteItem" | "TransactGetItems" | "TransactWriteItems" => (
                StatusCode::BAD_REQUEST,
                "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded \
                 (a fault injected by rkcl-local).",
            ),
            _ => (
                StatusCode::BAD_REQUEST,
                "com.amazon.coral.availability#ThrottlingException",
                "Rate of requests exceeds the allowed throughput (a fault injected by rkcl-local).",
            ),
        },
    }
}

/// An error as the service's JSON protocol carries it (awsJson1.1 for
/// Kinesis, awsJson1.0 for DynamoDB): `__type` and `message` in the body,
/// the type in `x-amzn-ErrorType` too.
fn error_response(
    service: Service,
    status: StatusCode,
    error_type: &'static str,
    message: &'static str,
) -> Response {
    let content_type = match service {
        Service::Kinesis => "application/x-amz-json-1.1",
        Service::DynamoDb => "application/x-amz-json-1.0",
    };
    // Both strings are fixed above and need no JSON escaping.
    let body = format!(r#"{{"__type":"{error_type}","message":"{message}"}}"#);
    (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                HeaderName::from_static("x-amzn-errortype"),
                HeaderValue::from_static(error_type),
            ),
        ],
        body,
    )
        .into_response()
}

impl Proxy {
    /// Sends the request to the real server and passes its answer back as
    /// it comes: bodies are streamed, never buffered.
    async fn forward(&self, request: Request) -> Response {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
        parts.uri = match Uri::builder()
            .scheme("http")
            .authority(self.backend.as_str())
            .path_and_query(path)
            .build()
        {
            Ok(uri) => uri,
            Err(err) => return bad_gateway(&err),
        };
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Body::new(body))
            }
            Err(err) => bad_gateway(&err),
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn bad_gateway(err: &dyn std::error::Error) -> Response {
    tracing::warn!(error = %err, "the fault layer could not reach the local server");
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/plain")],
        format!("rkcl-local: the local server did not answer: {err}"),
    )
        .into_response()
}

/// Turns an answer into one that breaks off: its head and the first half
/// of its body (of the first chunk, for a streamed body), then the
/// connection is dropped. A body whose length is known keeps announcing
/// the whole length (at least 2 bytes), so the client sees it cut short.
async fn cut(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let streamed = !parts.headers.contains_key(header::CONTENT_LENGTH);
    let whole = if streamed {
        let first =
            tokio::time::timeout(RESET_FIRST_FRAME_TIMEOUT, body.into_data_stream().next()).await;
        match first {
            Ok(Some(Ok(bytes))) => bytes,
            _ => Bytes::new(),
        }
    } else {
        axum::body::to_bytes(body, RESET_BODY_LIMIT)
            .await
            .unwrap_or_default()
    };
    if !streamed {
        parts.headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(whole.len().max(2)),
        );
    }
    let sent = whole.slice(..whole.len() / 2);
    let head = futures_util::stream::iter((!sent.is_empty()).then_some(Ok(sent)));
    // The error comes after a pause, so the head and the first half are
    // flushed before the server drops the connection.
    let abort = futures_util::stream::once(async {
        tokio::time::sleep(RESET_PAUSE).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset (a fault injected by rkcl-local)",
        ))
    });
    Response::from_parts(parts, Body::from_stream(head.chain(abort)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operation_is_the_last_part_of_the_target() {
        let mut headers = HeaderMap::new();
        assert_eq!(operation(&headers), None);
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("DynamoDB_20120810.UpdateItem"),
        );
        assert_eq!(operation(&headers).as_deref(), Some("UpdateItem"));
    }

    #[test]
    fn kinesis_throttles_data_calls_with_provisioned_throughput() {
        assert_eq!(
            throttle_error(Service::Kinesis, "GetRecords").1,
            "ProvisionedThroughputExceededException"
        );
        assert_eq!(
            throttle_error(Service::Kinesis, "ListShards").1,
            "LimitExceededException"
        );
        assert!(
            throttle_error(Service::DynamoDb, "DescribeTable")
                .1
                .ends_with("#ThrottlingException")
        );
    }
}
