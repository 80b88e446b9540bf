//! Kinesis calls, in domain types: [`Kinesis`], the client every Kinesis
//! call of rkcl goes through. The shapes it takes and returns are in
//! `kinesis_shapes.rs`; the paging drivers in `paging.rs`; the calls on
//! stream consumers in `consumers.rs` and SubscribeToShard in
//! `subscription.rs`.

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};

use futures_util::FutureExt;

use super::error::from_sdk;
use super::kinesis_shapes::{
    GetRecordsOutput, PutEntry, PutOutcome, ShardFilter, StreamRef, StreamSummary,
    child_shards_from_sdk, records_from_sdk,
};
use super::paging::collect_pages;
use crate::error::{Error, Result, Service};
use crate::model::{HashKey, HashKeyRange, SequenceNumber, ShardId, StartingPosition};
use crate::shards::Shard;

/// The Kinesis client every Kinesis call of rkcl goes through.
///
/// Build it from an SDK client configured as the application wants
/// (credentials, region, endpoint, retries):
///
/// ```no_run
/// let client = aws_sdk_kinesis::Client::from_conf(
///     aws_sdk_kinesis::Config::builder()
///         .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
///         .region(aws_sdk_kinesis::config::Region::new("eu-west-1"))
///         .build(),
/// );
/// let kinesis = rkcl::Kinesis::new(client);
/// # drop(kinesis);
/// ```
#[derive(Clone, Debug)]
pub struct Kinesis {
    client: Client,
    decoding: RecordsDecoding,
}

/// How [`Kinesis::get_records`] reads GetRecords answers. Either way the
/// call is the SDK's: built, signed and sent by the client's HTTP stack,
/// with its retries; errors are read by the SDK.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordsDecoding {
    /// The SDK's deserializer reads the answer, and its records are then
    /// moved into rkcl's types.
    Sdk,
    /// A successful answer is read once, straight into rkcl's types
    /// (feature `direct-get-records`, on by default; without it, the same
    /// as [`Sdk`](Self::Sdk)). An answer it does not understand is left to
    /// the SDK's deserializer, so the records and errors are the same as
    /// with [`Sdk`](Self::Sdk); a counting worker spends about half the
    /// CPU per GB (`cargo bench -p rkcl-cli --bench cpu`). The default.
    #[default]
    Direct,
}

