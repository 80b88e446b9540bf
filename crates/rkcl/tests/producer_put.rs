//! The producer against the local Kinesis: order per key, aggregation per
//! predicted shard, and re-sending after a reshard.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use rkcl::{
    Deaggregator, HashRangePolicy, Kinesis, KinesisRecord, Producer, ProducerConfig,
    ProducerRecord, StreamRef, UserRecord,
};
use rkcl_local::Local;

async fn create_stream(kinesis: &Kinesis, name: &str, shards: u32) -> StreamRef {
    kinesis.create_stream(name, shards).await.unwrap();
    let stream = StreamRef::parse(name);
    kinesis
        .wait_until_active(&stream, Duration::from_secs(10))
        .await
        .unwrap();
    stream
}

/// Reads every shard, open and closed, from TRIM_HORIZON to its end or tip,
/// de-aggregating with each shard's own range under the KCL's policy.
async fn read_all(local: &Local, kinesis: &Kinesis, stream: &StreamRef) -> (Vec<UserRecord>, u64) {
    let client = local.kinesis_client();
    let mut users = Vec::new();
    let mut dropped = 0;
    for shard in kinesis.list_shards(stream).await.unwrap() {
        let mut deaggregator = Deaggregator::for_shard(
            shard.id.clone(),
            shard.hash_key_range,
            HashRangePolicy::DropAggregate,
        );
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
            for record in out.records() {
                deaggregator.deaggregate_into(
                    KinesisRecord {
                        sequence_number: record.sequence_number().parse().unwrap(),
                        partition_key: record.partition_key().to_owned(),
                        data: record.data().as_ref().to_vec().into(),
                        approximate_arrival_timestamp: None,
                    },
                    &mut users,
                );
            }
            let at_tip = out.records().is_empty() && out.millis_behind_latest() == Some(0);
            iterator = if at_tip {
                None
            } else {
                out.next_shard_iterator().map(str::to_owned)
            };
        }
        dropped += deaggregator.stats().sub_records_dropped;
    }
    (users, dropped)
}

fn records(keys: usize, per_key: usize) -> Vec<ProducerRecord> {
    (0..per_key)
        .flat_map(|n| {
            (0..keys).map(move |k| ProducerRecord::new(format!("key-{k}"), format!("{k}:{n}")))
        })
        .collect()
}

/// Every record exactly once, and per key in the order written.
fn assert_complete_and_ordered(users: &[UserRecord], keys: usize, per_key: usize) {
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut by_shard_order: Vec<&UserRecord> = users.iter().collect();
    // Order within a key is the order of sequence numbers (and sub-sequence
    // numbers) across the shards the key passed through.
    by_shard_order.sort_by(|a, b| {
        a.extended_sequence_number()
            .cmp(&b.extended_sequence_number())
    });
    for user in by_shard_order {
        let text = std::str::from_utf8(&user.data).unwrap();
        let (k, n) = text.split_once(':').unwrap();
        let n: usize = n.parse().unwrap();
        let expected = next.entry(format!("key-{k}")).or_default();
        assert_eq!(n, *expected, "key {k}: got record {n}, expected {expected}");
        *expected += 1;
    }
    assert_eq!(next.len(), keys);
    assert!(next.values().all(|&n| n == per_key), "{next:?}");
    assert_eq!(users.len(), keys * per_key);
}

#[tokio::test]
async fn plain_and_strict_puts_keep_per_key_order() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "plain", 3).await;
    let config = ProducerConfig {
        strict_order: true,
        ..ProducerConfig::default()
    };
    let mut producer = Producer::new(kinesis.clone(), stream.clone(), config).unwrap();
    let summary = producer.put(records(20, 30)).await.unwrap();
    assert_eq!(summary.user_records, 600);
    assert_eq!(summary.kinesis_records, 600);
    // Strict order: at most one record per key in a request.
    assert!(summary.requests >= 30, "{summary:?}");
    let (users, dropped) = read_all(&local, &kinesis, &stream).await;
    assert_eq!(dropped, 0);
    assert!(users.iter().all(|u| !u.is_aggregated()));
    assert_complete_and_ordered(&users, 20, 30);
}

#[tokio::test]
async fn aggregates_go_to_the_predicted_shard() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "aggregated", 4).await;
    let config = ProducerConfig {
        aggregate: true,
        aggregate_max_size: 4096,
        ..ProducerConfig::default()
    };
    let mut producer = Producer::new(kinesis.clone(), stream.clone(), config).unwrap();
    let summary = producer.put(records(40, 50)).await.unwrap();
    assert_eq!(summary.user_records, 2000);
    assert!(summary.kinesis_records < 100, "{summary:?}");
    assert_eq!(summary.resent_after_reshard, 0);
    let (users, dropped) = read_all(&local, &kinesis, &stream).await;
    assert_eq!(
        dropped, 0,
        "a KCL consumer drops nothing the producer aggregated"
    );
    assert!(users.iter().all(UserRecord::is_aggregated));
    assert_complete_and_ordered(&users, 40, 50);
}

#[tokio::test]
async fn aggregates_that_land_in_a_new_shard_are_sent_again() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "resharded", 1).await;
    let config = ProducerConfig {
        aggregate: true,
        ..ProducerConfig::default()
    };
    let mut producer = Producer::new(kinesis.clone(), stream.clone(), config).unwrap();
    // The first put learns the shard map: one shard.
    producer.put(records(30, 1)).await.unwrap();
    // The stream is split behind the producer's back.
    let parent = kinesis.list_shards(&stream).await.unwrap().remove(0);
    local
        .kinesis_client()
        .split_shard()
        .stream_name("resharded")
        .shard_to_split(parent.id.as_str())
        .new_starting_hash_key((u128::MAX / 2).to_string())
        .send()
        .await
        .unwrap();
    kinesis
        .wait_until_active(&stream, Duration::from_secs(10))
        .await
        .unwrap();
    let more: Vec<ProducerRecord> = records(30, 20).into_iter().skip(30).collect();
    let summary = producer.put(more).await.unwrap();
    assert!(summary.resent_after_reshard > 0, "{summary:?}");
    assert_eq!(summary.user_records, 30 * 19);
    let (users, dropped) = read_all(&local, &kinesis, &stream).await;
    assert!(
        dropped > 0,
        "the misrouted aggregate is dropped by the consumer"
    );
    assert_complete_and_ordered(&users, 30, 20);
}

#[tokio::test]
async fn bad_records_are_refused_before_anything_is_sent() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "refused", 1).await;
    let mut producer =
        Producer::new(kinesis.clone(), stream.clone(), ProducerConfig::default()).unwrap();
    let batch = vec![
        ProducerRecord::new("fine", "ok"),
        ProducerRecord::new("", "empty key"),
    ];
    assert!(matches!(
        producer.put(batch).await,
        Err(rkcl::Error::InvalidInput(_))
    ));
    let huge = vec![ProducerRecord::new(
        "k",
        vec![0u8; rkcl::MAX_KINESIS_RECORD_SIZE],
    )];
    assert!(matches!(
        producer.put(huge).await,
        Err(rkcl::Error::RecordTooLarge { .. })
    ));
    let (users, _) = read_all(&local, &kinesis, &stream).await;
    assert!(users.is_empty());

    let mut missing = Producer::new(
        kinesis,
        StreamRef::parse("no-such-stream"),
        ProducerConfig::default(),
    )
    .unwrap();
    let err = missing
        .put(vec![ProducerRecord::new("k", "v")])
        .await
        .unwrap_err();
    assert!(matches!(err, rkcl::Error::ResourceNotFound { .. }), "{err}");
    assert!(!err.is_retryable());
}
