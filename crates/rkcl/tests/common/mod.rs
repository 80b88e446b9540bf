//! Helpers shared by the integration tests: streams on the local Kinesis.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use rkcl::{
    Deaggregator, HashRangePolicy, Kinesis, KinesisRecord, PollingConfig, Shard, StreamRef,
    UserRecord,
};
use rkcl_local::Local;

/// Creates a stream and waits until it is active.
pub async fn create_stream(kinesis: &Kinesis, name: &str, shards: u32) -> StreamRef {
    kinesis.create_stream(name, shards).await.unwrap();
    let stream = StreamRef::parse(name);
    kinesis
        .wait_until_active(&stream, Duration::from_secs(10))
        .await
        .unwrap();
    stream
}

/// Splits `shard` of `stream` in the middle of its hash-key range (or at
/// `at`) and waits until the stream is active again.
pub async fn split(
    local: &Local,
    kinesis: &Kinesis,
    stream: &StreamRef,
    shard: &Shard,
    at: Option<u128>,
) {
    let middle = at.unwrap_or(
        shard.hash_key_range.start().as_u128() / 2 + shard.hash_key_range.end().as_u128() / 2,
    );
    local
        .kinesis_client()
        .split_shard()
        .stream_name(stream.name())
        .shard_to_split(shard.id.as_str())
        .new_starting_hash_key(middle.to_string())
        .send()
        .await
        .unwrap();
    kinesis
        .wait_until_active(stream, Duration::from_secs(10))
        .await
        .unwrap();
}

/// Merges two adjacent shards and waits until the stream is active again.
pub async fn merge(local: &Local, kinesis: &Kinesis, stream: &StreamRef, a: &Shard, b: &Shard) {
    local
        .kinesis_client()
        .merge_shards()
        .stream_name(stream.name())
        .shard_to_merge(a.id.as_str())
        .adjacent_shard_to_merge(b.id.as_str())
        .send()
        .await
        .unwrap();
    kinesis
        .wait_until_active(stream, Duration::from_secs(10))
        .await
        .unwrap();
}

/// Polling settings that keep tests quick: the shortest allowed pauses.
pub fn quick_polling() -> PollingConfig {
    PollingConfig {
        idle_interval: Duration::from_millis(200),
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        ..PollingConfig::default()
    }
}

/// `key-K` records whose data is `K:N`, N counting per key.
pub fn keyed_records(keys: usize, per_key: usize, first: usize) -> Vec<rkcl::ProducerRecord> {
    (first..first + per_key)
        .flat_map(|n| {
            (0..keys)
                .map(move |k| rkcl::ProducerRecord::new(format!("key-{k}"), format!("{k}:{n}")))
        })
        .collect()
}

/// Reads `K:N` back out of a record's data.
pub fn key_and_number(data: &[u8]) -> (usize, usize) {
    let text = std::str::from_utf8(data).unwrap();
    let (k, n) = text.split_once(':').unwrap();
    (k.parse().unwrap(), n.parse().unwrap())
}

/// The Kinesis records of one shard, from TRIM_HORIZON to its end or tip,
/// read with plain SDK calls.
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
        .unwrap()
        .shard_iterator()
        .map(str::to_owned);
    while let Some(it) = iterator {
        let out = client
            .get_records()
            .shard_iterator(it)
            .send()
            .await
            .unwrap();
        records.extend(out.records().iter().map(|record| KinesisRecord {
            sequence_number: record.sequence_number().parse().unwrap(),
            partition_key: record.partition_key().to_owned(),
            data: record.data().as_ref().to_vec().into(),
            approximate_arrival_timestamp: None,
        }));
        let at_tip = out.records().is_empty() && out.millis_behind_latest() == Some(0);
        iterator = if at_tip {
            None
        } else {
            out.next_shard_iterator().map(str::to_owned)
        };
    }
    records
}

/// Reads every shard, open and closed, from TRIM_HORIZON to its end or tip,
/// de-aggregating with each shard's own range under the KCL's policy.
pub async fn read_all_raw(
    local: &Local,
    kinesis: &Kinesis,
    stream: &StreamRef,
) -> (Vec<UserRecord>, u64) {
    let mut users = Vec::new();
    let mut dropped = 0;
    for shard in kinesis.list_shards(stream).await.unwrap() {
        let mut deaggregator = Deaggregator::for_shard(
            shard.id.clone(),
            shard.hash_key_range,
            HashRangePolicy::DropAggregate,
        );
        for record in read_shard_raw(local, stream, &shard).await {
            deaggregator.deaggregate_into(record, &mut users);
        }
        dropped += deaggregator.stats().sub_records_dropped;
    }
    (users, dropped)
}
