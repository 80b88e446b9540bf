//! The producer's engine (`Producer::send`, its sink and receipts) against
//! the local Kinesis: receipts that say where each record is, order per
//! key, pacing of a hot shard under the write limits, bounded memory when
//! the stream stops taking writes, and nothing lost across a split.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::key_and_number;
use futures_util::{SinkExt, StreamExt, stream};
use rkcl::{
    ExtendedSequenceNumber, Kinesis, ShardId,
    aws::StreamRef,
    model::HashKey,
    producer::{Producer, ProducerConfig, Receipt, SendError},
    record::ProducerRecord,
};
use rkcl_local::testkit::{RawStream, create_stream, read_all_raw, split};
use rkcl_local::{FaultKind, FaultPlan};
use rkcl_local::{KinesisSettings, Local};

/// `key-K` with data `K:N`.
fn record(k: usize, n: usize) -> ProducerRecord {
    ProducerRecord::new(format!("key-{k}"), format!("{k}:{n}"))
}

/// Where each user record is, as a KCL consumer reads it: (shard,
/// sequence number, sub-sequence number) → data. Panics on duplicates.
fn positions(raw: &RawStream) -> HashMap<(ShardId, ExtendedSequenceNumber, bool), Vec<u8>> {
    let mut found = HashMap::new();
    let mut seen = HashSet::new();
    for shard in &raw.shards {
        for user in &shard.user_records {
            let data = user.data.to_vec();
            assert!(seen.insert(data.clone()), "{data:?} twice in the stream");
            found.insert(
                (
                    shard.shard.id.clone(),
                    user.extended_sequence_number(),
                    user.is_aggregated(),
                ),
                data,
            );
        }
    }
    found
}

