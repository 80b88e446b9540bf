//! The lease table in DynamoDB: [`DynamoDbLeaseStore`], the production
//! [`LeaseStore`], and the requests it counts. Leases become items and back
//! in `lease_item.rs`, in the Java KCL's attribute names and types.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus,
};

use futures_util::FutureExt;

use super::error::from_sdk;
use super::lease_item::{attr, checkpoint_text, lease_from_item, lease_to_item, number};
use crate::error::{Error, Result, Service};
use crate::leases::{Lease, LeaseStore};
use crate::model::{ExtendedSequenceNumber, LeaseKey};

/// How many requests of each kind a [`DynamoDbLeaseStore`] has sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseTableRequests {
    /// GetItem calls.
    pub get_item: u64,
    /// PutItem calls (lease creation).
    pub put_item: u64,
    /// UpdateItem calls (renew, take, release, evict, checkpoint).
    pub update_item: u64,
    /// DeleteItem calls.
    pub delete_item: u64,
    /// Scan calls (one per page).
    pub scan: u64,
    /// DescribeTable and CreateTable calls.
    pub table: u64,
}

impl LeaseTableRequests {
    /// All requests together.
    pub fn total(&self) -> u64 {
        self.get_item + self.put_item + self.update_item + self.delete_item + self.scan + self.table
    }
}

/// The request counters a store and its clones share.
#[derive(Debug, Default)]
struct Counters {
    get_item: AtomicU64,
    put_item: AtomicU64,
    update_item: AtomicU64,
    delete_item: AtomicU64,
    scan: AtomicU64,
    table: AtomicU64,
}

/// Counts one request.
fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The production [`LeaseStore`]: a DynamoDB table that the Java KCL reads
/// and writes too (hash key `leaseKey`, the KCL's attribute names and
/// types). Items whose `entityType` is not `LEASE` (KCL 3.5 worker metrics,
/// leader and migration items) are skipped and never written.
///
/// Single calls are retried by the SDK's standard retry strategy (throttling
/// and 5xx, capped exponential backoff with jitter); a permission or
/// validation error is returned at once.
#[derive(Clone, Debug)]
pub struct DynamoDbLeaseStore {
    client: Client,
    table: String,
    counters: Arc<Counters>,
}

impl DynamoDbLeaseStore {
    /// A store for the lease table `table` (by the KCL's convention, the
    /// application name).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            counters: Arc::default(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// How many requests of each kind this store (and its clones) sent.
    pub fn requests(&self) -> LeaseTableRequests {
        let c = &self.counters;
        LeaseTableRequests {
            get_item: c.get_item.load(Ordering::Relaxed),
            put_item: c.put_item.load(Ordering::Relaxed),
            update_item: c.update_item.load(Ordering::Relaxed),
            delete_item: c.delete_item.load(Ordering::Relaxed),
            scan: c.scan.load(Ordering::Relaxed),
            table: c.table.load(Ordering::Relaxed),
        }
    }

