//! The polling source and the stream reader against the local Kinesis:
//! starting positions, resuming inside an aggregate, injected faults, and
//! splits and merges while records keep arriving.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use common::{key_and_number, keyed_records, quick_polling, quick_polling_builder};
use rkcl::{
    Kinesis, UserRecord,
    aws::StreamRef,
    kpl::Aggregator,
    model::StartingPosition,
    producer::{Producer, ProducerConfig},
    record::ProducerRecord,
    retrieval::{PollingSource, RecordSource, ShardEvent, StreamEvent, StreamReader},
};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::{Aggregated, Plain};
use rkcl_local::testkit::{create_stream, merge, put, split};

/// A source for `shard` with the quick test polling settings.
fn start_source(
    kinesis: &Kinesis,
    stream: &StreamRef,
    shard: &rkcl::shards::Shard,
    position: StartingPosition,
) -> PollingSource {
    PollingSource::start(
        kinesis.clone(),
        stream.clone(),
        shard,
        position,
        quick_polling(),
    )
    .unwrap()
}

/// Reads a source until `count` user records have arrived.
async fn read_records(source: &mut PollingSource, count: usize) -> Vec<UserRecord> {
    let mut out = Vec::new();
    while out.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(10), source.next_event())
            .await
            .expect("records arrive")
            .expect("the source goes on")
            .unwrap();
        if let ShardEvent::Records(batch) = event {
            out.extend(batch.records);
        }
    }
    out
}

#[tokio::test]
async fn resume_inside_an_aggregate_delivers_exactly_the_rest() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "resume", 1).await;
    let mut aggregator = Aggregator::new();
    for i in 0..10 {
        aggregator
            .add(ProducerRecord::new("k", format!("agg-{i}")))
            .unwrap();
    }
    let aggregate = aggregator.flush().unwrap();
    local
        .kinesis_client()
        .put_record()
        .stream_name("resume")
        .partition_key(aggregate.partition_key)
        .data(aws_sdk_kinesis::primitives::Blob::new(
            aggregate.data.to_vec(),
        ))
        .send()
        .await
        .unwrap();
    put(
        &kinesis,
        &stream,
        (0..5)
            .map(|i| ProducerRecord::new("k", format!("plain-{i}")))
            .collect(),
        Plain,
    )
    .await;
    let shard = kinesis.list_shards(&stream).await.unwrap().remove(0);

    let mut all = start_source(&kinesis, &stream, &shard, StartingPosition::TrimHorizon);
    let everything = read_records(&mut all, 15).await;
    let aggregate_seq = everything[0].sequence_number.clone();
    assert_eq!(everything[3].sub_sequence_number, Some(3));

    let data = |records: &[UserRecord]| -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8(r.data.to_vec()).unwrap())
            .collect()
    };
    let position = StartingPosition::AfterCheckpoint(aggregate_seq.clone(), 3);
    let mut resumed = start_source(&kinesis, &stream, &shard, position);
    let rest = read_records(&mut resumed, 11).await;
    let expected: Vec<String> = (4..10)
        .map(|i| format!("agg-{i}"))
        .chain((0..5).map(|i| format!("plain-{i}")))
        .collect();
    assert_eq!(data(&rest), expected);

    // Checkpointed at the last user record of the aggregate: only what follows.
    let position = StartingPosition::AfterCheckpoint(aggregate_seq, 9);
    let mut after = start_source(&kinesis, &stream, &shard, position);
    let rest = read_records(&mut after, 5).await;
    assert_eq!(
        data(&rest),
        (0..5).map(|i| format!("plain-{i}")).collect::<Vec<_>>()
    );
    // Nothing more arrives: nothing was delivered twice.
    let more = tokio::time::timeout(Duration::from_millis(600), async {
        loop {
            if let Some(Ok(ShardEvent::Records(batch))) = after.next_event().await
                && !batch.records.is_empty()
            {
                return batch.records.len();
            }
        }
    })
    .await;
    assert!(more.is_err(), "extra records after the resume point");
}