/// Every receipt points at its record, and per key the receipts' positions
/// grow in the order the records were sent.
fn assert_receipts_match(raw: &RawStream, receipts: &[(ProducerRecord, Receipt)]) {
    let found = positions(raw);
    assert_eq!(
        found.len(),
        receipts.len(),
        "every record once in the stream"
    );
    let mut last: HashMap<&str, ExtendedSequenceNumber> = HashMap::new();
    for (record, receipt) in receipts {
        let position = ExtendedSequenceNumber::new(
            receipt.sequence_number.clone(),
            receipt.sub_sequence_number.unwrap_or(0),
        );
        let key = (
            receipt.shard_id.clone(),
            position.clone(),
            receipt.sub_sequence_number.is_some(),
        );
        assert_eq!(
            found.get(&key).map(Vec::as_slice),
            Some(&record.data[..]),
            "receipt {receipt:?}"
        );
        if let Some(previous) = last.insert(&record.partition_key, position.clone()) {
            assert!(previous < position, "{} out of order", record.partition_key);
        }
        assert!(receipt.attempts >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_from_eight_tasks_match_the_stream() {
    const TASKS: usize = 8;
    const KEYS_PER_TASK: usize = 25;
    const PER_KEY: usize = 500; // 8 × 25 × 500 = 100,000 records
    let started = Instant::now();
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "send-many", 4).await;
    let config = ProducerConfig::builder()
        .aggregate(true)
        .linger(Duration::from_millis(20))
        .build()
        .unwrap();
    let producer = Producer::new(kinesis.clone(), stream.clone(), config).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let producer = producer.clone();
        tasks.spawn(async move {
            let records: Vec<ProducerRecord> = (0..PER_KEY)
                .flat_map(|n| (0..KEYS_PER_TASK).map(move |k| record(task * KEYS_PER_TASK + k, n)))
                .collect();
            let receipts: Vec<Receipt> = if task % 2 == 0 {
                // Through the sink, with its receipts in order.
                let (mut sink, receipts) = producer.sink_with_receipts().unwrap();
                let input = records.clone();
                let forward = tokio::spawn(async move {
                    sink.send_all(&mut stream::iter(input.into_iter().map(Ok)))
                        .await
                        .unwrap();
                    sink.close().await.unwrap();
                });
                let receipts: Vec<Receipt> = receipts.map(|r| r.unwrap()).collect().await;
                forward.await.unwrap();
                receipts
            } else {
                // Calls in order, answers awaited together.
                let answers: Vec<_> = records.iter().map(|r| producer.send(r.clone())).collect();
                futures_util::future::join_all(answers)
                    .await
                    .into_iter()
                    .map(Result::unwrap)
                    .collect()
            };
            assert_eq!(receipts.len(), records.len());
            records.into_iter().zip(receipts).collect::<Vec<_>>()
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    let sent_in = started.elapsed();
    assert_eq!(producer.shutdown(Duration::from_secs(5)).await, 0);
    assert_eq!(all.len(), TASKS * KEYS_PER_TASK * PER_KEY);
    assert!(all.iter().all(|(_, r)| r.sub_sequence_number.is_some()));
    let raw = read_all_raw(&local, &stream).await;
    assert_eq!(raw.sub_records_dropped(), 0);
    assert_receipts_match(&raw, &all);
    // Every key's records in the order sent.
    let mut next: HashMap<usize, usize> = HashMap::new();
    for (record, _) in &all {
        let (k, n) = key_and_number(&record.data);
        let expected = next.entry(k).or_default();
        assert_eq!(n, *expected);
        *expected += 1;
    }
    eprintln!(
        "100,000 records sent in {sent_in:?}, checked in {:?}",
        started.elapsed()
    );
}

/// Local services whose Kinesis throttles writes above the write limits, as
/// AWS does, and throttles 5 % of PutRecords calls besides.
async fn throttling_local() -> Local {
    Local::builder()
        .kinesis_settings(KinesisSettings {
            enforce_write_limits: true,
            ..KinesisSettings::default()
        })
        .faults(FaultPlan::parse("kinesis.PutRecords:throttle=5%").unwrap())
        .fault_seed(7)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_shard_is_paced_and_cold_shards_keep_their_pace() {
    const HOT: usize = 3_000;
    let local = throttling_local().await;
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "hot", 2).await;
    let shards = kinesis.list_shards(&stream).await.unwrap();
    let shard_of = |key: &str| {
        let hash = HashKey::of_partition_key(key);
        shards
            .iter()
            .find(|s| s.hash_key_range.contains(hash))
            .unwrap()
            .id
            .clone()
    };
    let hot_shard = shard_of("hot");
    // 300 cold records, on keys of the other shard.
    let cold_keys: Vec<String> = (0..)
        .map(|i| format!("cold-{i}"))
        .filter(|k| shard_of(k) != hot_shard)
        .take(30)
        .collect();
    let config = ProducerConfig::builder()
        .rate_limit_percent(90)
        .linger(Duration::from_millis(20))
        .base_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(500))
        .build()
        .unwrap();
    let producer = Producer::new(kinesis.clone(), stream.clone(), config).unwrap();
    let started = Instant::now();
    let hot: Vec<_> = (0..HOT)
        .map(|n| producer.send(ProducerRecord::new("hot", format!("hot:{n}"))))
        .collect();
    // The cold records come after the hot ones, in the same batches.
    let cold: Vec<_> = (0..300)
        .map(|n| {
            producer.send(ProducerRecord::new(
                cold_keys[n % cold_keys.len()].clone(),
                format!("cold:{n}"),
            ))
        })
        .collect();
    let cold = futures_util::future::join_all(cold).await;
    let cold_done = started.elapsed();
    let hot = futures_util::future::join_all(hot).await;
    let hot_done = started.elapsed();
    let hot: Vec<Receipt> = hot.into_iter().map(Result::unwrap).collect();
    let cold: Vec<Receipt> = cold.into_iter().map(Result::unwrap).collect();
    assert!(hot.iter().all(|r| r.shard_id == hot_shard));
    assert!(cold.iter().all(|r| r.shard_id != hot_shard));
    // 3,000 records at 900/s after a burst of 900 take over two seconds;
    // the cold shard's 300 records are not held up behind them.
    assert!(
        hot_done >= Duration::from_secs(2),
        "hot shard done in {hot_done:?}"
    );
    assert!(
        cold_done < Duration::from_secs(1),
        "cold shard waited for the hot one: {cold_done:?}"
    );
    // Paced, not throttled: few records needed more than one call. Without
    // pacing, 2,000 of the first 3,000 would be throttled at once and
    // again after each retry.
    let retried: u32 = hot.iter().chain(&cold).map(|r| r.attempts - 1).sum();
    let injected = local.fault_counts().get(
        rkcl_local::Service::Kinesis,
        "PutRecords",
        FaultKind::Throttle,
    );
    assert!(
        u64::from(retried) <= 500 * injected + 300,
        "{retried} retries of {} records, {injected} calls throttled by the fault layer",
        HOT + 300
    );
    assert_eq!(producer.shutdown(Duration::from_secs(5)).await, 0);
    let raw = read_all_raw(&local, &stream).await;
    assert_eq!(
        raw.user_records().len(),
        HOT + 300,
        "nothing lost, nothing twice"
    );
    positions(&raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_takes_no_writes_holds_senders_back_and_expires_records() {
    let local = Local::builder()
        .faults(FaultPlan::parse("kinesis.PutRecords:error=100%").unwrap())
        .fault_seed(1)
        .start()
        .await
        .unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "stalled", 2).await;
    let config = ProducerConfig::builder()
        .max_outstanding_records(200)
        .record_ttl(Duration::from_secs(3))
        .linger(Duration::from_millis(10))
        .base_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(300))
        .build()
        .unwrap();
    let producer = Producer::new(kinesis, stream, config).unwrap();
    let mut answers = Vec::new();
    for n in 0..200 {
        answers.push(producer.try_send(record(n % 10, n)).unwrap());
        assert!(producer.outstanding() <= 200);
    }
    // At the limit: try_send fails at once and gives the record back.
    match producer.try_send(record(0, 999)) {
        Err(SendError::Full(back)) => assert_eq!(back.data, "0:999"),
        other => panic!("expected Full, got {:?}", other.err()),
    }
    // send waits for room.
    let waiting = tokio::spawn(producer.send(record(0, 1000)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "send went past the limit");
    assert_eq!(producer.outstanding(), 200);
    // Past the time-to-live every record is answered with an error.
    let started = Instant::now();
    for answer in answers {
        match answer.await {
            Err(SendError::Expired {
                attempts,
                last_error,
            }) => {
                assert!(attempts >= 1, "it was tried");
                assert!(last_error.is_some());
            }
            other => panic!("expected Expired, got {other:?}"),
        }
    }
    // A record inside a call when its time passes is answered when the call
    // returns (the SDK retries a 500 itself, with its own backoff).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered {:?} after the first expiry was due",
        started.elapsed()
    );
    // The waiting sender got room once they were answered, and expires in
    // turn (its time-to-live counts from its send).
    assert!(matches!(
        waiting.await.unwrap(),
        Err(SendError::Expired { .. })
    ));
    assert_eq!(producer.outstanding(), 0);
    assert_eq!(producer.shutdown(Duration::from_secs(1)).await, 0);
    assert!(matches!(
        producer.send(record(0, 1)).await,
        Err(SendError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_while_producing_aggregates_loses_nothing() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "split-send", 1).await;
    let config = ProducerConfig::builder()
        .aggregate(true)
        .linger(Duration::from_millis(20))
        .build()
        .unwrap();
    let producer = Producer::new(kinesis.clone(), stream.clone(), config).unwrap();
    const KEYS: usize = 40;
    const PER_KEY: usize = 100;
    let sender = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut all = Vec::new();
            for n in 0..PER_KEY {
                let round: Vec<ProducerRecord> = (0..KEYS).map(|k| record(k, n)).collect();
                let answers: Vec<_> = round.iter().map(|r| producer.send(r.clone())).collect();
                // Keep a few rounds in flight, so the split lands among them.
                all.push((round, answers));
                if n % 5 == 4 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
            let mut receipts = Vec::new();
            for (round, answers) in all {
                for (record, answer) in round.into_iter().zip(answers) {
                    receipts.push((record, answer.await.unwrap()));
                }
            }
            receipts
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let parent = kinesis.list_shards(&stream).await.unwrap().remove(0);
    split(&local, &stream, &parent, Some(u128::MAX / 2)).await;
    let receipts = sender.await.unwrap();
    assert_eq!(producer.shutdown(Duration::from_secs(5)).await, 0);
    let raw = read_all_raw(&local, &stream).await;
    assert_eq!(raw.shards.len(), 3);
    // By the KCL's hash-range rule every record is there once, where its
    // receipt says.
    let users = raw.user_records();
    assert_eq!(
        users.len(),
        KEYS * PER_KEY,
        "dropped {}",
        raw.sub_records_dropped()
    );
    let mut receipts_by_data: Vec<(ProducerRecord, Receipt)> = receipts;
    receipts_by_data.sort_by_key(|(r, _)| key_and_number(&r.data));
    let found = positions(&raw);
    for (record, receipt) in &receipts_by_data {
        let key = (
            receipt.shard_id.clone(),
            ExtendedSequenceNumber::new(
                receipt.sequence_number.clone(),
                receipt.sub_sequence_number.unwrap_or(0),
            ),
            true,
        );
        assert_eq!(found.get(&key).map(Vec::as_slice), Some(&record.data[..]));
    }
    assert!(
        receipts_by_data
            .iter()
            .any(|(_, r)| r.shard_id != parent.id),
        "some records went to the children"
    );
}

#[tokio::test]
async fn the_sink_forwards_a_stream_and_closes_when_all_are_written() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "forward", 2).await;
    let producer = Producer::new(kinesis, stream.clone(), ProducerConfig::default()).unwrap();
    let records = stream::iter((0..1_000).map(|n| Ok(record(n % 7, n))));
    records.forward(producer.sink().unwrap()).await.unwrap();
    assert_eq!(producer.outstanding(), 0, "closing the sink flushed");
    let raw = read_all_raw(&local, &stream).await;
    assert_eq!(raw.user_records().len(), 1_000);
    assert!(matches!(
        producer
            .sink()
            .unwrap()
            .send(ProducerRecord::new("", "x"))
            .await,
        Err(SendError::Invalid(_))
    ));
    let _: StreamRef = stream;
}
