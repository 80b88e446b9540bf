//! Enhanced fan-out against the local Kinesis: a worker reading through
//! splits and merges, many short subscription sessions with injected
//! failures, a killed worker resuming inside an aggregate, two
//! applications on one stream, a missing stream consumer, and a consumer
//! that stops taking records.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use common::{key_and_number, keyed_records};
use rkcl::{
    Checkpointer, Error, ExtendedSequenceNumber, Kinesis, ProcessRecordsInput, ProcessorError,
    RecordProcessor, Scheduler, SchedulerConfig, ShardId, ShardInfo,
    aws::ConsumerStatus,
    leases::LeaseStore,
    model::StartingPosition,
    retrieval::{
        FanOutConfig, FanOutConfigBuilder, FanOutSource, RecordSource, ResubscribeCause,
        ShardEvent, resolve_consumer,
    },
};
use rkcl_local::testkit::Packing::{Aggregated, Plain};
use rkcl_local::testkit::{create_stream, eventually, lease_table, merge, put, split};
use rkcl_local::{FaultKind, FaultPlan, KinesisSettings, Local};
use tokio_util::sync::CancellationToken;

/// Fan-out settings that keep tests quick: short backoff, the shortest
/// idle timeout allowed.
fn quick_fan_out() -> FanOutConfigBuilder {
    FanOutConfig::builder()
        .base_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(200))
        .idle_timeout(FanOutConfig::MIN_IDLE_TIMEOUT)
}

/// Local servers whose subscription sessions end after `session`.
async fn local_with_sessions(session: Duration) -> Local {
    Local::builder()
        .kinesis_settings(KinesisSettings {
            subscription_session: session,
            ..KinesisSettings::default()
        })
        .start()
        .await
        .unwrap()
}

/// One delivery of one `K:N` user record.
#[derive(Clone, Debug)]
struct Delivery {
    instance: u64,
    shard: ShardId,
    position: ExtendedSequenceNumber,
    key: usize,
    number: usize,
}

#[derive(Default)]
struct Journal {
    deliveries: Mutex<Vec<Delivery>>,
    ended: Mutex<Vec<ShardId>>,
    instances: AtomicU64,
}

impl Journal {
    fn record(&self, instance: u64, shard: &ShardId, records: &[rkcl::UserRecord]) {
        let mut deliveries = self.deliveries.lock().unwrap();
        for record in records {
            let (key, number) = key_and_number(&record.data);
            deliveries.push(Delivery {
                instance,
                shard: shard.clone(),
                position: record.extended_sequence_number(),
                key,
                number,
            });
        }
    }

    fn unique(&self) -> usize {
        let deliveries = self.deliveries.lock().unwrap();
        deliveries
            .iter()
            .map(|d| (d.key, d.number))
            .collect::<BTreeSet<_>>()
            .len()
    }

    fn snapshot(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }
}

/// Every record delivered exactly once: `total` deliveries, all different.
fn assert_exactly_once(deliveries: &[Delivery], total: usize) {
    let unique: BTreeSet<(usize, usize)> = deliveries.iter().map(|d| (d.key, d.number)).collect();
    assert_eq!(unique.len(), total, "records missing");
    assert_eq!(deliveries.len(), total, "records delivered twice");
}

/// Per key, numbers arrive 0, 1, 2, ... with none skipped or repeated; per
/// processor instance, positions strictly increase.
fn assert_key_and_shard_order(deliveries: &[Delivery]) {
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut last: HashMap<u64, &ExtendedSequenceNumber> = HashMap::new();
    for delivery in deliveries {
        let expected = next.entry(delivery.key).or_insert(0);
        assert_eq!(
            delivery.number, *expected,
            "key {} out of order",
            delivery.key
        );
        *expected += 1;
        if let Some(previous) = last.insert(delivery.instance, &delivery.position) {
            assert!(
                previous < &delivery.position,
                "out of order in {}: {previous} then {}",
                delivery.shard,
                delivery.position
            );
        }
    }
}

