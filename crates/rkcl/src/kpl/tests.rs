use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::model::{HashKey, HashKeyRange, SequenceNumber, ShardId};
use crate::record::{KinesisRecord, ProducerRecord};

fn frame(body: &[u8]) -> Bytes {
    use md5::{Digest, Md5};
    let mut data = MAGIC.to_vec();
    data.extend_from_slice(body);
    data.extend_from_slice(&Md5::digest(body));
    Bytes::from(data)
}

fn aggregate_of(records: &[ProducerRecord]) -> Aggregate {
    let mut aggregator = Aggregator::with_max_size(MAX_KINESIS_RECORD_SIZE).unwrap();
    for record in records {
        assert!(aggregator.add(record.clone()).unwrap().is_none());
    }
    aggregator.flush().unwrap()
}

fn reason_of(data: Bytes) -> PassThroughReason {
    match Deaggregator::new().decode(&data, None) {
        Decoded::PassThrough(reason) => reason,
        other => panic!("expected a pass-through, got {other:?}"),
    }
}

#[test]
fn corrupt_inputs_pass_through_with_their_reason() {
    let good = aggregate_of(&[ProducerRecord::new("k", "v")]).data;
    assert_eq!(
        reason_of(Bytes::from_static(b"plain")),
        PassThroughReason::NotAggregated
    );
    assert_eq!(reason_of(Bytes::new()), PassThroughReason::NotAggregated);
    assert_eq!(
        reason_of(Bytes::from(MAGIC.to_vec())),
        PassThroughReason::TooShort
    );
    let mut bad_digest = good.to_vec();
    let last = bad_digest.len() - 1;
    bad_digest[last] ^= 1;
    assert_eq!(
        reason_of(Bytes::from(bad_digest)),
        PassThroughReason::DigestMismatch
    );
    assert_eq!(
        reason_of(frame(&[0xff; 40])),
        PassThroughReason::BadProtobuf
    );
    // A record pointing at partition key 3 of a one-entry table.
    let message = proto::AggregatedRecord {
        partition_key_table: vec!["a".into()],
        explicit_hash_key_table: vec![],
        records: vec![proto::Record {
            partition_key_index: Some(3),
            explicit_hash_key_index: None,
            data: Some(Bytes::from_static(b"x")),
            tags: vec![],
        }],
    };
    assert_eq!(
        reason_of(frame(&message.encode_to_vec())),
        PassThroughReason::IndexOutOfRange
    );
    // A record without its required partition-key index.
    let missing = proto::AggregatedRecord {
        records: vec![proto::Record {
            partition_key_index: None,
            ..message.records[0].clone()
        }],
        ..message.clone()
    };
    assert_eq!(
        reason_of(frame(&missing.encode_to_vec())),
        PassThroughReason::IndexOutOfRange
    );
    let empty = proto::AggregatedRecord {
        partition_key_table: vec!["a".into(), "b".into()],
        ..Default::default()
    };
    assert_eq!(
        reason_of(frame(&empty.encode_to_vec())),
        PassThroughReason::EmptyAggregate
    );
    let bad_ehk = proto::AggregatedRecord {
        explicit_hash_key_table: vec!["12x".into()],
        records: vec![proto::Record {
            partition_key_index: Some(0),
            explicit_hash_key_index: Some(0),
            data: Some(Bytes::from_static(b"x")),
            tags: vec![],
        }],
        ..message
    };
    assert_eq!(
        reason_of(frame(&bad_ehk.encode_to_vec())),
        PassThroughReason::BadExplicitHashKey
    );
}

#[test]
fn pass_through_keeps_the_whole_record_and_is_counted() {
    let mut deaggregator = Deaggregator::new();
    let record = KinesisRecord {
        sequence_number: SequenceNumber::from_u128(42),
        partition_key: "outer".into(),
        data: Bytes::from_static(b"\xF3\x89\x9A\xC2 not really"),
        approximate_arrival_timestamp: None,
    };
    let out = deaggregator.deaggregate(record.clone());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].data, record.data);
    assert_eq!(out[0].partition_key, "outer");
    assert_eq!(out[0].sub_sequence_number, None);
    let stats = deaggregator.stats();
    assert_eq!(
        (stats.records, stats.corrupt, stats.user_records),
        (1, 1, 1)
    );
}

