//! Streams, reshards, records and lease tables on the local servers.

use std::time::Duration;

use rkcl::{
    DynamoDbLeaseStore, Kinesis,
    aws::StreamRef,
    model::HashKey,
    producer::{Producer, ProducerConfig, PutSummary},
    record::ProducerRecord,
    shards::Shard,
};

use crate::Local;

/// How long [`create_stream`], [`split`] and [`merge`] wait for the stream
/// to become `ACTIVE`: long enough for a stream of 1,000 shards.
pub const ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`lease_table`] waits for the table to become active.
pub const TABLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many records [`put`] hands to one [`Producer::put`] call, so a test
/// of 100,000 records does not build every request of them at once.
pub const PUT_CHUNK: usize = 10_000;

/// How [`put`] writes records: one Kinesis record each, or KPL aggregates.
///
/// Converts into a [`ProducerConfig`] with the defaults otherwise; pass a
/// whole `ProducerConfig` to [`put`] for other settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// One Kinesis record per user record.
    Plain,
    /// User records packed into KPL aggregates per predicted shard.
    Aggregated,
}

impl From<Packing> for ProducerConfig {
    fn from(packing: Packing) -> Self {
        let mut config = Self::default();
        config.aggregate = packing == Packing::Aggregated;
        config
    }
}

/// Creates a stream of `shards` shards and waits until it is active.
///
/// # Panics
///
/// When the stream cannot be created (it exists already, or the shard limit
/// is reached) or is not active within [`ACTIVE_TIMEOUT`].
pub async fn create_stream(kinesis: &Kinesis, name: &str, shards: u32) -> StreamRef {
    kinesis
        .create_stream(name, shards)
        .await
        .unwrap_or_else(|err| panic!("creating stream {name}: {err}"));
    let stream = StreamRef::parse(name);
    wait_until_active(kinesis, &stream).await;
    stream
}

/// Writes `records` with a [`Producer`] and returns what it did, summed
/// over the calls of [`PUT_CHUNK`] records each. Per partition key the
/// records land in the order given.
///
/// `config` is a [`Packing`] or a whole [`ProducerConfig`].
///
/// # Panics
///
/// When the producer refuses its configuration or a put fails.
pub async fn put(
    kinesis: &Kinesis,
    stream: &StreamRef,
    records: Vec<ProducerRecord>,
    config: impl Into<ProducerConfig>,
) -> PutSummary {
    let mut producer = Producer::new(kinesis.clone(), stream.clone(), config.into())
        .unwrap_or_else(|err| panic!("a producer for {stream}: {err}"));
    let mut summary = PutSummary::default();
    for chunk in records.chunks(PUT_CHUNK) {
        summary += producer
            .put(chunk.to_vec())
            .await
            .unwrap_or_else(|err| panic!("putting records to {stream}: {err}"));
    }
    summary
}

/// Splits `shard` at hash key `at`, or in the middle of its range with
/// `None`, and waits until the stream is active again.
///
/// # Panics
///
/// When Kinesis refuses the split or the stream is not active again within
/// [`ACTIVE_TIMEOUT`].
pub async fn split(local: &Local, stream: &StreamRef, shard: &Shard, at: Option<u128>) {
    let kinesis = Kinesis::new(local.kinesis_client());
    let at = at.map_or_else(|| shard.hash_key_range.middle(), HashKey::from_u128);
    kinesis
        .split_shard(stream, &shard.id, at)
        .await
        .unwrap_or_else(|err| panic!("splitting {} of {stream}: {err}", shard.id));
    wait_until_active(&kinesis, stream).await;
}

/// Merges two adjacent shards and waits until the stream is active again.
///
/// # Panics
///
/// When Kinesis refuses the merge (the shards are not adjacent or not open)
/// or the stream is not active again within [`ACTIVE_TIMEOUT`].
pub async fn merge(local: &Local, stream: &StreamRef, a: &Shard, b: &Shard) {
    let kinesis = Kinesis::new(local.kinesis_client());
    kinesis
        .merge_shards(stream, &a.id, &b.id)
        .await
        .unwrap_or_else(|err| panic!("merging {} and {} of {stream}: {err}", a.id, b.id));
    wait_until_active(&kinesis, stream).await;
}

/// A lease table named `app` on the local DynamoDB, created if absent and
/// active.
///
/// # Panics
///
/// When the table cannot be created or is not active within
/// [`TABLE_TIMEOUT`].
pub async fn lease_table(local: &Local, app: &str) -> DynamoDbLeaseStore {
    let store = DynamoDbLeaseStore::new(local.dynamodb_client(), app);
    store
        .ensure_table(TABLE_TIMEOUT)
        .await
        .unwrap_or_else(|err| panic!("lease table {app}: {err}"));
    store
}

async fn wait_until_active(kinesis: &Kinesis, stream: &StreamRef) {
    kinesis
        .wait_until_active(stream, ACTIVE_TIMEOUT)
        .await
        .unwrap_or_else(|err| panic!("waiting for {stream} to be active: {err}"));
}
