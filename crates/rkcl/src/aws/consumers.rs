//! Stream consumers, the registrations enhanced fan-out reads through:
//! [`StreamConsumer`], [`ConsumerStatus`] and the calls that describe,
//! list, register and deregister them.

use aws_sdk_kinesis::types::ConsumerStatus as SdkConsumerStatus;
use futures_util::FutureExt;

use super::error::from_sdk;
use super::kinesis::Kinesis;
use super::paging::collect_new_pages;
use crate::error::{Error, Result, Service};

/// The most pages [`Kinesis::list_stream_consumers`] reads. A stream has at
/// most 20 consumers, so one page of 100 holds them all; the cap only
/// guards against a service whose token never ends the listing.
const MAX_CONSUMER_PAGES: usize = 20;

/// The state of a stream consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerStatus {
    /// Being registered; it cannot be subscribed with yet.
    Creating,
    /// Registered; subscriptions may use it.
    Active,
    /// Being deregistered; it will be gone soon.
    Deleting,
    /// A state this version of rkcl does not know, as Kinesis named it.
    Other(String),
}

impl ConsumerStatus {
    fn from_sdk(status: &SdkConsumerStatus) -> Self {
        match status {
            SdkConsumerStatus::Creating => Self::Creating,
            SdkConsumerStatus::Active => Self::Active,
            SdkConsumerStatus::Deleting => Self::Deleting,
            other => Self::Other(other.as_str().to_owned()),
        }
    }
}

impl std::fmt::Display for ConsumerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Creating => "CREATING",
            Self::Active => "ACTIVE",
            Self::Deleting => "DELETING",
            Self::Other(other) => other,
        })
    }
}

/// A stream consumer: a registration of an application with a stream,
/// which enhanced fan-out subscriptions read through (each consumer gets
/// its own 2 MiB/s per shard).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamConsumer {
    /// The consumer's name, unique per stream.
    pub name: String,
    /// The consumer's ARN,
    /// `arn:aws:kinesis:REGION:ACCOUNT:stream/STREAM/consumer/NAME:TIMESTAMP`.
    pub arn: String,
    /// Its state.
    pub status: ConsumerStatus,
}

impl StreamConsumer {
    /// Whether the consumer's ARN names it as a consumer of the stream
    /// with ARN `stream_arn` (consumer ARNs start with the stream's ARN).
    pub fn belongs_to(&self, stream_arn: &str) -> bool {
        self.arn
            .strip_prefix(stream_arn)
            .is_some_and(|rest| rest.starts_with("/consumer/"))
    }
}

