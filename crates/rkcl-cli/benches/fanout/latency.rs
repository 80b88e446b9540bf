//! Put-to-delivery latency: records put one at a time at a steady pace,
//! each carrying its send time.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::Record;
use rkcl::{DynamoDbLeaseStore, Kinesis, leases::LeaseStore};
use rkcl_local::Local;
use rkcl_local::testkit::create_stream;

use crate::contenders::{Contender, rkcl_consume, rkcl_fan_out_command};
use crate::process::{Endpoints, Progress, Seen, Stop, log_tail, read_lines, spawn, stop_child};
use crate::subscribe::{register_consumer, shard_ids, stream_arn, subscribe_shard};
use crate::{RECORD_SIZE, SHARDS};

const LATENCY_RECORDS: usize = 400;
const LATENCY_SPAN: Duration = Duration::from_secs(10);
/// How long the latency readers wait for stragglers after the last put.
const LATENCY_GRACE: Duration = Duration::from_secs(10);

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// A record's data: its send time in microseconds since the epoch, then
/// padding up to [`RECORD_SIZE`].
fn stamped() -> Vec<u8> {
    let mut data = format!("{:020}", now_micros()).into_bytes();
    data.resize(RECORD_SIZE, b'x');
    data
}

/// Milliseconds from the send time in `data` to now.
pub(crate) fn latency_ms(data: &[u8]) -> Option<f64> {
    let sent: u128 = std::str::from_utf8(data.get(..20)?).ok()?.parse().ok()?;
    Some(now_micros().saturating_sub(sent) as f64 / 1000.0)
}

/// Puts [`LATENCY_RECORDS`] stamped records one at a time, evenly over
/// [`LATENCY_SPAN`].
async fn put_paced(client: &Client, stream: &str) {
    let mut tick = tokio::time::interval(LATENCY_SPAN / LATENCY_RECORDS as u32);
    for i in 0..LATENCY_RECORDS {
        tick.tick().await;
        client
            .put_record()
            .stream_name(stream)
            .partition_key(format!("key-{i}"))
            .data(Blob::new(stamped()))
            .send()
            .await
            .unwrap();
    }
}

/// Latencies in milliseconds, one per record received.
type Latencies = Vec<f64>;

/// The put-to-delivery latencies of the SDK SubscribeToShard loop, run in
/// this process.
async fn sdk_latency(local: &Local) -> Latencies {
    let client = local.kinesis_client();
    let stream = create_stream(&Kinesis::new(client.clone()), "latency-sdk", SHARDS).await;
    let arn = stream_arn(&client, stream.name()).await;
    let consumer_arn = register_consumer(&client, &arn, "latency-sdk").await;
    let latencies = Arc::new(Mutex::new(Latencies::new()));
    let established = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for shard in shard_ids(&client, stream.name()).await {
        let latencies = latencies.clone();
        let on_records = move |records: &[Record]| {
            let mut latencies = latencies.lock().unwrap();
            latencies.extend(records.iter().filter_map(|r| latency_ms(r.data().as_ref())));
        };
        readers.push(tokio::spawn(subscribe_shard(
            client.clone(),
            consumer_arn.clone(),
            shard,
            established.clone(),
            on_records,
        )));
    }
    let subscribed = wait_until(Duration::from_secs(30), || {
        established.load(Ordering::SeqCst) == SHARDS as usize
    })
    .await;
    assert!(subscribed, "the SDK loop did not subscribe to every shard");
    put_paced(&client, stream.name()).await;
    wait_until(LATENCY_GRACE, || {
        latencies.lock().unwrap().len() >= LATENCY_RECORDS
    })
    .await;
    for reader in readers {
        reader.abort();
    }
    latencies.lock().unwrap().clone()
}

