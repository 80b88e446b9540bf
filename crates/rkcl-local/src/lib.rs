//! Kinesis and DynamoDB, in process, on 127.0.0.1.
//!
//! `rkcl-local` runs two real HTTP servers inside the current tokio runtime:
//! the `ferrokinesis` Kinesis emulator and the `dynoxide` DynamoDB emulator
//! (on SQLite). Clients of the official AWS SDK for Rust talk to them exactly
//! as they talk to AWS, so rkcl's tests, its demo and users' own tests run
//! on one machine with no AWS account and nothing started by hand.
//!
//! ```no_run
//! # async fn example() -> Result<(), rkcl_local::LocalError> {
//! let local = rkcl_local::Local::start().await?;
//! local
//!     .kinesis_client()
//!     .create_stream()
//!     .stream_name("orders")
//!     .shard_count(4)
//!     .send()
//!     .await
//!     .expect("the local Kinesis creates streams");
//! assert!(local.kinesis_endpoint().starts_with("http://127.0.0.1:"));
//! local.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! With [`LocalBuilder::faults`], both services answer through a fault
//! layer that throttles, fails, delays or cuts requests at the rates of a
//! [`FaultPlan`], with seeded random numbers so a failing run replays; see
//! [`FaultPlan`] for the spec and [`Local::fault_counts`] for what was
//! injected:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let local = rkcl_local::Local::builder()
//!     .faults("kinesis.GetRecords:throttle=2%,dynamodb.UpdateItem:error=1%,*:latency=0..300ms".parse()?)
//!     .fault_seed(42)
//!     .start()
//!     .await?;
//! // ... run the application against local.kinesis_client() ...
//! println!("{}", local.fault_counts());
//! # Ok(())
//! # }
//! ```
//!
//! With the `testkit` feature, [`testkit`] adds helpers for tests on these
//! servers (streams, records, raw reads, waiting) and the conformance suite
//! of rkcl's `LeaseStore` trait.
//!
//! Where the emulators differ from AWS (no `ChildShards` from GetRecords, no
//! read throttling, `ShardFilter` ignored) is written down in the project's
//! ARCHITECTURE.md; rkcl never depends on those differences.
// Library code never panics on data from the network or a user, and never
// prints: these lints hold it to that (tests may unwrap).
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::print_stdout,
        clippy::print_stderr
    )
)]

mod faults;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use faults::{
    DEFAULT_FAULT_SEED, FaultCounts, FaultKind, FaultMeter, FaultPlan, FaultSpecError,
    FaultSpecErrorKind, RequestCounts, Service,
};

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The region the local clients are configured for.
pub const REGION: &str = "us-east-1";

/// The largest Kinesis request body served: a PutRecords call carries up
/// to 5 MiB of data and keys, about 6.7 MiB once base64-encoded in JSON
/// (the HTTP framework's default limit of 2 MB would refuse it).
const KINESIS_BODY_LIMIT: usize = 8 << 20;
/// The static access key id of the local clients.
pub const ACCESS_KEY_ID: &str = "rkcl-local";
/// The static secret key of the local clients.
pub const SECRET_ACCESS_KEY: &str = "rkcl-local";
/// How long [`LocalBuilder::start`] waits for both servers to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Local::shutdown`] waits for connections to drain.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the local servers could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// A port could not be bound (already in use, or not allowed).
    #[error("could not listen for {service} on {addr}: {source}")]
    Bind {
        /// `Kinesis` or `DynamoDB`.
        service: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The data directory could not be created or opened.
    #[error("could not use data directory {path}: {message}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A server did not answer within [`READY_TIMEOUT`].
    #[error("{service} did not answer within {timeout:?}: {message}")]
    NotReady {
        /// `Kinesis` or `DynamoDB`.
        service: &'static str,
        /// How long we waited.
        timeout: Duration,
        /// The last error of the probe request.
        message: String,
    },
}

/// Settings of the embedded Kinesis.
#[derive(Clone, Debug)]
pub struct KinesisSettings {
    /// How long CreateStream keeps a stream `CREATING`. Default: 50 ms.
    pub create_stream_delay: Duration,
    /// How long DeleteStream keeps a stream `DELETING`. Default: 50 ms.
    pub delete_stream_delay: Duration,
    /// How long SplitShard, MergeShards and UpdateShardCount keep a stream
    /// `UPDATING`. Default: 50 ms.
    pub update_stream_delay: Duration,
    /// The most shards of all streams together, closed ones included.
    /// Default: 1,000.
    pub shard_limit: u32,
    /// How long a shard iterator stays valid. Default: 300 s, as on AWS.
    pub iterator_ttl: Duration,
    /// Throttle writes above 1 MiB/s or 1,000 records/s per shard, as AWS
    /// does. Default: off.
    pub enforce_write_limits: bool,
    /// How long a SubscribeToShard session lasts before the server ends it
    /// (the event stream simply ends; the subscriber opens a new one after
    /// its last continuation sequence number). Default: 300 s, as on AWS;
    /// tests make it short to cross many session ends.
    pub subscription_session: Duration,
}