impl Kinesis {
    /// Wraps an SDK client; GetRecords answers are read as
    /// [`RecordsDecoding::default`] says.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            decoding: RecordsDecoding::default(),
        }
    }

    /// The same client, reading GetRecords answers as `decoding` says.
    #[must_use]
    pub fn with_records_decoding(mut self, decoding: RecordsDecoding) -> Self {
        self.decoding = decoding;
        self
    }

    /// How GetRecords answers are read.
    pub fn records_decoding(&self) -> RecordsDecoding {
        self.decoding
    }

    /// The region the client is configured for, if any (to build a
    /// stream's ARN from its identifier).
    pub fn region(&self) -> Option<String> {
        self.client.config().region().map(ToString::to_string)
    }

    /// The SDK client, for the calls kept in the other files of this layer
    /// (stream consumers, subscriptions).
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// Every shard of the stream, open and closed, following ListShards'
    /// pages.
    ///
    /// # Errors
    ///
    /// [`Error::ResourceNotFound`] for a missing stream; any error of the call
    /// after the SDK's retries.
    pub async fn list_shards(&self, stream: &StreamRef) -> Result<Vec<Shard>> {
        self.list_shards_with(stream, None).await
    }

    /// The shards of the stream that `filter` selects, following ListShards'
    /// pages. Kinesis applies the filter; it is applied here too where the
    /// shards alone say what it selects (open shards, shards after an id),
    /// so the result is the same with a Kinesis that ignores filters.
    ///
    /// # Errors
    ///
    /// As [`list_shards`](Self::list_shards).
    pub async fn list_shards_with(
        &self,
        stream: &StreamRef,
        filter: Option<&ShardFilter>,
    ) -> Result<Vec<Shard>> {
        let sdk_filter = filter.map(ShardFilter::to_sdk).transpose()?;
        let pages = collect_pages(|token| {
            let request = match token {
                // With a token, neither the stream nor the filter may be sent again.
                Some(token) => self.client.list_shards().next_token(token),
                None => {
                    let (name, arn) = stream.name_and_arn();
                    self.client
                        .list_shards()
                        .set_stream_name(name)
                        .set_stream_arn(arn)
                        .set_shard_filter(sdk_filter.clone())
                }
            };
            async move {
                let page = request
                    .max_results(1000)
                    .send()
                    .boxed()
                    .await
                    .map_err(|e| from_sdk(Service::Kinesis, e))?;
                let shards = page
                    .shards()
                    .iter()
                    .map(shard_from_sdk)
                    .collect::<Result<Vec<_>>>()?;
                Ok((shards, page.next_token().map(str::to_owned)))
            }
        })
        .await?;
        Ok(match filter {
            Some(ShardFilter::AtLatest) => pages.into_iter().filter(Shard::is_open).collect(),
            Some(ShardFilter::AfterShardId(after)) => pages
                .into_iter()
                .filter(|shard| &shard.id > after)
                .collect(),
            _ => pages,
        })
    }

    /// Creates a stream with `shard_count` shards (provisioned mode).
    ///
    /// # Errors
    ///
    /// [`Error::ResourceInUse`] when the stream exists;
    /// [`Error::InvalidRequest`] when the count is not allowed; any error of
    /// the call.
    pub async fn create_stream(&self, name: &str, shard_count: u32) -> Result<()> {
        let count = i32::try_from(shard_count)
            .map_err(|_| Error::InvalidInput(format!("too many shards: {shard_count}")))?;
        self.client
            .create_stream()
            .stream_name(name)
            .shard_count(count)
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        Ok(())
    }

    /// Splits `shard` so that the second child starts at `new_starting_hash_key`
    /// (SplitShard). The stream is `UPDATING` until the split is done; wait
    /// with [`wait_until_active`](Self::wait_until_active).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] when the shard is closed or the hash key is
    /// outside its range; [`Error::ResourceInUse`] while the stream is not
    /// `ACTIVE`; [`Error::ResourceNotFound`] for a missing stream or shard;
    /// any error of the call.
    pub async fn split_shard(
        &self,
        stream: &StreamRef,
        shard: &ShardId,
        new_starting_hash_key: HashKey,
    ) -> Result<()> {
        let (name, arn) = stream.name_and_arn();
        self.client
            .split_shard()
            .set_stream_name(name)
            .set_stream_arn(arn)
            .shard_to_split(shard.as_str())
            .new_starting_hash_key(new_starting_hash_key.as_u128().to_string())
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        Ok(())
    }

    /// Merges two adjacent open shards (MergeShards). The stream is
    /// `UPDATING` until the merge is done; wait with
    /// [`wait_until_active`](Self::wait_until_active).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] when the shards are not adjacent or not
    /// open; [`Error::ResourceInUse`] while the stream is not `ACTIVE`;
    /// [`Error::ResourceNotFound`] for a missing stream or shard; any error
    /// of the call.
    pub async fn merge_shards(&self, stream: &StreamRef, a: &ShardId, b: &ShardId) -> Result<()> {
        let (name, arn) = stream.name_and_arn();
        self.client
            .merge_shards()
            .set_stream_name(name)
            .set_stream_arn(arn)
            .shard_to_merge(a.as_str())
            .adjacent_shard_to_merge(b.as_str())
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        Ok(())
    }

    /// What DescribeStreamSummary says of the stream.
    ///
    /// # Errors
    ///
    /// [`Error::ResourceNotFound`] for a missing stream; any error of the call.
    pub async fn describe_stream_summary(&self, stream: &StreamRef) -> Result<StreamSummary> {
        let (name, arn) = stream.name_and_arn();
        let out = self
            .client
            .describe_stream_summary()
            .set_stream_name(name)
            .set_stream_arn(arn)
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        let summary = out
            .stream_description_summary()
            .ok_or_else(|| Error::Service {
                service: Service::Kinesis,
                code: "MissingField".into(),
                message: "DescribeStreamSummary returned no summary".into(),
                retryable: true,
            })?;
        Ok(StreamSummary {
            name: summary.stream_name().to_owned(),
            arn: summary.stream_arn().to_owned(),
            status: summary.stream_status().as_str().to_owned(),
            open_shard_count: u32::try_from(summary.open_shard_count()).unwrap_or(0),
            retention_period_hours: u32::try_from(summary.retention_period_hours()).unwrap_or(0),
            creation_epoch: u64::try_from(summary.stream_creation_timestamp().secs()).unwrap_or(0),
        })
    }

    /// Waits until the stream is `ACTIVE`, checking every 100 ms.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] when `timeout` passes first; any error of
    /// DescribeStreamSummary other than a missing stream (a new stream may
    /// not be visible yet).
    pub async fn wait_until_active(
        &self,
        stream: &StreamRef,
        timeout: Duration,
    ) -> Result<StreamSummary> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.describe_stream_summary(stream).await {
                Ok(summary) if summary.status == StreamStatus::Active.as_str() => {
                    return Ok(summary);
                }
                Ok(_) | Err(Error::ResourceNotFound { .. }) => {}
                Err(other) => return Err(other),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::InvalidRequest {
                    service: Service::Kinesis,
                    message: format!("stream {stream} did not become ACTIVE within {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The names of every stream of the account and region.
    ///
    /// # Errors
    ///
    /// Any error of ListStreams.
    pub async fn list_streams(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_streams()
                .set_next_token(next_token.take())
                .send()
                .boxed()
                .await
                .map_err(|e| from_sdk(Service::Kinesis, e))?;
            names.extend(page.stream_names().iter().cloned());
            match page.next_token() {
                Some(token) if page.has_more_streams() && !token.is_empty() => {
                    next_token = Some(token.to_owned());
                }
                _ => return Ok(names),
            }
        }
    }

    /// A shard iterator for `shard_id` starting at `position`.
    ///
    /// # Errors
    ///
    /// [`Error::ResourceNotFound`] for a missing stream or shard;
    /// [`Error::InvalidRequest`] for a sequence number not in the shard; any
    /// error of the call.
    pub async fn get_shard_iterator(
        &self,
        stream: &StreamRef,
        shard_id: &ShardId,
        position: &StartingPosition,
    ) -> Result<Option<String>> {
        let (name, arn) = stream.name_and_arn();
        let mut request = self
            .client
            .get_shard_iterator()
            .set_stream_name(name)
            .set_stream_arn(arn)
            .shard_id(shard_id.as_str());
        request = match position {
            StartingPosition::TrimHorizon => {
                request.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            StartingPosition::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            StartingPosition::AtTimestamp(time) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(*time)),
            StartingPosition::AtSequenceNumber(seq) | StartingPosition::AfterCheckpoint(seq, _) => {
                request
                    .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                    .starting_sequence_number(seq.as_str())
            }
            StartingPosition::AfterSequenceNumber(seq) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq.as_str()),
        };
        let out = request
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        Ok(out.shard_iterator().map(str::to_owned))
    }

    /// One GetRecords call with at most `limit` records (1 to 10,000).
    ///
    /// # Errors
    ///
    /// [`Error::ExpiredIterator`] for an expired iterator, [`Error::Throttled`]
    /// when the shard's read budget is spent, [`Error::ResourceNotFound`] when
    /// the stream or shard is gone, [`Error::AccessDenied`] for IAM or KMS
    /// refusals; any error of the call.
    pub async fn get_records(&self, shard_iterator: &str, limit: u32) -> Result<GetRecordsOutput> {
        let limit = i32::try_from(limit.clamp(1, 10_000)).unwrap_or(10_000);
        let request = self
            .client
            .get_records()
            .shard_iterator(shard_iterator)
            .limit(limit);
        #[cfg(feature = "direct-get-records")]
        if self.decoding == RecordsDecoding::Direct {
            let slot = super::get_records_json::Slot::default();
            let out = request
                .customize()
                .interceptor(super::get_records_json::DirectGetRecords::new(slot.clone()))
                .send()
                .boxed()
                .await
                .map_err(|e| from_sdk(Service::Kinesis, e))?;
            let direct = slot.lock().ok().and_then(|mut slot| slot.take());
            return match direct {
                Some(direct) => Ok(direct),
                None => sdk_records_output(out),
            };
        }
        let out = request
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        sdk_records_output(out)
    }

    /// One PutRecords call. The outcomes are in the order of `entries`.
    ///
    /// # Errors
    ///
    /// An error of the whole call (throttling of the call itself, a missing
    /// stream, no access); failures of single entries are outcomes.
    pub(crate) async fn put_records(
        &self,
        stream: &StreamRef,
        entries: &[PutEntry],
    ) -> Result<Vec<PutOutcome>> {
        let records = entries
            .iter()
            .map(|entry| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(entry.data.to_vec()))
                    .partition_key(&entry.partition_key)
                    .set_explicit_hash_key(entry.explicit_hash_key.clone())
                    .build()
                    .map_err(|e| Error::InvalidInput(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let (name, arn) = stream.name_and_arn();
        let out = self
            .client
            .put_records()
            .set_stream_name(name)
            .set_stream_arn(arn)
            .set_records(Some(records))
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        if out.records().len() != entries.len() {
            return Err(Error::Service {
                service: Service::Kinesis,
                code: "MismatchedResponse".into(),
                message: format!(
                    "PutRecords answered {} entries for {} sent",
                    out.records().len(),
                    entries.len()
                ),
                retryable: true,
            });
        }
        Ok(out
            .records()
            .iter()
            .map(|result| {
                match (
                    result.shard_id(),
                    result.sequence_number(),
                    result.error_code(),
                ) {
                    (Some(shard_id), Some(sequence), None) => {
                        match sequence.parse::<SequenceNumber>() {
                            Ok(sequence_number) => PutOutcome::Written {
                                shard_id: ShardId::from(shard_id),
                                sequence_number,
                            },
                            Err(_) => PutOutcome::Failed {
                                code: "MalformedSequenceNumber".to_owned(),
                                message: format!(
                                    "PutRecords answered the sequence number {sequence:?}"
                                ),
                            },
                        }
                    }
                    (_, _, code) => PutOutcome::Failed {
                        code: code.unwrap_or("Unknown").to_owned(),
                        message: result.error_message().unwrap_or_default().to_owned(),
                    },
                }
            })
            .collect())
    }
}

/// A shard as ListShards describes it, checked: a shard without valid
/// ranges is a malformed answer.
fn shard_from_sdk(shard: &aws_sdk_kinesis::types::Shard) -> Result<Shard> {
    let bad = |what: &str| Error::Service {
        service: Service::Kinesis,
        code: "MalformedShard".into(),
        message: format!("shard {} has {what}", shard.shard_id()),
        retryable: false,
    };
    let range = shard
        .hash_key_range()
        .ok_or_else(|| bad("no hash-key range"))?;
    let start: HashKey = range
        .starting_hash_key()
        .parse()
        .map_err(|_| bad("a bad starting hash key"))?;
    let end: HashKey = range
        .ending_hash_key()
        .parse()
        .map_err(|_| bad("a bad ending hash key"))?;
    let sequence_range = shard
        .sequence_number_range()
        .ok_or_else(|| bad("no sequence-number range"))?;
    let starting: SequenceNumber = sequence_range
        .starting_sequence_number()
        .parse()
        .map_err(|_| bad("a bad starting sequence number"))?;
    let ending = sequence_range
        .ending_sequence_number()
        .map(|s| s.parse::<SequenceNumber>())
        .transpose()
        .map_err(|_| bad("a bad ending sequence number"))?;
    Ok(Shard {
        id: ShardId::from(shard.shard_id()),
        parent_shard_id: shard.parent_shard_id().map(ShardId::from),
        adjacent_parent_shard_id: shard.adjacent_parent_shard_id().map(ShardId::from),
        hash_key_range: HashKeyRange::new(start, end).map_err(|_| bad("an inverted range"))?,
        starting_sequence_number: starting,
        ending_sequence_number: ending,
    })
}

/// The SDK's GetRecords output in domain types.
pub(super) fn sdk_records_output(
    mut out: aws_sdk_kinesis::operation::get_records::GetRecordsOutput,
) -> Result<GetRecordsOutput> {
    // Moving the SDK's strings and buffers avoids a copy per record.
    let records = records_from_sdk(std::mem::take(&mut out.records))?;
    let child_shards = child_shards_from_sdk(out.child_shards(), "GetRecords");
    Ok(GetRecordsOutput {
        records,
        next_shard_iterator: out.next_shard_iterator().map(str::to_owned),
        millis_behind_latest: out
            .millis_behind_latest()
            .and_then(|m| u64::try_from(m).ok()),
        child_shards,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_call_keeps_the_sdk_future_on_the_heap() {
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .build();
        let kinesis = Kinesis::new(Client::from_conf(config));
        let (stream, shard) = (StreamRef::parse("s"), ShardId::from("shardId-0"));
        // A shard's reader awaits these all its life; inline, an SDK request
        // future would add several KiB to every idle shard.
        let records = kinesis.get_records("iterator", 1);
        assert!(
            std::mem::size_of_val(&records) <= 256,
            "{}",
            std::mem::size_of_val(&records)
        );
        let iterator = kinesis.get_shard_iterator(&stream, &shard, &StartingPosition::TrimHorizon);
        assert!(
            std::mem::size_of_val(&iterator) <= 256,
            "{}",
            std::mem::size_of_val(&iterator)
        );
    }
}
