//! Reading shards raw, with plain SDK calls and none of rkcl's reader: an
//! independent view of what a stream holds, and the baseline the benches
//! compare rkcl's reader with.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::types::ShardIteratorType;
use rkcl::{
    Kinesis, UserRecord,
    aws::StreamRef,
    kpl::{DeaggregationStats, Deaggregator, HashRangePolicy},
    record::KinesisRecord,
    shards::Shard,
};

use crate::Local;

/// The Kinesis records of one shard, from TRIM_HORIZON to its end or tip,
/// read with plain SDK GetRecords calls.
///
/// The shard's end is a response without a next iterator; its tip is an
/// empty response zero milliseconds behind.
///
/// # Panics
///
/// When a call fails or a sequence number does not parse.
pub async fn read_shard_raw(
    local: &Local,
    stream: &StreamRef,
    shard: &Shard,
) -> Vec<KinesisRecord> {
    let client = local.kinesis_client();
    let mut records = Vec::new();
    let mut iterator = client
        .get_shard_iterator()
        .stream_name(stream.name())
        .shard_id(shard.id.as_str())
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap_or_else(|err| panic!("an iterator for {} of {stream}: {err:?}", shard.id))
        .shard_iterator()
        .map(str::to_owned);
    while let Some(it) = iterator {
        let out = client
            .get_records()
            .shard_iterator(it)
            .send()
            .await
            .unwrap_or_else(|err| panic!("reading {} of {stream}: {err:?}", shard.id));
        records.extend(out.records().iter().map(|record| KinesisRecord {
            sequence_number: record.sequence_number().parse().unwrap(),
            partition_key: record.partition_key().to_owned(),
            data: record.data().as_ref().to_vec().into(),
            approximate_arrival_timestamp: None,
        }));
        // An open shard is read to its tip; a closed one to its end (where
        // Kinesis gives no next iterator), whatever it says of its lag.
        let at_tip = shard.ending_sequence_number.is_none()
            && out.records().is_empty()
            && out.millis_behind_latest() == Some(0);
        iterator = if at_tip {
            None
        } else {
            out.next_shard_iterator().map(str::to_owned)
        };
    }
    records
}

/// One shard as [`read_all_raw`] found it.
#[derive(Clone, Debug)]
pub struct RawShard {
    /// The shard, as ListShards describes it.
    pub shard: Shard,
    /// Its Kinesis records in order, aggregates whole.
    pub records: Vec<KinesisRecord>,
    /// Its user records in order, de-aggregated with the shard's own
    /// hash-key range under [`HashRangePolicy::DropAggregate`] (the KCL's
    /// rule).
    pub user_records: Vec<UserRecord>,
    /// What de-aggregation did, including what it dropped.
    pub stats: DeaggregationStats,
}

/// Every shard of a stream as [`read_all_raw`] found it.
#[derive(Clone, Debug)]
pub struct RawStream {
    /// The shards in ListShards order, open and closed.
    pub shards: Vec<RawShard>,
}

impl RawStream {
    /// The user records of every shard, shard after shard.
    pub fn user_records(&self) -> Vec<UserRecord> {
        self.shards
            .iter()
            .flat_map(|shard| shard.user_records.iter().cloned())
            .collect()
    }

    /// User records dropped over all shards, inside aggregates whose records
    /// fall outside the shard's range (as a KCL consumer drops them).
    pub fn sub_records_dropped(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| shard.stats.sub_records_dropped)
            .sum()
    }
}

