//! rkcl's producer as a contender: the bench binary run again as a child
//! process (`producer rkcl-producer-child KINESIS STREAM PACKING RECORDS
//! RATE`) holding one `Producer` with default settings (but aggregation,
//! on for PACKING `aggregated`). [`SENDERS`] tasks call `send` for their
//! share of the records (partition key: the record's index in decimal);
//! each keeps its receipts in a `FuturesUnordered` and notes, per record,
//! the time from `send` to its receipt. RATE 0 sends as fast as the
//! producer takes records; any other RATE paces all senders together at
//! that many records per second.
//!
//! It prints `first` just before the first send and `done COUNT SECONDS
//! P50 P99` after the last receipt (COUNT records written, SECONDS from
//! the first send to the last receipt, latencies in milliseconds), then
//! exits when a line (or the end of input) arrives on stdin.

use std::io::Read;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rkcl::{
    Kinesis,
    aws::StreamRef,
    producer::{Producer, ProducerConfig},
    record::ProducerRecord,
};

use crate::RECORD_SIZE;

/// The first argument that makes the bench binary this child.
pub(crate) const CHILD_ARG: &str = "rkcl-producer-child";
/// How many tasks send.
pub(crate) const SENDERS: u64 = 4;
/// The most receipts one sender waits for at once: together well below the
/// producer's default limit of 100,000 outstanding records, so `send`
/// never waits for room and its clock measures the producer alone.
const WINDOW: usize = 20_000;
/// A sender yields to the runtime after this many sends, as an application
/// doing other work between records would.
const YIELD_EVERY: u64 = 64;

/// One sender's share: records `first`, `first + SENDERS`, ... below
/// `records`, paced at `rate / SENDERS` records per second if `rate` is not
/// zero. Returns how many were written and each one's latency in
/// microseconds.
async fn send_share(producer: Producer, first: u64, records: u64, rate: u64) -> (u64, Vec<u32>) {
    let payload = bytes::Bytes::from(vec![b'x'; RECORD_SIZE]);
    let mut latencies = Vec::with_capacity((records / SENDERS + 1) as usize);
    let mut written = 0;
    let mut pending = FuturesUnordered::new();
    let mut note = |answer: Result<Duration, _>| match answer {
        Ok(latency) => {
            written += 1;
            latencies.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        }
        Err(err) => eprintln!("a record was not written: {err}"),
    };
    let started = tokio::time::Instant::now();
    for (n, index) in (first..records).step_by(SENDERS as usize).enumerate() {
        if rate > 0 {
            let due = Duration::from_secs_f64(n as f64 * SENDERS as f64 / rate as f64);
            tokio::time::sleep_until(started + due).await;
        } else if (n as u64).is_multiple_of(YIELD_EVERY) {
            tokio::task::yield_now().await;
        }
        while let Some(Some(answer)) = pending.next().now_or_never() {
            note(answer);
        }
        if pending.len() >= WINDOW
            && let Some(answer) = pending.next().await
        {
            note(answer);
        }
        let record = ProducerRecord::new(index.to_string(), payload.clone());
        let sent = Instant::now();
        let receipt = producer.send(record);
        pending.push(async move { receipt.await.map(|_| sent.elapsed()) });
    }
    while let Some(answer) = pending.next().await {
        note(answer);
    }
    (written, latencies)
}

/// The value at quantile `q` of sorted latencies in microseconds, in ms.
fn percentile_ms(sorted: &[u32], q: f64) -> String {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).map_or_else(
        || "-".to_owned(),
        |us| format!("{:.1}", f64::from(*us) / 1000.0),
    )
}

/// Runs the child: see the module docs.
pub(crate) async fn child(args: &[String]) {
    let [endpoint, stream, packing, records, rate] = args else {
        panic!("usage: {CHILD_ARG} KINESIS STREAM aggregated|plain RECORDS RATE");
    };
    let records: u64 = records.parse().unwrap();
    let rate: u64 = rate.parse().unwrap();
    let config = ProducerConfig::builder()
        .aggregate(packing == "aggregated")
        .build()
        .unwrap();
    let kinesis = Kinesis::new(rkcl_local::kinesis_client(endpoint));
    let producer = Producer::new(kinesis, StreamRef::parse(stream), config).unwrap();
    println!("first");
    let started = Instant::now();
    let senders: Vec<_> = (0..SENDERS)
        .map(|first| tokio::spawn(send_share(producer.clone(), first, records, rate)))
        .collect();
    let mut written = 0;
    let mut latencies = Vec::with_capacity(records as usize);
    for sender in senders {
        let (count, share) = sender.await.unwrap();
        written += count;
        latencies.extend(share);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    println!(
        "done {written} {:.3} {} {}",
        elapsed.as_secs_f64(),
        percentile_ms(&latencies, 0.5),
        percentile_ms(&latencies, 0.99)
    );
    producer.shutdown(Duration::from_secs(10)).await;
    // The bench reads this process' CPU time, then lets it go.
    let _ = std::io::stdin().read(&mut [0]);
}