    /// Creates the table if it is missing (on-demand billing, hash key
    /// `leaseKey`) and waits until it is active.
    ///
    /// # Errors
    ///
    /// [`Error::AccessDenied`] without the permissions, [`Error::InvalidRequest`]
    /// for an invalid name or when `timeout` passes before the table is active.
    pub async fn ensure_table(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut created = false;
        loop {
            count(&self.counters.table);
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .boxed()
                .await;
            match described {
                Ok(out) => {
                    let status = out.table().and_then(|t| t.table_status());
                    if status == Some(&TableStatus::Active) {
                        return Ok(());
                    }
                }
                Err(err) if has_code(&err, NOT_FOUND) && !created => {
                    self.create_table().await?;
                    created = true;
                    continue;
                }
                Err(err) if has_code(&err, NOT_FOUND) => {}
                Err(err) => return Err(from_sdk(Service::DynamoDb, err)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::InvalidRequest {
                    service: Service::DynamoDb,
                    message: format!("lease table {} is not active after {timeout:?}", self.table),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn create_table(&self) -> Result<()> {
        count(&self.counters.table);
        let attribute = AttributeDefinition::builder()
            .attribute_name(attr::LEASE_KEY)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let key = KeySchemaElement::builder()
            .attribute_name(attr::LEASE_KEY)
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let result = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attribute)
            .key_schema(key)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .boxed()
            .await;
        match result {
            Ok(_) => {
                tracing::info!(table = %self.table, "created the lease table");
                Ok(())
            }
            // Another worker created it first.
            Err(err) if has_code(&err, "ResourceInUseException") => Ok(()),
            Err(err) => Err(from_sdk(Service::DynamoDb, err)),
        }
    }

    /// One conditional UpdateItem; `None` when the condition failed.
    async fn update(
        &self,
        key: &LeaseKey,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Option<Lease>> {
        count(&self.counters.update_item);
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::LEASE_KEY, AttributeValue::S(key.as_str().to_owned()))
            .update_expression(update)
            .condition_expression(condition)
            .return_values(ReturnValue::AllNew);
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        match request.send().boxed().await {
            Ok(out) => out
                .attributes()
                .map(lease_from_item)
                .transpose()
                .map(Option::flatten),
            Err(err) if has_code(&err, CONDITION_FAILED) => Ok(None),
            Err(err) => Err(from_sdk(Service::DynamoDb, err)),
        }
    }
}

/// A lost conditional write: an expected outcome, not an error.
const CONDITION_FAILED: &str = "ConditionalCheckFailedException";
/// A missing table.
const NOT_FOUND: &str = "ResourceNotFoundException";

/// Whether DynamoDB answered with this error code.
fn has_code<E, R>(err: &SdkError<E, R>, code: &str) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    err.as_service_error()
        .is_some_and(|e| e.code() == Some(code))
}

/// The condition that the stored lease is the one the caller saw.
const SAME_COUNTER: &str = "leaseCounter = :counter";
/// The same, and still held by the same worker: the `checkpointOwner`
/// during a handoff, otherwise the owner.
const SAME_COUNTER_AND_HOLDER: &str = "leaseCounter = :counter AND \
     (checkpointOwner = :holder OR \
      (attribute_not_exists(checkpointOwner) AND leaseOwner = :holder))";

/// The values of the conditions on the copy the caller saw; `None` when
/// the holder must match and the copy has none (it cannot be held, so the
/// write would lose anyway).
fn seen_values(lease: &Lease, with_holder: bool) -> Option<Vec<(&'static str, AttributeValue)>> {
    let mut values = vec![
        (":counter", number(lease.counter)),
        (":next", number(lease.counter + 1)),
    ];
    if with_holder {
        values.push((":holder", AttributeValue::S(lease.holder()?.to_owned())));
    }
    Some(values)
}

impl LeaseStore for DynamoDbLeaseStore {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool> {
        count(&self.counters.put_item);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(lease_to_item(lease)))
            .condition_expression("attribute_not_exists(leaseKey)")
            .send()
            .boxed()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if has_code(&err, CONDITION_FAILED) => Ok(false),
            Err(err) => Err(from_sdk(Service::DynamoDb, err)),
        }
    }

    async fn list(&self) -> Result<Vec<Lease>> {
        let mut leases = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            count(&self.counters.scan);
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .boxed()
                .await
                .map_err(|e| from_sdk(Service::DynamoDb, e))?;
            for item in page.items() {
                if let Some(lease) = lease_from_item(item)? {
                    leases.push(lease);
                }
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(leases),
            }
        }
    }