/// Records hashed to both halves of the key space.
fn two_halves() -> (HashKeyRange, Vec<ProducerRecord>) {
    let low = HashKeyRange::new(HashKey::MIN, HashKey::from_u128(u128::MAX / 2)).unwrap();
    let mut inside = None;
    let mut outside = None;
    for i in 0.. {
        let key = format!("key-{i}");
        if low.contains(HashKey::of_partition_key(&key)) {
            inside.get_or_insert(key);
        } else {
            outside.get_or_insert(key);
        }
        if inside.is_some() && outside.is_some() {
            break;
        }
    }
    let records = vec![
        ProducerRecord::new(inside.unwrap(), "in"),
        ProducerRecord::new(outside.unwrap(), "out"),
        ProducerRecord {
            partition_key: "any".into(),
            explicit_hash_key: Some("5".into()),
            data: Bytes::from_static(b"explicit-in"),
        },
    ];
    (low, records)
}

#[test]
fn drop_aggregate_policy_drops_the_whole_aggregate_and_counts_it() {
    let (low, records) = two_halves();
    let aggregate = aggregate_of(&records);
    let mut deaggregator = Deaggregator::for_shard(
        ShardId::from("shardId-0"),
        low,
        HashRangePolicy::DropAggregate,
    );
    assert_eq!(
        deaggregator.decode(&aggregate.data, Some(&SequenceNumber::from_u128(7))),
        Decoded::Dropped {
            sub_records: 3,
            outside_range: 1
        }
    );
    let stats = deaggregator.stats();
    assert_eq!(
        (stats.aggregates_dropped, stats.sub_records_dropped),
        (1, 3)
    );
    assert_eq!(stats.user_records, 0);

    // Without the outside record the aggregate is kept.
    let inside = aggregate_of(&[records[0].clone(), records[2].clone()]);
    match deaggregator.decode(&inside.data, None) {
        Decoded::Aggregate(subs) => assert_eq!(subs.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn off_policy_keeps_every_record_and_counts_the_outsiders() {
    let (low, records) = two_halves();
    let aggregate = aggregate_of(&records);
    let mut deaggregator = Deaggregator::for_hash_range(low, HashRangePolicy::Off);
    match deaggregator.decode(&aggregate.data, None) {
        Decoded::Aggregate(subs) => {
            let data: Vec<_> = subs.iter().map(|s| s.data.clone()).collect();
            assert_eq!(data, vec!["in", "out", "explicit-in"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(deaggregator.stats().sub_records_outside_range_kept, 1);
}

#[test]
fn keys_are_stored_once_per_aggregate() {
    let records: Vec<_> = (0..50)
        .map(|i| ProducerRecord {
            partition_key: format!("key-{}", i % 2),
            explicit_hash_key: (i % 5 == 0).then(|| "77".to_owned()),
            data: Bytes::from(vec![b'x'; 10]),
        })
        .collect();
    let aggregate = aggregate_of(&records);
    let body = &aggregate.data[MAGIC.len()..aggregate.data.len() - DIGEST_LEN];
    let message = proto::AggregatedRecord::decode(body).unwrap();
    assert_eq!(message.partition_key_table, vec!["key-0", "key-1"]);
    assert_eq!(message.explicit_hash_key_table, vec!["77"]);
    assert_eq!(aggregate.partition_key, "key-0");
    assert_eq!(aggregate.explicit_hash_key.as_deref(), Some("77"));
    assert_eq!(aggregate.hash_key, HashKey::from_u128(77));
}

#[test]
fn size_accounting_is_exact() {
    let mut aggregator = Aggregator::with_max_size(MAX_KINESIS_RECORD_SIZE).unwrap();
    for i in 0..300u32 {
        let record = ProducerRecord {
            partition_key: format!("p{}", i % 17),
            explicit_hash_key: (i % 3 == 0).then(|| (u128::from(i) * 1_000_003).to_string()),
            data: Bytes::from(vec![0u8; (i as usize * 7) % 200]),
        };
        assert!(aggregator.add(record).unwrap().is_none());
        let predicted = aggregator.size();
        let mut copy = Aggregator::with_max_size(MAX_KINESIS_RECORD_SIZE).unwrap();
        std::mem::swap(&mut copy, &mut aggregator);
        let aggregate = copy.flush().unwrap();
        assert_eq!(aggregate.data.len(), predicted);
        // Rebuild what was there so the next round adds to it.
        let Decoded::Aggregate(subs) = Deaggregator::new().decode(&aggregate.data, None) else {
            panic!("not an aggregate");
        };
        for sub in subs {
            aggregator
                .add(ProducerRecord {
                    partition_key: sub.partition_key,
                    explicit_hash_key: sub.explicit_hash_key,
                    data: sub.data,
                })
                .unwrap();
        }
    }
}

#[test]
fn aggregates_respect_the_maximum_size() {
    let mut aggregator = Aggregator::with_max_size(1000).unwrap();
    let mut aggregates = Vec::new();
    for i in 0..1000 {
        let record = ProducerRecord::new(format!("key-{i}"), vec![b'a'; i % 97]);
        aggregates.extend(aggregator.add(record).unwrap());
    }
    aggregates.extend(aggregator.flush());
    assert!(aggregates.iter().all(|a| a.data.len() <= 1000));
    // Nearly full: the next record would not have fitted.
    assert!(
        aggregates
            .iter()
            .rev()
            .skip(1)
            .all(|a| a.data.len() > 1000 - 140)
    );
    assert_eq!(
        aggregates.iter().map(|a| a.user_records).sum::<usize>(),
        1000
    );
}

#[test]
fn a_record_too_big_for_any_aggregate_is_an_error() {
    let mut aggregator = Aggregator::with_max_size(100).unwrap();
    aggregator.add(ProducerRecord::new("k", "small")).unwrap();
    let err = aggregator
        .add(ProducerRecord::new("k", vec![0u8; 100]))
        .unwrap_err();
    assert!(
        matches!(err, crate::Error::RecordTooLarge { max: 100, .. }),
        "{err}"
    );
    // Nothing was lost or added by the refusal.
    assert_eq!(aggregator.len(), 1);
    let mut full = Aggregator::with_max_size(MAX_KINESIS_RECORD_SIZE).unwrap();
    assert!(
        full.add(ProducerRecord::new("k", vec![0u8; MAX_KINESIS_RECORD_SIZE]))
            .is_err()
    );
    assert!(Aggregator::with_max_size(63).is_err());
    assert!(Aggregator::with_max_size(MAX_KINESIS_RECORD_SIZE + 1).is_err());
}

#[test]
fn a_bad_explicit_hash_key_is_refused() {
    let mut aggregator = Aggregator::new();
    let record = ProducerRecord {
        explicit_hash_key: Some("-1".into()),
        ..ProducerRecord::new("k", "v")
    };
    assert!(matches!(
        aggregator.add(record),
        Err(crate::Error::InvalidInput(_))
    ));
    assert!(aggregator.is_empty());
}

fn producer_record() -> impl Strategy<Value = ProducerRecord> {
    (
        any::<String>(),
        proptest::option::of(any::<u128>()),
        prop_oneof![
            3 => proptest::collection::vec(any::<u8>(), 0..64),
            1 => proptest::collection::vec(any::<u8>(), 0..4096),
        ],
    )
        .prop_map(|(partition_key, ehk, data)| ProducerRecord {
            partition_key,
            explicit_hash_key: ehk.map(|k| k.to_string()),
            data: Bytes::from(data),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn aggregate_then_deaggregate_returns_the_input(
        records in proptest::collection::vec(producer_record(), 1..60),
        max_size in prop_oneof![Just(Aggregator::DEFAULT_MAX_SIZE), 4200usize..20_000],
    ) {
        let mut aggregator = Aggregator::with_max_size(max_size).unwrap();
        let mut aggregates = Vec::new();
        for record in &records {
            aggregates.extend(aggregator.add(record.clone()).unwrap());
        }
        aggregates.extend(aggregator.flush());
        let mut back = Vec::new();
        for (i, aggregate) in aggregates.iter().enumerate() {
            prop_assert!(aggregate.data.len() <= max_size);
            let kinesis_record = KinesisRecord {
                sequence_number: SequenceNumber::from_u128(i as u128),
                partition_key: aggregate.partition_key.clone(),
                data: aggregate.data.clone(),
                approximate_arrival_timestamp: None,
            };
            let users = Deaggregator::new().deaggregate(kinesis_record);
            let outer = SequenceNumber::from_u128(i as u128);
            prop_assert_eq!(users.len(), aggregate.user_records);
            for (j, user) in users.into_iter().enumerate() {
                prop_assert_eq!(user.sub_sequence_number, Some(j as u64));
                prop_assert_eq!(&user.sequence_number, &outer);
                back.push(ProducerRecord {
                    partition_key: user.partition_key,
                    explicit_hash_key: user.explicit_hash_key,
                    data: user.data,
                });
            }
        }
        prop_assert_eq!(back, records);
    }

    #[test]
    fn any_bytes_decode_without_panic_and_lose_nothing(
        data in proptest::collection::vec(any::<u8>(), 0..512),
        with_magic in any::<bool>(),
    ) {
        let data = if with_magic {
            frame(&data)
        } else {
            Bytes::from(data)
        };
        let mut deaggregator = Deaggregator::for_hash_range(
            HashKeyRange::new(HashKey::MIN, HashKey::from_u128(1 << 100)).unwrap(),
            HashRangePolicy::DropAggregate,
        );
        match deaggregator.decode(&data, None) {
            Decoded::PassThrough(_) => {}
            Decoded::Aggregate(subs) => prop_assert!(!subs.is_empty()),
            Decoded::Dropped { sub_records, .. } => {
                prop_assert_eq!(deaggregator.stats().sub_records_dropped, sub_records as u64)
            }
        }
    }
}

#[test]
fn unicode_and_extreme_keys_round_trip() {
    let records = vec![
        ProducerRecord::new("", ""),
        ProducerRecord::new("ключ-🔑-鍵", vec![0u8; 0]),
        ProducerRecord::new("x".repeat(256), vec![0xffu8; 1000]),
        ProducerRecord {
            partition_key: "max".into(),
            explicit_hash_key: Some(u128::MAX.to_string()),
            data: Bytes::from_static(b"\0"),
        },
    ];
    let aggregate = aggregate_of(&records);
    let Decoded::Aggregate(subs) = Deaggregator::new().decode(&aggregate.data, None) else {
        panic!("not an aggregate");
    };
    let back: Vec<_> = subs
        .into_iter()
        .map(|s| ProducerRecord {
            partition_key: s.partition_key,
            explicit_hash_key: s.explicit_hash_key,
            data: s.data,
        })
        .collect();
    assert_eq!(back, records);
}

#[test]
fn a_record_of_nearly_the_largest_size_round_trips() {
    let mut aggregator = Aggregator::with_max_size(MAX_KINESIS_RECORD_SIZE).unwrap();
    // Magic, digest, key table entry and record framing take a few dozen bytes.
    let data = Bytes::from(vec![7u8; MAX_KINESIS_RECORD_SIZE - 64]);
    assert!(
        aggregator
            .add(ProducerRecord::new("big", data.clone()))
            .unwrap()
            .is_none()
    );
    assert!(aggregator.size() <= MAX_KINESIS_RECORD_SIZE - "big".len());
    let aggregate = aggregator.flush().unwrap();
    let Decoded::Aggregate(subs) = Deaggregator::new().decode(&aggregate.data, None) else {
        panic!("not an aggregate");
    };
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].data, data);
}
