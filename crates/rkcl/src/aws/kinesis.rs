//! Kinesis calls, in domain types.

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use bytes::Bytes;

use futures_util::FutureExt;

use super::error::from_sdk;
use crate::error::{Error, Result, Service};
use crate::model::{HashKey, HashKeyRange, SequenceNumber, ShardId, StartingPosition};
use crate::record::KinesisRecord;
use crate::shards::Shard;

/// A stream named by its name or by its ARN.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StreamRef {
    /// The stream's name, in the client's account and region.
    Name(String),
    /// The stream's ARN, `arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`.
    Arn(String),
}

impl StreamRef {
    /// Reads a stream name or, when the text starts with `arn:`, an ARN.
    pub fn parse(text: &str) -> Self {
        if text.starts_with("arn:") {
            Self::Arn(text.to_owned())
        } else {
            Self::Name(text.to_owned())
        }
    }

    /// The stream's name: the name itself, or the last part of the ARN.
    pub fn name(&self) -> &str {
        match self {
            Self::Name(name) => name,
            Self::Arn(arn) => arn.rsplit_once("stream/").map_or(arn.as_str(), |(_, n)| n),
        }
    }

    fn name_and_arn(&self) -> (Option<String>, Option<String>) {
        match self {
            Self::Name(name) => (Some(name.clone()), None),
            Self::Arn(arn) => (None, Some(arn.clone())),
        }
    }
}

impl std::fmt::Display for StreamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Arn(arn) => f.write_str(arn),
        }
    }
}

/// Which shards ListShards returns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardFilter {
    /// The shards open now.
    AtLatest,
    /// The shards open at the trim horizon and their descendants.
    AtTrimHorizon,
    /// The shards open at a time and their descendants.
    AtTimestamp(std::time::SystemTime),
    /// The shards whose id sorts after this one (children of a shard have
    /// higher ids than their parents).
    AfterShardId(ShardId),
}

impl ShardFilter {
    fn to_sdk(&self) -> Result<aws_sdk_kinesis::types::ShardFilter> {
        use aws_sdk_kinesis::types::ShardFilterType;
        let builder = aws_sdk_kinesis::types::ShardFilter::builder();
        let builder = match self {
            Self::AtLatest => builder.r#type(ShardFilterType::AtLatest),
            Self::AtTrimHorizon => builder.r#type(ShardFilterType::AtTrimHorizon),
            Self::AtTimestamp(time) => builder
                .r#type(ShardFilterType::AtTimestamp)
                .timestamp(DateTime::from(*time)),
            Self::AfterShardId(id) => builder
                .r#type(ShardFilterType::AfterShardId)
                .shard_id(id.as_str()),
        };
        builder
            .build()
            .map_err(|e| Error::InvalidInput(e.to_string()))
    }
}

/// Calls `fetch` with each page's token until a page has none, and gathers
/// the items. A token that repeats ends the listing with an error instead of
/// looping forever.
pub(crate) async fn collect_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>)>>,
{
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    let mut seen = std::collections::HashSet::new();
    loop {
        let (page, next) = fetch(token.take()).await?;
        items.extend(page);
        match next {
            Some(next) if !next.is_empty() => {
                if !seen.insert(next.clone()) {
                    return Err(Error::Service {
                        service: Service::Kinesis,
                        code: "RepeatedNextToken".into(),
                        message: "ListShards returned a page token it had returned before".into(),
                        retryable: true,
                    });
                }
                token = Some(next);
            }
            _ => return Ok(items),
        }
    }
}

/// What DescribeStreamSummary says of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    /// The stream's name.
    pub name: String,
    /// The stream's ARN.
    pub arn: String,
    /// `CREATING`, `ACTIVE`, `UPDATING` or `DELETING`.
    pub status: String,
    /// How many shards are open.
    pub open_shard_count: u32,
    /// How long records are kept, in hours.
    pub retention_period_hours: u32,
}

/// What one GetRecords call returned.
#[derive(Clone, Debug, Default)]
pub struct GetRecordsOutput {
    /// The records, in sequence-number order.
    pub records: Vec<KinesisRecord>,
    /// The iterator for the next call; `None` once a closed shard is read to
    /// its end.
    pub next_shard_iterator: Option<String>,
    /// How far behind the tip of the shard the last record is, if said.
    pub millis_behind_latest: Option<u64>,
    /// The children of a closed shard read to its end, when Kinesis says.
    pub child_shards: Vec<ChildShard>,
}

/// A child shard as GetRecords reports it at the end of a closed shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildShard {
    /// The child's id.
    pub id: ShardId,
    /// Its parents (one for a split, two for a merge).
    pub parent_shard_ids: Vec<ShardId>,
    /// The hash keys it receives.
    pub hash_key_range: HashKeyRange,
}

/// One entry of a PutRecords call.
#[derive(Clone, Debug)]
pub(crate) struct PutEntry {
    pub(crate) partition_key: String,
    pub(crate) explicit_hash_key: Option<String>,
    pub(crate) data: Bytes,
}

/// The outcome of one PutRecords entry.
#[derive(Clone, Debug)]
pub(crate) enum PutOutcome {
    Written { shard_id: ShardId },
    Failed { code: String, message: String },
}

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
}