    async fn get(&self, key: &LeaseKey) -> Result<Option<Lease>> {
        count(&self.counters.get_item);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::LEASE_KEY, AttributeValue::S(key.as_str().to_owned()))
            .consistent_read(true)
            .send()
            .boxed()
            .await
            .map_err(|e| from_sdk(Service::DynamoDb, e))?;
        out.item()
            .map(lease_from_item)
            .transpose()
            .map(Option::flatten)
    }

    async fn renew(&self, lease: &Lease) -> Result<Option<Lease>> {
        let Some(values) = seen_values(lease, true) else {
            return Ok(None);
        };
        let renewed = self
            .update(
                &lease.key,
                "SET leaseCounter = :next",
                SAME_COUNTER_AND_HOLDER,
                values,
            )
            .await?;
        if renewed.is_some() {
            return Ok(renewed);
        }
        // The counter moved: still ours if the holder is unchanged (a handoff
        // began or was withdrawn, or an earlier attempt landed and its
        // answer was lost); renew the stored copy.
        let Some(stored) = self.get(&lease.key).await? else {
            return Ok(None);
        };
        if stored.holder().is_none() || stored.holder() != lease.holder() {
            return Ok(None);
        }
        let Some(values) = seen_values(&stored, true) else {
            return Ok(None);
        };
        self.update(
            &lease.key,
            "SET leaseCounter = :next",
            SAME_COUNTER_AND_HOLDER,
            values,
        )
        .await
    }

    async fn take(&self, lease: &Lease, new_owner: &str) -> Result<Option<Lease>> {
        let mut values = seen_values(lease, false).unwrap_or_default();
        values.push((":new_owner", AttributeValue::S(new_owner.to_owned())));
        let update = if lease.owner.as_deref() == Some(new_owner) {
            "SET leaseOwner = :new_owner, leaseCounter = :next REMOVE checkpointOwner".to_owned()
        } else {
            values.push((":one", number(1)));
            "SET leaseOwner = :new_owner, leaseCounter = :next \
             ADD ownerSwitchesSinceCheckpoint :one REMOVE checkpointOwner"
                .to_owned()
        };
        self.update(&lease.key, &update, SAME_COUNTER, values).await
    }

    async fn hand_off(&self, lease: &Lease, new_owner: &str) -> Result<Option<Lease>> {
        let Some(owner) = lease.owner.clone() else {
            return Ok(None);
        };
        if lease.is_handing_off() || owner == new_owner {
            return Ok(None);
        }
        let mut values = seen_values(lease, false).unwrap_or_default();
        values.push((":owner", AttributeValue::S(owner)));
        values.push((":new_owner", AttributeValue::S(new_owner.to_owned())));
        values.push((":one", number(1)));
        self.update(
            &lease.key,
            "SET leaseOwner = :new_owner, checkpointOwner = :owner, leaseCounter = :next \
             ADD ownerSwitchesSinceCheckpoint :one",
            "leaseCounter = :counter AND leaseOwner = :owner \
             AND attribute_not_exists(checkpointOwner)",
            values,
        )
        .await
    }

    async fn withdraw_handoff(&self, lease: &Lease) -> Result<Option<Lease>> {
        let (Some(owner), Some(holder)) = (lease.owner.clone(), lease.checkpoint_owner.clone())
        else {
            return Ok(None);
        };
        let mut values = seen_values(lease, false).unwrap_or_default();
        values.push((":owner", AttributeValue::S(owner)));
        values.push((":holder", AttributeValue::S(holder)));
        self.update(
            &lease.key,
            "SET leaseOwner = :holder, leaseCounter = :next REMOVE checkpointOwner",
            "leaseCounter = :counter AND leaseOwner = :owner AND checkpointOwner = :holder",
            values,
        )
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<Option<Lease>> {
        let Some(values) = seen_values(lease, true) else {
            return Ok(None);
        };
        // During a handoff the next owner is already named: letting go
        // clears the holder, not the owner.
        let update = if lease.is_handing_off() {
            "SET leaseCounter = :next REMOVE checkpointOwner"
        } else {
            "SET leaseCounter = :next REMOVE leaseOwner"
        };
        self.update(&lease.key, update, SAME_COUNTER_AND_HOLDER, values)
            .await
    }

    async fn evict(&self, lease: &Lease) -> Result<Option<Lease>> {
        let values = seen_values(lease, false).unwrap_or_default();
        self.update(
            &lease.key,
            "SET leaseCounter = :next REMOVE leaseOwner, checkpointOwner",
            SAME_COUNTER,
            values,
        )
        .await
    }

    async fn update_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &ExtendedSequenceNumber,
    ) -> Result<Option<Lease>> {
        let Some(mut values) = seen_values(lease, true) else {
            return Ok(None);
        };
        values.push((
            ":checkpoint",
            AttributeValue::S(checkpoint_text(checkpoint)),
        ));
        values.push((":sub", number(checkpoint.sub_sequence_number())));
        values.push((":zero", number(0)));
        self.update(
            &lease.key,
            "SET checkpoint = :checkpoint, checkpointSubSequenceNumber = :sub, \
             leaseCounter = :next, ownerSwitchesSinceCheckpoint = :zero \
             REMOVE pendingCheckpoint, pendingCheckpointSubSequenceNumber",
            SAME_COUNTER_AND_HOLDER,
            values,
        )
        .await
    }

    async fn delete(&self, lease: &Lease) -> Result<bool> {
        count(&self.counters.delete_item);
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(
                attr::LEASE_KEY,
                AttributeValue::S(lease.key.as_str().to_owned()),
            )
            .condition_expression(SAME_COUNTER)
            .expression_attribute_values(":counter", number(lease.counter))
            .send()
            .boxed()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if has_code(&err, CONDITION_FAILED) => Ok(false),
            Err(err) => Err(from_sdk(Service::DynamoDb, err)),
        }
    }
}
