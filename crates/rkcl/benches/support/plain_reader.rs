//! The baseline the benches compare rkcl with: a plain loop of SDK
//! GetRecords calls on every shard at once, without de-aggregation.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::types::ShardIteratorType;
use rkcl::{Kinesis, StreamRef};
use rkcl_local::Local;

/// Kinesis' read limit per shard, in bytes per second.
const SHARD_READ_BYTES_PER_SECOND: f64 = 2.0 * 1024.0 * 1024.0;

/// Which of Kinesis' per-shard read limits the loop keeps (the local
/// Kinesis enforces none of them; AWS enforces both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limits {
    /// Calls back to back.
    None,
    /// Five calls per second: 200 ms from the start of one call to the next.
    Calls,
    /// Five calls per second and 2 MiB/s, the latter as a token bucket
    /// holding one second's worth.
    CallsAndBytes,
}

/// Reads every shard from TRIM_HORIZON until each is at its tip. Returns
/// the Kinesis records read.
pub(crate) async fn plain_loop(
    local: &Local,
    kinesis: &Kinesis,
    stream: &StreamRef,
    limits: Limits,
) -> usize {
    let client = local.kinesis_client();
    let mut tasks = Vec::new();
    for shard in kinesis.list_shards(stream).await.unwrap() {
        let client = client.clone();
        let name = stream.name().to_owned();
        tasks.push(tokio::spawn(async move {
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(name)
                .shard_id(shard.id.as_str())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .unwrap()
                .shard_iterator()
                .map(str::to_owned);
            let mut count = 0;
            let (mut tokens, mut refilled) = (SHARD_READ_BYTES_PER_SECOND, Instant::now());
            while let Some(it) = iterator {
                let started = Instant::now();
                let out = client
                    .get_records()
                    .shard_iterator(it)
                    .limit(10_000)
                    .send()
                    .await
                    .unwrap();
                count += out.records().len();
                if out.millis_behind_latest() == Some(0) && out.records().len() < 10_000 {
                    break;
                }
                iterator = out.next_shard_iterator().map(str::to_owned);
                let mut next = started;
                if limits != Limits::None {
                    next += Duration::from_millis(200);
                }
                if limits == Limits::CallsAndBytes {
                    let bytes: usize = out.records().iter().map(|r| r.data().as_ref().len()).sum();
                    let now = Instant::now();
                    tokens = (tokens
                        + (now - refilled).as_secs_f64() * SHARD_READ_BYTES_PER_SECOND)
                        .min(SHARD_READ_BYTES_PER_SECOND)
                        - bytes as f64;
                    refilled = now;
                    if tokens < 0.0 {
                        next = next.max(
                            now + Duration::from_secs_f64(-tokens / SHARD_READ_BYTES_PER_SECOND),
                        );
                    }
                }
                tokio::time::sleep_until(next.into()).await;
            }
            count
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total
}
