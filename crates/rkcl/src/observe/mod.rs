//! Seeing a worker from outside: its metrics exported, its health served.
//!
//! [`Telemetry::builder`] installs one [`MetricsRegistry`] as the process's
//! `metrics` recorder (every metric of the [catalogue](crate::metrics),
//! described with its unit and help text) and starts what the builder was
//! given:
//!
//! - with the `prometheus` feature, an HTTP listener
//!   (`TelemetryBuilder::listen`) serving `/metrics` in the
//!   Prometheus text format (`prometheus.rs`), and `/healthz` and `/readyz`
//!   from the worker's [`Health`] (`http.rs`);
//! - with the `cloudwatch` feature, a publisher of the Java KCL's metric
//!   names and dimensions to CloudWatch every 10 s (`cloudwatch.rs`);
//! - with the `otlp` feature, an OpenTelemetry exporter pushing OTLP/HTTP
//!   every 10 s (`otlp.rs`).
//!
//! ```no_run
//! # #[cfg(feature = "prometheus")]
//! # #[allow(dead_code)]
//! # async fn run(scheduler: rkcl::Scheduler) -> rkcl::Result<()> {
//! use rkcl::observe::Telemetry;
//! let telemetry = Telemetry::builder()
//!     .label("worker", scheduler.worker_id())
//!     .listen("127.0.0.1:9464".parse().unwrap())
//!     .install()
//!     .await?;
//! telemetry.watch(scheduler.health());
//! // ...
//! telemetry.shutdown().await;
//! # Ok(()) }
//! ```

#[cfg(feature = "cloudwatch")]
pub mod cloudwatch;
#[cfg(feature = "prometheus")]
mod http;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod prometheus;
mod registry;

use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::health::Health;

pub use registry::{
    BUCKETS, Description, HistogramSnapshot, MetricsRegistry, Sample, SampleValue, Window,
};

/// Builds and installs [`Telemetry`].
#[derive(Debug, Default)]
#[must_use]
pub struct TelemetryBuilder {
    labels: Vec<(String, String)>,
    #[cfg(feature = "prometheus")]
    listen: Option<std::net::SocketAddr>,
    #[cfg(feature = "cloudwatch")]
    cloudwatch: Option<cloudwatch::CloudWatchExporter>,
    #[cfg(feature = "otlp")]
    otlp: Option<otlp::OtlpExporter>,
}

/// Installed telemetry: the registry every metric goes to, and the
/// listener and exporters it runs. Stop it with
/// [`shutdown`](Self::shutdown), which publishes what is buffered.
#[derive(Debug)]
pub struct Telemetry {
    registry: MetricsRegistry,
    health: Arc<Mutex<Option<Health>>>,
    local_addr: Option<std::net::SocketAddr>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Telemetry {
    /// A builder with nothing configured.
    pub fn builder() -> TelemetryBuilder {
        TelemetryBuilder::default()
    }

    /// The registry every metric of this process goes to.
    pub fn registry(&self) -> &MetricsRegistry {
        &self.registry
    }

    /// The address the HTTP listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.local_addr
    }

    /// Serves `health` at `/healthz` and `/readyz` from now on (before,
    /// `/readyz` answers that no worker has started).
    pub fn watch(&self, health: Health) {
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = Some(health);
    }

    /// Stops the listener and the exporters; the exporters publish what
    /// they have first.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl TelemetryBuilder {
    /// Adds label `name` with `value` to every series that has no label of
    /// that name (for example `worker`, so every series names its worker).
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((name.into(), value.into()));
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr` (Prometheus'
    /// conventional port for it is 9464).
    #[cfg(feature = "prometheus")]
    pub fn listen(mut self, addr: std::net::SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Publishes to CloudWatch with `exporter`.
    #[cfg(feature = "cloudwatch")]
    pub fn cloudwatch(mut self, exporter: cloudwatch::CloudWatchExporter) -> Self {
        self.cloudwatch = Some(exporter);
        self
    }

    /// Pushes OTLP with `exporter`.
    #[cfg(feature = "otlp")]
    pub fn otlp(mut self, exporter: otlp::OtlpExporter) -> Self {
        self.otlp = Some(exporter);
        self
    }

    /// Installs the registry as the process's `metrics` recorder, describes
    /// the catalogue, binds the listener and starts the exporters.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a recorder is already installed in this
    /// process; [`Error::Io`](crate::error::Error) when the listener cannot
    /// bind.
    pub async fn install(self) -> Result<Telemetry> {
        let registry = MetricsRegistry::with_labels(self.labels.clone());
        metrics::set_global_recorder(registry.clone()).map_err(|_| {
            Error::Config("a metrics recorder is already installed in this process".into())
        })?;
        crate::metrics::describe_all();
        self.start(registry).await
    }

    /// Starts the listener and exporters over `registry` without installing
    /// it (for a registry installed otherwise, or used as a local
    /// recorder).
    ///
    /// # Errors
    ///
    /// As [`install`](Self::install), except for the recorder.
    pub async fn start(self, registry: MetricsRegistry) -> Result<Telemetry> {
        // Mutated only by the features that start something.
        #[allow(unused_mut)]
        let mut telemetry = Telemetry {
            registry,
            health: Arc::default(),
            local_addr: None,
            cancel: CancellationToken::new(),
            tasks: JoinSet::new(),
        };
        #[cfg(feature = "prometheus")]
        if let Some(addr) = self.listen {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|err| {
                Error::Config(format!(
                    "cannot listen on {addr} for metrics and health: {err}"
                ))
            })?;
            telemetry.local_addr = listener.local_addr().ok();
            tracing::info!(addr = ?telemetry.local_addr, "serving /metrics, /healthz and /readyz");
            telemetry.tasks.spawn(http::serve(
                listener,
                telemetry.registry.clone(),
                telemetry.health.clone(),
                telemetry.cancel.clone(),
            ));
        }
        #[cfg(feature = "cloudwatch")]
        if let Some(exporter) = self.cloudwatch {
            telemetry
                .tasks
                .spawn(exporter.run(telemetry.registry.clone(), telemetry.cancel.clone()));
        }
        #[cfg(feature = "otlp")]
        if let Some(exporter) = self.otlp {
            telemetry
                .tasks
                .spawn(exporter.run(telemetry.registry.clone(), telemetry.cancel.clone()));
        }
        Ok(telemetry)
    }
}
