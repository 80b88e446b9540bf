//! GetRecords read straight into rkcl's types (`RecordsDecoding::Direct`)
//! gives what the SDK's deserializer gives (`RecordsDecoding::Sdk`):
//! records, sequence numbers, iterators, the end of a closed shard, and
//! errors.

use rkcl::aws::{GetRecordsOutput, RecordsDecoding, StreamRef};
use rkcl::model::{ShardId, StartingPosition};
use rkcl::record::ProducerRecord;
use rkcl::{Error, Kinesis};
use rkcl_local::testkit::Packing::{Aggregated, Plain};
use rkcl_local::testkit::{create_stream, put, split};
use rkcl_local::{FaultPlan, Local};

/// Records whose keys and data need JSON escapes, are not UTF-8, or are
/// long; some plain, some in aggregates.
fn awkward_records(from: usize) -> Vec<ProducerRecord> {
    (from..from + 60)
        .map(|i| {
            let key = match i % 4 {
                0 => format!("quote\"back\\slash-{i}"),
                1 => format!("ünïcødé-\u{2028}-{i}"),
                2 => format!("tab\tnew\nline-{i}"),
                _ => format!("key-{i}"),
            };
            let data = match i % 3 {
                0 => vec![0xff, 0x00, 0xfe, i as u8],
                1 => format!("{{\"json\": \"text {i}\"}}").into_bytes(),
                _ => vec![b'x'; 3_000 + i],
            };
            ProducerRecord::new(key, data)
        })
        .collect()
}

fn clients(local: &Local) -> (Kinesis, Kinesis) {
    let kinesis = Kinesis::new(local.kinesis_client());
    (
        kinesis.clone().with_records_decoding(RecordsDecoding::Sdk),
        kinesis.with_records_decoding(RecordsDecoding::Direct),
    )
}

/// Both outputs, with everything but the iterators' text compared.
fn assert_same(sdk: &GetRecordsOutput, direct: &GetRecordsOutput) {
    assert_eq!(sdk.records, direct.records);
    // The local Kinesis counts the time behind from the call's own clock.
    assert_eq!(
        sdk.millis_behind_latest.is_some(),
        direct.millis_behind_latest.is_some()
    );
    assert_eq!(sdk.child_shards, direct.child_shards);
    assert_eq!(
        sdk.next_shard_iterator.is_some(),
        direct.next_shard_iterator.is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reading_gives_the_sdks_records_and_shard_ends() {
    let local = Local::start().await.unwrap();
    let (sdk, direct) = clients(&local);
    assert_eq!(
        Kinesis::new(local.kinesis_client()).records_decoding(),
        RecordsDecoding::Direct
    );
    let stream = create_stream(&sdk, "direct", 2).await;
    put(&sdk, &stream, awkward_records(0), Plain).await;
    put(&sdk, &stream, awkward_records(100), Aggregated).await;
    // A closed parent and its children.
    let parent = sdk.list_shards(&stream).await.unwrap().remove(0);
    split(&local, &stream, &parent, None).await;
    put(&sdk, &stream, awkward_records(200), Plain).await;

    let shards = sdk.list_shards(&stream).await.unwrap();
    assert_eq!(shards.len(), 4);
    let (mut records, mut ended) = (0, 0);
    for shard in &shards {
        let mut iterator = sdk
            .get_shard_iterator(&stream, &shard.id, &StartingPosition::TrimHorizon)
            .await
            .unwrap();
        // Small pages, so a shard takes several calls.
        while let Some(current) = iterator {
            let a = sdk.get_records(&current, 7).await.unwrap();
            let b = direct.get_records(&current, 7).await.unwrap();
            assert_same(&a, &b);
            records += b.records.len();
            if b.records.is_empty() && b.next_shard_iterator.is_some() {
                // An open shard read to its tip.
                break;
            }
            if b.next_shard_iterator.is_none() {
                ended += 1;
            }
            iterator = b.next_shard_iterator;
        }
    }
    // 180 Kinesis records: 120 plain, and the aggregates of 60 others.
    assert!(records > 120, "{records}");
    assert_eq!(ended, 1, "the parent is read to its end");
}

/// The error each decoding gives for a GetRecords call of `iterator`, or
/// `None` when either call succeeds.
async fn errors(local: &Local, iterator: &str) -> Option<(Error, Error)> {
    let (sdk, direct) = clients(local);
    let a = sdk.get_records(iterator, 100).await.err()?;
    let b = direct.get_records(iterator, 100).await.err()?;
    Some((a, b))
}

async fn one_shard(local: &Local, name: &str) -> (StreamRef, ShardId, String) {
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, name, 1).await;
    put(&kinesis, &stream, awkward_records(0), Plain).await;
    let shard = kinesis.list_shards(&stream).await.unwrap().remove(0).id;
    let iterator = kinesis
        .get_shard_iterator(&stream, &shard, &StartingPosition::TrimHorizon)
        .await
        .unwrap()
        .unwrap();
    (stream, shard, iterator)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reading_gives_the_sdks_errors() {
    for (spec, expected) in [
        ("kinesis.GetRecords:expired=100%", "expired"),
        ("kinesis.GetRecords:throttle=100%", "throttled"),
    ] {
        let local = Local::builder()
            .faults(FaultPlan::parse(spec).unwrap())
            .start()
            .await
            .unwrap();
        let (_, _, iterator) = one_shard(&local, "faulty").await;
        let (a, b) = errors(&local, &iterator).await.unwrap();
        let kind = |e: &Error| match e {
            Error::ExpiredIterator { .. } => "expired",
            Error::Throttled { .. } => "throttled",
            _ => "other",
        };
        assert_eq!(kind(&a), expected, "{a:?}");
        assert_eq!(kind(&b), expected, "{b:?}");
        assert_eq!(a.to_string(), b.to_string());
        local.shutdown().await;
    }

    // A stream deleted under its iterator.
    let local = Local::start().await.unwrap();
    let (stream, _, iterator) = one_shard(&local, "deleted").await;
    local
        .kinesis_client()
        .delete_stream()
        .stream_name(stream.name())
        .send()
        .await
        .unwrap();
    let gone = |e: &Error| matches!(e, Error::ResourceNotFound { .. });
    let mut tries = 0;
    let (a, b) = loop {
        if let Some((a, b)) = errors(&local, &iterator).await
            && gone(&a)
            && gone(&b)
        {
            break (a, b);
        }
        tries += 1;
        assert!(tries < 100, "the stream is not gone");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(a.to_string(), b.to_string());

    // A malformed iterator.
    let (a, b) = errors(&local, "not-an-iterator").await.unwrap();
    assert!(!matches!(a, Error::ExpiredIterator { .. }), "{a:?}");
    assert_eq!(a.to_string(), b.to_string());
}