/// Logs every record and checkpoints after every batch.
struct Recorder {
    instance: u64,
    shard: ShardId,
    journal: Arc<Journal>,
}

impl RecordProcessor for Recorder {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        self.journal
            .record(self.instance, &self.shard, &input.records);
        checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, checkpointer: &Checkpointer) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        self.journal.ended.lock().unwrap().push(self.shard.clone());
        Ok(())
    }
}

fn recorder(journal: &Arc<Journal>) -> impl Fn(&ShardInfo) -> Recorder + use<> {
    let journal = journal.clone();
    move |shard: &ShardInfo| Recorder {
        instance: journal.instances.fetch_add(1, Ordering::SeqCst),
        shard: shard.shard_id.clone(),
        journal: journal.clone(),
    }
}

const LEASE: Duration = Duration::from_secs(2);

fn fan_out_config(app: &str, stream: &str, fan_out: FanOutConfig) -> SchedulerConfig {
    SchedulerConfig::builder(app, stream)
        .worker_id(format!("{app}-worker"))
        .lease_duration(LEASE)
        .fan_out(fan_out)
        .shard_sync_interval(Duration::from_secs(1))
        .parent_poll_interval(Duration::from_millis(200))
        .build()
        .unwrap()
}

/// Counts the Kinesis calls a client makes, by operation, and fails the
/// SubscribeToShard calls its plan names.
struct Calls {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    subscribe_plan: fn(usize) -> Option<(u16, &'static str)>,
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calls").finish_non_exhaustive()
    }
}

