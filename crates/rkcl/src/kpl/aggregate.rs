//! Writing KPL aggregates: many user records packed into one Kinesis record.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use md5::{Digest, Md5};
use prost::Message;
use prost::encoding::encoded_len_varint;

use super::proto;
use super::{DIGEST_LEN, MAGIC};
use crate::error::{Error, Result};
use crate::model::HashKey;
use crate::record::ProducerRecord;

/// The largest Kinesis record: data plus partition key, 1 MiB.
pub const MAX_KINESIS_RECORD_SIZE: usize = 1024 * 1024;

/// One aggregated Kinesis record, ready for PutRecords.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregate {
    /// The partition key to send the record with: the first user record's.
    pub partition_key: String,
    /// The explicit hash key to send the record with: the first user record's,
    /// if it had one.
    pub explicit_hash_key: Option<String>,
    /// The hash key the record is routed by: that of the first user record.
    pub hash_key: HashKey,
    /// The encoded record: magic, protobuf body, MD5 of the body.
    pub data: Bytes,
    /// How many user records it holds.
    pub user_records: usize,
}

/// Packs user records into KPL aggregates of at most a given size.
///
/// Partition keys and explicit hash keys are stored once per aggregate in
/// the format's tables. Records keep their order: sub-sequence numbers
/// follow the order of [`add`](Self::add) calls.
///
/// ```
/// use rkcl::{kpl::Aggregator, record::ProducerRecord};
///
/// let mut aggregator = Aggregator::with_max_size(1024)?;
/// let mut aggregates = Vec::new();
/// for i in 0..100 {
///     let record = ProducerRecord::new(format!("key-{}", i % 3), vec![b'x'; 50]);
///     aggregates.extend(aggregator.add(record)?);
/// }
/// aggregates.extend(aggregator.flush());
/// assert!(aggregates.iter().all(|a| a.data.len() <= 1024));
/// assert_eq!(aggregates.iter().map(|a| a.user_records).sum::<usize>(), 100);
/// # Ok::<(), rkcl::Error>(())
/// ```
#[derive(Debug)]
pub struct Aggregator {
    max_size: usize,
    message: proto::AggregatedRecord,
    partition_keys: HashMap<String, u64>,
    explicit_hash_keys: HashMap<String, u64>,
    body_len: usize,
    first_hash_key: HashKey,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::new()
    }
}

impl Aggregator {
    /// The KPL's default aggregate size, 51,200 bytes.
    pub const DEFAULT_MAX_SIZE: usize = 51_200;
    /// The smallest size the KPL allows, 64 bytes.
    pub const MIN_MAX_SIZE: usize = 64;

    /// An aggregator with the default maximum size of
    /// [`DEFAULT_MAX_SIZE`](Self::DEFAULT_MAX_SIZE) bytes.
    pub fn new() -> Self {
        Self {
            max_size: Self::DEFAULT_MAX_SIZE,
            message: proto::AggregatedRecord::default(),
            partition_keys: HashMap::new(),
            explicit_hash_keys: HashMap::new(),
            body_len: 0,
            first_hash_key: HashKey::MIN,
        }
    }

    /// An aggregator whose aggregates are at most `max_size` bytes (magic,
    /// body and digest), from [`MIN_MAX_SIZE`](Self::MIN_MAX_SIZE) up to the
    /// 1 MiB Kinesis record limit.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `max_size` is outside that range.
    pub fn with_max_size(max_size: usize) -> Result<Self> {
        if !(Self::MIN_MAX_SIZE..=MAX_KINESIS_RECORD_SIZE).contains(&max_size) {
            return Err(Error::Config(format!(
                "aggregate size must be between {} and {MAX_KINESIS_RECORD_SIZE} bytes, got {max_size}",
                Self::MIN_MAX_SIZE
            )));
        }
        Ok(Self {
            max_size,
            ..Self::new()
        })
    }

    /// The maximum size of an aggregate in bytes.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// How many user records wait in the current aggregate.
    pub fn len(&self) -> usize {
        self.message.records.len()
    }

    /// Whether no user record waits.
    pub fn is_empty(&self) -> bool {
        self.message.records.is_empty()
    }

    /// The size in bytes the current aggregate would have if flushed now.
    pub fn size(&self) -> usize {
        MAGIC.len() + self.body_len + DIGEST_LEN
    }

