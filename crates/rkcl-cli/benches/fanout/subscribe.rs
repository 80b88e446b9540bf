//! The SDK SubscribeToShard loop: the floor of the throughput runs (as a
//! child process, this bench binary run again) and of the latency run (in
//! the bench's process).

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::{
    ConsumerStatus, Record, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};

/// The first argument that makes this binary the SDK loop's child process.
pub(crate) const CHILD_ARG: &str = "subscribe-loop-child";

/// A starting position of `kind`, at or after `sequence_number` if given.
fn stream_position(kind: ShardIteratorType, sequence_number: Option<String>) -> StartingPosition {
    StartingPosition::builder()
        .r#type(kind)
        .set_sequence_number(sequence_number)
        .build()
        .unwrap()
}

/// Registers a stream consumer and waits until it is ACTIVE; its ARN.
pub(crate) async fn register_consumer(client: &Client, stream_arn: &str, name: &str) -> String {
    let registered = client
        .register_stream_consumer()
        .stream_arn(stream_arn)
        .consumer_name(name)
        .send()
        .await
        .unwrap_or_else(|err| panic!("registering consumer {name}: {err:?}"));
    let arn = registered.consumer().unwrap().consumer_arn().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let described = client
            .describe_stream_consumer()
            .consumer_arn(&arn)
            .send()
            .await
            .unwrap_or_else(|err| panic!("describing consumer {name}: {err:?}"));
        if described.consumer_description().unwrap().consumer_status() == &ConsumerStatus::Active {
            return arn;
        }
        assert!(Instant::now() < deadline, "consumer {name} is not ACTIVE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads one shard through a stream consumer from TRIM_HORIZON to its end,
/// handing each event's records to `on_records`, whole. Counts the
/// subscription in `established` once Kinesis has accepted it. A
/// subscription ends after five minutes (on AWS and here); the next one
/// starts AFTER_SEQUENCE_NUMBER of the last continuation sequence number.
pub(crate) async fn subscribe_shard(
    client: Client,
    consumer_arn: String,
    shard_id: String,
    established: Arc<AtomicUsize>,
    mut on_records: impl FnMut(&[Record]) + Send + 'static,
) {
    let mut position = stream_position(ShardIteratorType::TrimHorizon, None);
    let mut counted = false;
    loop {
        let mut output = client
            .subscribe_to_shard()
            .consumer_arn(&consumer_arn)
            .shard_id(&shard_id)
            .starting_position(position.clone())
            .send()
            .await
            .unwrap_or_else(|err| panic!("subscribing to {shard_id}: {err:?}"));
        if !counted {
            established.fetch_add(1, Ordering::SeqCst);
            counted = true;
        }
        let mut shard_ended = false;
        while let Some(event) = output
            .event_stream
            .recv()
            .await
            .unwrap_or_else(|err| panic!("reading {shard_id}: {err:?}"))
        {
            if let SubscribeToShardEventStream::SubscribeToShardEvent(event) = event {
                on_records(event.records());
                let continuation = event.continuation_sequence_number().to_owned();
                position =
                    stream_position(ShardIteratorType::AfterSequenceNumber, Some(continuation));
                shard_ended |= !event.child_shards().is_empty();
            }
        }
        if shard_ended {
            return;
        }
    }
}

/// The SDK loop as a child process (`fanout subscribe-loop-child ENDPOINT
/// STREAM_ARN CONSUMER EXPECTED SHARD...`): registers its consumer, reads
/// every shard, prints `first` and `done` lines as the kcl-rs script does,
/// and exits when a line (or the end of input) arrives on stdin.
pub(crate) async fn child(args: &[String]) {
    let [endpoint, stream_arn, consumer, expected, shards @ ..] = args else {
        panic!("usage: {CHILD_ARG} ENDPOINT STREAM_ARN CONSUMER EXPECTED SHARD...");
    };
    let started = Instant::now();
    let expected: u64 = expected.parse().unwrap();
    let client = rkcl_local::kinesis_client(endpoint);
    let consumer_arn = register_consumer(&client, stream_arn, consumer).await;
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    for shard in shards {
        let (count, done) = (count.clone(), done.clone());
        let on_records = move |records: &[Record]| {
            let n = records.len() as u64;
            let before = count.fetch_add(n, Ordering::SeqCst);
            if before == 0 && n > 0 {
                println!("first {:.3}", started.elapsed().as_secs_f64());
            }
            if before < expected && before + n >= expected {
                done.notify_one();
            }
        };
        let (client, arn) = (client.clone(), consumer_arn.clone());
        tokio::spawn(subscribe_shard(
            client,
            arn,
            shard.clone(),
            Arc::default(),
            on_records,
        ));
    }
    done.notified().await;
    let seconds = started.elapsed().as_secs_f64();
    println!("done {} {seconds:.3}", count.load(Ordering::SeqCst));
    tokio::task::spawn_blocking(|| std::io::stdin().read(&mut [0]))
        .await
        .unwrap()
        .unwrap();
    std::process::exit(0);
}

/// The ARN of a stream.
pub(crate) async fn stream_arn(client: &Client, stream: &str) -> String {
    let summary = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    summary
        .stream_description_summary()
        .unwrap()
        .stream_arn()
        .to_owned()
}

/// The ids of a stream's shards.
pub(crate) async fn shard_ids(client: &Client, stream: &str) -> Vec<String> {
    let listed = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    listed
        .shards()
        .iter()
        .map(|s| s.shard_id().to_owned())
        .collect()
}
