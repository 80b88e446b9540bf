//! GetRecords answers read straight into domain types (feature
//! `direct-get-records`, [`RecordsDecoding::Direct`](super::RecordsDecoding)).
//!
//! The SDK reads a GetRecords answer with a JSON tokenizer that checks and
//! copies every string into a `String`, decodes each record's base64 into a
//! blob and builds its own `Record`s, which rkcl then turns into
//! [`KinesisRecord`]s: most of a counting worker's CPU. Here the call is
//! still the SDK's — the request built, signed (SigV4) and sent by the
//! client's HTTP stack, its retries and its error handling untouched — but
//! a successful answer's body is read once, with `serde_json` borrowing the
//! strings from the body, into the domain's [`GetRecordsOutput`]; the SDK
//! is handed an empty output.
//!
//! How: a per-call interceptor replaces the operation's response
//! deserializer (kept in the call's config bag) with [`Direct`], which
//! wraps it. An error answer, or a body this reader does not understand,
//! goes to the SDK's deserializer, so errors and any shape Kinesis may add
//! are read as before; only a body read in full here is taken from it.

use std::sync::{Arc, Mutex, OnceLock};

use aws_sdk_kinesis::config::RuntimePlugin as _;
use aws_sdk_kinesis::operation::get_records::{GetRecords, GetRecordsOutput as SdkOutput};
use aws_sdk_kinesis::primitives::DateTime;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, Error as ErasedError, Output,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, OrchestratorError};
use aws_smithy_runtime_api::client::ser_de::{DeserializeResponse, SharedResponseDeserializer};
use aws_smithy_types::config_bag::{ConfigBag, FrozenLayer};
use bytes::Bytes;
use serde::Deserialize;

use super::kinesis_shapes::{GetRecordsOutput, child_shard};
use crate::record::KinesisRecord;

/// Where a call's [`Direct`] leaves the answer it read.
pub(super) type Slot = Arc<Mutex<Option<GetRecordsOutput>>>;

/// The per-call interceptor: before the call runs, it puts a [`Direct`]
/// in place of the operation's response deserializer.
#[derive(Debug)]
pub(super) struct DirectGetRecords {
    slot: Slot,
}

impl DirectGetRecords {
    /// An interceptor that leaves each answer it reads in `slot`.
    pub(super) fn new(slot: Slot) -> Self {
        Self { slot }
    }
}

impl Intercept for DirectGetRecords {
    fn name(&self) -> &'static str {
        "DirectGetRecords"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Without the operation's deserializer there is nothing to fall
        // back to: the call then stays the SDK's.
        if let Some(sdk) = sdk_layer() {
            cfg.interceptor_state()
                .store_put(SharedResponseDeserializer::new(Direct {
                    sdk,
                    slot: self.slot.clone(),
                }));
        }
        Ok(())
    }
}

/// The SDK's own configuration of GetRecords, which holds its response
/// deserializer (the SDK does not let one take it out of a call's config
/// bag), made once.
fn sdk_layer() -> Option<FrozenLayer> {
    static LAYER: OnceLock<Option<FrozenLayer>> = OnceLock::new();
    LAYER
        .get_or_init(|| {
            let layer = GetRecords::new().config()?;
            layer
                .load::<SharedResponseDeserializer>()
                .is_some()
                .then_some(layer)
        })
        .clone()
}

/// GetRecords' response deserializer: a successful answer read here, the
/// rest by the SDK's.
#[derive(Debug)]
struct Direct {
    /// Holds the SDK's deserializer ([`sdk_layer`]).
    sdk: FrozenLayer,
    slot: Slot,
}

impl Direct {
    fn sdk(&self) -> Option<&SharedResponseDeserializer> {
        self.sdk.load::<SharedResponseDeserializer>()
    }
}

impl DeserializeResponse for Direct {
    fn deserialize_streaming_with_config(
        &self,
        response: &mut HttpResponse,
        cfg: &ConfigBag,
    ) -> Option<Result<Output, OrchestratorError<ErasedError>>> {
        self.sdk()?.deserialize_streaming_with_config(response, cfg)
    }