#[tokio::test]
async fn latest_and_at_timestamp_start_where_they_should() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "positions", 1).await;
    let shard = kinesis.list_shards(&stream).await.unwrap().remove(0);
    let batch = |label: &str| {
        (0..10)
            .map(|i| ProducerRecord::new("k", format!("{label}-{i}")))
            .collect::<Vec<_>>()
    };

    put(&kinesis, &stream, batch("before"), Plain).await;
    let mut latest = start_source(&kinesis, &stream, &shard, StartingPosition::Latest);
    // Let the LATEST iterator be opened before writing more.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    put(&kinesis, &stream, batch("after"), Aggregated).await;
    let records = read_records(&mut latest, 10).await;
    assert!(
        records.iter().all(|r| r.data.starts_with(b"after-")),
        "{records:?}"
    );

    // The local Kinesis keeps arrival times in whole seconds: cut at the
    // start of the next second, after everything written so far.
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let next_second = Duration::from_secs(now.as_secs() + 1);
    tokio::time::sleep(next_second - now + Duration::from_millis(20)).await;
    let cut = std::time::UNIX_EPOCH + next_second;
    put(&kinesis, &stream, batch("new"), Plain).await;
    let mut at = start_source(
        &kinesis,
        &stream,
        &shard,
        StartingPosition::AtTimestamp(cut),
    );
    let records = read_records(&mut at, 10).await;
    assert!(
        records.iter().all(|r| r.data.starts_with(b"new-")),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .all(|r| r.approximate_arrival_timestamp.is_some_and(|t| t >= cut))
    );
}

/// What to answer GetRecords call number `n` (0-based) with instead of the
/// real response, if anything: an HTTP status and an error code.
type Plan = fn(usize) -> Option<(u16, &'static str)>;

/// Counts GetRecords calls and replaces the responses its plan names with
/// errors, in front of a real SDK client.
struct GetRecordsFaults {
    calls: Arc<AtomicUsize>,
    injected: Arc<AtomicUsize>,
    /// The bytes of the GetRecords response bodies received.
    received: Arc<AtomicUsize>,
    plan: Plan,
}

impl std::fmt::Debug for GetRecordsFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetRecordsFaults").finish_non_exhaustive()
    }
}

/// Marks the attempt in flight as a GetRecords call, with its number.
#[derive(Clone, Debug)]
struct GetRecordsCall(Option<usize>);

impl Storable for GetRecordsCall {
    type Storer = StoreReplace<Self>;
}

impl Intercept for GetRecordsFaults {
    fn name(&self) -> &'static str {
        "GetRecordsFaults"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        let is_get_records = context
            .request()
            .headers()
            .get("x-amz-target")
            .is_some_and(|t| t.ends_with(".GetRecords"));
        let call = is_get_records.then(|| self.calls.fetch_add(1, Ordering::SeqCst));
        cfg.interceptor_state().store_put(GetRecordsCall(call));
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        let call = cfg.load::<GetRecordsCall>().and_then(|call| call.0);
        if call.is_some() {
            let length = context
                .response()
                .headers()
                .get("content-length")
                .and_then(|l| l.parse::<usize>().ok())
                .expect("the local Kinesis sends a content length");
            self.received.fetch_add(length, Ordering::SeqCst);
        }
        let Some((status, code)) = call.and_then(self.plan) else {
            return Ok(());
        };
        self.injected.fetch_add(1, Ordering::SeqCst);
        let response = context.response_mut();
        *response.status_mut() =
            aws_smithy_runtime_api::http::StatusCode::try_from(status).unwrap();
        response.headers_mut().insert("x-amzn-errortype", code);
        *response.body_mut() = aws_smithy_types::body::SdkBody::from(format!(
            "{{\"__type\":\"{code}\",\"message\":\"injected\"}}"
        ));
        Ok(())
    }
}

