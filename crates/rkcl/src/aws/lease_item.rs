//! Leases as DynamoDB items, both ways, in the Java KCL's attribute names
//! and types: a wire contract, kept in one place.
//!
//! Pure conversion, no calls: the store in `dynamodb.rs` sends what this
//! module builds and reads what DynamoDB answers through it.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::error::{Error, Result};
use crate::leases::Lease;
use crate::model::{ExtendedSequenceNumber, HashKeyRange, LeaseKey, ShardId};

/// The Java KCL's attribute names: a wire contract.
pub(super) mod attr {
    /// The hash key of the table; the store names it in every request.
    pub(in crate::aws) const LEASE_KEY: &str = "leaseKey";
    pub(super) const LEASE_OWNER: &str = "leaseOwner";
    pub(super) const LEASE_COUNTER: &str = "leaseCounter";
    pub(super) const CHECKPOINT: &str = "checkpoint";
    pub(super) const CHECKPOINT_SUB_SEQUENCE_NUMBER: &str = "checkpointSubSequenceNumber";
    pub(super) const OWNER_SWITCHES_SINCE_CHECKPOINT: &str = "ownerSwitchesSinceCheckpoint";
    pub(super) const PARENT_SHARD_ID: &str = "parentShardId";
    pub(super) const CHILD_SHARD_IDS: &str = "childShardIds";
    pub(super) const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
    pub(super) const PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER: &str =
        "pendingCheckpointSubSequenceNumber";
    pub(super) const STARTING_HASH_KEY: &str = "startingHashKey";
    pub(super) const ENDING_HASH_KEY: &str = "endingHashKey";
    pub(super) const CHECKPOINT_OWNER: &str = "checkpointOwner";
    pub(super) const ENTITY_TYPE: &str = "entityType";
    /// Multi-stream leases only: the stream identifier (the attribute's
    /// name is the Java KCL's, from before identifiers had three parts).
    pub(super) const STREAM_NAME: &str = "streamName";
    /// Multi-stream leases only: the bare shard id.
    pub(super) const SHARD_ID: &str = "shardId";
}

/// The `entityType` of lease items in a KCL 3.5 single-table layout.
const LEASE_ENTITY: &str = "LEASE";

/// A number attribute.
pub(super) fn number(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// How the KCL stores a checkpoint: a sentinel name or the sequence number.
pub(super) fn checkpoint_text(checkpoint: &ExtendedSequenceNumber) -> String {
    match checkpoint.sequence_number() {
        Some(seq) => seq.to_string(),
        None => checkpoint.to_string(),
    }
}

/// A lease as a DynamoDB item, in the KCL's attribute names and types.
/// Empty sets and absent values are left out (DynamoDB has no empty sets).
pub(super) fn lease_to_item(lease: &Lease) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::new();
    let mut put = |name: &str, value: AttributeValue| {
        item.insert(name.to_owned(), value);
    };
    put(
        attr::LEASE_KEY,
        AttributeValue::S(lease.key.as_str().to_owned()),
    );
    if let Some(owner) = &lease.owner {
        put(attr::LEASE_OWNER, AttributeValue::S(owner.clone()));
    }
    put(attr::LEASE_COUNTER, number(lease.counter));
    put(
        attr::CHECKPOINT,
        AttributeValue::S(checkpoint_text(&lease.checkpoint)),
    );
    put(
        attr::CHECKPOINT_SUB_SEQUENCE_NUMBER,
        number(lease.checkpoint.sub_sequence_number()),
    );
    put(
        attr::OWNER_SWITCHES_SINCE_CHECKPOINT,
        number(lease.owner_switches_since_checkpoint),
    );
    if let Some(stream) = lease.key.stream_identifier() {
        put(attr::STREAM_NAME, AttributeValue::S(stream.to_owned()));
        put(
            attr::SHARD_ID,
            AttributeValue::S(lease.key.shard_id().as_str().to_owned()),
        );
    }
    if !lease.parent_shard_ids.is_empty() {
        put(attr::PARENT_SHARD_ID, string_set(&lease.parent_shard_ids));
    }
    if !lease.child_shard_ids.is_empty() {
        put(attr::CHILD_SHARD_IDS, string_set(&lease.child_shard_ids));
    }
    if let Some(pending) = &lease.pending_checkpoint {
        put(
            attr::PENDING_CHECKPOINT,
            AttributeValue::S(checkpoint_text(pending)),
        );
        put(
            attr::PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER,
            number(pending.sub_sequence_number()),
        );
    }
    if let Some(range) = &lease.hash_key_range {
        put(
            attr::STARTING_HASH_KEY,
            AttributeValue::S(range.start().to_string()),
        );
        put(
            attr::ENDING_HASH_KEY,
            AttributeValue::S(range.end().to_string()),
        );
    }
    if let Some(owner) = &lease.checkpoint_owner {
        put(attr::CHECKPOINT_OWNER, AttributeValue::S(owner.clone()));
    }
    item
}

/// A string-set attribute of shard ids.
fn string_set(ids: &[ShardId]) -> AttributeValue {
    AttributeValue::Ss(ids.iter().map(|id| id.as_str().to_owned()).collect())
}

