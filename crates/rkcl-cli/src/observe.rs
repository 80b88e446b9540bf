//! How a worker command is seen from outside: `--metrics` exporters (with
//! the health endpoints on the Prometheus listener) and the stalled-shard
//! watchdog's flags.

use std::time::Duration;

use anyhow::{Context, bail};
use rkcl::observe::Telemetry;
use rkcl::watchdog::{StallAction, WatchdogConfig};

use crate::aws::AwsArgs;

/// The default address of `--metrics prometheus`.
const PROMETHEUS_ADDR: &str = "127.0.0.1:9464";
/// The default endpoint of `--metrics otlp`.
const OTLP_ENDPOINT: &str = "http://127.0.0.1:4318";

/// What to do about a stalled processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnStalledProcessor {
    /// Warn and count.
    Warn,
    /// Stop the shard's consumer and release its lease.
    ReleaseLease,
}

/// What to do about a stalled reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnStalledReader {
    /// Warn and count.
    Warn,
    /// Open the reader again after the last record delivered.
    RestartReader,
}

/// The observing flags of a worker command.
#[derive(Debug, clap::Args)]
pub(crate) struct ObserveArgs {
    /// Export metrics; repeat for several. `prometheus[:ADDR]` serves
    /// /metrics, /healthz and /readyz (default 127.0.0.1:9464);
    /// `cloudwatch[:LEVEL]` publishes the Java KCL's metric names under the
    /// application name every 10 s (LEVEL: NONE, SUMMARY or DETAILED, the
    /// default); `otlp[:ENDPOINT]` pushes OTLP/HTTP (default
    /// http://127.0.0.1:4318).
    #[arg(long = "metrics", value_name = "EXPORTER")]
    metrics: Vec<String>,
    /// A processor call that has not returned for this long is a stall.
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    stall_processor_after: humantime::Duration,
    /// A reader that brought nothing for this long is a stall.
    #[arg(long, default_value = "2m", value_name = "DURATION")]
    stall_reader_after: humantime::Duration,
    /// A child shard that has waited this long for its parents is a stall.
    #[arg(long, default_value = "30m", value_name = "DURATION")]
    stall_parents_after: humantime::Duration,
    /// What to do about a stalled processor.
    #[arg(long, value_enum, default_value_t = OnStalledProcessor::Warn)]
    on_stalled_processor: OnStalledProcessor,
    /// What to do about a stalled reader.
    #[arg(long, value_enum, default_value_t = OnStalledReader::RestartReader)]
    on_stalled_reader: OnStalledReader,
}

/// One `--metrics` exporter.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Exporter {
    Prometheus(std::net::SocketAddr),
    CloudWatch(String),
    Otlp(String),
}

fn parse_exporter(spec: &str) -> anyhow::Result<Exporter> {
    let (kind, arg) = match spec.split_once(':') {
        Some((kind, arg)) => (kind, Some(arg)),
        None => (spec, None),
    };
    Ok(match kind {
        "prometheus" => Exporter::Prometheus(
            arg.unwrap_or(PROMETHEUS_ADDR)
                .parse()
                .with_context(|| format!("--metrics {spec}: expected prometheus:HOST:PORT"))?,
        ),
        "cloudwatch" => Exporter::CloudWatch(arg.unwrap_or("DETAILED").to_owned()),
        "otlp" => Exporter::Otlp(arg.unwrap_or(OTLP_ENDPOINT).to_owned()),
        _ => bail!(
            "--metrics {spec}: expected prometheus[:ADDR], cloudwatch[:LEVEL] or otlp[:ENDPOINT]"
        ),
    })
}

impl ObserveArgs {
    /// The watchdog these flags ask for.
    pub(crate) fn watchdog(&self) -> anyhow::Result<WatchdogConfig> {
        Ok(WatchdogConfig::builder()
            .processor_timeout(self.stall_processor_after.into())
            .reader_timeout(self.stall_reader_after.into())
            .parents_timeout(self.stall_parents_after.into())
            .on_stalled_processor(match self.on_stalled_processor {
                OnStalledProcessor::Warn => StallAction::Warn,
                OnStalledProcessor::ReleaseLease => StallAction::ReleaseLease,
            })
            .on_stalled_reader(match self.on_stalled_reader {
                OnStalledReader::Warn => StallAction::Warn,
                OnStalledReader::RestartReader => StallAction::RestartReader,
            })
            .build()?)
    }