    /// Adds a user record. When it does not fit in the current aggregate,
    /// the current one is finished and returned, and the record starts the
    /// next one.
    ///
    /// # Errors
    ///
    /// [`Error::RecordTooLarge`] when the record alone does not fit in an
    /// aggregate of the maximum size (nothing is added), and
    /// [`Error::InvalidInput`] when its explicit hash key is not a decimal
    /// number below 2^128.
    pub fn add(&mut self, record: ProducerRecord) -> Result<Option<Aggregate>> {
        let hash_key =
            HashKey::of_record(&record.partition_key, record.explicit_hash_key.as_deref())?;
        let alone = self.added_len(&record, true);
        let alone_total = MAGIC.len() + alone + DIGEST_LEN;
        if alone_total > self.max_size
            || alone_total + record.partition_key.len() > MAX_KINESIS_RECORD_SIZE
        {
            return Err(Error::RecordTooLarge {
                size: alone_total,
                max: self
                    .max_size
                    .min(MAX_KINESIS_RECORD_SIZE - record.partition_key.len()),
            });
        }
        let finished = if self.is_empty() {
            None
        } else {
            let first_key_len = self.first_partition_key_len();
            let total = self.size() + self.added_len(&record, false);
            if total > self.max_size || total + first_key_len > MAX_KINESIS_RECORD_SIZE {
                self.flush()
            } else {
                None
            }
        };
        if self.is_empty() {
            self.first_hash_key = hash_key;
        }
        self.push(record);
        Ok(finished)
    }

    /// Finishes the current aggregate, if it holds any user record.
    pub fn flush(&mut self) -> Option<Aggregate> {
        if self.is_empty() {
            return None;
        }
        let message = std::mem::take(&mut self.message);
        self.partition_keys.clear();
        self.explicit_hash_keys.clear();
        self.body_len = 0;
        Some(encode(message, self.first_hash_key))
    }

    fn first_partition_key_len(&self) -> usize {
        self.message
            .partition_key_table
            .first()
            .map_or(0, String::len)
    }

    /// The bytes the body grows by when `record` is added; `fresh` computes it
    /// for an empty aggregate.
    fn added_len(&self, record: &ProducerRecord, fresh: bool) -> usize {
        let table_entry = |s: &str| 1 + encoded_len_varint(s.len() as u64) + s.len();
        let mut len = 0;
        let pk_index = match self.partition_keys.get(&record.partition_key) {
            Some(&index) if !fresh => index,
            _ => {
                len += table_entry(&record.partition_key);
                if fresh {
                    0
                } else {
                    self.partition_keys.len() as u64
                }
            }
        };
        let mut inner = 1 + encoded_len_varint(pk_index);
        if let Some(ehk) = &record.explicit_hash_key {
            let ehk_index = match self.explicit_hash_keys.get(ehk) {
                Some(&index) if !fresh => index,
                _ => {
                    len += table_entry(ehk);
                    if fresh {
                        0
                    } else {
                        self.explicit_hash_keys.len() as u64
                    }
                }
            };
            inner += 1 + encoded_len_varint(ehk_index);
        }
        inner += 1 + encoded_len_varint(record.data.len() as u64) + record.data.len();
        len + 1 + encoded_len_varint(inner as u64) + inner
    }

    fn push(&mut self, record: ProducerRecord) {
        self.body_len += self.added_len(&record, false);
        let pk_index = intern(
            &mut self.partition_keys,
            &mut self.message.partition_key_table,
            record.partition_key,
        );
        let ehk_index = record.explicit_hash_key.map(|ehk| {
            intern(
                &mut self.explicit_hash_keys,
                &mut self.message.explicit_hash_key_table,
                ehk,
            )
        });
        self.message.records.push(proto::Record {
            partition_key_index: Some(pk_index),
            explicit_hash_key_index: ehk_index,
            data: Some(record.data),
            tags: Vec::new(),
        });
    }
}

fn intern(index: &mut HashMap<String, u64>, table: &mut Vec<String>, key: String) -> u64 {
    if let Some(&i) = index.get(&key) {
        return i;
    }
    let i = table.len() as u64;
    table.push(key.clone());
    index.insert(key, i);
    i
}

fn encode(message: proto::AggregatedRecord, hash_key: HashKey) -> Aggregate {
    let body_len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(MAGIC.len() + body_len + DIGEST_LEN);
    buf.put_slice(&MAGIC);
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = message.encode(&mut buf);
    let digest: [u8; DIGEST_LEN] = Md5::digest(buf.get(MAGIC.len()..).unwrap_or_default()).into();
    buf.put_slice(&digest);
    let first = message.records.first();
    let table_entry = |table: &[String], index: Option<u64>| {
        index
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| table.get(i))
            .cloned()
    };
    Aggregate {
        partition_key: table_entry(
            &message.partition_key_table,
            first.and_then(|r| r.partition_key_index),
        )
        .unwrap_or_default(),
        explicit_hash_key: table_entry(
            &message.explicit_hash_key_table,
            first.and_then(|r| r.explicit_hash_key_index),
        ),
        hash_key,
        data: buf.freeze(),
        user_records: message.records.len(),
    }
}
