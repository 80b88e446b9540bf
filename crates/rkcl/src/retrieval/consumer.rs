//! The stream consumer enhanced fan-out reads through: found by name,
//! registered when missing, waited on until `ACTIVE`; or given by ARN and
//! checked.
//!
//! Every worker of an application runs this at start. Registration races
//! between workers are expected: a registration refused because the name
//! is taken means another worker registered it, and it is used.

use tokio::time::Instant;

use super::FanOutConfig;
use crate::aws::{ConsumerStatus, Kinesis, StreamConsumer, StreamRef};
use crate::backoff::{Backoff, retry};
use crate::error::{Error, Result, Service};

/// How many times in a row a consumer just registered may be reported
/// missing before that counts as gone (a fresh registration may take a
/// moment to be visible).
const NOT_YET_VISIBLE: u32 = 3;

/// The stream consumer a fan-out worker of `application` reads `stream`
/// through, `ACTIVE`.
///
/// With [`FanOutConfig::consumer_arn`], that consumer is described and
/// checked (it must exist, belong to the stream and not be being deleted;
/// while it is `CREATING`, this waits). Otherwise the consumer named
/// [`FanOutConfig::consumer_name`], or `application`, is found, registered
/// when missing (a registration refused because another worker registered
/// it a moment earlier uses that one), and waited on until `ACTIVE`, for
/// at most [`FanOutConfig::registration_timeout`], checking with the
/// config's backoff.
///
/// # Errors
///
/// [`Error::Config`] when the configured ARN names no consumer, a consumer
/// of another stream, or one being deleted, or when `application` is not a
/// valid consumer name; [`Error::InvalidRequest`] when the named consumer
/// is being deleted, disappears after registration, or is not `ACTIVE`
/// within the timeout; [`Error::ResourceNotFound`] for a missing stream;
/// [`Error::AccessDenied`] without the permissions; other errors of the
/// calls once retries are spent.
///
/// # Cancel safety
///
/// Cancel safe: dropping the future leaves at most a registration behind,
/// which the next call finds and uses.
pub async fn resolve_consumer(
    kinesis: &Kinesis,
    stream: &StreamRef,
    config: &FanOutConfig,
    application: &str,
) -> Result<StreamConsumer> {
    let backoff = config.backoff();
    let stream_arn = match stream {
        StreamRef::Arn(arn) => arn.clone(),
        StreamRef::Name(_) => {
            retry(backoff, "DescribeStreamSummary", || {
                kinesis.describe_stream_summary(stream)
            })
            .await?
            .arn
        }
    };
    let deadline = Instant::now() + config.registration_timeout;
    let consumer = match config.consumer_name_or(application) {
        Some(name) => {
            super::fanout_config::validate_consumer_name("the consumer name", name)?;
            register_and_wait(kinesis, &stream_arn, name, backoff, deadline).await?
        }
        None => {
            let arn = config.consumer_arn.as_deref().unwrap_or_default();
            wait_for_given(kinesis, &stream_arn, arn, backoff, deadline).await?
        }
    };
    tracing::info!(consumer = %consumer.name, arn = %consumer.arn, "reading through the stream consumer");
    Ok(consumer)
}