impl Kinesis {
    /// Wraps an SDK client.
    pub fn new(client: Client) -> Self {
        Self { client }
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
    /// [`Error::InvalidRequest`] when the stream exists or the count is not
    /// allowed; any error of the call.
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
        let out = self
            .client
            .get_records()
            .shard_iterator(shard_iterator)
            .limit(limit)
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::Kinesis, e))?;
        let mut out = out;
        let mut records = Vec::with_capacity(out.records.len());
        // Moving the SDK's strings and buffers avoids a copy per record.
        for record in std::mem::take(&mut out.records) {
            let sequence_number = record.sequence_number.parse().map_err(|_| Error::Service {
                service: Service::Kinesis,
                code: "MalformedRecord".into(),
                message: format!("a record has sequence number {:?}", record.sequence_number),
                retryable: false,
            })?;
            records.push(KinesisRecord {
                sequence_number,
                partition_key: record.partition_key,
                data: Bytes::from(record.data.into_inner()),
                approximate_arrival_timestamp: record
                    .approximate_arrival_timestamp
                    .and_then(|t| std::time::SystemTime::try_from(t).ok()),
            });
        }
        let mut child_shards = Vec::new();
        for child in out.child_shards() {
            let range = child.hash_key_range();
            let (Ok(start), Ok(end)) = (
                range
                    .and_then(|r| r.starting_hash_key().parse::<HashKey>().ok())
                    .ok_or(()),
                range
                    .and_then(|r| r.ending_hash_key().parse::<HashKey>().ok())
                    .ok_or(()),
            ) else {
                tracing::warn!(
                    child = child.shard_id(),
                    "GetRecords named a child shard without a valid hash-key range; \
                     the child is left to the next shard sync"
                );
                continue;
            };
            let Ok(hash_key_range) = HashKeyRange::new(start, end) else {
                tracing::warn!(
                    child = child.shard_id(),
                    "GetRecords named a child shard with an empty hash-key range; \
                     the child is left to the next shard sync"
                );
                continue;
            };
            child_shards.push(ChildShard {
                id: ShardId::from(child.shard_id()),
                parent_shard_ids: child
                    .parent_shards()
                    .iter()
                    .map(|p| ShardId::from(p.as_str()))
                    .collect(),
                hash_key_range,
            });
        }
        Ok(GetRecordsOutput {
            records,
            next_shard_iterator: out.next_shard_iterator().map(str::to_owned),
            millis_behind_latest: out
                .millis_behind_latest()
                .and_then(|m| u64::try_from(m).ok()),
            child_shards,
        })
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
            .map(|result| match (result.shard_id(), result.error_code()) {
                (Some(shard_id), None) => PutOutcome::Written {
                    shard_id: ShardId::from(shard_id),
                },
                (_, code) => PutOutcome::Failed {
                    code: code.unwrap_or("Unknown").to_owned(),
                    message: result.error_message().unwrap_or_default().to_owned(),
                },
            })
            .collect())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

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

    #[test]
    fn streams_are_named_by_name_or_arn() {
        let arn = StreamRef::parse("arn:aws:kinesis:eu-west-1:123456789012:stream/orders");
        assert!(matches!(arn, StreamRef::Arn(_)));
        assert_eq!(arn.name(), "orders");
        assert_eq!(arn.name_and_arn().0, None);
        let name = StreamRef::parse("orders");
        assert_eq!(name, StreamRef::Name("orders".into()));
        assert_eq!(name.name_and_arn(), (Some("orders".into()), None));
    }
    use std::sync::Mutex;

    /// Pages as a service would hand them out: (items, next token).
    fn fake_pages(
        pages: Vec<(Vec<u32>, Option<&str>)>,
    ) -> Mutex<VecDeque<(Vec<u32>, Option<String>)>> {
        Mutex::new(
            pages
                .into_iter()
                .map(|(items, token)| (items, token.map(str::to_owned)))
                .collect(),
        )
    }

    #[tokio::test]
    async fn follows_next_tokens_through_every_page() {
        let pages = fake_pages(vec![
            (vec![1, 2], Some("a")),
            (vec![], Some("b")),
            (vec![3], Some("c")),
            (vec![4, 5], None),
        ]);
        let tokens = Mutex::new(Vec::new());
        let items = collect_pages(|token| {
            tokens.lock().unwrap().push(token);
            let page = pages.lock().unwrap().pop_front().unwrap();
            async move { Ok(page) }
        })
        .await
        .unwrap();
        assert_eq!(items, vec![1, 2, 3, 4, 5]);
        assert_eq!(
            *tokens.lock().unwrap(),
            vec![None, Some("a".into()), Some("b".into()), Some("c".into())]
        );
    }

    #[tokio::test]
    async fn an_empty_token_ends_and_a_repeated_one_is_an_error() {
        let pages = fake_pages(vec![(vec![1], Some(""))]);
        let items = collect_pages(|_| {
            let page = pages.lock().unwrap().pop_front().unwrap();
            async move { Ok(page) }
        })
        .await
        .unwrap();
        assert_eq!(items, vec![1]);

        let pages = fake_pages(vec![(vec![1], Some("x")), (vec![2], Some("x"))]);
        let result = collect_pages(|_| {
            let page = pages.lock().unwrap().pop_front().unwrap();
            async move { Ok(page) }
        })
        .await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn an_error_on_a_later_page_is_returned() {
        let calls = Mutex::new(0);
        let result: Result<Vec<u32>> = collect_pages(|_| {
            let mut calls = calls.lock().unwrap();
            *calls += 1;
            let n = *calls;
            async move {
                if n == 1 {
                    Ok((vec![1], Some("next".to_owned())))
                } else {
                    Err(Error::Throttled {
                        service: Service::Kinesis,
                        message: "slow down".into(),
                    })
                }
            }
        })
        .await;
        assert!(matches!(result, Err(Error::Throttled { .. })));
    }
}
