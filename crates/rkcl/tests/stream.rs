//! The Stream API on the local Kinesis and DynamoDB: the checkpoint is the
//! commit watermark, memory stays bounded when a record is never committed,
//! a kill switch, a dropped stream and SIGTERM flush what was committed,
//! shard streams follow the leases, and Lambda-style batches keep per-key
//! order, bisect, resume after a partial failure and skip only old records.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{key_and_number, keyed_records, quick_polling};
use futures_util::StreamExt;
use rkcl::{
    CommittableRecord, Consumer, ConsumerConfig, DynamoDbLeaseStore, ExtendedSequenceNumber,
    Kinesis, SchedulerConfig,
    aws::StreamRef,
    leases::LeaseStore,
    model::LeaseKey,
    record::ProducerRecord,
    stream::{
        BatchError, BatchOptions, BatchOptionsBuilder, ConsumerConfigBuilder, FailureReason,
        Records,
    },
};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::{Aggregated, Plain};
use rkcl_local::testkit::{create_stream, eventually_every, lease_key, lease_table, put};

const LEASE: Duration = Duration::from_secs(2);

/// Warnings the library logged, for the tests that expect one.
fn warnings() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        tracing_subscriber::fmt()
            .with_env_filter("rkcl=warn")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        log
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Setup {
    _local: Local,
    kinesis: Kinesis,
    stream: StreamRef,
    store: DynamoDbLeaseStore,
}

impl Setup {
    async fn new(name: &str, shards: u32) -> Self {
        let local = Local::start().await.unwrap();
        let kinesis = Kinesis::new(local.kinesis_client());
        let stream = create_stream(&kinesis, name, shards).await;
        let store = lease_table(&local, &format!("{name}-app")).await;
        Self {
            _local: local,
            kinesis,
            stream,
            store,
        }
    }

    fn config(&self, worker: &str) -> ConsumerConfigBuilder {
        let scheduler = SchedulerConfig::builder(self.store.table(), self.stream.name())
            .worker_id(worker)
            .lease_duration(LEASE)
            .polling(quick_polling())
            .shard_sync_interval(Duration::from_secs(1))
            .build()
            .unwrap();
        ConsumerConfig::builder(scheduler).shutdown_grace(Duration::from_secs(2))
    }

    async fn start(&self, config: ConsumerConfig) -> Consumer {
        Consumer::start(config, self.kinesis.clone(), self.store.clone())
            .await
            .unwrap()
    }

    async fn checkpoint(&self, shard: &LeaseKey) -> ExtendedSequenceNumber {
        self.store.get(shard).await.unwrap().unwrap().checkpoint
    }

    /// Waits until the shard's checkpoint is `expected`, then checks it
    /// stays there.
    async fn assert_checkpoint(&self, shard: &LeaseKey, expected: &ExtendedSequenceNumber) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while &self.checkpoint(shard).await != expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "checkpoint {} instead of {expected}",
                self.checkpoint(shard).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(&self.checkpoint(shard).await, expected);
    }
}

/// Records until none arrives for `idle`.
async fn drain(records: &mut Records, idle: Duration) -> Vec<CommittableRecord> {
    let mut out = Vec::new();
    while let Ok(Some(record)) = tokio::time::timeout(idle, records.next()).await {
        out.push(record.unwrap());
    }
    out
}

/// Exactly `count` records (fails after 30 s).
async fn take(records: &mut Records, count: usize) -> Vec<CommittableRecord> {
    let mut out = Vec::new();
    while out.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(30), records.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} records", out.len()));
        out.push(next.expect("the stream ended").unwrap());
    }
    out
}

fn data(record: &CommittableRecord) -> String {
    text(record.record())
}

fn text(record: &rkcl::UserRecord) -> String {
    String::from_utf8(record.data.to_vec()).unwrap()
}