impl Default for KinesisSettings {
    fn default() -> Self {
        Self {
            create_stream_delay: Duration::from_millis(50),
            delete_stream_delay: Duration::from_millis(50),
            update_stream_delay: Duration::from_millis(50),
            shard_limit: 1_000,
            iterator_ttl: Duration::from_secs(300),
            enforce_write_limits: false,
            subscription_session: Duration::from_secs(300),
        }
    }
}

/// Configures and starts [`Local`].
#[derive(Clone, Debug, Default)]
pub struct LocalBuilder {
    kinesis_port: u16,
    dynamodb_port: u16,
    data_dir: Option<PathBuf>,
    kinesis: KinesisSettings,
    faults: Option<FaultPlan>,
    fault_seed: Option<u64>,
    count_requests: bool,
}

impl LocalBuilder {
    /// The Kinesis port on 127.0.0.1. Default: 0, an ephemeral port.
    pub fn kinesis_port(mut self, port: u16) -> Self {
        self.kinesis_port = port;
        self
    }

    /// The DynamoDB port on 127.0.0.1. Default: 0, an ephemeral port.
    pub fn dynamodb_port(mut self, port: u16) -> Self {
        self.dynamodb_port = port;
        self
    }

    /// Keep data in this directory (DynamoDB in `dynamodb.sqlite`, Kinesis
    /// in `kinesis/`) so it survives a restart. Default: none, everything in
    /// memory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Settings of the embedded Kinesis. Default: [`KinesisSettings::default`].
    pub fn kinesis_settings(mut self, settings: KinesisSettings) -> Self {
        self.kinesis = settings;
        self
    }

    /// Serve both services through the fault layer, injecting the faults of
    /// `plan` (see [`FaultPlan`]). An empty plan puts the layer in place and
    /// injects nothing. Default: no fault layer.
    pub fn faults(mut self, plan: FaultPlan) -> Self {
        self.faults = Some(plan);
        self
    }

    /// Count every request each service gets, by operation (see
    /// [`Local::request_counts`]). This puts the fault layer in front of
    /// both services, with no faults unless [`faults`](Self::faults) gives
    /// some: one more local hop per request. Default: off.
    pub fn count_requests(mut self) -> Self {
        self.count_requests = true;
        self
    }

    /// The seed of the fault layer's random numbers: the same seed, plan and
    /// calls give the same faults. Default: [`DEFAULT_FAULT_SEED`].
    pub fn fault_seed(mut self, seed: u64) -> Self {
        self.fault_seed = Some(seed);
        self
    }

