//! The MultiLangDaemon's properties, turned into rkcl's typed config: each
//! key the Java daemon reads is honoured, served another way (credentials
//! come from the standard AWS chain) or named in one warning; a missing
//! required key or a bad value is an error naming the key.

use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rkcl::retrieval::{FanOutConfig, PollingConfig, Retrieval};
use rkcl::{InitialPosition, SchedulerConfig};

use super::properties::Properties;

/// How long the children may take to finish at shutdown when
/// `shutdownGraceMillis` is not set.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The lease duration when `failoverTimeMillis` is not set (the Java
/// KCL's default).
pub(crate) const DEFAULT_FAILOVER_TIME: Duration = Duration::from_secs(10);

/// The polling keys: any of them makes `retrievalMode = DEFAULT` (or no
/// `retrievalMode`) poll, as in the Java KCL.
const POLLING_KEYS: [&str; 2] = ["maxRecords", "idleTimeBetweenReadsInMillis"];

/// Keys read by the daemon that need no setting here.
const SILENT_KEYS: [&str; 2] = [
    // Only part of the Java KCL's user agent.
    "processingLanguage",
    // `false` is what rkcl does; `true` is checked below.
    "callProcessRecordsEvenForEmptyRecordList",
];

/// Every key this module reads.
const KNOWN_KEYS: [&str; 20] = [
    "executableName",
    "applicationName",
    "streamName",
    "streamArn",
    "regionName",
    "kinesisEndpoint",
    "dynamoDBEndpoint",
    "initialPositionInStream",
    "initialPositionInStreamExtended",
    "workerId",
    "tableName",
    "failoverTimeMillis",
    "maxLeasesForWorker",
    "maxRecords",
    "idleTimeBetweenReadsInMillis",
    "timeoutInSeconds",
    "shutdownGraceMillis",
    "retrievalMode",
    "consumerName",
    "consumerArn",
];

/// What the daemon runs, validated.
#[derive(Debug)]
pub(crate) struct MultiLangConfig {
    /// The child's program and its arguments (`executableName` split on
    /// spaces).
    pub(crate) command: Vec<String>,
    /// The lease table (`tableName`, default the application name).
    pub(crate) table_name: String,
    /// `regionName`.
    pub(crate) region: Option<String>,
    /// `kinesisEndpoint`.
    pub(crate) kinesis_endpoint: Option<String>,
    /// `dynamoDBEndpoint`.
    pub(crate) dynamodb_endpoint: Option<String>,
    /// How long one call to a child may take (`timeoutInSeconds`); none
    /// when unset, as in the Java KCL.
    pub(crate) call_timeout: Option<Duration>,
    /// How long the children may take to finish at shutdown
    /// (`shutdownGraceMillis`).
    pub(crate) shutdown_grace: Duration,
    /// The worker's config.
    pub(crate) scheduler: SchedulerConfig,
    /// Keys not implemented by rkcl, one warning each.
    pub(crate) ignored: Vec<String>,
    /// Keys served by the standard AWS credential chain.
    pub(crate) credential_keys: Vec<String>,
}

