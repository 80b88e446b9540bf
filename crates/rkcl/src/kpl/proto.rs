//! The KPL's protobuf messages (proto2), declared with `prost` derive.
//!
//! Fields that the schema marks `required` are declared optional here so a
//! missing one can be told apart from a zero: a message without them is
//! corrupt, as protobuf-java and the Python runtime judge it.

use bytes::Bytes;

/// `AggregatedRecord` of the KPL schema.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    pub(crate) partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub(crate) explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    pub(crate) records: Vec<Record>,
}

/// `Record` of the KPL schema: one user record.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Record {
    #[prost(uint64, optional, tag = "1")]
    pub(crate) partition_key_index: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    pub(crate) explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub(crate) data: Option<Bytes>,
    #[prost(message, repeated, tag = "4")]
    pub(crate) tags: Vec<Tag>,
}

/// `Tag` of the KPL schema. The KCL ignores tags; they are parsed so that a
/// malformed one marks the aggregate as corrupt, as it does for the KCL.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Tag {
    #[prost(string, optional, tag = "1")]
    pub(crate) key: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub(crate) value: Option<String>,
}