    /// Installs the exporters asked for, labelling every series with
    /// `worker_id`; `None` without `--metrics`.
    pub(crate) async fn start(
        &self,
        aws: &AwsArgs,
        app: &str,
        worker_id: &str,
    ) -> anyhow::Result<Option<Telemetry>> {
        if self.metrics.is_empty() {
            return Ok(None);
        }
        let mut builder = Telemetry::builder().label("worker", worker_id);
        for spec in &self.metrics {
            builder = match parse_exporter(spec)? {
                Exporter::Prometheus(addr) => prometheus(builder, addr)?,
                Exporter::CloudWatch(level) => cloudwatch(builder, aws, app, &level).await?,
                Exporter::Otlp(endpoint) => otlp(builder, app, &endpoint)?,
            };
        }
        Ok(Some(builder.install().await?))
    }
}

#[cfg(feature = "prometheus")]
fn prometheus(
    builder: rkcl::observe::TelemetryBuilder,
    addr: std::net::SocketAddr,
) -> anyhow::Result<rkcl::observe::TelemetryBuilder> {
    Ok(builder.listen(addr))
}

#[cfg(not(feature = "prometheus"))]
fn prometheus(
    _: rkcl::observe::TelemetryBuilder,
    _: std::net::SocketAddr,
) -> anyhow::Result<rkcl::observe::TelemetryBuilder> {
    bail!("--metrics prometheus: this rkcl was built without the prometheus feature")
}

#[cfg(feature = "cloudwatch")]
async fn cloudwatch(
    builder: rkcl::observe::TelemetryBuilder,
    aws: &AwsArgs,
    app: &str,
    level: &str,
) -> anyhow::Result<rkcl::observe::TelemetryBuilder> {
    use rkcl::observe::cloudwatch::{CloudWatchConfig, CloudWatchExporter, MetricsLevel};
    let level: MetricsLevel = level.parse()?;
    let config = CloudWatchConfig::new(app).level(level);
    Ok(builder.cloudwatch(CloudWatchExporter::new(aws.cloudwatch().await?, config)))
}

#[cfg(not(feature = "cloudwatch"))]
async fn cloudwatch(
    _: rkcl::observe::TelemetryBuilder,
    _: &AwsArgs,
    _: &str,
    _: &str,
) -> anyhow::Result<rkcl::observe::TelemetryBuilder> {
    bail!("--metrics cloudwatch: this rkcl was built without the cloudwatch feature")
}

#[cfg(feature = "otlp")]
fn otlp(
    builder: rkcl::observe::TelemetryBuilder,
    app: &str,
    endpoint: &str,
) -> anyhow::Result<rkcl::observe::TelemetryBuilder> {
    use rkcl::observe::otlp::{OtlpConfig, OtlpExporter};
    let exporter = OtlpExporter::new(OtlpConfig::new(endpoint).service_name(app))?;
    Ok(builder.otlp(exporter))
}

#[cfg(not(feature = "otlp"))]
fn otlp(
    _: rkcl::observe::TelemetryBuilder,
    _: &str,
    _: &str,
) -> anyhow::Result<rkcl::observe::TelemetryBuilder> {
    bail!("--metrics otlp: this rkcl was built without the otlp feature")
}

/// How long a worker command waits for exporters to publish at exit.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exporters_take_their_defaults_and_say_what_is_wrong() {
        assert_eq!(
            parse_exporter("prometheus").unwrap(),
            Exporter::Prometheus(PROMETHEUS_ADDR.parse().unwrap())
        );
        assert_eq!(
            parse_exporter("prometheus:0.0.0.0:9000").unwrap(),
            Exporter::Prometheus("0.0.0.0:9000".parse().unwrap())
        );
        assert_eq!(
            parse_exporter("cloudwatch:SUMMARY").unwrap(),
            Exporter::CloudWatch("SUMMARY".into())
        );
        assert_eq!(
            parse_exporter("otlp:http://collector:4318").unwrap(),
            Exporter::Otlp("http://collector:4318".into())
        );
        let err = parse_exporter("statsd").unwrap_err().to_string();
        assert!(err.contains("prometheus[:ADDR]"), "{err}");
        assert!(parse_exporter("prometheus:nowhere").is_err());
    }
}