/// Reads every shard, open and closed, from TRIM_HORIZON to its end or tip
/// with [`read_shard_raw`], and de-aggregates each with its own range under
/// the KCL's policy.
///
/// # Panics
///
/// When ListShards or a read fails.
pub async fn read_all_raw(local: &Local, stream: &StreamRef) -> RawStream {
    let kinesis = Kinesis::new(local.kinesis_client());
    let mut shards = Vec::new();
    for shard in kinesis
        .list_shards(stream)
        .await
        .unwrap_or_else(|err| panic!("listing the shards of {stream}: {err}"))
    {
        let mut deaggregator = Deaggregator::for_shard(
            shard.id.clone(),
            shard.hash_key_range,
            HashRangePolicy::DropAggregate,
        );
        let records = read_shard_raw(local, stream, &shard).await;
        let mut user_records = Vec::new();
        for record in &records {
            deaggregator.deaggregate_into(record.clone(), &mut user_records);
        }
        shards.push(RawShard {
            stats: deaggregator.stats(),
            shard,
            records,
            user_records,
        });
    }
    RawStream { shards }
}

/// Kinesis' read limit per shard, in bytes per second.
const SHARD_READ_BYTES_PER_SECOND: f64 = 2.0 * 1024.0 * 1024.0;

/// The most records one GetRecords call of [`plain_read_loop`] asks for.
const PLAIN_LOOP_LIMIT: usize = 10_000;

/// Which of Kinesis' per-shard read limits [`plain_read_loop`] keeps (the
/// local Kinesis enforces none of them; AWS enforces both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadLimits {
    /// Calls back to back.
    Off,
    /// Five calls per second: 200 ms from the start of one call to the next.
    Calls,
    /// Five calls per second and 2 MiB/s, the latter as a token bucket
    /// holding one second's worth.
    CallsAndBytes,
}

/// A plain loop of SDK GetRecords calls on every shard at once, from
/// TRIM_HORIZON until each is at its tip, without de-aggregation: the
/// baseline to compare a reader's throughput with. Returns the Kinesis
/// records read.
///
/// A shard is at its tip when a call returns fewer records than asked for
/// (10,000) zero milliseconds behind. Each shard is read by its own task on
/// the current runtime.
///
/// # Panics
///
/// When ListShards or a call fails.
pub async fn plain_read_loop(local: &Local, stream: &StreamRef, limits: ReadLimits) -> usize {
    let client = local.kinesis_client();
    let kinesis = Kinesis::new(client.clone());
    let mut tasks = Vec::new();
    for shard in kinesis
        .list_shards(stream)
        .await
        .unwrap_or_else(|err| panic!("listing the shards of {stream}: {err}"))
    {
        let client = client.clone();
        let name = stream.name().to_owned();
        tasks.push(tokio::spawn(async move {
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(name)
                .shard_id(shard.id.as_str())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .unwrap()
                .shard_iterator()
                .map(str::to_owned);
            let mut count = 0;
            let (mut tokens, mut refilled) = (SHARD_READ_BYTES_PER_SECOND, Instant::now());
            while let Some(it) = iterator {
                let started = Instant::now();
                let out = client
                    .get_records()
                    .shard_iterator(it)
                    .limit(PLAIN_LOOP_LIMIT as i32)
                    .send()
                    .await
                    .unwrap();
                count += out.records().len();
                if out.millis_behind_latest() == Some(0) && out.records().len() < PLAIN_LOOP_LIMIT {
                    break;
                }
                iterator = out.next_shard_iterator().map(str::to_owned);
                let mut next = started;
                if limits != ReadLimits::Off {
                    next += Duration::from_millis(200);
                }
                if limits == ReadLimits::CallsAndBytes {
                    let bytes: usize = out.records().iter().map(|r| r.data().as_ref().len()).sum();
                    let now = Instant::now();
                    tokens = (tokens
                        + (now - refilled).as_secs_f64() * SHARD_READ_BYTES_PER_SECOND)
                        .min(SHARD_READ_BYTES_PER_SECOND)
                        - bytes as f64;
                    refilled = now;
                    if tokens < 0.0 {
                        next = next.max(
                            now + Duration::from_secs_f64(-tokens / SHARD_READ_BYTES_PER_SECOND),
                        );
                    }
                }
                tokio::time::sleep_until(next.into()).await;
            }
            count
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total
}
