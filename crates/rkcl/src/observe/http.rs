//! The HTTP listener: `/metrics` in the Prometheus text format, `/healthz`
//! and `/readyz` for probes.

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::prometheus;
use super::registry::MetricsRegistry;
use crate::health::{Health, Verdict};

/// The worker's health once it is known.
pub(super) type HealthSlot = Arc<Mutex<Option<Health>>>;

#[derive(Clone)]
struct Served {
    registry: MetricsRegistry,
    health: HealthSlot,
}

/// Serves until `cancel`.
pub(super) async fn serve(
    listener: TcpListener,
    registry: MetricsRegistry,
    health: HealthSlot,
    cancel: CancellationToken,
) {
    let router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Served { registry, health });
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(err) = served {
        tracing::warn!(error = %err, "the metrics and health listener stopped");
    }
}

async fn metrics(State(served): State<Served>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)],
        prometheus::render(&served.registry),
    )
        .into_response()
}

fn health(served: &Served) -> Option<Health> {
    served
        .health
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// 200 with the checks when every check passed, 503 with them otherwise.
fn answer(verdict: &Verdict) -> Response {
    let status = if verdict.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        verdict.to_string(),
    )
        .into_response()
}

async fn healthz(State(served): State<Served>) -> Response {
    match health(&served) {
        Some(health) => answer(&health.liveness()),
        // The process answers; no worker has started yet.
        None => (StatusCode::OK, "ok process: no worker yet\n").into_response(),
    }
}

async fn readyz(State(served): State<Served>) -> Response {
    match health(&served) {
        Some(health) => answer(&health.readiness()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "FAIL worker: not started\n",
        )
            .into_response(),
    }
}
