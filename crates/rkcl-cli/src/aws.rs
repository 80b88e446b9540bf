//! The AWS configuration of every command: the standard environment
//! (region, profile, credential chain, `AWS_ENDPOINT_URL*`) plus flags.

use anyhow::{Context, bail};
use aws_config::{BehaviorVersion, Region};

/// Flags that override the standard AWS environment.
#[derive(Debug, clap::Args)]
pub(crate) struct AwsArgs {
    /// Send every request to this endpoint (overrides `AWS_ENDPOINT_URL*`).
    #[arg(long, global = true, value_name = "URL")]
    endpoint_url: Option<String>,
    /// The AWS region (overrides `AWS_REGION` and the profile).
    #[arg(long, global = true)]
    region: Option<String>,
    /// The named profile of the shared config files (overrides `AWS_PROFILE`).
    #[arg(long, global = true)]
    profile: Option<String>,
}

impl AwsArgs {
    /// The Kinesis client of rkcl for these settings.
    pub(crate) async fn kinesis(&self) -> anyhow::Result<rkcl::Kinesis> {
        let config = self.sdk_config().await?;
        Ok(rkcl::Kinesis::new(aws_sdk_kinesis::Client::new(&config)))
    }

    /// The lease table of application `app` for these settings.
    pub(crate) async fn lease_store(&self, app: &str) -> anyhow::Result<rkcl::DynamoDbLeaseStore> {
        let config = self.sdk_config().await?;
        Ok(rkcl::DynamoDbLeaseStore::new(
            aws_sdk_dynamodb::Client::new(&config),
            app,
        ))
    }

    /// The CloudWatch client of rkcl for these settings.
    #[cfg(feature = "cloudwatch")]
    pub(crate) async fn cloudwatch(&self) -> anyhow::Result<rkcl::aws::CloudWatch> {
        let config = self.sdk_config().await?;
        Ok(rkcl::aws::CloudWatch::new(aws_sdk_cloudwatch::Client::new(
            &config,
        )))
    }

    async fn sdk_config(&self) -> anyhow::Result<aws_config::SdkConfig> {
        self.sdk_config_with_region(None).await
    }

    /// The SDK config for these settings; `region` applies when `--region`
    /// is not given (and wins over the environment and the profile).
    pub(crate) async fn sdk_config_with_region(
        &self,
        region: Option<&str>,
    ) -> anyhow::Result<aws_config::SdkConfig> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = self.region.as_deref().or(region) {
            loader = loader.region(Region::new(region.to_owned()));
        }
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        if config.region().is_none() {
            bail!("no AWS region: set AWS_REGION, pass --region, or configure a profile");
        }
        Ok(config)
    }
}

/// Parses a stream argument (name or ARN), refusing an empty one.
pub(crate) fn stream_ref(text: &str) -> anyhow::Result<rkcl::aws::StreamRef> {
    let text = text.trim();
    if text.is_empty() {
        bail!("the stream name is empty");
    }
    Ok(rkcl::aws::StreamRef::parse(text))
}

/// Adds which stream a failed call was about.
pub(crate) trait StreamContext<T> {
    fn for_stream(self, stream: &rkcl::aws::StreamRef) -> anyhow::Result<T>;
}

impl<T> StreamContext<T> for rkcl::Result<T> {
    fn for_stream(self, stream: &rkcl::aws::StreamRef) -> anyhow::Result<T> {
        self.with_context(|| format!("stream {stream}"))
    }
}
