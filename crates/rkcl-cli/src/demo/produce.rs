//! The demo's producer: records at a steady rate, alternately plain and
//! KPL-aggregated, so a watcher sees consumption follow production for the
//! whole run instead of a burst at the start.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rkcl::Kinesis;
use rkcl::aws::StreamRef;
use rkcl::producer::{Producer, ProducerConfig};
use rkcl::record::ProducerRecord;

use super::tally::{Tally, partition_key, record_data};

/// How often the producer wakes to put what is due.
const TICK: Duration = Duration::from_millis(100);

/// The most records one put carries (after a stall, what is due is caught
/// up in puts of this size).
const MAX_PUT: usize = 10_000;

/// What the producer did.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ProduceSummary {
    /// Kinesis records written (an aggregate counts once).
    pub(super) kinesis_records: u64,
    /// Entries PutRecords had to send again.
    pub(super) retried_entries: u64,
    /// Records sent again because a reshard moved their shard.
    pub(super) resent_after_reshard: u64,
}

/// What to produce, and where.
#[derive(Clone, Debug)]
pub(super) struct Production {
    /// The Kinesis client.
    pub(super) kinesis: Kinesis,
    /// The stream.
    pub(super) stream: StreamRef,
    /// How many records.
    pub(super) records: usize,
    /// Records per second.
    pub(super) rate: u64,
}

/// Puts `production.records` records at `production.rate` per second from
/// `clock`, telling `tally` when each was put; each put alternates between
/// plain records and KPL aggregates.
///
/// # Errors
///
/// The first put that fails after the producer's retries.
pub(super) async fn produce(
    production: Production,
    tally: Arc<Mutex<Tally>>,
    clock: Instant,
) -> anyhow::Result<ProduceSummary> {
    let config = |aggregate| ProducerConfig::builder().aggregate(aggregate).build();
    let mut producers = [
        Producer::new(
            production.kinesis.clone(),
            production.stream.clone(),
            config(false)?,
        )?,
        Producer::new(production.kinesis, production.stream, config(true)?)?,
    ];
    let mut summary = ProduceSummary::default();
    let mut done = 0;
    let mut puts = 0usize;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while done < production.records {
        tick.tick().await;
        let due = due(clock.elapsed(), production.rate).min(production.records);
        while done < due {
            let end = due.min(done + MAX_PUT);
            let produced_ms = millis(clock.elapsed());
            let records: Vec<ProducerRecord> = (done..end)
                .map(|i| ProducerRecord::new(partition_key(i), record_data(i, produced_ms)))
                .collect();
            let producer = &mut producers[puts % 2];
            puts += 1;
            let put = producer.put(records).await?;
            summary.kinesis_records += put.kinesis_records;
            summary.retried_entries += put.retried_entries;
            summary.resent_after_reshard += put.resent_after_reshard;
            if let Ok(mut tally) = tally.lock() {
                tally.produced(done..end, produced_ms);
            }
            done = end;
        }
    }
    Ok(summary)
}

/// How many records are due `elapsed` into production at `rate` per second.
fn due(elapsed: Duration, rate: u64) -> usize {
    let due = elapsed.as_secs_f64() * rate as f64;
    due.ceil() as usize
}

/// Milliseconds of `elapsed`, saturating.
pub(super) fn millis(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_fall_due_at_the_rate() {
        assert_eq!(due(Duration::ZERO, 1_000), 0);
        assert_eq!(due(Duration::from_millis(100), 1_000), 100);
        assert_eq!(due(Duration::from_secs(30), 7_000), 210_000);
    }
}