    /// Binds both ports, starts both servers on the current tokio runtime
    /// and waits until both answer a request.
    ///
    /// # Errors
    ///
    /// [`LocalError::Bind`] when a port is taken, [`LocalError::DataDir`]
    /// when the data directory cannot be used, [`LocalError::NotReady`] when
    /// a server does not answer within [`READY_TIMEOUT`].
    pub async fn start(self) -> Result<Local, LocalError> {
        let kinesis_listener = bind("Kinesis", self.kinesis_port).await?;
        let dynamodb_listener = bind("DynamoDB", self.dynamodb_port).await?;
        let kinesis_addr = local_addr("Kinesis", &kinesis_listener, self.kinesis_port)?;
        let dynamodb_addr = local_addr("DynamoDB", &dynamodb_listener, self.dynamodb_port)?;

        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let faults_asked = self.faults.is_some();
        let plan = match self.faults {
            Some(plan) => Some(plan),
            None if self.count_requests => Some(FaultPlan::default()),
            None => None,
        };
        let injector = plan.map(|plan| {
            let seed = self.fault_seed.unwrap_or(DEFAULT_FAULT_SEED);
            Arc::new(faults::Injector::new(plan, seed))
        });
        let kinesis_listener = faults::interpose(
            injector.as_ref(),
            Service::Kinesis,
            kinesis_listener,
            &shutdown,
            &mut tasks,
        )
        .await?;
        let dynamodb_listener = faults::interpose(
            injector.as_ref(),
            Service::DynamoDb,
            dynamodb_listener,
            &shutdown,
            &mut tasks,
        )
        .await?;
        // Readiness is probed on the servers themselves, past the faults.
        let kinesis_served = local_addr("Kinesis", &kinesis_listener, 0)?;
        let dynamodb_served = local_addr("DynamoDB", &dynamodb_listener, 0)?;

        let database = open_database(self.data_dir.as_deref())?;
        let store_options = store_options(&self.kinesis, self.data_dir.as_deref())?;

        let (router, _store) = ferrokinesis::create_app(store_options);
        let router = router.layer(axum::extract::DefaultBodyLimit::max(KINESIS_BODY_LIMIT));
        let token = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(kinesis_listener, router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "the local Kinesis server stopped");
            }
        });
        let token = shutdown.clone();
        tasks.spawn(async move {
            let served = dynoxide::server::serve_with_shutdown(
                dynamodb_listener,
                database,
                token.cancelled_owned(),
            )
            .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "the local DynamoDB server stopped");
            }
        });

        let local = Local {
            kinesis_endpoint: format!("http://{kinesis_addr}"),
            dynamodb_endpoint: format!("http://{dynamodb_addr}"),
            kinesis: kinesis_client(&format!("http://{kinesis_addr}")),
            dynamodb: dynamodb_client(&format!("http://{dynamodb_addr}")),
            shutdown,
            tasks,
            faults: injector,
            faults_asked,
        };
        if local.faults.is_some() {
            Local::wait_until_ready(
                &kinesis_client(&format!("http://{kinesis_served}")),
                &dynamodb_client(&format!("http://{dynamodb_served}")),
            )
            .await?;
        } else {
            Local::wait_until_ready(&local.kinesis, &local.dynamodb).await?;
        }
        tracing::info!(
            kinesis = %local.kinesis_endpoint,
            dynamodb = %local.dynamodb_endpoint,
            "local Kinesis and DynamoDB are up"
        );
        Ok(local)
    }
}

/// Running local Kinesis and DynamoDB servers and clients for them.
///
/// Dropping it stops both servers; [`shutdown`](Self::shutdown) also waits
/// for them to finish.
#[derive(Debug)]
pub struct Local {
    kinesis_endpoint: String,
    dynamodb_endpoint: String,
    kinesis: aws_sdk_kinesis::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    /// The layer in front of the services: for faults, or only to count.
    faults: Option<Arc<faults::Injector>>,
    /// Whether faults were asked for (not only counting).
    faults_asked: bool,
}

impl Local {
    /// Starts both servers in memory on ephemeral ports.
    ///
    /// # Errors
    ///
    /// As [`LocalBuilder::start`].
    pub async fn start() -> Result<Self, LocalError> {
        Self::builder().start().await
    }

    /// A builder for ports, a data directory and Kinesis settings.
    pub fn builder() -> LocalBuilder {
        LocalBuilder::default()
    }

    /// The Kinesis endpoint, `http://127.0.0.1:PORT`.
    pub fn kinesis_endpoint(&self) -> &str {
        &self.kinesis_endpoint
    }

    /// The DynamoDB endpoint, `http://127.0.0.1:PORT`.
    pub fn dynamodb_endpoint(&self) -> &str {
        &self.dynamodb_endpoint
    }

    /// A Kinesis client for the local server (static credentials, us-east-1).
    pub fn kinesis_client(&self) -> aws_sdk_kinesis::Client {
        self.kinesis.clone()
    }

    /// A DynamoDB client for the local server (static credentials, us-east-1).
    pub fn dynamodb_client(&self) -> aws_sdk_dynamodb::Client {
        self.dynamodb.clone()
    }

    /// How many faults the fault layer has injected so far, per service,
    /// operation and kind; empty without a fault layer.
    pub fn fault_counts(&self) -> FaultCounts {
        self.fault_meter().counts()
    }

    /// A handle that reads the same counts as
    /// [`fault_counts`](Self::fault_counts) and can be kept apart from this
    /// value.
    pub fn fault_meter(&self) -> FaultMeter {
        FaultMeter::new(self.faults.clone())
    }

    /// How many requests each service got so far, by operation; empty
    /// unless [`LocalBuilder::count_requests`] or
    /// [`LocalBuilder::faults`] put the layer that counts them in place.
    pub fn request_counts(&self) -> RequestCounts {
        self.fault_meter().requests()
    }

    /// The seed of the fault layer, `None` without faults.
    pub fn fault_seed(&self) -> Option<u64> {
        self.faults
            .as_ref()
            .filter(|_| self.faults_asked)
            .map(|injector| injector.seed())
    }

