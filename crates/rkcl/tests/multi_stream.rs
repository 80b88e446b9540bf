//! Multi-stream mode end to end on the local Kinesis and DynamoDB: workers
//! sharing several streams in one lease table, streams added and removed
//! while running, tables in the Java KCL 3's multi-stream format, and a
//! table of the other mode refused at start-up.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::{key_and_number, keyed_records, quick_polling};
use futures_util::future::BoxFuture;
use rkcl::tracker::{FormerStreams, MultiStreamConfig, StaticStreams, StreamConfig, StreamTracker};
use rkcl::{
    Checkpointer, Error, ExtendedSequenceNumber, InitialPosition, Kinesis, ProcessRecordsInput,
    ProcessorError, RecordProcessor, Scheduler, SchedulerConfig, ShardId, ShardInfo,
    StreamIdentifier, aws::StreamRef, leases::LeaseStore,
};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::{Aggregated, Plain};
use rkcl_local::testkit::{create_stream, eventually, lease_table, put, read_all_raw, split};

const LEASE: Duration = Duration::from_secs(2);

/// One delivery: the stream (by name), the shard, the record's `K:N`.
#[derive(Clone, Debug)]
struct Delivery {
    stream: String,
    shard: ShardId,
    position: ExtendedSequenceNumber,
    key: usize,
    number: usize,
}

#[derive(Default)]
struct Journal {
    deliveries: Mutex<Vec<Delivery>>,
    /// Every shard's `ShardInfo::stream`, as processors were told.
    told: Mutex<Vec<Option<StreamIdentifier>>>,
}

impl Journal {
    fn of_stream(&self, stream: &str) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.stream == stream)
            .cloned()
            .collect()
    }

    fn unique(&self, stream: &str) -> usize {
        self.of_stream(stream)
            .iter()
            .map(|d| (d.key, d.number))
            .collect::<BTreeSet<_>>()
            .len()
    }
}

/// Logs every record with its stream and checkpoints after every batch.
struct Recorder {
    stream: String,
    shard: ShardId,
    journal: Arc<Journal>,
}

impl RecordProcessor for Recorder {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        {
            let mut deliveries = self.journal.deliveries.lock().unwrap();
            for record in &input.records {
                let (key, number) = key_and_number(&record.data);
                deliveries.push(Delivery {
                    stream: self.stream.clone(),
                    shard: self.shard.clone(),
                    position: record.extended_sequence_number(),
                    key,
                    number,
                });
            }
        }
        checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, checkpointer: &Checkpointer) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        Ok(())
    }
}

fn recorder(journal: &Arc<Journal>) -> impl Fn(&ShardInfo) -> Recorder + use<> {
    let journal = journal.clone();
    move |shard: &ShardInfo| {
        journal.told.lock().unwrap().push(shard.stream.clone());
        Recorder {
            stream: shard
                .stream
                .as_ref()
                .map(|id| id.name().to_owned())
                .unwrap_or_default(),
            shard: shard.shard_id.clone(),
            journal: journal.clone(),
        }
    }
}

/// A tracker the test edits while workers run.
#[derive(Clone, Debug, Default)]
struct EditedStreams {
    listed: Arc<Mutex<Vec<StreamConfig>>>,
    to_delete: Arc<Mutex<Vec<StreamIdentifier>>>,
}

impl EditedStreams {
    fn of(streams: &[StreamConfig]) -> Self {
        let edited = Self::default();
        edited.set(streams);
        edited
    }

    fn set(&self, streams: &[StreamConfig]) {
        *self.listed.lock().unwrap() = streams.to_vec();
    }
}

impl StreamTracker for EditedStreams {
    fn streams(&self) -> BoxFuture<'_, rkcl::Result<Vec<StreamConfig>>> {
        let listed = self.listed.lock().unwrap().clone();
        Box::pin(async move { Ok(listed) })
    }

    fn streams_to_delete(&self) -> BoxFuture<'_, rkcl::Result<Vec<StreamIdentifier>>> {
        let named = self.to_delete.lock().unwrap().clone();
        Box::pin(async move { Ok(named) })
    }
}