    fn deserialize_nonstreaming_with_config(
        &self,
        response: &HttpResponse,
        cfg: &ConfigBag,
    ) -> Result<Output, OrchestratorError<ErasedError>> {
        if response.status().is_success()
            && let Some(output) = response.body().bytes().and_then(read)
            && let Ok(empty) = SdkOutput::builder().set_records(Some(Vec::new())).build()
        {
            // A retried call answers again; the last answer is the call's.
            if let Ok(mut slot) = self.slot.lock() {
                *slot = Some(output);
                return Ok(Output::erase(empty));
            }
        }
        match self.sdk() {
            Some(sdk) => sdk.deserialize_nonstreaming_with_config(response, cfg),
            // Not reached: a `Direct` is made only when the layer holds one.
            None => Err(OrchestratorError::other(
                "GetRecords has no response deserializer",
            )),
        }
    }
}

/// GetRecords' answer as Kinesis writes it (unknown members are skipped,
/// `null` is absent, as the SDK reads them).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer<'a> {
    #[serde(borrow, default)]
    records: Option<Vec<WireRecord<'a>>>,
    #[serde(default)]
    next_shard_iterator: Option<String>,
    #[serde(default)]
    millis_behind_latest: Option<i64>,
    #[serde(borrow, default)]
    child_shards: Option<Vec<WireChild<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireRecord<'a> {
    #[serde(borrow)]
    sequence_number: std::borrow::Cow<'a, str>,
    /// The base64 text as bytes: borrowed from the body, not checked as
    /// UTF-8 (the decoder checks every byte). Text with an escape cannot be
    /// borrowed and leaves the answer to the SDK.
    #[serde(borrow)]
    data: &'a [u8],
    partition_key: String,
    #[serde(default)]
    approximate_arrival_timestamp: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireChild<'a> {
    #[serde(borrow)]
    shard_id: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    parent_shards: Option<Vec<std::borrow::Cow<'a, str>>>,
    #[serde(borrow, default)]
    hash_key_range: Option<WireRange<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireRange<'a> {
    #[serde(borrow)]
    starting_hash_key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    ending_hash_key: std::borrow::Cow<'a, str>,
}

/// A GetRecords body in domain types, or `None` when anything in it is not
/// as expected (the SDK then reads it, and says what is wrong).
pub(super) fn read(body: &[u8]) -> Option<GetRecordsOutput> {
    let answer: Answer<'_> = serde_json::from_slice(body).ok()?;
    let wire = answer.records.unwrap_or_default();
    let mut records = Vec::with_capacity(wire.len());
    for record in wire {
        records.push(KinesisRecord {
            sequence_number: record.sequence_number.parse().ok()?,
            partition_key: record.partition_key,
            // The SDK's base64 decoder (`aws_smithy_types::base64`, which
            // takes text): the same records as its path.
            data: Bytes::from(base64_simd::STANDARD.decode_to_vec(record.data).ok()?),
            approximate_arrival_timestamp: record
                .approximate_arrival_timestamp
                .and_then(|t| std::time::SystemTime::try_from(DateTime::from_secs_f64(t)).ok()),
        });
    }
    let child_shards = answer
        .child_shards
        .unwrap_or_default()
        .iter()
        .filter_map(|child| {
            let range = child.hash_key_range.as_ref();
            child_shard(
                "GetRecords",
                &child.shard_id,
                child.parent_shards.iter().flatten().map(|p| p.as_ref()),
                range.map(|r| r.starting_hash_key.as_ref()),
                range.map(|r| r.ending_hash_key.as_ref()),
            )
        })
        .collect();
    Some(GetRecordsOutput {
        records,
        next_shard_iterator: answer.next_shard_iterator,
        millis_behind_latest: answer
            .millis_behind_latest
            .and_then(|m| u64::try_from(m).ok()),
        child_shards,
    })
}

