//! Golden vectors: aggregates made by an independent implementation of the
//! KPL format (the Python `aws-kinesis-agg` package) with the user records
//! they hold. See `data/kpl-vectors.README.md`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use rkcl::{
    ShardId,
    kpl::{Deaggregator, Decoded, HashRangePolicy, PassThroughReason},
    model::{HashKey, HashKeyRange},
    record::KinesisRecord,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vector {
    name: String,
    kind: String,
    sequence_number: String,
    outer_partition_key: String,
    blob_b64: String,
    user_records: Vec<ExpectedUserRecord>,
}

#[derive(Deserialize)]
struct ExpectedUserRecord {
    partition_key: String,
    explicit_hash_key: Option<String>,
    data_b64: String,
    sub_sequence_number: Option<u64>,
    hash_key: String,
}

fn vectors() -> Vec<Vector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kpl-vectors.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    let vectors: Vec<Vector> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(vectors.len() >= 100, "only {} vectors", vectors.len());
    vectors
}

fn kinesis_record(vector: &Vector) -> KinesisRecord {
    KinesisRecord {
        sequence_number: vector.sequence_number.parse().unwrap(),
        partition_key: vector.outer_partition_key.clone(),
        data: Bytes::from(STANDARD.decode(&vector.blob_b64).unwrap()),
        approximate_arrival_timestamp: None,
    }
}

#[test]
fn every_vector_decodes_to_exactly_its_user_records() {
    let mut aggregated = 0;
    let mut passed_through = 0;
    for vector in vectors() {
        let record = kinesis_record(&vector);
        let users = Deaggregator::new().deaggregate(record.clone());
        assert_eq!(users.len(), vector.user_records.len(), "{}", vector.name);
        for (user, expected) in users.iter().zip(&vector.user_records) {
            let name = &vector.name;
            assert_eq!(user.partition_key, expected.partition_key, "{name}");
            assert_eq!(user.explicit_hash_key, expected.explicit_hash_key, "{name}");
            assert_eq!(
                user.data,
                STANDARD.decode(&expected.data_b64).unwrap(),
                "{name}"
            );
            assert_eq!(
                user.sub_sequence_number, expected.sub_sequence_number,
                "{name}"
            );
            assert_eq!(user.sequence_number, record.sequence_number, "{name}");
            let hash =
                HashKey::of_record(&user.partition_key, user.explicit_hash_key.as_deref()).unwrap();
            assert_eq!(hash.to_string(), expected.hash_key, "{name}");
        }
        match vector.kind.as_str() {
            "aggregated" => aggregated += 1,
            "pass_through" => {
                passed_through += 1;
                assert_eq!(users[0].data, record.data, "{}", vector.name);
                assert_eq!(users[0].partition_key, vector.outer_partition_key);
            }
            other => panic!("unknown kind {other}"),
        }
    }
    assert!(
        aggregated > 90 && passed_through >= 5,
        "{aggregated} / {passed_through}"
    );
}

#[test]
fn pass_through_vectors_are_counted_and_corrupt_ones_named() {
    let mut deaggregator = Deaggregator::new();
    let mut corrupt = 0;
    for vector in vectors().iter().filter(|v| v.kind == "pass_through") {
        let data = kinesis_record(vector).data;
        match deaggregator.decode(&data, None) {
            Decoded::PassThrough(reason) => {
                if reason != PassThroughReason::NotAggregated {
                    corrupt += 1;
                }
            }
            other => panic!("{}: {other:?}", vector.name),
        }
    }
    let stats = deaggregator.stats();
    assert_eq!(stats.corrupt, corrupt);
    assert!(corrupt >= 4, "the vectors hold several corrupt aggregates");
    assert_eq!(stats.not_aggregated + stats.corrupt, stats.records);
}

/// Splits the key space in two like a shard split and reads every vector
/// "from" each half: under the KCL rule an aggregate is delivered whole by
/// the half that holds all its records, or dropped (and counted) by both.
#[test]
fn filtering_by_a_shard_range_follows_the_policy() {
    let middle = u128::MAX / 2;
    let halves = [
        HashKeyRange::new(HashKey::MIN, HashKey::from_u128(middle)).unwrap(),
        HashKeyRange::new(HashKey::from_u128(middle + 1), HashKey::MAX).unwrap(),
    ];
    let mut dropped_somewhere = 0;
    for vector in vectors().iter().filter(|v| v.kind == "aggregated") {
        let hashes: Vec<HashKey> = vector
            .user_records
            .iter()
            .map(|u| u.hash_key.parse().unwrap())
            .collect();
        for (i, range) in halves.iter().enumerate() {
            let inside = hashes.iter().filter(|h| range.contains(**h)).count();
            let shard = ShardId::new(format!("shardId-{i}"));
            let mut kcl =
                Deaggregator::for_shard(shard.clone(), *range, HashRangePolicy::DropAggregate);
            let users = kcl.deaggregate(kinesis_record(vector));
            if inside == hashes.len() {
                assert_eq!(users.len(), hashes.len(), "{}", vector.name);
            } else {
                dropped_somewhere += 1;
                assert!(users.is_empty(), "{}", vector.name);
                assert_eq!(kcl.stats().aggregates_dropped, 1);
                assert_eq!(kcl.stats().sub_records_dropped, hashes.len() as u64);
            }
            let mut off = Deaggregator::for_shard(shard, *range, HashRangePolicy::Off);
            assert_eq!(off.deaggregate(kinesis_record(vector)).len(), hashes.len());
            assert_eq!(
                off.stats().sub_records_outside_range_kept,
                (hashes.len() - inside) as u64
            );
        }
    }
    assert!(
        dropped_somewhere > 10,
        "the vectors mix keys of both halves"
    );
}