fn config(app: &str, worker: &str, streams: MultiStreamConfig) -> SchedulerConfig {
    SchedulerConfig::builder_for_streams(app, streams)
        .worker_id(worker)
        .initial_position(InitialPosition::TrimHorizon)
        .lease_duration(LEASE)
        .polling(quick_polling())
        .shard_sync_interval(Duration::from_secs(1))
        .parent_poll_interval(Duration::from_millis(200))
        .build()
        .unwrap()
}

/// The identifier of a stream of the local Kinesis, as DescribeStreamSummary
/// gives it.
async fn identifier(kinesis: &Kinesis, stream: &StreamRef) -> StreamIdentifier {
    let summary = kinesis.describe_stream_summary(stream).await.unwrap();
    StreamIdentifier::from_arn(&summary.arn, summary.creation_epoch).unwrap()
}

/// The leases of `stream` in the table: (key, owner).
async fn leases_of(
    store: &impl LeaseStore,
    stream: &StreamIdentifier,
) -> Vec<(String, Option<String>)> {
    let prefix = stream.to_string();
    store
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.key.stream_identifier() == Some(prefix.as_str()))
        .map(|l| (l.key.to_string(), l.owner))
        .collect()
}

/// Every delivery of a stream's records: none lost, none twice, and per key
/// in the order written.
fn assert_exactly_once_in_order(journal: &Journal, stream: &str, expected: usize) {
    let deliveries = journal.of_stream(stream);
    let unique: BTreeSet<(usize, usize)> = deliveries.iter().map(|d| (d.key, d.number)).collect();
    assert_eq!(unique.len(), expected, "{stream}: every record");
    assert_eq!(deliveries.len(), expected, "{stream}: no record twice");
    let mut last: HashMap<usize, usize> = HashMap::new();
    for d in &deliveries {
        if let Some(before) = last.insert(d.key, d.number) {
            assert!(
                d.number > before,
                "{stream}: key {} went from {before} to {} ({} at {})",
                d.key,
                d.number,
                d.shard,
                d.position
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_three_streams_fairly_and_read_every_record_once_in_order() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let shapes = [("ms-one", 1), ("ms-two", 2), ("ms-three", 3)];
    let mut streams = Vec::new();
    for (name, shards) in shapes {
        streams.push(create_stream(&kinesis, name, shards).await);
    }
    put(&kinesis, &streams[0], keyed_records(4, 50, 0), Plain).await;
    put(&kinesis, &streams[1], keyed_records(8, 50, 0), Plain).await;
    put(&kinesis, &streams[2], keyed_records(12, 50, 0), Aggregated).await;
    let tracker = StaticStreams(shapes.iter().map(|(n, _)| StreamConfig::new(n)).collect());
    let store = lease_table(&local, "multi-app").await;
    let journal = Arc::new(Journal::default());
    let mut workers = Vec::new();
    for worker in ["w-a", "w-b"] {
        workers.push(
            Scheduler::start(
                config("multi-app", worker, MultiStreamConfig::new(tracker.clone())),
                kinesis.clone(),
                lease_table(&local, "multi-app").await,
                recorder(&journal),
            )
            .await
            .unwrap(),
        );
    }
    // A reshard of one stream while it is read: records before and after.
    eventually(
        "the first records of ms-two",
        Duration::from_secs(30),
        || {
            let journal = journal.clone();
            async move { journal.unique("ms-two") > 0 }
        },
    )
    .await;
    let shards = kinesis.list_shards(&streams[1]).await.unwrap();
    split(&local, &streams[1], &shards[0], None).await;
    put(&kinesis, &streams[1], keyed_records(8, 50, 50), Plain).await;

    for (stream, expected) in [("ms-one", 200), ("ms-two", 800), ("ms-three", 600)] {
        eventually(
            &format!("every record of {stream}"),
            Duration::from_secs(60),
            || {
                let journal = journal.clone();
                async move { journal.unique(stream) >= expected }
            },
        )
        .await;
    }
    // One fair share over every stream's unfinished leases: 1 + 3 + 3 = 7
    // (ms-two's parent is finished), so 3 and 4.
    eventually(
        "a fair share of all leases",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move {
                let leases = store.list().await.unwrap();
                let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
                for lease in leases
                    .iter()
                    .filter(|l| l.checkpoint != ExtendedSequenceNumber::ShardEnd)
                {
                    *per_worker
                        .entry(lease.owner.clone().unwrap_or_default())
                        .or_default() += 1;
                }
                let counts: Vec<usize> = per_worker.values().copied().collect();
                per_worker.len() == 2
                    && !per_worker.contains_key("")
                    && counts.iter().all(|n| (3..=4).contains(n))
            }
        },
    )
    .await;
    for worker in workers {
        worker.shutdown(Duration::from_secs(10)).await;
    }
    assert_exactly_once_in_order(&journal, "ms-one", 200);
    assert_exactly_once_in_order(&journal, "ms-two", 800);
    assert_exactly_once_in_order(&journal, "ms-three", 600);
    // Every lease key is the Java KCL's multi-stream form of its stream, and
    // processors were told their stream.
    let ids: BTreeSet<String> = {
        let mut ids = BTreeSet::new();
        for stream in &streams {
            ids.insert(identifier(&kinesis, stream).await.to_string());
        }
        ids
    };
    for lease in store.list().await.unwrap() {
        let stream = lease.key.stream_identifier().unwrap();
        assert!(ids.contains(stream), "{}", lease.key);
    }
    let told = journal.told.lock().unwrap().clone();
    assert!(!told.is_empty());
    assert!(
        told.iter()
            .all(|id| id.as_ref().is_some_and(|id| ids.contains(&id.to_string())))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_added_while_running_are_read_and_removed_ones_are_deleted_after_the_wait() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let first = create_stream(&kinesis, "ms-first", 2).await;
    put(&kinesis, &first, keyed_records(4, 25, 0), Plain).await;
    let refresh = Duration::from_secs(2);
    let wait = Duration::from_secs(6);
    let tracker = EditedStreams::of(&[StreamConfig::new("ms-first")]);
    let store = lease_table(&local, "grow-app").await;
    let journal = Arc::new(Journal::default());
    let multi = MultiStreamConfig::new(tracker.clone())
        .refresh_interval(refresh)
        .former_streams(FormerStreams::DeleteUnlisted { wait });
    let worker = Scheduler::start(
        config("grow-app", "w-1", multi),
        kinesis.clone(),
        lease_table(&local, "grow-app").await,
        recorder(&journal),
    )
    .await
    .unwrap();
    eventually("ms-first read", Duration::from_secs(30), || {
        let journal = journal.clone();
        async move { journal.unique("ms-first") == 100 }
    })
    .await;

    // Two streams added while running: one at TRIM_HORIZON by its own
    // setting, one at the default for streams found later, LATEST.
    let second = create_stream(&kinesis, "ms-second", 1).await;
    let third = create_stream(&kinesis, "ms-third", 1).await;
    put(&kinesis, &second, keyed_records(2, 20, 0), Plain).await;
    put(&kinesis, &third, keyed_records(2, 20, 0), Plain).await;
    tracker.set(&[
        StreamConfig::new("ms-first"),
        StreamConfig::new("ms-second").initial_position(InitialPosition::TrimHorizon),
        StreamConfig::new("ms-third"),
    ]);
    let third_id = identifier(&kinesis, &third).await;
    // Picked up at the next refresh: leases within two intervals.
    eventually("leases of the added streams", refresh * 2 + LEASE, || {
        let (store, third_id) = (store.clone(), third_id.clone());
        async move { !leases_of(&store, &third_id).await.is_empty() }
    })
    .await;
    eventually(
        "ms-second read from its trim horizon",
        Duration::from_secs(30),
        || {
            let journal = journal.clone();
            async move { journal.unique("ms-second") == 40 }
        },
    )
    .await;
    // ms-third started at LATEST: wait until its reader holds the lease,
    // then only records put now arrive.
    eventually("ms-third's lease held", Duration::from_secs(30), || {
        let (store, third_id) = (store.clone(), third_id.clone());
        async move {
            leases_of(&store, &third_id)
                .await
                .iter()
                .all(|(_, owner)| owner.is_some())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    put(&kinesis, &third, keyed_records(2, 20, 100), Plain).await;
    eventually("ms-third's new records", Duration::from_secs(30), || {
        let journal = journal.clone();
        async move { journal.unique("ms-third") >= 40 }
    })
    .await;
    assert!(
        journal
            .of_stream("ms-third")
            .iter()
            .all(|d| d.number >= 100),
        "a stream found later starts at LATEST"
    );

    // ms-first leaves the set: its consumers let go, and its leases stay
    // until the wait has passed.
    let first_id = identifier(&kinesis, &first).await;
    tracker.set(&[
        StreamConfig::new("ms-second").initial_position(InitialPosition::TrimHorizon),
        StreamConfig::new("ms-third"),
    ]);
    let removed = tokio::time::Instant::now();
    eventually(
        "ms-first's leases released",
        Duration::from_secs(20),
        || {
            let (store, first_id) = (store.clone(), first_id.clone());
            async move {
                let leases = leases_of(&store, &first_id).await;
                !leases.is_empty() && leases.iter().all(|(_, owner)| owner.is_none())
            }
        },
    )
    .await;
    if removed.elapsed() + refresh < wait {
        assert_eq!(
            leases_of(&store, &first_id).await.len(),
            2,
            "kept until the wait has passed"
        );
    }
    eventually("ms-first's leases deleted", wait + refresh * 3, || {
        let (store, first_id) = (store.clone(), first_id.clone());
        async move { leases_of(&store, &first_id).await.is_empty() }
    })
    .await;
    assert!(
        removed.elapsed() >= wait,
        "deleted only after the wait ({:?})",
        removed.elapsed()
    );
    // Listed streams keep theirs.
    let second_id = identifier(&kinesis, &second).await;
    assert_eq!(leases_of(&store, &second_id).await.len(), 1);
    assert_eq!(leases_of(&store, &third_id).await.len(), 1);
    worker.shutdown(Duration::from_secs(10)).await;
    assert_exactly_once_in_order(&journal, "ms-first", 100);
    assert_exactly_once_in_order(&journal, "ms-second", 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn former_streams_are_kept_or_deleted_only_as_the_strategy_says() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let names = ["ms-keep-a", "ms-keep-b", "ms-keep-c"];
    let mut ids = Vec::new();
    for name in names {
        let stream = create_stream(&kinesis, name, 1).await;
        put(&kinesis, &stream, keyed_records(1, 10, 0), Plain).await;
        ids.push(identifier(&kinesis, &stream).await);
    }
    let refresh = Duration::from_secs(1);
    let wait = Duration::from_secs(2);
    for (app, strategy) in [
        ("keep-app", FormerStreams::Keep),
        ("named-app", FormerStreams::DeleteNamed { wait }),
    ] {
        let tracker = EditedStreams::of(&names.map(StreamConfig::new));
        // Named for deletion: a (listed, so never deleted) and b.
        *tracker.to_delete.lock().unwrap() = vec![ids[0].clone(), ids[1].clone()];
        let store = lease_table(&local, app).await;
        let journal = Arc::new(Journal::default());
        let multi = MultiStreamConfig::new(tracker.clone())
            .refresh_interval(refresh)
            .former_streams(strategy);
        let worker = Scheduler::start(
            config(app, "w-1", multi),
            kinesis.clone(),
            lease_table(&local, app).await,
            recorder(&journal),
        )
        .await
        .unwrap();
        eventually("every stream read", Duration::from_secs(30), || {
            let journal = journal.clone();
            async move { names.iter().all(|n| journal.unique(n) >= 10) }
        })
        .await;
        // b and c leave the set.
        tracker.set(&[StreamConfig::new("ms-keep-a")]);
        for id in &ids[1..] {
            eventually("released", Duration::from_secs(20), || {
                let (store, id) = (store.clone(), id.clone());
                async move {
                    let leases = leases_of(&store, &id).await;
                    leases.len() == 1 && leases[0].1.is_none()
                }
            })
            .await;
        }
        tokio::time::sleep(wait + refresh * 4).await;
        let left: Vec<usize> = {
            let mut left = Vec::new();
            for id in &ids {
                left.push(leases_of(&store, id).await.len());
            }
            left
        };
        match strategy {
            FormerStreams::Keep => assert_eq!(left, [1, 1, 1], "{app}: nothing deleted"),
            _ => assert_eq!(left, [1, 0, 1], "{app}: only b, named and unlisted"),
        }
        if strategy == FormerStreams::Keep {
            // Listed again: resumes at its checkpoint, nothing read twice.
            tracker.set(&names.map(StreamConfig::new));
            let stream = StreamRef::parse("ms-keep-b");
            put(&kinesis, &stream, keyed_records(1, 5, 10), Plain).await;
            eventually("b resumed", Duration::from_secs(30), || {
                let journal = journal.clone();
                async move { journal.unique("ms-keep-b") == 15 }
            })
            .await;
            assert_exactly_once_in_order(&journal, "ms-keep-b", 15);
            put(&kinesis, &stream, keyed_records(1, 5, 15), Plain).await;
        }
        worker.shutdown(Duration::from_secs(10)).await;
    }
}

/// A lease item as the Java KCL 3 writes it in multi-stream mode,
/// attribute by attribute (DynamoDBMultiStreamLeaseSerializer's fields).
fn java_item(
    id: &StreamIdentifier,
    shard: &rkcl::shards::Shard,
    checkpoint: &str,
) -> HashMap<String, AttributeValue> {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: &str| AttributeValue::N(v.to_owned());
    HashMap::from([
        ("leaseKey".into(), s(&format!("{id}:{}", shard.id))),
        ("leaseOwner".into(), s("java-worker-1")),
        ("leaseCounter".into(), n("41")),
        ("checkpoint".into(), s(checkpoint)),
        ("checkpointSubSequenceNumber".into(), n("0")),
        ("ownerSwitchesSinceCheckpoint".into(), n("2")),
        (
            "startingHashKey".into(),
            s(&shard.hash_key_range.start().to_string()),
        ),
        (
            "endingHashKey".into(),
            s(&shard.hash_key_range.end().to_string()),
        ),
        ("throughputKBps".into(), n("0.250000")),
        ("entityType".into(), s("LEASE")),
        ("streamName".into(), s(&id.to_string())),
        ("shardId".into(), s(shard.id.as_str())),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_java_kcl_multi_stream_table_is_taken_over_at_its_checkpoints_and_written_alike() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let java = create_stream(&kinesis, "ms-java", 2).await;
    put(&kinesis, &java, keyed_records(4, 50, 0), Plain).await;
    let ours = create_stream(&kinesis, "ms-ours", 1).await;
    put(&kinesis, &ours, keyed_records(1, 10, 0), Plain).await;
    let java_id = identifier(&kinesis, &java).await;
    let shards = kinesis.list_shards(&java).await.unwrap();
    // The Java worker checkpointed shard 0 after its 30th record and
    // shard 1 not at all; then it died (nobody renews its leases).
    let raw = read_all_raw(&local, &java).await;
    let shard0 = raw
        .shards
        .iter()
        .find(|s| s.shard.id == shards[0].id)
        .unwrap();
    let checkpoint = shard0.records[29].sequence_number.to_string();
    let store = lease_table(&local, "java-app").await;
    let dynamodb = local.dynamodb_client();
    for (shard, at) in [
        (&shards[0], checkpoint.as_str()),
        (&shards[1], "TRIM_HORIZON"),
    ] {
        dynamodb
            .put_item()
            .table_name("java-app")
            .set_item(Some(java_item(&java_id, shard, at)))
            .send()
            .await
            .unwrap();
    }
    let journal = Arc::new(Journal::default());
    let tracker = StaticStreams(vec![
        StreamConfig::new(&java_id.to_string()),
        StreamConfig::new("ms-ours"),
    ]);
    let worker = Scheduler::start(
        config("java-app", "rkcl-1", MultiStreamConfig::new(tracker)),
        kinesis.clone(),
        lease_table(&local, "java-app").await,
        recorder(&journal),
    )
    .await
    .unwrap();
    let after_checkpoint = 200 - 30;
    eventually(
        "the Java worker's shards taken over",
        Duration::from_secs(30),
        || {
            let journal = journal.clone();
            async move {
                journal.unique("ms-java") >= after_checkpoint && journal.unique("ms-ours") == 10
            }
        },
    )
    .await;
    worker.shutdown(Duration::from_secs(10)).await;
    let java_deliveries = journal.of_stream("ms-java");
    assert_eq!(
        java_deliveries.len(),
        after_checkpoint,
        "nothing at or before a checkpoint"
    );
    let skipped: BTreeSet<String> = shard0.records[..30]
        .iter()
        .map(|r| r.sequence_number.to_string())
        .collect();
    assert!(java_deliveries.iter().all(|d| {
        d.position
            .sequence_number()
            .is_none_or(|seq| !skipped.contains(&seq.to_string()))
    }));

    // Every item, the Java KCL's and rkcl's, in the Java KCL 3's
    // multi-stream format, attribute by attribute.
    let items = dynamodb
        .scan()
        .table_name("java-app")
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    assert_eq!(items.len(), 3);
    for item in &items {
        let key = item["leaseKey"].as_s().unwrap();
        let (stream, shard) = key.rsplit_once(':').unwrap();
        assert_eq!(item["streamName"].as_s().unwrap(), stream, "{key}");
        assert_eq!(item["shardId"].as_s().unwrap(), shard, "{key}");
        StreamIdentifier::parse(stream).unwrap();
        for (name, number) in [
            ("leaseCounter", true),
            ("checkpoint", false),
            ("checkpointSubSequenceNumber", true),
            ("ownerSwitchesSinceCheckpoint", true),
            ("startingHashKey", false),
            ("endingHashKey", false),
        ] {
            let value = item.get(name).unwrap_or_else(|| panic!("{key}: no {name}"));
            assert_eq!(value.is_n(), number, "{key}: {name} is {value:?}");
            assert_eq!(value.is_s(), !number, "{key}: {name} is {value:?}");
        }
        // Released at shutdown: no owner, the checkpoint past the start.
        assert!(!item.contains_key("leaseOwner"), "{key}: {item:?}");
        assert_ne!(item["checkpoint"].as_s().unwrap(), "TRIM_HORIZON", "{key}");
        if stream == java_id.to_string() {
            // What rkcl does not model survives its writes.
            let throughput: f64 = item["throughputKBps"].as_n().unwrap().parse().unwrap();
            assert_eq!(throughput, 0.25, "{item:?}");
            assert_eq!(item["entityType"].as_s().unwrap(), "LEASE");
            let counter: u64 = item["leaseCounter"].as_n().unwrap().parse().unwrap();
            assert!(counter > 41, "{key}: taken over with a higher counter");
        }
    }
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_the_other_mode_is_refused_at_start_up() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    create_stream(&kinesis, "ms-mode", 1).await;
    // A single-stream application's table...
    let single = Scheduler::start(
        SchedulerConfig::builder("mode-app", "ms-mode")
            .worker_id("single")
            .lease_duration(LEASE)
            .polling(quick_polling())
            .build()
            .unwrap(),
        kinesis.clone(),
        lease_table(&local, "mode-app").await,
        recorder(&Arc::new(Journal::default())),
    )
    .await
    .unwrap();
    single.shutdown(Duration::from_secs(5)).await;
    // ...is no multi-stream application's table,
    let multi = MultiStreamConfig::new(StaticStreams(vec![StreamConfig::new("ms-mode")]));
    let refused = Scheduler::start(
        config("mode-app", "multi", multi.clone()),
        kinesis.clone(),
        lease_table(&local, "mode-app").await,
        recorder(&Arc::new(Journal::default())),
    )
    .await;
    match refused {
        Err(Error::Config(message)) => {
            assert!(message.contains("single-stream leases"), "{message}");
            assert!(message.contains("shardId-000000000000"), "{message}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    // ...and the reverse.
    let multi_worker = Scheduler::start(
        config("mode-app-2", "multi", multi),
        kinesis.clone(),
        lease_table(&local, "mode-app-2").await,
        recorder(&Arc::new(Journal::default())),
    )
    .await
    .unwrap();
    multi_worker.shutdown(Duration::from_secs(5)).await;
    let refused = Scheduler::start(
        SchedulerConfig::builder("mode-app-2", "ms-mode")
            .worker_id("single")
            .lease_duration(LEASE)
            .build()
            .unwrap(),
        kinesis.clone(),
        lease_table(&local, "mode-app-2").await,
        recorder(&Arc::new(Journal::default())),
    )
    .await;
    match refused {
        Err(Error::Config(message)) => {
            assert!(message.contains("multi-stream leases"), "{message}")
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_deleted_on_the_kinesis_side_ends_cleanly_and_the_others_go_on() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let doomed = create_stream(&kinesis, "ms-doomed", 2).await;
    let lasting = create_stream(&kinesis, "ms-lasting", 1).await;
    put(&kinesis, &doomed, keyed_records(2, 10, 0), Plain).await;
    put(&kinesis, &lasting, keyed_records(1, 10, 0), Plain).await;
    let doomed_id = identifier(&kinesis, &doomed).await;
    let tracker = StaticStreams(vec![
        StreamConfig::new("ms-doomed"),
        StreamConfig::new("ms-lasting"),
    ]);
    let store = lease_table(&local, "doom-app").await;
    let journal = Arc::new(Journal::default());
    let worker = Scheduler::start(
        config(
            "doom-app",
            "w-1",
            MultiStreamConfig::new(tracker).refresh_interval(Duration::from_secs(1)),
        ),
        kinesis.clone(),
        lease_table(&local, "doom-app").await,
        recorder(&journal),
    )
    .await
    .unwrap();
    eventually("both streams read", Duration::from_secs(30), || {
        let journal = journal.clone();
        async move { journal.unique("ms-doomed") == 20 && journal.unique("ms-lasting") == 10 }
    })
    .await;
    local
        .kinesis_client()
        .delete_stream()
        .stream_name("ms-doomed")
        .send()
        .await
        .unwrap();
    // Its shards end: their leases are finished and let go.
    eventually(
        "the deleted stream's shards ended",
        Duration::from_secs(30),
        || {
            let (store, id) = (store.clone(), doomed_id.clone());
            async move {
                let prefix = id.to_string();
                let leases: Vec<_> = store
                    .list()
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|l| l.key.stream_identifier() == Some(prefix.as_str()))
                    .collect();
                leases
                    .iter()
                    .all(|l| l.owner.is_none() && l.checkpoint == ExtendedSequenceNumber::ShardEnd)
            }
        },
    )
    .await;
    // The other stream goes on.
    put(&kinesis, &lasting, keyed_records(1, 10, 10), Plain).await;
    eventually("the other stream goes on", Duration::from_secs(30), || {
        let journal = journal.clone();
        async move { journal.unique("ms-lasting") == 20 }
    })
    .await;
    let report = worker.shutdown(Duration::from_secs(10)).await;
    assert!(report.unfinished_leases.is_empty(), "{report:?}");
    assert_exactly_once_in_order(&journal, "ms-doomed", 20);
    assert_exactly_once_in_order(&journal, "ms-lasting", 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_api_reads_many_streams_and_records_know_theirs() {
    use futures_util::StreamExt;
    use rkcl::{Consumer, ConsumerConfig};

    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for (name, shards) in [("ms-api-a", 1), ("ms-api-b", 2)] {
        let stream = create_stream(&kinesis, name, shards).await;
        put(&kinesis, &stream, keyed_records(3, 10, 0), Aggregated).await;
        expected.insert(identifier(&kinesis, &stream).await.to_string(), 30);
    }
    let store = lease_table(&local, "api-app").await;
    let tracker = StaticStreams(vec![
        StreamConfig::new("ms-api-a"),
        StreamConfig::new("ms-api-b"),
    ]);
    let scheduler = config("api-app", "w-1", MultiStreamConfig::new(tracker));
    let consumer = Consumer::start(
        ConsumerConfig::builder(scheduler)
            .checkpoint_every(1, Duration::from_millis(100))
            .build()
            .unwrap(),
        kinesis.clone(),
        store.clone(),
    )
    .await
    .unwrap();
    let mut records = consumer.records();
    let mut seen: BTreeMap<String, BTreeSet<(usize, usize)>> = BTreeMap::new();
    while seen.values().map(BTreeSet::len).sum::<usize>() < 60 {
        let record = tokio::time::timeout(Duration::from_secs(30), records.next())
            .await
            .expect("records of both streams")
            .expect("the stream goes on")
            .expect("no error");
        let stream = record
            .stream()
            .expect("a multi-stream record knows its stream");
        assert_eq!(
            record.shard().lease_key.stream_identifier(),
            Some(stream.to_string().as_str())
        );
        seen.entry(stream.to_string())
            .or_default()
            .insert(key_and_number(record.data()));
        record.commit();
    }
    let counts: BTreeMap<String, usize> = seen.iter().map(|(k, v)| (k.clone(), v.len())).collect();
    assert_eq!(counts, expected);
    drop(records);
    // Every lease checkpointed past its start under its stream's key.
    eventually(
        "checkpoints of both streams",
        Duration::from_secs(20),
        || {
            let store = store.clone();
            async move {
                let leases = store.list().await.unwrap();
                leases.len() == 3
                    && leases.iter().all(|l| {
                        l.key.stream().is_some() && l.checkpoint.sequence_number().is_some()
                    })
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_reads_every_stream_through_its_own_stream_consumer() {
    use rkcl::retrieval::FanOutConfig;

    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    let mut arns = Vec::new();
    for (name, shards) in [("ms-efo-a", 1), ("ms-efo-b", 2)] {
        let stream = create_stream(&kinesis, name, shards).await;
        put(&kinesis, &stream, keyed_records(2, 20, 0), Plain).await;
        arns.push(kinesis.describe_stream_summary(&stream).await.unwrap().arn);
    }
    let tracker = StaticStreams(vec![
        StreamConfig::new("ms-efo-a"),
        StreamConfig::new("ms-efo-b"),
    ]);
    let fan_out = FanOutConfig::builder()
        .base_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(200))
        .idle_timeout(FanOutConfig::MIN_IDLE_TIMEOUT)
        .build()
        .unwrap();
    let config = SchedulerConfig::builder_for_streams("efo-app", MultiStreamConfig::new(tracker))
        .worker_id("w-1")
        .initial_position(InitialPosition::TrimHorizon)
        .lease_duration(LEASE)
        .fan_out(fan_out)
        .shard_sync_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let journal = Arc::new(Journal::default());
    let worker = Scheduler::start(
        config,
        kinesis.clone(),
        lease_table(&local, "efo-app").await,
        recorder(&journal),
    )
    .await
    .unwrap();
    eventually(
        "both streams read with fan-out",
        Duration::from_secs(30),
        || {
            let journal = journal.clone();
            async move { journal.unique("ms-efo-a") == 40 && journal.unique("ms-efo-b") == 40 }
        },
    )
    .await;
    worker.shutdown(Duration::from_secs(10)).await;
    assert_exactly_once_in_order(&journal, "ms-efo-a", 40);
    assert_exactly_once_in_order(&journal, "ms-efo-b", 40);
    // One stream consumer per stream, named after the application.
    for arn in &arns {
        let consumers = kinesis.list_stream_consumers(arn).await.unwrap();
        assert_eq!(consumers.len(), 1, "{arn}");
        assert_eq!(consumers[0].name, "efo-app");
    }
}