/// A client for the local Kinesis with the SDK's retries off and `plan`
/// applied to GetRecords; also the call and injection counters.
fn faulty_client(local: &Local, plan: Plan) -> (Kinesis, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (kinesis, calls, injected, _) = measured_client(local, plan);
    (kinesis, calls, injected)
}

/// As [`faulty_client`], also counting the bytes of GetRecords responses.
fn measured_client(
    local: &Local,
    plan: Plan,
) -> (
    Kinesis,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let injected = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let config = local
        .kinesis_client()
        .config()
        .to_builder()
        .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
        .interceptor(GetRecordsFaults {
            calls: calls.clone(),
            injected: injected.clone(),
            received: received.clone(),
            plan,
        })
        .build();
    (
        Kinesis::new(aws_sdk_kinesis::Client::from_conf(config)),
        calls,
        injected,
        received,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_cost_no_record_and_no_duplicate() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "faults", 2).await;
    put(&kinesis, &stream, keyed_records(10, 150, 0), Plain).await;
    put(&kinesis, &stream, keyed_records(10, 150, 150), Aggregated).await;

    // Every second GetRecords call fails: expired iterator, throttling, 500.
    let (faulty, _, injected) = faulty_client(&local, |call| match (call % 2, (call / 2) % 3) {
        (1, _) => None,
        (_, 0) => Some((400, "ExpiredIteratorException")),
        (_, 1) => Some((400, "ProvisionedThroughputExceededException")),
        _ => Some((500, "InternalFailure")),
    });
    let polling = quick_polling_builder().max_records(100).build().unwrap();
    let mut reader = StreamReader::start(faulty, stream, StartingPosition::TrimHorizon, polling)
        .await
        .unwrap();
    let mut seen: HashMap<(usize, usize), usize> = HashMap::new();
    let mut next: HashMap<usize, usize> = HashMap::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match event {
            StreamEvent::Records(batch) => {
                for record in batch.records {
                    let (k, n) = key_and_number(&record.data);
                    *seen.entry((k, n)).or_default() += 1;
                    let expected = next.entry(k).or_default();
                    assert_eq!(n, *expected, "key {k} out of order");
                    *expected += 1;
                }
            }
            StreamEvent::CaughtUp | StreamEvent::ShardEnded(_) => {}
        }
        if seen.len() == 3000 {
            break;
        }
    }
    // Whatever still arrives must not repeat a record.
    let _ = tokio::time::timeout(Duration::from_millis(1000), async {
        while let Some(Ok(event)) = reader.next().await {
            if let StreamEvent::Records(batch) = event {
                for record in batch.records {
                    *seen.entry(key_and_number(&record.data)).or_default() += 1;
                }
            }
        }
    })
    .await;
    assert!(injected.load(Ordering::SeqCst) >= 6, "faults were injected");
    assert_eq!(seen.len(), 3000);
    assert!(
        seen.values().all(|&count| count == 1),
        "a record was delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_and_merges_while_writing_keep_every_record_and_key_order() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "reshard", 3).await;
    let produced = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));

    // Records keep arriving: 30 keys, alternating plain and aggregated puts.
    let producer = {
        let (kinesis, stream, produced, done) = (
            kinesis.clone(),
            stream.clone(),
            produced.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            let mut plain =
                Producer::new(kinesis.clone(), stream.clone(), ProducerConfig::default()).unwrap();
            let aggregated_config = ProducerConfig::builder().aggregate(true).build().unwrap();
            let mut aggregated = Producer::new(kinesis, stream, aggregated_config).unwrap();
            for round in 0..60 {
                let records = keyed_records(30, 5, round * 5);
                let count = records.len();
                if round % 2 == 0 {
                    plain.put(records).await.unwrap();
                } else {
                    aggregated.put(records).await.unwrap();
                }
                produced.fetch_add(count, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            done.store(1, Ordering::SeqCst);
        })
    };

    let reader_task = {
        let (kinesis, stream) = (kinesis.clone(), stream.clone());
        let (produced, done) = (produced.clone(), done.clone());
        tokio::spawn(async move {
            let mut reader = StreamReader::start(
                kinesis,
                stream,
                StartingPosition::TrimHorizon,
                quick_polling(),
            )
            .await
            .unwrap();
            let mut log: Vec<StreamEvent> = Vec::new();
            let mut unique: HashMap<(usize, usize), usize> = HashMap::new();
            loop {
                let event = tokio::time::timeout(Duration::from_secs(30), reader.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                if let StreamEvent::Records(batch) = &event {
                    for record in &batch.records {
                        *unique.entry(key_and_number(&record.data)).or_default() += 1;
                    }
                }
                log.push(event);
                if done.load(Ordering::SeqCst) == 1
                    && unique.len() == produced.load(Ordering::SeqCst)
                {
                    return (log, unique);
                }
            }
        })
    };

    // Split shard 0, then merge shards 1 and 2, while both tasks run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shards = kinesis.list_shards(&stream).await.unwrap();
    split(&local, &stream, &shards[0], None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    merge(&local, &stream, &shards[1], &shards[2]).await;

    producer.await.unwrap();
    let (log, unique) = reader_task.await.unwrap();
    assert_eq!(unique.len(), produced.load(Ordering::SeqCst));
    assert!(
        unique.values().all(|&n| n == 1),
        "duplicates were delivered"
    );

    // Per key, records come out in the order they were written.
    let mut next: HashMap<usize, usize> = HashMap::new();
    // Children only after parents: a shard's first batch comes after every
    // parent's end.
    let mut ended_at: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_batch_at: BTreeMap<String, usize> = BTreeMap::new();
    for (index, event) in log.iter().enumerate() {
        match event {
            StreamEvent::Records(batch) => {
                first_batch_at
                    .entry(batch.shard_id.to_string())
                    .or_insert(index);
                for record in &batch.records {
                    let (k, n) = key_and_number(&record.data);
                    let expected = next.entry(k).or_default();
                    assert_eq!(n, *expected, "key {k} out of order");
                    *expected += 1;
                }
            }
            StreamEvent::ShardEnded(end) => {
                ended_at.insert(end.shard_id.to_string(), index);
            }
            StreamEvent::CaughtUp => {}
        }
    }
    let all = kinesis.list_shards(&stream).await.unwrap();
    assert_eq!(all.len(), 6, "3 shards, 2 split children, 1 merge child");
    let mut children_checked = 0;
    for shard in &all {
        let Some(first) = first_batch_at.get(shard.id.as_str()) else {
            continue;
        };
        for parent in shard.parents() {
            let end = ended_at
                .get(parent.as_str())
                .expect("a parent ended before its child was read");
            assert!(
                end < first,
                "{} read before its parent {parent} ended",
                shard.id
            );
            children_checked += 1;
        }
    }
    assert_eq!(
        children_checked, 4,
        "two split children and a merge child with two parents"
    );
}

#[tokio::test]
async fn prefetch_stops_at_its_bound_until_the_consumer_takes_records() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "bounded", 1).await;
    put(&kinesis, &stream, keyed_records(1, 2_000, 0), Plain).await;
    let shard = kinesis.list_shards(&stream).await.unwrap().remove(0);
    let (counted, calls, _) = faulty_client(&local, |_| None);
    let config = quick_polling_builder()
        .max_records(100)
        .prefetch_records(300)
        .prefetch_batches(10)
        .build()
        .unwrap();
    let mut source = PollingSource::start(
        counted,
        stream,
        &shard,
        StartingPosition::TrimHorizon,
        config,
    )
    .unwrap();
    // Nobody consumes: the source fetches up to 300 records ahead, then waits.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let made = calls.load(Ordering::SeqCst);
    assert!(
        (3..=4).contains(&made),
        "{made} GetRecords calls with nothing consumed"
    );
    // Consuming frees the budget and reading goes on.
    let records = read_records(&mut source, 1_000).await;
    assert_eq!(records.len(), 1_000);
    assert!(calls.load(Ordering::SeqCst) > made);
}