/// Reads a lease item; `None` for items that are not leases (a KCL 3.5
/// `entityType` other than `LEASE`).
///
/// # Errors
///
/// [`Error::InvalidInput`] naming the item when an attribute has the wrong
/// type or cannot be read.
pub(super) fn lease_from_item(item: &HashMap<String, AttributeValue>) -> Result<Option<Lease>> {
    if let Some(entity) = item.get(attr::ENTITY_TYPE)
        && entity.as_s().map(String::as_str) != Ok(LEASE_ENTITY)
    {
        return Ok(None);
    }
    let key = string(item, attr::LEASE_KEY, "?")?
        .ok_or_else(|| Error::InvalidInput("a lease item has no leaseKey".into()))?;
    let bad = |what: &str| Error::InvalidInput(format!("lease {key}: {what}"));
    let counter =
        u64_attr(item, attr::LEASE_COUNTER, &key)?.ok_or_else(|| bad("no leaseCounter"))?;
    let sub = u64_attr(item, attr::CHECKPOINT_SUB_SEQUENCE_NUMBER, &key)?.unwrap_or(0);
    let checkpoint = match string(item, attr::CHECKPOINT, &key)? {
        Some(text) => ExtendedSequenceNumber::parse(&text, sub).map_err(|e| bad(&e.to_string()))?,
        None => return Err(bad("no checkpoint")),
    };
    let pending_checkpoint = match string(item, attr::PENDING_CHECKPOINT, &key)? {
        Some(text) => {
            let sub =
                u64_attr(item, attr::PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER, &key)?.unwrap_or(0);
            Some(ExtendedSequenceNumber::parse(&text, sub).map_err(|e| bad(&e.to_string()))?)
        }
        None => None,
    };
    let hash_key_range = match (
        string(item, attr::STARTING_HASH_KEY, &key)?,
        string(item, attr::ENDING_HASH_KEY, &key)?,
    ) {
        (Some(start), Some(end)) => Some(
            HashKeyRange::new(
                start.parse().map_err(|_| bad("bad startingHashKey"))?,
                end.parse().map_err(|_| bad("bad endingHashKey"))?,
            )
            .map_err(|_| bad("inverted hash-key range"))?,
        ),
        _ => None,
    };
    Ok(Some(Lease {
        owner: string(item, attr::LEASE_OWNER, &key)?,
        counter,
        checkpoint,
        pending_checkpoint,
        owner_switches_since_checkpoint: u64_attr(
            item,
            attr::OWNER_SWITCHES_SINCE_CHECKPOINT,
            &key,
        )?
        .unwrap_or(0),
        parent_shard_ids: shard_ids(item, attr::PARENT_SHARD_ID, &key)?,
        child_shard_ids: shard_ids(item, attr::CHILD_SHARD_IDS, &key)?,
        hash_key_range,
        checkpoint_owner: string(item, attr::CHECKPOINT_OWNER, &key)?,
        key: multi_stream_attributes_agree(item, LeaseKey::parse(key.as_str())?)?,
    }))
}

/// The key, once the `streamName` and `shardId` attributes of a
/// multi-stream item (when present) are found to say what it says.
fn multi_stream_attributes_agree(
    item: &HashMap<String, AttributeValue>,
    key: LeaseKey,
) -> Result<LeaseKey> {
    let stream = string(item, attr::STREAM_NAME, key.as_str())?;
    let shard = string(item, attr::SHARD_ID, key.as_str())?;
    if stream.is_some_and(|s| Some(s.as_str()) != key.stream_identifier())
        || shard.is_some_and(|s| s != key.shard_id().as_str())
    {
        return Err(Error::InvalidInput(format!(
            "lease {key}: its streamName or shardId attribute does not match its leaseKey"
        )));
    }
    Ok(key)
}

/// The string attribute `name` of the lease `key`, if present.
fn string(item: &HashMap<String, AttributeValue>, name: &str, key: &str) -> Result<Option<String>> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(text)) => Ok(Some(text.clone())),
        Some(_) => Err(Error::InvalidInput(format!(
            "lease {key}: {name} is not a string"
        ))),
    }
}

/// The whole-number attribute `name` of the lease `key`, if present.
fn u64_attr(item: &HashMap<String, AttributeValue>, name: &str, key: &str) -> Result<Option<u64>> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(text)) => text
            .parse::<u64>()
            .map(Some)
            .map_err(|_| Error::InvalidInput(format!("lease {key}: {name} is not a whole number"))),
        Some(_) => Err(Error::InvalidInput(format!(
            "lease {key}: {name} is not a number"
        ))),
    }
}

/// The string-set attribute `name` of the lease `key` as sorted shard ids
/// (none when absent).
fn shard_ids(
    item: &HashMap<String, AttributeValue>,
    name: &str,
    key: &str,
) -> Result<Vec<ShardId>> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(Vec::new()),
        Some(AttributeValue::Ss(ids)) => {
            let mut ids: Vec<ShardId> = ids.iter().map(|id| ShardId::from(id.as_str())).collect();
            ids.sort();
            Ok(ids)
        }
        Some(_) => Err(Error::InvalidInput(format!(
            "lease {key}: {name} is not a string set"
        ))),
    }
}
