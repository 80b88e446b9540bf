//! Helpers specific to rkcl's integration tests: quick polling settings and
//! the `K:N` records the tests write and check. Streams, puts, raw reads and
//! waiting come from `rkcl_local::testkit`.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use rkcl::retrieval::{PollingConfig, PollingConfigBuilder};

/// Polling settings that keep tests quick: the shortest allowed pauses.
pub fn quick_polling_builder() -> PollingConfigBuilder {
    PollingConfig::builder()
        .idle_interval(Duration::from_millis(200))
        .base_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(200))
}

/// [`quick_polling_builder`], built.
pub fn quick_polling() -> PollingConfig {
    quick_polling_builder().build().unwrap()
}

/// `key-K` records whose data is `K:N`, N counting per key.
pub fn keyed_records(
    keys: usize,
    per_key: usize,
    first: usize,
) -> Vec<rkcl::record::ProducerRecord> {
    (first..first + per_key)
        .flat_map(|n| {
            (0..keys).map(move |k| {
                rkcl::record::ProducerRecord::new(format!("key-{k}"), format!("{k}:{n}"))
            })
        })
        .collect()
}

/// Reads `K:N` back out of a record's data.
pub fn key_and_number(data: &[u8]) -> (usize, usize) {
    let text = std::str::from_utf8(data).unwrap();
    let (k, n) = text.split_once(':').unwrap();
    (k.parse().unwrap(), n.parse().unwrap())
}