#[cfg(test)]
mod tests {
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;
    use crate::aws::kinesis::sdk_records_output;

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(
            StatusCode::try_from(status).unwrap(),
            SdkBody::from(body.to_owned()),
        )
    }

    /// The body read by the SDK's deserializer, then in domain types.
    fn by_sdk(body: &str) -> crate::Result<GetRecordsOutput> {
        let layer = sdk_layer().unwrap();
        let sdk = layer.load::<SharedResponseDeserializer>().unwrap();
        let out = sdk
            .deserialize_nonstreaming_with_config(&response(200, body), &ConfigBag::base())
            .unwrap();
        sdk_records_output(out.downcast::<SdkOutput>().unwrap())
    }

    fn assert_same(sdk: &GetRecordsOutput, direct: &GetRecordsOutput) {
        assert_eq!(sdk.records, direct.records);
        assert_eq!(sdk.next_shard_iterator, direct.next_shard_iterator);
        assert_eq!(sdk.millis_behind_latest, direct.millis_behind_latest);
        assert_eq!(sdk.child_shards, direct.child_shards);
    }

    const FULL: &str = r#"{"Records":[
        {"SequenceNumber":"49590338271490256608559692538361571095921575989136588898",
         "ApproximateArrivalTimestamp":1700000000.123,
         "Data":"/wD+AQ==","PartitionKey":"q\"b\\s\u00e9\n\u2028","EncryptionType":"KMS"},
        {"SequenceNumber":"2","ApproximateArrivalTimestamp":1700000001,
         "Data":"","PartitionKey":"k","Unknown":{"a":[1,{"b":null}]}},
        {"Data":"eA==","PartitionKey":"k","SequenceNumber":"3","ApproximateArrivalTimestamp":null}
      ],
      "NextShardIterator":"AAAA+/=","MillisBehindLatest":5,
      "ChildShards":[
        {"ShardId":"shardId-000000000002","ParentShards":["shardId-000000000000","shardId-000000000001"],
         "HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"340282366920938463463374607431768211455"}},
        {"ShardId":"shardId-000000000003","ParentShards":["shardId-000000000000"],
         "HashKeyRange":{"StartingHashKey":"10","EndingHashKey":"5"}}
      ]}"#;

    #[test]
    fn reads_what_the_sdk_reads() {
        for body in [
            FULL,
            r#"{"Records":[],"NextShardIterator":null,"MillisBehindLatest":0,"ChildShards":null}"#,
            r#"{"NextShardIterator":"x"}"#,
            r#"{}"#,
        ] {
            let direct = read(body.as_bytes()).unwrap();
            assert_same(&by_sdk(body).unwrap(), &direct);
        }
        let full = read(FULL.as_bytes()).unwrap();
        assert_eq!(full.records.len(), 3);
        assert_eq!(full.records[0].partition_key, "q\"b\\sé\n\u{2028}");
        assert_eq!(&full.records[0].data[..], &[0xff, 0, 0xfe, 1]);
        // The child with an empty range is left to the shard sync.
        assert_eq!(full.child_shards.len(), 1);
    }

    #[test]
    fn leaves_what_it_does_not_understand_to_the_sdk() {
        for body in [
            r#"{"Records":[{"SequenceNumber":"abc","Data":"eA==","PartitionKey":"k"}]}"#,
            r#"{"Records":[{"SequenceNumber":"1","Data":"not base64!","PartitionKey":"k"}]}"#,
            r#"{"Records":[{"SequenceNumber":"1","Data":"eA==","PartitionKey":"k","ApproximateArrivalTimestamp":"soon"}]}"#,
            r#"{"Records":[{"Data":"eA==","PartitionKey":"k"}]}"#,
            r#"{"Records":"#,
            // Kinesis does not escape `/`; a body that does is the SDK's.
            r#"{"Records":[{"SequenceNumber":"1","Data":"\/w==","PartitionKey":"k"}]}"#,
        ] {
            assert!(read(body.as_bytes()).is_none(), "{body}");
        }
    }

    #[test]
    fn the_deserializer_takes_successes_and_passes_errors_on() {
        let slot = Slot::default();
        let direct = Direct {
            sdk: sdk_layer().unwrap(),
            slot: slot.clone(),
        };
        let cfg = ConfigBag::base();
        let out = direct
            .deserialize_nonstreaming_with_config(&response(200, FULL), &cfg)
            .unwrap();
        // The SDK gets an empty output; the records are in the slot.
        assert!(out.downcast::<SdkOutput>().unwrap().records.is_empty());
        assert_eq!(slot.lock().unwrap().take().unwrap().records.len(), 3);

        let error = r#"{"__type":"ExpiredIteratorException","message":"Iterator expired"}"#;
        let out = direct.deserialize_nonstreaming_with_config(&response(400, error), &cfg);
        assert!(out.is_err());
        assert!(slot.lock().unwrap().is_none());

        // A body it cannot read goes to the SDK, whose output is then used.
        let odd = r#"{"Records":[{"SequenceNumber":"1","Data":"eA==","PartitionKey":"k","ApproximateArrivalTimestamp":"soon"}]}"#;
        let _ = direct.deserialize_nonstreaming_with_config(&response(200, odd), &cfg);
        assert!(slot.lock().unwrap().is_none());
    }
}
