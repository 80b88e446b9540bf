//! How a [`FanOutSource`](super::FanOutSource) reads a shard:
//! [`FanOutConfig`], the stream consumer it reads through, its prefetch
//! bounds and its timings.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::kpl::HashRangePolicy;

/// How shards are read with enhanced fan-out (SubscribeToShard): through
/// which stream consumer, how far ahead of the consumer, and when to give
/// up on a silent subscription.
///
/// Each stream consumer has its own read budget of 2 MiB/s per shard, so
/// applications on one stream do not share a budget as they do with
/// polling.
///
/// ```
/// use std::time::Duration;
///
/// use rkcl::SchedulerConfig;
/// use rkcl::retrieval::FanOutConfig;
///
/// # fn main() -> rkcl::Result<()> {
/// // Read through the stream consumer "orders-app" (the application's
/// // name), registered by the first worker that starts.
/// let config = SchedulerConfig::builder("orders-app", "orders")
///     .fan_out(
///         FanOutConfig::builder()
///             .idle_timeout(Duration::from_secs(30))
///             .build()?,
///     )
///     .build()?;
/// # drop(config);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FanOutConfig {
    /// The stream consumer to read through, by name: found, registered
    /// when missing, and waited on until `ACTIVE`. Workers of one
    /// application share it. Default: `None`, which means the scheduler's
    /// application name (as the Java KCL does). Not together with
    /// [`consumer_arn`](Self::consumer_arn).
    pub consumer_name: Option<String>,
    /// The stream consumer to read through, by ARN: used as given (checked
    /// once at start, never registered). Default: `None`.
    pub consumer_arn: Option<String>,
    /// The most user records fetched ahead of the consumer. Default:
    /// 30,000.
    pub prefetch_records: usize,
    /// The most bytes of record data fetched ahead of the consumer.
    /// Default: 16 MiB.
    pub prefetch_bytes: usize,
    /// The most events fetched ahead of the consumer. Default: 3.
    ///
    /// Events are taken from the subscription only while all three bounds
    /// have room; one event larger than a whole bound still passes, alone.
    pub prefetch_events: usize,
    /// How long a subscription may stay silent before it is cancelled and
    /// opened again: Kinesis sends events every few seconds even when no
    /// records arrive, so silence means a stalled connection. Only time
    /// spent waiting for Kinesis counts, not time waiting for the consumer
    /// to take prefetched events. Default: 60 s; at least 10 s.
    pub idle_timeout: Duration,
    /// The first pause after a failed subscription; it doubles up to
    /// [`max_backoff`](Self::max_backoff), with full jitter. A shard is
    /// never subscribed to more than once a second (Kinesis' limit),
    /// whatever the backoff. Default: 200 ms.
    pub base_backoff: Duration,
    /// The longest pause after failed subscriptions. Default: 10 s.
    pub max_backoff: Duration,
    /// How long registering the stream consumer may take until it is
    /// `ACTIVE`. Default: 120 s.
    pub registration_timeout: Duration,
    /// What to do with KPL aggregates holding user records outside the
    /// shard's hash-key range. Default: [`HashRangePolicy::DropAggregate`].
    pub hash_range_policy: HashRangePolicy,
}

impl FanOutConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> FanOutConfigBuilder {
        FanOutConfigBuilder {
            config: Self::default(),
        }
    }

    /// The default idle timeout, the Java KCL's.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// The shortest idle timeout allowed.
    pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

    /// Checks every value.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first value out of range.
    pub fn validate(&self) -> Result<()> {
        if self.consumer_name.is_some() && self.consumer_arn.is_some() {
            return Err(Error::Config(
                "set consumer_name or consumer_arn, not both".into(),
            ));
        }
        if let Some(name) = &self.consumer_name {
            validate_consumer_name("consumer_name", name)?;
        }
        if let Some(arn) = &self.consumer_arn
            && !(arn.starts_with("arn:") && arn.contains("/consumer/"))
        {
            return Err(Error::Config(format!(
                "consumer_arn {arn:?} is not a stream consumer's ARN \
                 (arn:...:stream/NAME/consumer/NAME:TIMESTAMP)"
            )));
        }
        if self.prefetch_records == 0 || self.prefetch_bytes == 0 || self.prefetch_events == 0 {
            return Err(Error::Config(
                "prefetch_records, prefetch_bytes and prefetch_events must be positive".into(),
            ));
        }
        if self.idle_timeout < Self::MIN_IDLE_TIMEOUT {
            return Err(Error::Config(format!(
                "idle_timeout must be at least {:?}: Kinesis may be silent for seconds",
                Self::MIN_IDLE_TIMEOUT
            )));
        }
        if self.base_backoff.is_zero() || self.base_backoff > self.max_backoff {
            return Err(Error::Config(
                "base_backoff must be positive and at most max_backoff".into(),
            ));
        }
        if self.registration_timeout < Duration::from_secs(1) {
            return Err(Error::Config(
                "registration_timeout must be at least 1 s".into(),
            ));
        }
        Ok(())
    }

    /// The consumer name to find or register: the configured one, or
    /// `default_name` (the application name). `None` when a consumer ARN
    /// is configured.
    pub fn consumer_name_or<'a>(&'a self, default_name: &'a str) -> Option<&'a str> {
        match (&self.consumer_arn, &self.consumer_name) {
            (Some(_), _) => None,
            (None, Some(name)) => Some(name),
            (None, None) => Some(default_name),
        }
    }

    /// The pauses between failed subscriptions and registration checks.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff {
            base: self.base_backoff,
            max: self.max_backoff,
        }
    }
}

