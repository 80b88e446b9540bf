//! Writing records with plain SDK PutRecords calls and keeping where each
//! one landed, for tests that check what a reader returns against what was
//! written.

use std::time::Duration;

use aws_sdk_kinesis::{
    primitives::Blob,
    types::{PutRecordsRequestEntry, PutRecordsResultEntry},
};
use rkcl::{SequenceNumber, ShardId, aws::StreamRef, record::ProducerRecord};

use crate::Local;

/// The most entries [`put_with_positions`] sends in one PutRecords call:
/// Kinesis' limit.
pub const PUT_RECORDS_MAX_ENTRIES: usize = 500;

/// How many times [`put_with_positions`] sends an entry before it gives up.
pub const PUT_RECORDS_MAX_ATTEMPTS: u32 = 10;

/// The pause of [`put_with_positions`] before it sends failed entries
/// again, times the number of attempts made: 100 ms after the first,
/// 200 ms after the second, and so on.
pub const PUT_RECORDS_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Where Kinesis put one record: its shard and its sequence number there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordPosition {
    /// The shard the record landed in.
    pub shard_id: ShardId,
    /// The record's sequence number in that shard.
    pub sequence_number: SequenceNumber,
}

/// Writes each of `records` as one Kinesis record (no aggregation) with
/// plain SDK PutRecords calls and returns where each landed, one position
/// per record in the order given.
///
/// The records go in the order given, [`PUT_RECORDS_MAX_ENTRIES`] per
/// call, with their explicit hash keys when they have one. Entries that
/// fail (throttled, an internal failure) are sent again in order after a
/// pause (see [`PUT_RECORDS_RETRY_PAUSE`]), before the next call's records,
/// up to [`PUT_RECORDS_MAX_ATTEMPTS`] times each. A record sent again may
/// land after records that came later in its call; the positions tell.
///
/// ```no_run
/// use rkcl::{Kinesis, record::ProducerRecord};
/// use rkcl_local::{Local, testkit};
///
/// # async fn example() {
/// let local = Local::start().await.unwrap();
/// let stream = testkit::create_stream(&Kinesis::new(local.kinesis_client()), "orders", 2).await;
/// let records = vec![ProducerRecord::new("customer-1", "order placed")];
/// let positions = testkit::put_with_positions(&local, &stream, &records).await;
/// println!("{} at {}", positions[0].shard_id, positions[0].sequence_number);
/// # }
/// ```
///
/// # Panics
///
/// When a call fails, an entry still fails after
/// [`PUT_RECORDS_MAX_ATTEMPTS`] attempts (naming its error), or an answer
/// does not match its request (a count, a missing shard id, a sequence
/// number that does not parse).
pub async fn put_with_positions(
    local: &Local,
    stream: &StreamRef,
    records: &[ProducerRecord],
) -> Vec<RecordPosition> {
    let mut positions = Vec::with_capacity(records.len());
    for (chunk_index, chunk) in records.chunks(PUT_RECORDS_MAX_ENTRIES).enumerate() {
        let first = chunk_index * PUT_RECORDS_MAX_ENTRIES;
        positions.extend(put_chunk(local, stream, chunk, first).await);
    }
    positions
}

/// Writes one call's worth of records, sending failed entries again, and
/// returns their positions in the order given. `first` is the index of the
/// chunk's first record among all records, for messages.
async fn put_chunk(
    local: &Local,
    stream: &StreamRef,
    chunk: &[ProducerRecord],
    first: usize,
) -> Vec<RecordPosition> {
    let client = local.kinesis_client();
    let mut positions: Vec<Option<RecordPosition>> = vec![None; chunk.len()];
    // Indexes into `chunk` of the records not written yet, in order.
    let mut pending: Vec<usize> = (0..chunk.len()).collect();
    let mut attempts = 0;
    while !pending.is_empty() {
        if attempts > 0 {
            tokio::time::sleep(PUT_RECORDS_RETRY_PAUSE * attempts).await;
        }
        attempts += 1;
        let entries = pending
            .iter()
            .map(|&i| request_entry(&chunk[i], first + i))
            .collect();
        let request = match stream {
            StreamRef::Name(name) => client.put_records().stream_name(name),
            StreamRef::Arn(arn) => client.put_records().stream_arn(arn),
        };
        let out = request
            .set_records(Some(entries))
            .send()
            .await
            .unwrap_or_else(|err| panic!("putting records to {stream}: {err:?}"));
        let results = out.records();
        assert_eq!(
            results.len(),
            pending.len(),
            "PutRecords to {stream} answered {} entries for {} sent",
            results.len(),
            pending.len()
        );
        let mut failed = Vec::new();
        for (&i, result) in pending.iter().zip(results) {
            if let Some(code) = result.error_code() {
                assert!(
                    attempts < PUT_RECORDS_MAX_ATTEMPTS,
                    "record {} to {stream} still failed after {attempts} attempts: {code}: {}",
                    first + i,
                    result.error_message().unwrap_or("no message")
                );
                failed.push(i);
            } else {
                positions[i] = Some(position(result, stream, first + i));
            }
        }
        pending = failed;
    }
    // Every record is either pending or has its position, and none is
    // pending any more.
    positions.into_iter().flatten().collect()
}

/// The SDK's entry for one record; `index` names it in messages.
fn request_entry(record: &ProducerRecord, index: usize) -> PutRecordsRequestEntry {
    PutRecordsRequestEntry::builder()
        .data(Blob::new(record.data.to_vec()))
        .partition_key(&record.partition_key)
        .set_explicit_hash_key(record.explicit_hash_key.clone())
        .build()
        .unwrap_or_else(|err| panic!("the PutRecords entry of record {index}: {err}"))
}

/// The position a successful entry reports; `index` names it in messages.
fn position(result: &PutRecordsResultEntry, stream: &StreamRef, index: usize) -> RecordPosition {
    let shard_id = result
        .shard_id()
        .unwrap_or_else(|| panic!("record {index} to {stream} was written without a shard id"));
    let sequence_number = result.sequence_number().unwrap_or_else(|| {
        panic!("record {index} to {stream} was written without a sequence number")
    });
    RecordPosition {
        shard_id: ShardId::from(shard_id),
        sequence_number: sequence_number
            .parse::<SequenceNumber>()
            .unwrap_or_else(|err| {
                panic!("record {index} to {stream}: sequence number {sequence_number:?}: {err}")
            }),
    }
}