/// A failure callback that keeps what it is given.
fn keep_failures(
    options: BatchOptionsBuilder,
) -> (BatchOptions, Arc<Mutex<Vec<rkcl::stream::BatchFailure>>>) {
    let failed = Arc::new(Mutex::new(Vec::new()));
    let kept = failed.clone();
    let options = options
        .on_failure(move |failure| {
            let kept = kept.clone();
            async move { kept.lock().unwrap().push(failure) }
        })
        .build()
        .unwrap();
    (options, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_is_exactly_the_commit_watermark_also_inside_an_aggregate() {
    let setup = Setup::new("watermark", 1).await;
    // Three aggregates of ten user records each.
    for part in 0..3 {
        let records = (0..10)
            .map(|i| ProducerRecord::new("k", format!("{}", part * 10 + i)))
            .collect();
        put(&setup.kinesis, &setup.stream, records, Aggregated).await;
    }
    let config = setup
        .config("w")
        .checkpoint_every(1_000_000, Duration::from_millis(100))
        .build()
        .unwrap();
    let mut records = setup.start(config).await.records();
    let mut received = take(&mut records, 30).await;
    let positions: Vec<ExtendedSequenceNumber> = received.iter().map(|r| r.position()).collect();
    assert!(received.iter().all(|r| r.sub_sequence_number().is_some()));
    let shard = received[0].shard().lease_key.clone();

    // Commit out of order, everything but #16 and #25.
    let mut held: BTreeMap<usize, CommittableRecord> = BTreeMap::new();
    let mut order: Vec<usize> = (0..30).rev().collect();
    order.rotate_left(7);
    let mut slots: Vec<Option<CommittableRecord>> = received.drain(..).map(Some).collect();
    for i in order {
        let record = slots[i].take().unwrap();
        if i == 16 || i == 25 {
            held.insert(i, record);
        } else {
            record.commit();
        }
    }
    // #16 is the seventh user record of the second aggregate: the
    // checkpoint stops right before it, at (sequence, sub-sequence 5).
    setup.assert_checkpoint(&shard, &positions[15]).await;
    assert!(matches!(
        positions[15],
        ExtendedSequenceNumber::Sequence {
            sub_sequence_number: 5,
            ..
        }
    ));
    held.remove(&16).unwrap().commit();
    setup.assert_checkpoint(&shard, &positions[24]).await;
    held.remove(&25).unwrap().commit();
    setup.assert_checkpoint(&shard, &positions[29]).await;
    drop(records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_never_committed_bounds_memory_warns_and_is_read_again_after_restart() {
    let log = warnings();
    let setup = Setup::new("stuck", 1).await;
    put(
        &setup.kinesis,
        &setup.stream,
        (0..1000)
            .map(|i| ProducerRecord::new(format!("k{i}"), format!("{i}")))
            .collect(),
        Plain,
    )
    .await;
    let config = setup
        .config("w")
        .max_in_flight_per_shard(100, 1 << 20)
        .uncommitted_warning_after(Duration::from_millis(300))
        .checkpoint_every(10, Duration::from_millis(100))
        .build()
        .unwrap();
    let consumer = setup.start(config.clone()).await;
    let handle = consumer.shutdown_handle();
    let mut records = consumer.records();
    let mut stuck = None;
    let mut received = 0;
    // Everything is committed except record 10, which the user keeps.
    while let Ok(Some(record)) = tokio::time::timeout(Duration::from_secs(2), records.next()).await
    {
        let record = record.unwrap();
        received += 1;
        if data(&record) == "10" {
            stuck = Some(record);
        } else {
            record.commit();
        }
    }
    let stuck = stuck.unwrap();
    // Records 0-9 passed the watermark; 100 are in flight: the shard
    // stopped fetching at the bound.
    assert_eq!(received, 110);
    let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    let position = stuck.position().to_string();
    assert!(
        text.lines().any(|l| l.contains("has not been committed")
            && l.contains(stuck.shard().shard_id.as_str())
            && l.contains(&position)),
        "no warning for {position} in {text}"
    );
    let shard = stuck.shard().lease_key.clone();
    let report = handle.shutdown().await;
    assert_eq!(report.finished_leases, vec![shard.clone()]);
    drop(stuck);
    drop(records);

    // The checkpoint is before record 10; a restart reads it again first.
    let mut again = setup.start(config).await.records();
    let first = take(&mut again, 1).await;
    assert_eq!(data(&first[0]), "10");
}

/// How a consumer is stopped mid-stream.
#[derive(Clone, Copy, Debug)]
enum Stop {
    KillSwitch,
    Drop,
    Sigterm,
}

async fn committed_progress_survives(stop: Stop) {
    let name = format!("stop-{}", format!("{stop:?}").to_lowercase());
    let setup = Setup::new(&name, 2).await;
    put(
        &setup.kinesis,
        &setup.stream,
        keyed_records(10, 100, 0),
        Aggregated,
    )
    .await;
    // No automatic checkpoint before the stop: only the flush saves progress.
    let config = setup
        .config("w")
        .checkpoint_every(1_000_000, Duration::from_secs(3600))
        .build()
        .unwrap();
    let consumer = setup.start(config.clone()).await;
    let handle = consumer.shutdown_handle();
    let mut records = consumer.records();
    let mut committed = BTreeSet::new();
    for record in take(&mut records, 500).await {
        committed.insert(data(&record));
        record.commit();
    }
    match stop {
        Stop::KillSwitch => {
            handle.trigger();
            // The pipeline keeps running until the stream ends.
            while let Some(record) = records.next().await {
                let record = record.unwrap();
                committed.insert(data(&record));
                record.commit();
            }
        }
        Stop::Drop => drop(records),
        Stop::Sigterm => {
            let _signals = handle.shutdown_on_signal();
            let status = std::process::Command::new("kill")
                .args(["-TERM", &std::process::id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            while let Some(record) = records.next().await {
                let record = record.unwrap();
                committed.insert(data(&record));
                record.commit();
            }
        }
    }
    let report = handle.shutdown().await;
    assert_eq!(report.finished_leases.len(), 2, "{report:?}");
    assert!(report.unfinished_leases.is_empty(), "{report:?}");

    let mut again = setup.start(config).await.records();
    let rest = drain(&mut again, Duration::from_secs(3)).await;
    let rest: BTreeSet<String> = rest.iter().map(data).collect();
    assert!(
        rest.is_disjoint(&committed),
        "{stop:?}: {} committed records delivered again",
        rest.intersection(&committed).count()
    );
    assert_eq!(rest.len() + committed.len(), 1000, "{stop:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_switch_mid_stream_keeps_committed_progress() {
    committed_progress_survives(Stop::KillSwitch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_keeps_committed_progress() {
    committed_progress_survives(Stop::Drop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_committed_progress() {
    committed_progress_survives(Stop::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_streams_follow_the_leases_and_a_handoff_continues_at_the_commits() {
    let setup = Setup::new("shards", 2).await;
    put(
        &setup.kinesis,
        &setup.stream,
        keyed_records(10, 50, 0),
        Plain,
    )
    .await;
    let mut first = setup
        .start(setup.config("a").build().unwrap())
        .await
        .shards();
    let mut opened = Vec::new();
    for _ in 0..2 {
        let (info, records) = tokio::time::timeout(Duration::from_secs(20), first.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(records.shard(), &info);
        opened.push(records);
    }
    // Each shard stream holds that shard's records only, in order.
    let mut seen = BTreeSet::new();
    for records in &mut opened {
        let shard = records.shard().shard_id.clone();
        let mut last: BTreeMap<usize, usize> = BTreeMap::new();
        while let Ok(Some(record)) =
            tokio::time::timeout(Duration::from_secs(2), records.next()).await
        {
            assert_eq!(record.shard().shard_id, shard);
            let (key, number) = key_and_number(record.data());
            assert!(
                last.insert(key, number)
                    .is_none_or(|before| before < number)
            );
            seen.insert(data(&record));
            record.commit();
        }
    }
    assert_eq!(seen.len(), 500);

    // A second worker joins: one of a's shard streams ends (handed over)
    // and b's stream for it starts after a's commits: nothing again.
    let second = setup.start(setup.config("b").build().unwrap()).await;
    let handle_b = second.shutdown_handle();
    let mut second = second.shards();
    let (taken, mut records_b) = tokio::time::timeout(Duration::from_secs(30), second.next())
        .await
        .unwrap()
        .unwrap();
    let ended = opened
        .iter_mut()
        .find(|r| r.shard().shard_id == taken.shard_id)
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), ended.next())
            .await
            .unwrap()
            .is_none(),
        "a's stream of the handed-over shard did not end"
    );
    put(
        &setup.kinesis,
        &setup.stream,
        keyed_records(10, 1, 1000),
        Plain,
    )
    .await;
    let next = tokio::time::timeout(Duration::from_secs(10), records_b.next())
        .await
        .unwrap()
        .unwrap();
    assert!(!seen.contains(&data(&next)), "b read {} again", data(&next));
    handle_b.shutdown().await;
}

fn batch_setup_config(setup: &Setup) -> ConsumerConfig {
    setup
        .config("w")
        .checkpoint_every(1_000_000, Duration::from_millis(200))
        .build()
        .unwrap()
}

/// Runs `for_each_batch` until `done`, then shuts down.
async fn run_batches<H, Fut>(
    setup: &Setup,
    options: BatchOptions,
    handler: H,
    done: impl Fn() -> bool,
) where
    H: Fn(rkcl::stream::Batch) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BatchError>> + Send + 'static,
{
    let consumer = setup.start(batch_setup_config(setup)).await;
    let handle = consumer.shutdown_handle();
    let running = tokio::spawn(consumer.for_each_batch(options, handler));
    eventually_every(
        "batches did not finish",
        Duration::from_secs(60),
        Duration::from_millis(50),
        done,
    )
    .await;
    handle.trigger();
    let report = running.await.unwrap().unwrap();
    assert!(report.unfinished_leases.is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_parallel_keep_per_key_order() {
    let setup = Setup::new("parallel", 1).await;
    put(
        &setup.kinesis,
        &setup.stream,
        keyed_records(20, 50, 0),
        Aggregated,
    )
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (active, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let options = BatchOptions::builder()
        .batch_size(10)
        .max_batching_window(Duration::from_millis(50))
        .parallelization_factor(4)
        .build()
        .unwrap();
    let handler = {
        let (seen, active, most) = (seen.clone(), active.clone(), most.clone());
        move |batch: rkcl::stream::Batch| {
            let (seen, active, most) = (seen.clone(), active.clone(), most.clone());
            async move {
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                seen.lock()
                    .unwrap()
                    .extend(batch.records.iter().map(|r| key_and_number(&r.data)));
                active.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        }
    };
    let count = seen.clone();
    run_batches(&setup, options, handler, move || {
        count.lock().unwrap().len() >= 1000
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1000);
    let mut last: BTreeMap<usize, usize> = BTreeMap::new();
    for (key, number) in seen {
        assert!(
            last.insert(key, number)
                .is_none_or(|before| before + 1 == number),
            "key {key} out of order"
        );
    }
    assert!(
        most.load(Ordering::SeqCst) >= 2,
        "never more than one batch at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bisect_isolates_one_poison_record_among_a_thousand() {
    let setup = Setup::new("bisect", 1).await;
    let records: Vec<ProducerRecord> = (0..1000)
        .map(|i| {
            let text = if i == 617 {
                "poison".to_owned()
            } else {
                format!("{i}")
            };
            ProducerRecord::new(format!("k{}", i % 7), text)
        })
        .collect();
    put(&setup.kinesis, &setup.stream, records, Aggregated).await;
    let handled = Arc::new(Mutex::new(BTreeSet::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (options, failed) = keep_failures(
        BatchOptions::builder()
            .batch_size(1000)
            .max_batching_window(Duration::from_secs(1))
            .bisect_on_error(true)
            .max_retries(Some(2))
            .retry_backoff((Duration::from_millis(10), Duration::from_millis(50))),
    );
    let handler = {
        let (handled, calls) = (handled.clone(), calls.clone());
        move |batch: rkcl::stream::Batch| {
            let (handled, calls) = (handled.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if batch.records.iter().any(|r| &r.data[..] == b"poison") {
                    return Err(BatchError::from("poison inside"));
                }
                let mut handled = handled.lock().unwrap();
                for record in &batch.records {
                    assert!(
                        handled.insert((record.extended_sequence_number(), record.data.clone())),
                        "handled twice"
                    );
                }
                Ok(())
            }
        }
    };
    let (count, gave_up) = (handled.clone(), failed.clone());
    run_batches(&setup, options, handler, move || {
        count.lock().unwrap().len() == 999 && gave_up.lock().unwrap().len() == 1
    })
    .await;
    let failed = failed.lock().unwrap().drain(..).collect::<Vec<_>>();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].records.len(), 1);
    assert_eq!(&failed[0].records[0].data[..], b"poison");
    assert!(matches!(
        failed[0].reason,
        FailureReason::RetriesExhausted { attempts: 3, .. }
    ));
    // About two calls per halving, plus the poison's retries.
    let calls = calls.load(Ordering::SeqCst);
    assert!(calls <= 2 * 10 + 3, "{calls} calls");
    // Everything committed, the poison too: the checkpoint is at the end.
    let last = handled
        .lock()
        .unwrap()
        .iter()
        .map(|(position, _)| position.clone())
        .chain([failed[0].records[0].extended_sequence_number()])
        .max()
        .unwrap();
    assert_eq!(
        setup.checkpoint(&lease_key("shardId-000000000000")).await,
        last
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_failure_resumes_at_the_failed_record() {
    let setup = Setup::new("partial", 1).await;
    put(
        &setup.kinesis,
        &setup.stream,
        (0..100)
            .map(|i| ProducerRecord::new("k", format!("{i}")))
            .collect(),
        Aggregated,
    )
    .await;
    let calls = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let last = Arc::new(Mutex::new(None));
    let options = BatchOptions::builder()
        .batch_size(100)
        .max_batching_window(Duration::from_secs(1))
        .retry_backoff((Duration::from_millis(10), Duration::from_millis(50)))
        .build()
        .unwrap();
    let handler = {
        let (calls, last) = (calls.clone(), last.clone());
        move |batch: rkcl::stream::Batch| {
            let (calls, last) = (calls.clone(), last.clone());
            async move {
                *last.lock().unwrap() = batch.records.last().map(|r| r.extended_sequence_number());
                let texts: Vec<String> = batch.records.iter().map(text).collect();
                let first_time = calls.lock().unwrap().is_empty();
                calls.lock().unwrap().push(texts.clone());
                match texts.iter().position(|t| t == "40") {
                    Some(at) if first_time => Err(BatchError::Partial {
                        first_failed: at,
                        error: "record 40 failed".into(),
                    }),
                    _ => Ok(()),
                }
            }
        }
    };
    let count = calls.clone();
    run_batches(&setup, options, handler, move || {
        count.lock().unwrap().iter().map(Vec::len).sum::<usize>() >= 160
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].len(), 100);
    let expected: Vec<String> = (40..100).map(|i| i.to_string()).collect();
    assert_eq!(calls[1], expected);
    // Everything handled: the checkpoint is the last record.
    let last = last.lock().unwrap().clone().unwrap();
    assert_eq!(
        setup.checkpoint(&lease_key("shardId-000000000000")).await,
        last
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_records_older_than_the_max_age_are_skipped_and_reported() {
    let setup = Setup::new("age", 1).await;
    put(
        &setup.kinesis,
        &setup.stream,
        (0..50)
            .map(|i| ProducerRecord::new("k", format!("old-{i}")))
            .collect(),
        Plain,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    put(
        &setup.kinesis,
        &setup.stream,
        (0..50)
            .map(|i| ProducerRecord::new("k", format!("new-{i}")))
            .collect(),
        Plain,
    )
    .await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (options, failed) = keep_failures(
        BatchOptions::builder()
            .batch_size(25)
            .max_record_age(Some(Duration::from_secs(3))),
    );
    let handler = {
        let handled = handled.clone();
        move |batch: rkcl::stream::Batch| {
            let handled = handled.clone();
            async move {
                handled
                    .lock()
                    .unwrap()
                    .extend(batch.records.iter().map(text));
                Ok(())
            }
        }
    };
    let (count, gave_up) = (handled.clone(), failed.clone());
    run_batches(&setup, options, handler, move || {
        count.lock().unwrap().len()
            + gave_up
                .lock()
                .unwrap()
                .iter()
                .map(|f: &rkcl::stream::BatchFailure| f.records.len())
                .sum::<usize>()
            >= 100
    })
    .await;
    let handled = handled.lock().unwrap().clone();
    let expected: Vec<String> = (0..50).map(|i| format!("new-{i}")).collect();
    assert_eq!(handled, expected);
    let failed = failed.lock().unwrap();
    let old: Vec<String> = failed
        .iter()
        .inspect(|f| {
            assert_eq!(
                f.reason,
                FailureReason::TooOld {
                    max_age: Duration::from_secs(3)
                }
            )
        })
        .flat_map(|f| f.records.iter().map(text))
        .collect();
    let expected: Vec<String> = (0..50).map(|i| format!("old-{i}")).collect();
    assert_eq!(old, expected);
}