#[tokio::test]
async fn the_read_memory_bounds_what_is_fetched_ahead_through_the_limit() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "memory", 1).await;
    let records: Vec<ProducerRecord> = (0..2_000)
        .map(|i| ProducerRecord::new(format!("key-{i}"), vec![b'm'; 1024]))
        .collect();
    put(&kinesis, &stream, records, Plain).await;
    let shard = kinesis.list_shards(&stream).await.unwrap().remove(0);
    let (counted, calls, _, received) = measured_client(&local, |_| None);
    // The prefetch bounds would let the whole shard (2 MB) through in one
    // call; the read memory of 1 MiB does not.
    let config = quick_polling_builder()
        .worker_read_bytes(1 << 20)
        .prefetch_batches(100)
        .build()
        .unwrap();
    let mut source = PollingSource::start(
        counted,
        stream,
        &shard,
        StartingPosition::TrimHorizon,
        config,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let made = calls.load(Ordering::SeqCst);
    let fetched = received.load(Ordering::SeqCst);
    // Records of 1 KiB come as about 1.4 KiB of base64 in JSON: about
    // 2.8 MB for the whole shard.
    assert!(
        made > 1 && fetched < 1_600_000,
        "{made} calls fetched {fetched} bytes ahead"
    );
    // Taking records frees the memory and reading goes on to the end.
    let records = read_records(&mut source, 2_000).await;
    assert_eq!(records.len(), 2_000);
}