/// Finds `name`, registers it when missing, and waits until it is active.
async fn register_and_wait(
    kinesis: &Kinesis,
    stream_arn: &str,
    name: &str,
    backoff: Backoff,
    deadline: Instant,
) -> Result<StreamConsumer> {
    let mut registered = false;
    let mut missing_after_registration = 0;
    let mut attempt = 0;
    let mut last_error: Option<Error> = None;
    loop {
        match kinesis.describe_stream_consumer(stream_arn, name).await {
            Ok(consumer) => match consumer.status {
                ConsumerStatus::Active => return Ok(consumer),
                ConsumerStatus::Deleting => {
                    return Err(Error::InvalidRequest {
                        service: Service::Kinesis,
                        message: format!(
                            "the stream consumer {name} of {stream_arn} is being deleted; \
                             start again once it is gone (it is then registered anew) \
                             or choose another consumer name"
                        ),
                    });
                }
                ConsumerStatus::Creating | ConsumerStatus::Other(_) => {
                    tracing::debug!(consumer = name, status = %consumer.status, "waiting for the stream consumer");
                }
            },
            Err(Error::ResourceNotFound { .. }) if !registered => {
                match kinesis.register_stream_consumer(stream_arn, name).await {
                    Ok(consumer) => {
                        tracing::info!(consumer = name, "registered the stream consumer");
                        registered = true;
                        if consumer.status == ConsumerStatus::Active {
                            return Ok(consumer);
                        }
                    }
                    Err(Error::ResourceInUse { .. }) => {
                        tracing::debug!(
                            consumer = name,
                            "the stream consumer was registered meanwhile; using it"
                        );
                        registered = true;
                    }
                    Err(err) if err.is_retryable() => last_error = Some(err),
                    Err(err) => return Err(err),
                }
            }
            Err(Error::ResourceNotFound { .. }) => {
                missing_after_registration += 1;
                if missing_after_registration >= NOT_YET_VISIBLE {
                    return Err(Error::InvalidRequest {
                        service: Service::Kinesis,
                        message: format!(
                            "the stream consumer {name} of {stream_arn} was registered \
                             and is gone again (deregistered meanwhile?)"
                        ),
                    });
                }
            }
            Err(err) if err.is_retryable() => last_error = Some(err),
            Err(err) => return Err(err),
        }
        attempt += 1;
        pause_or_give_up(name, backoff, attempt, deadline, last_error.as_ref()).await?;
    }
}

/// Describes the consumer given by ARN and waits while it is being created.
async fn wait_for_given(
    kinesis: &Kinesis,
    stream_arn: &str,
    arn: &str,
    backoff: Backoff,
    deadline: Instant,
) -> Result<StreamConsumer> {
    let mut attempt = 0;
    let mut last_error: Option<Error> = None;
    loop {
        match kinesis.describe_stream_consumer_by_arn(arn).await {
            Ok(consumer) if !consumer.belongs_to(stream_arn) => {
                return Err(Error::Config(format!(
                    "consumer_arn {arn} is a consumer of another stream than {stream_arn}"
                )));
            }
            Ok(consumer) => match consumer.status {
                ConsumerStatus::Active => return Ok(consumer),
                ConsumerStatus::Deleting => {
                    return Err(Error::Config(format!(
                        "consumer_arn {arn}: the stream consumer is being deleted"
                    )));
                }
                ConsumerStatus::Creating | ConsumerStatus::Other(_) => {}
            },
            Err(Error::ResourceNotFound { .. }) => {
                return Err(Error::Config(format!(
                    "consumer_arn {arn}: no such stream consumer (deregistered, or never registered)"
                )));
            }
            Err(err) if err.is_retryable() => last_error = Some(err),
            Err(err) => return Err(err),
        }
        attempt += 1;
        pause_or_give_up(arn, backoff, attempt, deadline, last_error.as_ref()).await?;
    }
}

/// Sleeps before check number `attempt + 1`, or fails once `deadline` has
/// passed.
async fn pause_or_give_up(
    consumer: &str,
    backoff: Backoff,
    attempt: u32,
    deadline: Instant,
    last_error: Option<&Error>,
) -> Result<()> {
    let now = Instant::now();
    if now >= deadline {
        let last = last_error.map_or_else(String::new, |err| format!(" (last error: {err})"));
        return Err(Error::InvalidRequest {
            service: Service::Kinesis,
            message: format!("the stream consumer {consumer} did not become ACTIVE in time{last}"),
        });
    }
    let pause = backoff.delay(attempt).max(backoff.base);
    tokio::time::sleep_until((now + pause).min(deadline)).await;
    Ok(())
}

/// What became of the consumer a running subscription reads through:
/// `None` when it is gone.
///
/// # Errors
///
/// Errors of DescribeStreamConsumer other than a missing consumer.
pub(crate) async fn consumer_status(
    kinesis: &Kinesis,
    consumer_arn: &str,
) -> Result<Option<ConsumerStatus>> {
    match kinesis.describe_stream_consumer_by_arn(consumer_arn).await {
        Ok(consumer) => Ok(Some(consumer.status)),
        Err(Error::ResourceNotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}