    /// The fault plan being injected, `None` without faults.
    pub fn fault_plan(&self) -> Option<&FaultPlan> {
        self.faults
            .as_ref()
            .filter(|_| self.faults_asked)
            .map(|injector| injector.plan())
    }

    /// Stops both servers and waits (up to [`SHUTDOWN_TIMEOUT`]) for open
    /// connections to finish.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        let joined = tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            tracing::warn!("local servers did not drain in time; aborting their connections");
            self.tasks.abort_all();
        }
    }

    /// Waits until both servers answer, asking them through these clients.
    async fn wait_until_ready(
        probe_kinesis: &aws_sdk_kinesis::Client,
        probe_dynamodb: &aws_sdk_dynamodb::Client,
    ) -> Result<(), LocalError> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let kinesis = async {
            loop {
                match probe_kinesis.list_streams().send().await {
                    Ok(_) => return Ok(()),
                    Err(err) if tokio::time::Instant::now() >= deadline => {
                        return Err(not_ready("Kinesis", &err));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        };
        let dynamodb = async {
            loop {
                match probe_dynamodb.list_tables().send().await {
                    Ok(_) => return Ok(()),
                    Err(err) if tokio::time::Instant::now() >= deadline => {
                        return Err(not_ready("DynamoDB", &err));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        };
        tokio::try_join!(kinesis, dynamodb).map(|_| ())
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn not_ready(service: &'static str, err: &dyn std::fmt::Debug) -> LocalError {
    LocalError::NotReady {
        service,
        timeout: READY_TIMEOUT,
        message: format!("{err:?}"),
    }
}

async fn bind(service: &'static str, port: u16) -> Result<TcpListener, LocalError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpListener::bind(addr)
        .await
        .map_err(|source| LocalError::Bind {
            service,
            addr,
            source,
        })
}

fn local_addr(
    service: &'static str,
    listener: &TcpListener,
    port: u16,
) -> Result<SocketAddr, LocalError> {
    listener.local_addr().map_err(|source| LocalError::Bind {
        service,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        source,
    })
}

fn open_database(data_dir: Option<&Path>) -> Result<dynoxide::Database, LocalError> {
    let data_dir_error = |path: &Path, message: String| LocalError::DataDir {
        path: path.to_owned(),
        message,
    };
    match data_dir {
        None => dynoxide::Database::memory().map_err(|e| LocalError::DataDir {
            path: PathBuf::from(":memory:"),
            message: e.to_string(),
        }),
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| data_dir_error(dir, e.to_string()))?;
            let file = dir.join("dynamodb.sqlite");
            let path = file
                .to_str()
                .ok_or_else(|| data_dir_error(dir, "the path is not valid UTF-8".into()))?;
            dynoxide::Database::new(path).map_err(|e| data_dir_error(&file, e.to_string()))
        }
    }
}

fn store_options(
    settings: &KinesisSettings,
    data_dir: Option<&Path>,
) -> Result<ferrokinesis::store::StoreOptions, LocalError> {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let durable = match data_dir {
        None => None,
        Some(dir) => {
            let state_dir = dir.join("kinesis");
            std::fs::create_dir_all(&state_dir).map_err(|e| LocalError::DataDir {
                path: state_dir.clone(),
                message: e.to_string(),
            })?;
            Some(ferrokinesis::store::DurableStateOptions {
                state_dir,
                snapshot_interval_secs: 30,
                max_retained_bytes: None,
            })
        }
    };
    Ok(ferrokinesis::store::StoreOptions {
        create_stream_ms: millis(settings.create_stream_delay),
        delete_stream_ms: millis(settings.delete_stream_delay),
        update_stream_ms: millis(settings.update_stream_delay),
        shard_limit: settings.shard_limit,
        iterator_ttl_seconds: settings.iterator_ttl.as_secs().max(1),
        enforce_limits: settings.enforce_write_limits,
        subscribe_to_shard_session_ms: millis(settings.subscription_session).max(1),
        durable,
        aws_region: REGION.to_owned(),
        ..ferrokinesis::store::StoreOptions::default()
    })
}

fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "rkcl-local")
}

/// A Kinesis client for a local endpoint: static credentials, us-east-1.
pub fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new(REGION))
        .credentials_provider(credentials())
        .endpoint_url(endpoint)
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

/// A DynamoDB client for a local endpoint: static credentials, us-east-1.
pub fn dynamodb_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new(REGION))
        .credentials_provider(credentials())
        .endpoint_url(endpoint)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}
