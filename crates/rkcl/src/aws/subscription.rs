//! SubscribeToShard: [`Kinesis::subscribe_to_shard`] opens a
//! [`Subscription`], whose events come as [`SubscriptionEvent`]s in domain
//! types.

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::error::SdkError;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::primitives::event_stream::EventReceiver;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{ShardIteratorType, SubscribeToShardEventStream};
use futures_util::FutureExt;

use super::error::{from_event_stream, from_sdk};
use super::kinesis::Kinesis;
use super::kinesis_shapes::{ChildShard, child_shards_from_sdk, records_from_sdk};
use crate::error::{Error, Result, Service};
use crate::model::{SequenceNumber, ShardId, StartingPosition};
use crate::record::KinesisRecord;

/// One event of a [`Subscription`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SubscriptionEvent {
    /// The records, in sequence-number order (possibly none: Kinesis also
    /// sends events to say where the subscription is).
    pub records: Vec<KinesisRecord>,
    /// Where the subscription has got to: subscribe again
    /// `AFTER_SEQUENCE_NUMBER` of it to go on without a gap. `None` at the
    /// end of a closed shard (the SDK's empty string).
    pub continuation_sequence_number: Option<SequenceNumber>,
    /// How far behind the tip of the shard the records are, when said.
    pub millis_behind_latest: Option<u64>,
    /// The children of the shard, when Kinesis names them (at the end of a
    /// closed shard).
    pub child_shards: Vec<ChildShard>,
}

/// An open SubscribeToShard session: events of one shard for one stream
/// consumer, pushed by Kinesis over one connection until the session ends
/// (after five minutes on AWS) or fails.
///
/// Dropping it closes the connection.
#[derive(Debug)]
pub struct Subscription {
    receiver: EventReceiver<SubscribeToShardEventStream, SubscribeToShardEventStreamError>,
}

impl Subscription {
    /// The next event, or `None` once Kinesis has ended the session (open
    /// a new one after the last continuation sequence number).
    ///
    /// # Errors
    ///
    /// What Kinesis sent instead of an event, or what broke the
    /// connection: [`Error::ResourceInUse`], [`Error::ResourceNotFound`],
    /// [`Error::AccessDenied`] (KMS), [`Error::Throttled`] (KMS),
    /// [`Error::Service`] (internal failures and malformed frames, retryable),
    /// [`Error::Transport`]. An event whose continuation sequence number is
    /// not a number, or with a record whose sequence number is not, is an
    /// [`Error::Service`] that is not retryable. The session is over after
    /// an error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: bytes are taken from the connection only as a whole
    /// call completes, so a dropped call loses no event.
    pub async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>> {
        loop {
            let received = self.receiver.recv().boxed().await;
            match received {
                Ok(None) => return Ok(None),
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                    return convert(event).map(Some);
                }
                Ok(Some(other)) => {
                    tracing::debug!(?other, "skipping an event of a kind not known here");
                }
                Err(err) => return Err(stream_error(err)),
            }
        }
    }
}

fn stream_error<R: std::fmt::Debug + 'static>(
    err: SdkError<SubscribeToShardEventStreamError, R>,
) -> Error {
    from_event_stream(Service::Kinesis, err)
}

fn convert(mut event: aws_sdk_kinesis::types::SubscribeToShardEvent) -> Result<SubscriptionEvent> {
    let continuation = std::mem::take(&mut event.continuation_sequence_number);
    let continuation_sequence_number = if continuation.is_empty() {
        None
    } else {
        Some(continuation.parse().map_err(|_| Error::Service {
            service: Service::Kinesis,
            code: "MalformedEvent".into(),
            message: format!("an event has continuation sequence number {continuation:?}"),
            retryable: false,
        })?)
    };
    Ok(SubscriptionEvent {
        records: records_from_sdk(std::mem::take(&mut event.records))?,
        continuation_sequence_number,
        millis_behind_latest: u64::try_from(event.millis_behind_latest).ok(),
        child_shards: child_shards_from_sdk(event.child_shards(), "SubscribeToShard"),
    })
}

impl Kinesis {
    /// Subscribes the stream consumer `consumer_arn` to `shard_id` from
    /// `position` (SubscribeToShard) and waits for Kinesis to accept.
    /// [`StartingPosition::AfterCheckpoint`] subscribes at the sequence
    /// number; dropping the user records up to the checkpoint is the
    /// caller's part.
    ///
    /// Kinesis allows one subscription per shard and consumer at a time, and
    /// one call per second per shard and consumer; a call within five
    /// seconds of a successful one is refused as in use. The SDK's retries
    /// are off for this call, so the caller's pacing holds.
    ///
    /// # Errors
    ///
    /// [`Error::ResourceInUse`] when the shard already has a subscription
    /// of this consumer or the consumer is not `ACTIVE`;
    /// [`Error::ResourceNotFound`] when the consumer, stream or shard does
    /// not exist; [`Error::Throttled`] for calls too close together;
    /// [`Error::AccessDenied`] for IAM or KMS refusals; any error of the
    /// call.
    pub async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &ShardId,
        position: &StartingPosition,
    ) -> Result<Subscription> {
        let builder = aws_sdk_kinesis::types::StartingPosition::builder();
        let builder = match position {
            StartingPosition::TrimHorizon => builder.r#type(ShardIteratorType::TrimHorizon),
            StartingPosition::Latest => builder.r#type(ShardIteratorType::Latest),
            StartingPosition::AtTimestamp(time) => builder
                .r#type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(*time)),
            StartingPosition::AtSequenceNumber(seq) | StartingPosition::AfterCheckpoint(seq, _) => {
                builder
                    .r#type(ShardIteratorType::AtSequenceNumber)
                    .sequence_number(seq.as_str())
            }
            StartingPosition::AfterSequenceNumber(seq) => builder
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq.as_str()),
        };
        let starting_position = builder
            .build()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let out = self
            .client()
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard_id.as_str())
            .starting_position(starting_position)
            // The caller paces subscriptions (one per second per shard is
            // all Kinesis allows); the SDK's own retries would not.
            .customize()
            .config_override(
                aws_sdk_kinesis::config::Builder::default().retry_config(RetryConfig::disabled()),
            )
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        Ok(Subscription {
            receiver: out.event_stream,
        })
    }
}