#[tokio::test]
async fn a_quiet_shard_is_read_less_often_and_its_first_record_still_arrives() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "quiet", 1).await;
    let shard = kinesis.list_shards(&stream).await.unwrap().remove(0);
    let (counted, calls, _) = faulty_client(&local, |_| None);
    // 200 ms between calls; quiet for 600 ms, 400 ms; then 800 ms, 1.6 s,
    // and 2.4 s from 2.4 s on.
    let config = quick_polling_builder()
        .quiet_after(Duration::from_millis(600))
        .max_quiet_interval(Duration::from_millis(2_400))
        .build()
        .unwrap();
    let mut source = PollingSource::start(
        counted,
        stream.clone(),
        &shard,
        StartingPosition::TrimHorizon,
        config,
    )
    .unwrap();
    let calls_over = |window: Duration| {
        let calls = calls.clone();
        async move {
            let before = calls.load(Ordering::SeqCst);
            tokio::time::sleep(window).await;
            calls.load(Ordering::SeqCst) - before
        }
    };
    let early = calls_over(Duration::from_millis(1_200)).await;
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let quiet = calls_over(Duration::from_millis(4_800)).await;
    // About five calls in the first 1.2 s; two or three in 4.8 s once
    // quiet (at the idle interval it would be 24).
    assert!(early >= 3, "{early} calls while fresh");
    assert!(quiet <= 3, "{quiet} calls in 4.8 s while quiet");
    // A record on the quiet shard is still read, and the shard is read at
    // full speed again.
    put(&kinesis, &stream, keyed_records(1, 1, 0), Plain).await;
    let records = read_records(&mut source, 1).await;
    assert_eq!(records.len(), 1);
    let after = calls_over(Duration::from_millis(1_200)).await;
    assert!(after >= 3, "{after} calls in 1.2 s after a record");
}