/// Polls `condition` every 10 ms until it holds (`true`) or `timeout`
/// passes (`false`).
async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// The put-to-delivery latencies of one `rkcl consume` process started by
/// `command` as worker `<app>-worker`, reading a new stream `app`: records
/// are put once it holds every lease and has had a second to start its
/// readers.
async fn rkcl_latency(local: &Local, app: &str, command: Command) -> Result<Latencies, String> {
    let (mut child, log_path) = spawn(app, command, Stop::Terminate)?;
    let (seen, reader) = read_lines(child.stdout.take().unwrap(), Progress::Latency.handler());
    let store = DynamoDbLeaseStore::new(local.dynamodb_client(), app);
    let worker = format!("{app}-worker");
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let leases = store.list().await.unwrap_or_default();
        if leases.len() == SHARDS as usize
            && leases.iter().all(|l| l.owner.as_deref() == Some(&worker))
        {
            break true;
        }
        if Instant::now() >= deadline || !matches!(child.try_wait(), Ok(None)) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut latencies = Latencies::new();
    if held {
        tokio::time::sleep(Duration::from_secs(1)).await;
        put_paced(&local.kinesis_client(), app).await;
        let deadline = Instant::now() + LATENCY_GRACE;
        while latencies.len() < LATENCY_RECORDS && Instant::now() < deadline {
            match seen.try_recv() {
                Ok(Seen::Latency(ms)) => latencies.push(ms),
                Ok(Seen::Ended) => break,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
    let stop = if held { Stop::Terminate } else { Stop::Kill };
    tokio::task::spawn_blocking(move || {
        stop_child(&mut child, stop);
        let _ = reader.join();
    })
    .await
    .unwrap();
    if held {
        Ok(latencies)
    } else {
        Err(format!(
            "it exited, or did not hold every lease within 60 s; {}",
            log_tail(&log_path)
        ))
    }
}

/// `rkcl consume` polling, for reference: its shortest pause between
/// GetRecords calls at the tip (200 ms).
async fn rkcl_polling_latency(local: &Local) -> Result<Latencies, String> {
    let app = "latency-rkcl-polling";
    create_stream(&Kinesis::new(local.kinesis_client()), app, SHARDS).await;
    let mut command = rkcl_consume(&Endpoints::of(local), app, app);
    command.args(["--idle-interval-ms", "200"]);
    rkcl_latency(local, app, command).await
}

/// The rkcl fan-out contender of the latency run: `rkcl consume --retrieval
/// fan-out`, so rkcl's fan-out source as a worker uses it, timed when each
/// JSON line arrives. Run only when [`rkcl_has_fan_out`](crate::contenders::rkcl_has_fan_out).
pub(crate) async fn rkcl_fan_out_latency(local: &Local) -> Result<Latencies, String> {
    let app = "latency-rkcl-fan-out";
    create_stream(&Kinesis::new(local.kinesis_client()), app, SHARDS).await;
    let command = rkcl_fan_out_command(&Endpoints::of(local), app, app);
    rkcl_latency(local, app, command).await
}

/// The `q` quantile of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency_row(label: &str, latencies: Result<Latencies, String>) {
    match latencies {
        Err(why) => println!("  {label:<38} failed: {why}"),
        Ok(latencies) if latencies.is_empty() => println!("  {label:<38} no record delivered"),
        Ok(mut latencies) => {
            latencies.sort_by(f64::total_cmp);
            println!(
                "  {label:<38} p50 {:>6.0} ms   p99 {:>6.0} ms   ({} of {LATENCY_RECORDS} delivered)",
                quantile(&latencies, 0.5),
                quantile(&latencies, 0.99),
                latencies.len()
            );
        }
    }
}

/// Measures every reader on a new `Local`.
pub(crate) async fn run(fan_out: bool) {
    let local = Local::start().await.unwrap();
    let sdk = sdk_latency(&local).await;
    let polling = rkcl_polling_latency(&local).await;
    let rkcl_fan_out = if fan_out {
        Some(rkcl_fan_out_latency(&local).await)
    } else {
        None
    };
    println!();
    println!(
        "put-to-delivery latency, {LATENCY_RECORDS} records put one at a time over {} s to \
         {SHARDS} shards (the local Kinesis reads its log for subscribers every 200 ms):",
        LATENCY_SPAN.as_secs()
    );
    latency_row(&Contender::SdkLoop.label(), Ok(sdk));
    match rkcl_fan_out {
        Some(latencies) => latency_row(&Contender::RkclFanOut.label(), latencies),
        None => println!(
            "  {:<38} not run: `rkcl consume --help` does not mention --retrieval yet",
            Contender::RkclFanOut.label()
        ),
    }
    latency_row("rkcl consume, polling (idle 200 ms)", polling);
    local.shutdown().await;
}