/// The fault planned for the attempt in flight, if any.
#[derive(Clone, Debug)]
struct Planned(Option<(u16, &'static str)>);

impl Storable for Planned {
    type Storer = StoreReplace<Self>;
}

impl Intercept for Calls {
    fn name(&self) -> &'static str {
        "Calls"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        let operation = context
            .request()
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("?")
            .to_owned();
        let mut counts = self.counts.lock().unwrap();
        let count = counts.entry(operation.clone()).or_default();
        let planned = (operation == "SubscribeToShard")
            .then(|| (self.subscribe_plan)(*count))
            .flatten();
        *count += 1;
        cfg.interceptor_state().store_put(Planned(planned));
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        let Some((status, code)) = cfg.load::<Planned>().and_then(|p| p.0) else {
            return Ok(());
        };
        let response = context.response_mut();
        *response.status_mut() =
            aws_smithy_runtime_api::http::StatusCode::try_from(status).unwrap();
        response.headers_mut().insert("x-amzn-errortype", code);
        response
            .headers_mut()
            .insert("content-type", "application/x-amz-json-1.1");
        *response.body_mut() = aws_smithy_types::body::SdkBody::from(format!(
            "{{\"__type\":\"{code}\",\"message\":\"injected\"}}"
        ));
        Ok(())
    }
}

/// A client for the local Kinesis that counts its calls by operation and
/// fails the SubscribeToShard calls `plan` names.
fn counting_client(
    local: &Local,
    plan: fn(usize) -> Option<(u16, &'static str)>,
) -> (Kinesis, Arc<Mutex<HashMap<String, usize>>>) {
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let config = local
        .kinesis_client()
        .config()
        .to_builder()
        .interceptor(Calls {
            counts: counts.clone(),
            subscribe_plan: plan,
        })
        .build();
    (
        Kinesis::new(aws_sdk_kinesis::Client::from_conf(config)),
        counts,
    )
}

fn calls(counts: &Mutex<HashMap<String, usize>>, operation: &str) -> usize {
    counts.lock().unwrap().get(operation).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_worker_reads_through_splits_and_merges_once_in_key_order() {
    let local = Local::start().await.unwrap();
    let (kinesis, counts) = counting_client(&local, |_| None);
    let stream = create_stream(&kinesis, "reshard", 3).await;
    let store = lease_table(&local, "reshard-app").await;
    let journal = Arc::new(Journal::default());
    let worker = Scheduler::start(
        fan_out_config("reshard-app", "reshard", quick_fan_out().build().unwrap()),
        kinesis.clone(),
        store.clone(),
        recorder(&journal),
    )
    .await
    .unwrap();
    put(&kinesis, &stream, keyed_records(30, 100, 0), Aggregated).await;
    let shards = kinesis.list_shards(&stream).await.unwrap();
    split(&local, &stream, &shards[0], None).await;
    put(&kinesis, &stream, keyed_records(30, 100, 100), Plain).await;
    merge(&local, &stream, &shards[1], &shards[2]).await;
    put(&kinesis, &stream, keyed_records(30, 100, 200), Aggregated).await;
    eventually("all 9,000", Duration::from_secs(25), || {
        journal.unique() == 9_000
    })
    .await;
    // Whatever still arrives would be a duplicate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deliveries = journal.snapshot();
    assert_exactly_once(&deliveries, 9_000);
    assert_key_and_shard_order(&deliveries);

    // Children start only after every parent's last delivery, and every
    // parent ended.
    let all = kinesis.list_shards(&stream).await.unwrap();
    let first_of = |shard: &ShardId| deliveries.iter().position(|d| &d.shard == shard);
    let last_of = |shard: &ShardId| deliveries.iter().rposition(|d| &d.shard == shard);
    for child in all.iter().filter(|s| s.parent_shard_id.is_some()) {
        for parent in child.parents() {
            if let (Some(start), Some(end)) = (first_of(&child.id), last_of(parent)) {
                assert!(start > end, "{} started before {parent} ended", child.id);
            }
        }
    }
    let ended: BTreeSet<ShardId> = journal.ended.lock().unwrap().iter().cloned().collect();
    for parent in &shards {
        assert!(ended.contains(&parent.id), "{} did not end", parent.id);
    }
    // Read with SubscribeToShard only, through the application's consumer.
    assert_eq!(calls(&counts, "GetRecords"), 0);
    assert!(calls(&counts, "SubscribeToShard") >= all.len());
    let stream_arn = kinesis.describe_stream_summary(&stream).await.unwrap().arn;
    let consumers = kinesis.list_stream_consumers(&stream_arn).await.unwrap();
    assert_eq!(consumers.len(), 1, "{consumers:?}");
    assert_eq!(consumers[0].name, "reshard-app");
    assert_eq!(consumers[0].status, ConsumerStatus::Active);
    let report = worker.shutdown(Duration::from_secs(10)).await;
    assert!(report.unfinished_leases.is_empty(), "{report:?}");
}

/// Reads `source` into `journal` until it ends or `stop` is cancelled, and
/// hands it back.
fn drain(
    mut source: FanOutSource,
    journal: Arc<Journal>,
    instance: u64,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<FanOutSource> {
    tokio::spawn(async move {
        let shard = source.shard_id().clone();
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => break,
                event = source.next_event() => event,
            };
            match event.expect("the source goes on").unwrap() {
                ShardEvent::Records(batch) => journal.record(instance, &shard, &batch.records),
                ShardEvent::End(end) => panic!("{} ended: {end:?}", end.shard_id),
            }
        }
        source
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_sessions_and_failed_subscriptions_cost_no_record_and_no_duplicate() {
    let local = local_with_sessions(Duration::from_secs(2)).await;
    let plain = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&plain, "sessions", 2).await;
    // Of every six subscriptions, one is throttled, one finds the shard in
    // use and one meets a 500.
    let (kinesis, counts) = counting_client(&local, |call| match call % 6 {
        1 => Some((400, "LimitExceededException")),
        3 => Some((400, "ResourceInUseException")),
        5 => Some((500, "InternalFailureException")),
        _ => None,
    });
    let consumer = resolve_consumer(&plain, &stream, &FanOutConfig::default(), "sessions-app")
        .await
        .unwrap();
    let journal = Arc::new(Journal::default());
    let stop = CancellationToken::new();
    let mut readers = Vec::new();
    for (instance, shard) in plain.list_shards(&stream).await.unwrap().iter().enumerate() {
        let source = FanOutSource::start(
            kinesis.clone(),
            stream.clone(),
            consumer.arn.clone(),
            shard,
            StartingPosition::TrimHorizon,
            quick_fan_out().build().unwrap(),
        )
        .unwrap();
        readers.push(drain(
            source,
            journal.clone(),
            instance as u64,
            stop.clone(),
        ));
    }
    // 50,000 records over about ten seconds, half of them aggregated.
    for round in 0..20 {
        let packing = if round % 2 == 0 { Plain } else { Aggregated };
        put(&plain, &stream, keyed_records(50, 50, round * 50), packing).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    eventually("all 50,000", Duration::from_secs(20), || {
        journal.unique() == 50_000
    })
    .await;
    // Whatever still arrives would be a duplicate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let mut sources = Vec::new();
    for reader in readers {
        sources.push(reader.await.unwrap());
    }
    let deliveries = journal.snapshot();
    assert_exactly_once(&deliveries, 50_000);
    assert_key_and_shard_order(&deliveries);

    let total = |cause| {
        sources
            .iter()
            .map(|s| s.resubscriptions(cause))
            .sum::<u64>()
    };
    let session_ends = total(ResubscribeCause::SessionEnd);
    assert!(session_ends >= 6, "only {session_ends} sessions ended");
    for cause in [
        ResubscribeCause::Throttled,
        ResubscribeCause::InUse,
        ResubscribeCause::Error,
    ] {
        assert!(total(cause) >= 1, "no resubscription for {cause:?}");
    }
    assert_eq!(total(ResubscribeCause::Idle), 0);
    // Every call opened a subscription or failed as planned (but for one
    // call per source that may have been in flight when it stopped).
    let opened: u64 = sources.iter().map(FanOutSource::subscriptions).sum();
    let failed = total(ResubscribeCause::Throttled)
        + total(ResubscribeCause::InUse)
        + total(ResubscribeCause::Error);
    let asked = calls(&counts, "SubscribeToShard") as u64;
    assert!(
        (asked.saturating_sub(sources.len() as u64)..=asked).contains(&(opened + failed)),
        "{opened} opened and {failed} failed of {asked} calls"
    );
}

/// Checkpoints at one chosen user record and never at shutdown.
struct StopsMidAggregate {
    journal: Arc<Journal>,
    checkpoint_at: usize,
}

impl RecordProcessor for StopsMidAggregate {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        self.journal
            .record(0, checkpointer.shard_id(), &input.records);
        for record in &input.records {
            if key_and_number(&record.data).1 == self.checkpoint_at {
                assert!(record.is_aggregated());
                checkpointer.checkpoint_record(record).await?;
            }
        }
        Ok(())
    }

    async fn shutdown_requested(&mut self, _: &Checkpointer) -> Result<(), ProcessorError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_resumed_exactly_at_its_checkpoint_inside_an_aggregate() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "resume", 1).await;
    let store = lease_table(&local, "resume-app").await;
    put(&kinesis, &stream, keyed_records(1, 1000, 0), Aggregated).await;
    let first = Arc::new(Journal::default());
    let journal = first.clone();
    let worker = Scheduler::start(
        fan_out_config("resume-app", "resume", quick_fan_out().build().unwrap()),
        kinesis.clone(),
        store.clone(),
        move |_: &ShardInfo| StopsMidAggregate {
            journal: journal.clone(),
            checkpoint_at: 437,
        },
    )
    .await
    .unwrap();
    eventually("all read once", Duration::from_secs(15), || {
        first.unique() == 1000
    })
    .await;
    // Killed: no shutdown, the lease is left to expire.
    drop(worker);
    let lease = store.list().await.unwrap().remove(0);
    assert!(lease.owner.is_some(), "{lease:?}");
    // Stored inside an aggregate.
    assert!(lease.checkpoint.sub_sequence_number() > 0, "{lease:?}");
    put(&kinesis, &stream, keyed_records(1, 200, 1000), Plain).await;

    let second = Arc::new(Journal::default());
    let worker = Scheduler::start(
        fan_out_config("resume-app", "resume", quick_fan_out().build().unwrap()),
        kinesis.clone(),
        store.clone(),
        recorder(&second),
    )
    .await
    .unwrap();
    eventually("the rest read", Duration::from_secs(20), || {
        second.unique() >= 1200 - 438
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let numbers: Vec<usize> = second.snapshot().iter().map(|d| d.number).collect();
    assert_eq!(numbers, (438..1200).collect::<Vec<_>>());
    worker.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applications_read_one_stream_through_their_own_consumers() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "shared", 2).await;
    put(&kinesis, &stream, keyed_records(20, 100, 0), Aggregated).await;
    let mut workers = Vec::new();
    let mut journals = Vec::new();
    for app in ["shared-a", "shared-b"] {
        let store = lease_table(&local, app).await;
        let journal = Arc::new(Journal::default());
        workers.push(
            Scheduler::start(
                fan_out_config(app, "shared", quick_fan_out().build().unwrap()),
                kinesis.clone(),
                store,
                recorder(&journal),
            )
            .await
            .unwrap(),
        );
        journals.push(journal);
    }
    put(&kinesis, &stream, keyed_records(20, 100, 100), Plain).await;
    for journal in &journals {
        eventually("every record", Duration::from_secs(20), || {
            journal.unique() == 4_000
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for journal in &journals {
        let deliveries = journal.snapshot();
        assert_exactly_once(&deliveries, 4_000);
        assert_key_and_shard_order(&deliveries);
    }
    let stream_arn = kinesis.describe_stream_summary(&stream).await.unwrap().arn;
    let mut consumers = kinesis.list_stream_consumers(&stream_arn).await.unwrap();
    consumers.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = consumers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["shared-a", "shared-b"]);
    assert_ne!(consumers[0].arn, consumers[1].arn);
    assert!(consumers.iter().all(|c| c.status == ConsumerStatus::Active));
    for worker in workers {
        worker.shutdown(Duration::from_secs(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_deregistered_consumer_ends_in_a_clear_error() {
    let local = local_with_sessions(Duration::from_secs(2)).await;
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "orphan", 1).await;
    let store = lease_table(&local, "orphan-app").await;
    put(&kinesis, &stream, keyed_records(5, 20, 0), Plain).await;

    // A consumer given by ARN that no longer exists: the worker refuses to
    // start, naming the setting.
    let gone = resolve_consumer(&kinesis, &stream, &FanOutConfig::default(), "gone")
        .await
        .unwrap();
    kinesis.deregister_stream_consumer(&gone.arn).await.unwrap();
    eventually("deregistered", Duration::from_secs(5), || async {
        matches!(
            kinesis.describe_stream_consumer_by_arn(&gone.arn).await,
            Err(Error::ResourceNotFound { .. })
        )
    })
    .await;
    let by_arn = quick_fan_out()
        .consumer_arn(Some(gone.arn.clone()))
        .build()
        .unwrap();
    let started = tokio::time::timeout(
        Duration::from_secs(5),
        Scheduler::start(
            fan_out_config("orphan-app", "orphan", by_arn.clone()),
            kinesis.clone(),
            store,
            recorder(&Arc::new(Journal::default())),
        ),
    )
    .await
    .expect("a clear answer, not a retry loop");
    match started {
        Err(Error::Config(message)) => {
            assert!(message.contains("consumer_arn"), "{message}");
            assert!(message.contains("no such stream consumer"), "{message}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }

    // A source reading through a consumer deregistered under it: one
    // error naming the consumer, then nothing.
    let doomed = resolve_consumer(&kinesis, &stream, &FanOutConfig::default(), "doomed")
        .await
        .unwrap();
    let shard = kinesis.list_shards(&stream).await.unwrap().remove(0);
    let mut source = FanOutSource::start(
        kinesis.clone(),
        stream.clone(),
        doomed.arn.clone(),
        &shard,
        StartingPosition::TrimHorizon,
        quick_fan_out().build().unwrap(),
    )
    .unwrap();
    let mut read = 0;
    while read < 100 {
        if let ShardEvent::Records(batch) = source.next_event().await.unwrap().unwrap() {
            read += batch.records.len();
        }
    }
    kinesis
        .deregister_stream_consumer(&doomed.arn)
        .await
        .unwrap();
    let failure = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match source.next_event().await {
                Some(Ok(ShardEvent::Records(_))) => {}
                Some(Ok(ShardEvent::End(end))) => panic!("the shard ended: {end:?}"),
                Some(Err(err)) => return err,
                None => panic!("the source ended without an error"),
            }
        }
    })
    .await
    .expect("an error, not a retry loop");
    assert!(
        matches!(
            failure,
            Error::ResourceNotFound { .. } | Error::ResourceInUse { .. }
        ),
        "{failure:?}"
    );
    assert!(failure.to_string().contains(&doomed.arn), "{failure}");
    assert!(source.next_event().await.is_none());

    // The same consumer given to a source directly fails the same way.
    let mut orphan = FanOutSource::start(
        kinesis.clone(),
        stream.clone(),
        gone.arn.clone(),
        &shard,
        StartingPosition::TrimHorizon,
        by_arn,
    )
    .unwrap();
    let failure = tokio::time::timeout(Duration::from_secs(5), orphan.next_event())
        .await
        .expect("an error, not a retry loop");
    assert!(
        matches!(failure, Some(Err(Error::ResourceNotFound { .. }))),
        "{failure:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_taking_records_holds_the_subscription_back() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "slow", 1).await;
    let consumer = resolve_consumer(&kinesis, &stream, &FanOutConfig::default(), "slow-app")
        .await
        .unwrap();
    let shard = kinesis.list_shards(&stream).await.unwrap().remove(0);
    let bound = 100;
    let mut source = FanOutSource::start(
        kinesis.clone(),
        stream.clone(),
        consumer.arn,
        &shard,
        StartingPosition::TrimHorizon,
        quick_fan_out()
            .prefetch_records(bound)
            .prefetch_events(50)
            .build()
            .unwrap(),
    )
    .unwrap();
    // 20 records every 100 ms for twelve seconds.
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (kinesis, stream, written) = (kinesis.clone(), stream.clone(), written.clone());
        tokio::spawn(async move {
            for round in 0..120 {
                put(&kinesis, &stream, keyed_records(1, 20, round * 20), Plain).await;
                written.fetch_add(20, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let journal = Journal::default();
    let shard_id = shard.id.clone();
    // One batch taken, then nothing for longer than the idle timeout.
    loop {
        if let ShardEvent::Records(batch) = source.next_event().await.unwrap().unwrap()
            && !batch.records.is_empty()
        {
            journal.record(0, &shard_id, &batch.records);
            break;
        }
    }
    let mut most = rkcl::retrieval::Prefetch::default();
    let stalled = tokio::time::Instant::now();
    while stalled.elapsed() < FanOutConfig::MIN_IDLE_TIMEOUT + Duration::from_secs(1) {
        let now = source.prefetched();
        most.records = most.records.max(now.records);
        most.events = most.events.max(now.events);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let backlog = written.load(Ordering::SeqCst);
    assert!(backlog >= 5 * bound, "only {backlog} records written");
    assert!(
        most.records <= bound,
        "{most:?} waiting with a bound of {bound}"
    );
    assert!(
        most.records >= bound / 2,
        "the prefetch never filled: {most:?}"
    );
    // The stall is the consumer's, not Kinesis': the subscription stays.
    assert_eq!(source.subscriptions(), 1);
    assert_eq!(source.resubscriptions(ResubscribeCause::Idle), 0);

    // Taking again, everything arrives once, in order.
    writer.await.unwrap();
    let total = written.load(Ordering::SeqCst);
    while journal.unique() < total {
        let event = tokio::time::timeout(Duration::from_secs(10), source.next_event())
            .await
            .expect("records keep coming")
            .unwrap()
            .unwrap();
        if let ShardEvent::Records(batch) = event {
            journal.record(0, &shard_id, &batch.records);
        }
    }
    let deliveries = journal.snapshot();
    assert_exactly_once(&deliveries, total);
    assert_key_and_shard_order(&deliveries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_faults_on_subscriptions_cost_no_record_and_no_duplicate() {
    // Throttles, 5xx and connections cut mid-stream on SubscribeToShard, from
    // the local services' fault layer, with 3 s sessions on top.
    let plan = FaultPlan::parse(
        "kinesis.SubscribeToShard:throttle=15%,kinesis.SubscribeToShard:error=10%,\
         kinesis.SubscribeToShard:reset=10%,kinesis.SubscribeToShard:latency=0..50ms",
    )
    .unwrap();
    let local = Local::builder()
        .kinesis_settings(KinesisSettings {
            subscription_session: Duration::from_secs(3),
            ..KinesisSettings::default()
        })
        .faults(plan)
        .fault_seed(11)
        .start()
        .await
        .unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "faulty-fanout", 2).await;
    put(&kinesis, &stream, keyed_records(20, 100, 0), Plain).await;
    let store = lease_table(&local, "faulty-fanout").await;
    let journal = Arc::new(Journal::default());
    let worker = Scheduler::start(
        fan_out_config(
            "faulty-fanout",
            "faulty-fanout",
            quick_fan_out().build().unwrap(),
        ),
        kinesis.clone(),
        store,
        recorder(&journal),
    )
    .await
    .unwrap();
    // Records keep arriving while subscriptions fail and sessions end.
    for round in 1..=4 {
        put(
            &kinesis,
            &stream,
            keyed_records(20, 100, round * 100),
            Aggregated,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    eventually(
        "every record through faulty subscriptions",
        Duration::from_secs(60),
        || journal.unique() == 10_000,
    )
    .await;
    // The worker goes on subscribing at the tip until every kind of fault
    // has hit it at least once; nothing may arrive twice meanwhile.
    eventually(
        "every kind of fault injected",
        Duration::from_secs(90),
        || {
            let counts = local.fault_counts();
            [FaultKind::Throttle, FaultKind::Error, FaultKind::Reset]
                .iter()
                .all(|kind| counts.total(*kind) > 0)
        },
    )
    .await;
    let deliveries = journal.snapshot();
    assert_exactly_once(&deliveries, 10_000);
    assert_key_and_shard_order(&deliveries);
    worker.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_api_reads_through_fan_out_as_it_does_by_polling() {
    use futures_util::StreamExt;
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "stream-fanout", 2).await;
    put(&kinesis, &stream, keyed_records(10, 100, 0), Aggregated).await;
    let store = lease_table(&local, "stream-fanout").await;
    let config = rkcl::ConsumerConfig::builder(fan_out_config(
        "stream-fanout",
        "stream-fanout",
        quick_fan_out().build().unwrap(),
    ))
    .checkpoint_every(100, Duration::from_millis(200))
    .build()
    .unwrap();
    let consumer = rkcl::Consumer::start(config, kinesis.clone(), store.clone())
        .await
        .unwrap();
    let handle = consumer.shutdown_handle();
    let mut records = consumer.records();
    let mut seen = BTreeSet::new();
    while seen.len() < 1_000 {
        let record = tokio::time::timeout(Duration::from_secs(20), records.next())
            .await
            .expect("a record in time")
            .unwrap()
            .unwrap();
        assert!(seen.insert(key_and_number(record.data())), "a record twice");
        record.commit();
    }
    let report = handle.shutdown().await;
    assert_eq!(report.finished_leases.len(), 2, "{report:?}");
    // The watermark of every shard was checkpointed at its last record.
    for lease in store.list().await.unwrap() {
        assert!(lease.checkpoint.sequence_number().is_some(), "{lease:?}");
        assert_eq!(lease.owner, None);
    }
}
