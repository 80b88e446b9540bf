//! The producer against the local Kinesis: order per key, aggregation per
//! predicted shard, and re-sending after a reshard; and the testkit's puts
//! that tell where each record landed.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{key_and_number, keyed_records};
use rkcl::{
    Kinesis, SequenceNumber, ShardId, UserRecord,
    aws::StreamRef,
    model::HashKey,
    producer::{Producer, ProducerConfig},
    record::ProducerRecord,
};
use rkcl_local::Local;
use rkcl_local::testkit::{
    PUT_RECORDS_MAX_ENTRIES, RawStream, RecordPosition, create_stream, put, put_with_positions,
    read_all_raw, split,
};

/// Every record exactly once, and per key in the order written.
fn assert_complete_and_ordered(users: &[UserRecord], keys: usize, per_key: usize) {
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut by_shard_order: Vec<&UserRecord> = users.iter().collect();
    // Order within a key is the order of sequence numbers (and sub-sequence
    // numbers) across the shards the key passed through.
    by_shard_order.sort_by(|a, b| {
        a.extended_sequence_number()
            .cmp(&b.extended_sequence_number())
    });
    for user in by_shard_order {
        let (k, n) = key_and_number(&user.data);
        let expected = next.entry(k).or_default();
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
    let config = ProducerConfig::builder()
        .strict_order(true)
        .build()
        .unwrap();
    let summary = put(&kinesis, &stream, keyed_records(20, 30, 0), config).await;
    assert_eq!(summary.user_records, 600);
    assert_eq!(summary.kinesis_records, 600);
    // Strict order: at most one record per key in a request.
    assert!(summary.requests >= 30, "{summary:?}");
    let raw = read_all_raw(&local, &stream).await;
    let users = raw.user_records();
    assert_eq!(raw.sub_records_dropped(), 0);
    assert!(users.iter().all(|u| !u.is_aggregated()));
    assert_complete_and_ordered(&users, 20, 30);
}

#[tokio::test]
async fn aggregates_go_to_the_predicted_shard() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "aggregated", 4).await;
    let config = ProducerConfig::builder()
        .aggregate(true)
        .aggregate_max_size(4096)
        .build()
        .unwrap();
    let summary = put(&kinesis, &stream, keyed_records(40, 50, 0), config).await;
    assert_eq!(summary.user_records, 2000);
    assert!(summary.kinesis_records < 100, "{summary:?}");
    assert_eq!(summary.resent_after_reshard, 0);
    let raw = read_all_raw(&local, &stream).await;
    let users = raw.user_records();
    assert_eq!(
        raw.sub_records_dropped(),
        0,
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
    let config = ProducerConfig::builder().aggregate(true).build().unwrap();
    let mut producer = Producer::new(kinesis.clone(), stream.clone(), config).unwrap();
    // The first put learns the shard map: one shard.
    producer.put(keyed_records(30, 1, 0)).await.unwrap();
    // The stream is split behind the producer's back.
    let parent = kinesis.list_shards(&stream).await.unwrap().remove(0);
    split(&local, &stream, &parent, Some(u128::MAX / 2)).await;
    let more: Vec<ProducerRecord> = keyed_records(30, 20, 0).into_iter().skip(30).collect();
    let summary = producer.put(more).await.unwrap();
    assert!(summary.resent_after_reshard > 0, "{summary:?}");
    assert_eq!(summary.user_records, 30 * 19);
    let raw = read_all_raw(&local, &stream).await;
    let users = raw.user_records();
    assert!(
        raw.sub_records_dropped() > 0,
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
        vec![0u8; rkcl::kpl::MAX_KINESIS_RECORD_SIZE],
    )];
    assert!(matches!(
        producer.put(huge).await,
        Err(rkcl::Error::RecordTooLarge { .. })
    ));
    assert!(
        read_all_raw(&local, &stream)
            .await
            .user_records()
            .is_empty()
    );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_entries_are_retried_until_written_in_order() {
    // The local Kinesis throttles writes above 1,000 records/s per shard.
    let local = throttling_local().await;
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "throttled", 1).await;
    let config = ProducerConfig::builder()
        .strict_order(true)
        .max_attempts(50)
        .build()
        .unwrap();
    // 600 records per request at most (one per key), 2,400 in all.
    let summary = put(&kinesis, &stream, keyed_records(600, 4, 0), config).await;
    assert_eq!(summary.user_records, 2_400);
    assert!(
        summary.retried_entries > 0,
        "the shard's write limit was hit: {summary:?}"
    );
    let users = read_all_raw(&local, &stream).await.user_records();
    assert_complete_and_ordered(&users, 600, 4);
}