#[tokio::test]
async fn access_denied_is_a_clear_error_and_a_deleted_stream_ends_the_shard() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "refusals", 1).await;
    let shard = kinesis.list_shards(&stream).await.unwrap().remove(0);

    let (denied, calls, _) = faulty_client(&local, |_| Some((400, "AccessDeniedException")));
    let mut source = PollingSource::start(
        denied,
        stream.clone(),
        &shard,
        StartingPosition::TrimHorizon,
        quick_polling(),
    )
    .unwrap();
    let err = source.next_event().await.unwrap().unwrap_err();
    assert!(matches!(err, rkcl::Error::AccessDenied { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(
        source.next_event().await.is_none(),
        "nothing follows the error"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no retry of a refusal");

    let mut source = start_source(&kinesis, &stream, &shard, StartingPosition::TrimHorizon);
    assert!(matches!(
        source.next_event().await,
        Some(Ok(ShardEvent::Records(_)))
    ));
    local
        .kinesis_client()
        .delete_stream()
        .stream_name("refusals")
        .send()
        .await
        .unwrap();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), source.next_event())
            .await
            .unwrap()
        {
            Some(Ok(ShardEvent::End(end))) => break end,
            Some(Ok(ShardEvent::Records(_))) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(end.reason, rkcl::retrieval::ShardEndReason::NotFound);
    assert!(end.children.is_empty());
}

#[tokio::test]
async fn at_and_after_sequence_number_start_where_they_should() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "by-sequence", 1).await;
    let records: Vec<ProducerRecord> = (0..10)
        .map(|i| ProducerRecord::new("k", format!("r{i}")))
        .collect();
    put(&kinesis, &stream, records, Plain).await;
    let shard = kinesis.list_shards(&stream).await.unwrap().remove(0);
    let mut all = start_source(&kinesis, &stream, &shard, StartingPosition::TrimHorizon);
    let records = read_records(&mut all, 10).await;
    let third = records[3].sequence_number.clone();
    for (position, first) in [
        (StartingPosition::AtSequenceNumber(third.clone()), "r3"),
        (StartingPosition::AfterSequenceNumber(third), "r4"),
    ] {
        let mut source = start_source(&kinesis, &stream, &shard, position);
        let records = read_records(&mut source, 1).await;
        assert_eq!(records[0].data, first.as_bytes());
    }
}

/// Reads with a `StreamReader` from TRIM_HORIZON until it says it has caught
/// up; the records and the order of events.
async fn read_until_caught_up(kinesis: Kinesis, stream: StreamRef) -> Vec<StreamEvent> {
    let mut reader = StreamReader::start(
        kinesis,
        stream,
        StartingPosition::TrimHorizon,
        quick_polling(),
    )
    .await
    .unwrap();
    let mut log = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .expect("the reader caught up in time")
            .expect("the reader ended before it caught up")
            .unwrap();
        if matches!(event, StreamEvent::CaughtUp) {
            return log;
        }
        log.push(event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resharded_before_it_is_read_is_caught_up_only_with_its_children_read() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "resharded-before", 4).await;
    // Plain and aggregated records in the parents...
    put(&kinesis, &stream, keyed_records(40, 50, 0), Plain).await;
    put(&kinesis, &stream, keyed_records(40, 50, 50), Aggregated).await;
    // ... a split and a merge before anything is read ...
    let shards = kinesis.list_shards(&stream).await.unwrap();
    split(&local, &stream, &shards[0], None).await;
    merge(&local, &stream, &shards[2], &shards[3]).await;
    // ... and more records, which land in the children.
    put(&kinesis, &stream, keyed_records(40, 50, 100), Plain).await;
    put(&kinesis, &stream, keyed_records(40, 50, 150), Aggregated).await;

    let log = read_until_caught_up(kinesis.clone(), stream.clone()).await;
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut from_children = 0;
    let children: Vec<String> = kinesis
        .list_shards(&stream)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.parents().next().is_some())
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(children.len(), 3, "two split children and a merge child");
    for event in &log {
        if let StreamEvent::Records(batch) = event {
            if children.contains(&batch.shard_id.to_string()) {
                from_children += batch.records.len();
            }
            for record in &batch.records {
                let (k, n) = key_and_number(&record.data);
                let expected = next.entry(k).or_default();
                assert_eq!(n, *expected, "key {k} out of order or a record missing");
                *expected += 1;
            }
        }
    }
    // Every record of every key, before the reader called itself caught up.
    assert_eq!(next.len(), 40);
    assert!(next.values().all(|&n| n == 200), "{next:?}");
    assert!(from_children > 0, "the children were read");
}