/// Checks a stream consumer's name as Kinesis does: 1 to 128 of `a-z`,
/// `A-Z`, `0-9`, `_`, `.`, `-`. `field` names the setting in the error.
///
/// # Errors
///
/// [`Error::Config`] naming `field`.
pub(crate) fn validate_consumer_name(field: &str, name: &str) -> Result<()> {
    if (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{field} {name:?} is not a valid stream consumer name \
             (1 to 128 of a-z, A-Z, 0-9, '_', '.', '-')"
        )))
    }
}

crate::config::config_builder! {
    /// Builds a [`FanOutConfig`]; [`build`](Self::build) validates it.
    FanOutConfigBuilder => FanOutConfig {
        consumer_name: Option<String>,
        consumer_arn: Option<String>,
        prefetch_records: usize,
        prefetch_bytes: usize,
        prefetch_events: usize,
        idle_timeout: Duration,
        base_backoff: Duration,
        max_backoff: Duration,
        registration_timeout: Duration,
        hash_range_policy: HashRangePolicy,
    }
}

impl Default for FanOutConfig {
    fn default() -> Self {
        Self {
            consumer_name: None,
            consumer_arn: None,
            prefetch_records: 30_000,
            prefetch_bytes: 16 * 1024 * 1024,
            prefetch_events: 3,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            registration_timeout: Duration::from_secs(120),
            hash_range_policy: HashRangePolicy::DropAggregate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(result: Result<FanOutConfig>) -> String {
        match result {
            Err(Error::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_the_consumer_defaults_to_the_application() {
        let config = FanOutConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.consumer_name_or("orders-app"), Some("orders-app"));
        let named = FanOutConfig::builder()
            .consumer_name(Some("reader".into()))
            .build()
            .unwrap();
        assert_eq!(named.consumer_name_or("orders-app"), Some("reader"));
        let by_arn = FanOutConfig::builder()
            .consumer_arn(Some(
                "arn:aws:kinesis:us-east-1:123456789012:stream/s/consumer/c:1".into(),
            ))
            .build()
            .unwrap();
        assert_eq!(by_arn.consumer_name_or("orders-app"), None);
    }

    #[test]
    fn build_names_the_value_it_refuses() {
        let both = FanOutConfig::builder()
            .consumer_name(Some("a".into()))
            .consumer_arn(Some("arn:aws:kinesis:r:1:stream/s/consumer/c:1".into()));
        assert!(message(both.build()).contains("not both"));
        let bad_name = FanOutConfig::builder().consumer_name(Some("no spaces".into()));
        assert!(message(bad_name.build()).contains("consumer_name"));
        let bad_arn = FanOutConfig::builder().consumer_arn(Some("consumer".into()));
        assert!(message(bad_arn.build()).contains("consumer_arn"));
        let quick = FanOutConfig::builder().idle_timeout(Duration::from_secs(1));
        assert!(message(quick.build()).contains("idle_timeout"));
        let none = FanOutConfig::builder().prefetch_events(0);
        assert!(message(none.build()).contains("prefetch_events"));
        let inverted = FanOutConfig::builder()
            .base_backoff(Duration::from_secs(20))
            .max_backoff(Duration::from_secs(10));
        assert!(message(inverted.build()).contains("base_backoff"));
    }
}