impl MultiLangConfig {
    /// Validates `properties`.
    ///
    /// # Errors
    ///
    /// A missing required key or a value that does not parse or is out of
    /// range, naming the key.
    pub(crate) fn from_properties(properties: &Properties) -> anyhow::Result<Self> {
        let get = |key: &str| {
            properties
                .get(key)
                .map(|value| value.trim())
                .filter(|value| !value.is_empty())
        };
        let command: Vec<String> = get("executableName")
            .context("the properties lack executableName (the command each shard runs)")?
            .split(' ')
            .filter(|part| !part.is_empty())
            .map(str::to_owned)
            .collect();
        let application = get("applicationName")
            .context("the properties lack applicationName")?
            .to_owned();
        let stream = get("streamArn")
            .or_else(|| get("streamName"))
            .context("the properties lack streamName (or streamArn)")?;

        let mut builder = SchedulerConfig::builder(&application, stream)
            .lease_duration(
                millis(properties, "failoverTimeMillis")?.unwrap_or(DEFAULT_FAILOVER_TIME),
            )
            .initial_position(initial_position(
                get("initialPositionInStream"),
                get("initialPositionInStreamExtended"),
            )?)
            .retrieval(retrieval(properties)?);
        if let Some(worker) = get("workerId") {
            builder = builder.worker_id(worker);
        }
        // Zero or less means no limit, as in the Java KCL.
        if let Some(max) = number(properties, "maxLeasesForWorker")?
            && max > 0
        {
            builder = builder.max_leases_per_worker(
                usize::try_from(max).context("maxLeasesForWorker is too large")?,
            );
        }
        let scheduler = builder
            .build()
            .context("the properties do not make a valid worker")?;

        let call_timeout = match number(properties, "timeoutInSeconds")? {
            None => None,
            Some(seconds) => match u64::try_from(seconds) {
                Ok(seconds) if seconds > 0 => Some(Duration::from_secs(seconds)),
                _ => bail!("timeoutInSeconds must be a positive number of seconds, got {seconds}"),
            },
        };
        let shutdown_grace =
            millis(properties, "shutdownGraceMillis")?.unwrap_or(DEFAULT_SHUTDOWN_GRACE);

        let mut ignored = Vec::new();
        let mut credential_keys = Vec::new();
        for key in properties.keys() {
            if key
                .to_ascii_lowercase()
                .starts_with("awscredentialsprovider")
            {
                credential_keys.push(key.clone());
            } else if !KNOWN_KEYS.contains(&key.as_str()) && !SILENT_KEYS.contains(&key.as_str()) {
                ignored.push(key.clone());
            }
        }
        if boolean(properties, "callProcessRecordsEvenForEmptyRecordList")? == Some(true) {
            ignored.push("callProcessRecordsEvenForEmptyRecordList".to_owned());
        }

        Ok(Self {
            command,
            table_name: get("tableName").unwrap_or(&application).to_owned(),
            region: get("regionName").map(str::to_owned),
            kinesis_endpoint: get("kinesisEndpoint").map(endpoint),
            dynamodb_endpoint: get("dynamoDBEndpoint").map(endpoint),
            call_timeout,
            shutdown_grace,
            scheduler,
            ignored,
            credential_keys,
        })
    }
}

/// An endpoint as a URL: the Java KCL also takes a bare host.
fn endpoint(value: &str) -> String {
    if value.contains("://") {
        value.to_owned()
    } else {
        format!("https://{value}")
    }
}

fn number(properties: &Properties, key: &str) -> anyhow::Result<Option<i64>> {
    properties
        .get(key)
        .map(|value| value.trim())
        .filter(|value| !value.is_empty())
        .map(|value| {
            value
                .parse::<i64>()
                .with_context(|| format!("{key} must be a whole number, got {value:?}"))
        })
        .transpose()
}

fn millis(properties: &Properties, key: &str) -> anyhow::Result<Option<Duration>> {
    match number(properties, key)? {
        Some(value) => match u64::try_from(value) {
            Ok(value) if value > 0 => Ok(Some(Duration::from_millis(value))),
            _ => bail!("{key} must be a positive number of milliseconds, got {value}"),
        },
        None => Ok(None),
    }
}

fn boolean(properties: &Properties, key: &str) -> anyhow::Result<Option<bool>> {
    match properties.get(key).map(|value| value.trim()) {
        None | Some("") => Ok(None),
        Some(value) if value.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(value) if value.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(value) => bail!("{key} must be true or false, got {value:?}"),
    }
}