impl Kinesis {
    /// The consumer `consumer_name` of the stream with ARN `stream_arn`
    /// (DescribeStreamConsumer).
    ///
    /// # Errors
    ///
    /// [`Error::ResourceNotFound`] when the stream has no such consumer; any
    /// error of the call.
    pub async fn describe_stream_consumer(
        &self,
        stream_arn: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer> {
        let out = self
            .client()
            .describe_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(consumer_name)
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        consumer_from_description(out.consumer_description())
    }

    /// The consumer with ARN `consumer_arn` (DescribeStreamConsumer).
    ///
    /// # Errors
    ///
    /// [`Error::ResourceNotFound`] when no consumer has that ARN (it was
    /// never registered, or deregistered); any error of the call.
    pub async fn describe_stream_consumer_by_arn(
        &self,
        consumer_arn: &str,
    ) -> Result<StreamConsumer> {
        let out = self
            .client()
            .describe_stream_consumer()
            .consumer_arn(consumer_arn)
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        consumer_from_description(out.consumer_description())
    }

    /// Every consumer of the stream with ARN `stream_arn`, following
    /// ListStreamConsumers' pages. A page that adds no consumer not seen
    /// before ends the listing, whatever its token says, and at most
    /// 20 pages are read.
    ///
    /// # Errors
    ///
    /// [`Error::ResourceNotFound`] for a missing stream; any error of the
    /// calls.
    pub async fn list_stream_consumers(&self, stream_arn: &str) -> Result<Vec<StreamConsumer>> {
        collect_new_pages(
            MAX_CONSUMER_PAGES,
            |consumer: &StreamConsumer| consumer.arn.clone(),
            |token| {
                let request = self
                    .client()
                    .list_stream_consumers()
                    .stream_arn(stream_arn)
                    .set_next_token(token)
                    .max_results(100);
                async move {
                    let page = request
                        .send()
                        .boxed()
                        .await
                        .map_err(|e| from_sdk(Service::Kinesis, e))?;
                    let consumers = page
                        .consumers()
                        .iter()
                        .map(|c| StreamConsumer {
                            name: c.consumer_name().to_owned(),
                            arn: c.consumer_arn().to_owned(),
                            status: ConsumerStatus::from_sdk(c.consumer_status()),
                        })
                        .collect();
                    Ok((consumers, page.next_token().map(str::to_owned)))
                }
            },
        )
        .await
    }

    /// Registers the consumer `consumer_name` with the stream with ARN
    /// `stream_arn` (RegisterStreamConsumer). It starts `CREATING`; it can
    /// be subscribed with once `ACTIVE`.
    ///
    /// # Errors
    ///
    /// [`Error::ResourceInUse`] when the stream already has a consumer of
    /// that name (perhaps registered by another worker a moment ago);
    /// [`Error::Throttled`] when the stream has as many consumers as
    /// allowed or registrations come too fast; [`Error::ResourceNotFound`]
    /// for a missing stream; any error of the call.
    pub async fn register_stream_consumer(
        &self,
        stream_arn: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer> {
        let out = self
            .client()
            .register_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(consumer_name)
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        let consumer = out
            .consumer()
            .ok_or_else(|| missing("RegisterStreamConsumer"))?;
        Ok(StreamConsumer {
            name: consumer.consumer_name().to_owned(),
            arn: consumer.consumer_arn().to_owned(),
            status: ConsumerStatus::from_sdk(consumer.consumer_status()),
        })
    }

    /// Deregisters the consumer with ARN `consumer_arn`
    /// (DeregisterStreamConsumer). It is `DELETING` for a while, then gone;
    /// its subscriptions end.
    ///
    /// # Errors
    ///
    /// [`Error::ResourceNotFound`] when no consumer has that ARN; any error
    /// of the call.
    pub async fn deregister_stream_consumer(&self, consumer_arn: &str) -> Result<()> {
        self.client()
            .deregister_stream_consumer()
            .consumer_arn(consumer_arn)
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        Ok(())
    }
}

fn consumer_from_description(
    description: Option<&aws_sdk_kinesis::types::ConsumerDescription>,
) -> Result<StreamConsumer> {
    let description = description.ok_or_else(|| missing("DescribeStreamConsumer"))?;
    Ok(StreamConsumer {
        name: description.consumer_name().to_owned(),
        arn: description.consumer_arn().to_owned(),
        status: ConsumerStatus::from_sdk(description.consumer_status()),
    })
}

fn missing(call: &str) -> Error {
    Error::Service {
        service: Service::Kinesis,
        code: "MissingField".into(),
        message: format!("{call} returned no consumer"),
        retryable: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_belongs_to_the_stream_its_arn_starts_with() {
        let stream = "arn:aws:kinesis:us-east-1:123456789012:stream/orders";
        let consumer = StreamConsumer {
            name: "app".into(),
            arn: format!("{stream}/consumer/app:1700000000"),
            status: ConsumerStatus::Active,
        };
        assert!(consumer.belongs_to(stream));
        assert!(!consumer.belongs_to("arn:aws:kinesis:us-east-1:123456789012:stream/order"));
        assert!(!consumer.belongs_to("arn:aws:kinesis:us-east-1:123456789012:stream/other"));
        assert_eq!(ConsumerStatus::Deleting.to_string(), "DELETING");
        assert_eq!(
            ConsumerStatus::from_sdk(&SdkConsumerStatus::from("SUSPENDED")),
            ConsumerStatus::Other("SUSPENDED".into())
        );
    }
}