/// Where a raw read finds each record, by its data (which the tests keep
/// unique), with every Kinesis record of the stream counted once.
fn positions_by_data(raw: &RawStream) -> HashMap<&[u8], RecordPosition> {
    let mut found = HashMap::new();
    for shard in &raw.shards {
        for record in &shard.records {
            let position = RecordPosition {
                shard_id: shard.shard.id.clone(),
                sequence_number: record.sequence_number.clone(),
            };
            let data: &[u8] = &record.data;
            if let Some(earlier) = found.insert(data, position) {
                panic!("{:?} found twice, first at {earlier:?}", record.data);
            }
        }
    }
    found
}

#[tokio::test]
async fn put_with_positions_tells_where_each_record_is_found() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "positions", 2).await;
    // 1,200 records, three PutRecords calls; every tenth goes by an explicit
    // hash key to the top of the key space, whatever its partition key.
    let mut records = keyed_records(40, 30, 0);
    assert!(records.len() > 2 * PUT_RECORDS_MAX_ENTRIES);
    for record in records.iter_mut().step_by(10) {
        record.explicit_hash_key = Some(u128::MAX.to_string());
    }
    let positions = put_with_positions(&local, &stream, &records).await;
    assert_eq!(positions.len(), records.len());

    let raw = read_all_raw(&local, &stream).await;
    assert_eq!(raw.shards.len(), 2);
    let found = positions_by_data(&raw);
    assert_eq!(found.len(), records.len(), "every record written once");
    let mut last: HashMap<&ShardId, &SequenceNumber> = HashMap::new();
    for (i, (record, position)) in records.iter().zip(&positions).enumerate() {
        let data: &[u8] = &record.data;
        assert_eq!(found.get(data), Some(position), "record {i}");
        let shard = &raw
            .shards
            .iter()
            .find(|raw_shard| raw_shard.shard.id == position.shard_id)
            .unwrap()
            .shard;
        let key =
            HashKey::of_record(&record.partition_key, record.explicit_hash_key.as_deref()).unwrap();
        assert!(
            shard.hash_key_range.contains(key),
            "record {i} landed in {} outside its hash key",
            shard.id
        );
        if let Some(previous) = last.insert(&position.shard_id, &position.sequence_number) {
            assert!(
                *previous < position.sequence_number,
                "record {i} at {position:?}, after {previous} in put order"
            );
        }
    }
    assert_eq!(last.len(), 2, "both shards written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_positions_sends_throttled_entries_again() {
    // The local Kinesis writes at most 1,000 records per shard in a window
    // of a second and throttles the rest.
    let local = throttling_local().await;
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "positions-throttled", 1).await;
    let records = keyed_records(50, 50, 0);
    let started = Instant::now();
    let positions = put_with_positions(&local, &stream, &records).await;
    // 2,500 records need three windows: the third call was throttled.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "written in {:?}, faster than the write limit allows",
        started.elapsed()
    );
    let raw = read_all_raw(&local, &stream).await;
    let found = positions_by_data(&raw);
    assert_eq!(found.len(), records.len(), "every record written once");
    for (i, (record, position)) in records.iter().zip(&positions).enumerate() {
        let data: &[u8] = &record.data;
        assert_eq!(found.get(data), Some(position), "record {i}");
    }
    assert_eq!(positions.len(), records.len());
}

/// Local services whose Kinesis throttles writes above 1,000 records/s per
/// shard, as AWS does.
async fn throttling_local() -> Local {
    Local::builder()
        .kinesis_settings(rkcl_local::KinesisSettings {
            enforce_write_limits: true,
            ..rkcl_local::KinesisSettings::default()
        })
        .start()
        .await
        .unwrap()
}