fn initial_position(
    position: Option<&str>,
    extended: Option<&str>,
) -> anyhow::Result<InitialPosition> {
    if let Some(seconds) = extended {
        let seconds: u64 = seconds.parse().with_context(|| {
            format!("initialPositionInStreamExtended must be epoch seconds, got {seconds:?}")
        })?;
        return Ok(InitialPosition::AtTimestamp(
            SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
        ));
    }
    Ok(match position {
        None => InitialPosition::Latest,
        Some(text) if text.eq_ignore_ascii_case("TRIM_HORIZON") => InitialPosition::TrimHorizon,
        Some(text) if text.eq_ignore_ascii_case("LATEST") => InitialPosition::Latest,
        Some(text) if text.eq_ignore_ascii_case("AT_TIMESTAMP") => {
            bail!(
                "initialPositionInStream AT_TIMESTAMP needs initialPositionInStreamExtended (epoch seconds)"
            )
        }
        Some(other) => {
            bail!("initialPositionInStream must be TRIM_HORIZON or LATEST, got {other:?}")
        }
    })
}

fn retrieval(properties: &Properties) -> anyhow::Result<Retrieval> {
    let mode = properties
        .get("retrievalMode")
        .map(|value| value.trim().to_ascii_uppercase())
        .unwrap_or_default();
    let polling = match mode.as_str() {
        "POLLING" => true,
        "FANOUT" => false,
        "" | "DEFAULT" => POLLING_KEYS.iter().any(|key| properties.contains_key(*key)),
        other => bail!("retrievalMode must be FANOUT, POLLING or DEFAULT, got {other:?}"),
    };
    if polling {
        let mut builder = PollingConfig::builder();
        if let Some(max) = number(properties, "maxRecords")? {
            builder = builder.max_records(
                u32::try_from(max)
                    .ok()
                    .filter(|max| (1..=10_000).contains(max))
                    .with_context(|| format!("maxRecords must be 1 to 10000, got {max}"))?,
            );
        }
        if let Some(idle) = millis(properties, "idleTimeBetweenReadsInMillis")? {
            builder = builder.idle_interval(idle);
        }
        Ok(Retrieval::Polling(
            builder.build().context("the polling keys are invalid")?,
        ))
    } else {
        let name = properties
            .get("consumerName")
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty());
        let arn = properties
            .get("consumerArn")
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty());
        Ok(Retrieval::FanOut(
            FanOutConfig::builder()
                .consumer_name(name)
                .consumer_arn(arn)
                .build()
                .context("the fan-out keys are invalid")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::properties::parse;
    use super::*;

    fn config(text: &str) -> anyhow::Result<MultiLangConfig> {
        MultiLangConfig::from_properties(&parse(text))
    }

    const MINIMAL: &str = "executableName = python3  app.py --flag\napplicationName = orders-app\nstreamName = orders\n";

    #[test]
    fn the_minimal_file_and_its_defaults() {
        let config = config(MINIMAL).unwrap();
        assert_eq!(config.command, ["python3", "app.py", "--flag"]);
        assert_eq!(config.table_name, "orders-app");
        assert_eq!(config.scheduler.stream.name(), "orders");
        assert_eq!(config.scheduler.initial_position, InitialPosition::Latest);
        assert!(matches!(config.scheduler.retrieval, Retrieval::FanOut(_)));
        assert_eq!(config.call_timeout, None);
        assert_eq!(config.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        assert!(config.ignored.is_empty());
    }

    #[test]
    fn every_honoured_key_lands_in_the_config() {
        let text = format!(
            "{MINIMAL}streamArn = arn:aws:kinesis:us-east-1:000000000000:stream/payments\n\
             regionName = eu-west-1\nkinesisEndpoint = localhost:4567\n\
             dynamoDBEndpoint = http://localhost:4568\ninitialPositionInStream = TRIM_HORIZON\n\
             workerId = w-1\ntableName = leases\nfailoverTimeMillis = 20000\nmaxRecords = 500\n\
             idleTimeBetweenReadsInMillis = 250\ntimeoutInSeconds = 30\nshutdownGraceMillis = 4000\n\
             maxLeasesForWorker = 7\nAwsCredentialsProvider = DefaultCredentialsProvider\n\
             AwsCredentialsProviderDynamoDB = DefaultCredentialsProvider\nmetricsLevel = NONE\n"
        );
        let config = config(&text).unwrap();
        assert_eq!(config.scheduler.stream.name(), "payments", "the ARN wins");
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            config.kinesis_endpoint.as_deref(),
            Some("https://localhost:4567")
        );
        assert_eq!(
            config.dynamodb_endpoint.as_deref(),
            Some("http://localhost:4568")
        );
        assert_eq!(
            config.scheduler.initial_position,
            InitialPosition::TrimHorizon
        );
        assert_eq!(config.scheduler.leases.worker_id, "w-1");
        assert_eq!(
            config.scheduler.leases.lease_duration,
            Duration::from_secs(20)
        );
        assert_eq!(config.scheduler.leases.max_leases, 7);
        assert_eq!(config.table_name, "leases");
        let Retrieval::Polling(polling) = &config.scheduler.retrieval else {
            panic!("polling keys choose polling");
        };
        assert_eq!(polling.max_records, 500);
        assert_eq!(polling.idle_interval, Duration::from_millis(250));
        assert_eq!(config.call_timeout, Some(Duration::from_secs(30)));
        assert_eq!(config.shutdown_grace, Duration::from_secs(4));
        assert_eq!(
            config.credential_keys,
            ["AwsCredentialsProvider", "AwsCredentialsProviderDynamoDB"]
        );
        assert_eq!(config.ignored, ["metricsLevel"]);
    }

    #[test]
    fn retrieval_mode_and_the_extended_position() {
        let fanout = config(&format!(
            "{MINIMAL}retrievalMode = FANOUT\nconsumerName = my-consumer\nmaxRecords = 100\n"
        ))
        .unwrap();
        let Retrieval::FanOut(fanout) = &fanout.scheduler.retrieval else {
            panic!("FANOUT is fan-out");
        };
        assert_eq!(fanout.consumer_name.as_deref(), Some("my-consumer"));
        let polling = config(&format!("{MINIMAL}retrievalMode = polling\n")).unwrap();
        assert!(matches!(polling.scheduler.retrieval, Retrieval::Polling(_)));
        let at = config(&format!(
            "{MINIMAL}initialPositionInStreamExtended = 1700000000\n"
        ))
        .unwrap();
        assert_eq!(
            at.scheduler.initial_position,
            InitialPosition::AtTimestamp(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
            )
        );
        let empty_list = config(&format!(
            "{MINIMAL}callProcessRecordsEvenForEmptyRecordList = true\n"
        ))
        .unwrap();
        assert_eq!(
            empty_list.ignored,
            ["callProcessRecordsEvenForEmptyRecordList"]
        );
    }

    #[test]
    fn missing_and_bad_values_name_the_key() {
        let error = |text: &str| format!("{:#}", config(text).unwrap_err());
        assert!(error("applicationName = a-app\nstreamName = s\n").contains("executableName"));
        assert!(error("executableName = x\nstreamName = s\n").contains("applicationName"));
        assert!(error("executableName = x\napplicationName = a-app\n").contains("streamName"));
        for (key, value) in [
            ("initialPositionInStream", "YESTERDAY"),
            ("failoverTimeMillis", "ten"),
            ("maxRecords", "0"),
            ("retrievalMode", "CARRIER_PIGEON"),
            ("timeoutInSeconds", "0"),
            ("shutdownGraceMillis", "-1"),
            ("initialPositionInStreamExtended", "2024-01-01"),
            ("callProcessRecordsEvenForEmptyRecordList", "maybe"),
        ] {
            let message = error(&format!("{MINIMAL}{key} = {value}\n"));
            assert!(message.contains(key), "{key}: {message}");
        }
    }
}
