//! CloudWatch's PutMetricData, for the metrics publisher
//! ([`observe::cloudwatch`](crate::observe::cloudwatch)).

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, StatisticSet};
use futures_util::FutureExt;

use super::error::from_sdk;
use crate::error::{Result, Service};

/// The most data PutMetricData takes in one call.
const MAX_DATA_PER_CALL: usize = 1000;

/// The unit of a [`Datum`], as CloudWatch names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatumUnit {
    /// `Count`.
    Count,
    /// `Milliseconds`.
    Milliseconds,
    /// `Bytes`.
    Bytes,
    /// `None`.
    None,
}

/// A [`Datum`]'s value: one value, or the statistics of many.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DatumValue {
    /// One value.
    Value(f64),
    /// The count, sum, least and greatest of the values in an interval.
    Statistics {
        /// How many values.
        count: f64,
        /// Their sum.
        sum: f64,
        /// The least.
        min: f64,
        /// The greatest.
        max: f64,
    },
}

/// One metric datum: name, dimensions, unit and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Datum {
    /// The metric's name (`RecordsProcessed`).
    pub name: String,
    /// `(name, value)` pairs (`Operation`, `ShardId`, `WorkerIdentifier`).
    pub dimensions: Vec<(String, String)>,
    /// Its unit.
    pub unit: DatumUnit,
    /// Its value.
    pub value: DatumValue,
}

/// A CloudWatch client for publishing metrics.
#[derive(Clone, Debug)]
pub struct CloudWatch {
    client: aws_sdk_cloudwatch::Client,
}

impl CloudWatch {
    /// Wraps an SDK client (built from an `SdkConfig`, so credentials,
    /// region, endpoint and retries are the caller's).
    pub fn new(client: aws_sdk_cloudwatch::Client) -> Self {
        Self { client }
    }

    /// Publishes `data` under `namespace`, at most 1,000 data
    /// per call.
    ///
    /// # Errors
    ///
    /// The first call's error, as [`Error`](crate::Error); the data of later calls are
    /// not sent then.
    pub async fn put_metric_data(&self, namespace: &str, data: &[Datum]) -> Result<()> {
        for chunk in data.chunks(MAX_DATA_PER_CALL) {
            let data: Vec<MetricDatum> = chunk.iter().map(to_sdk).collect();
            self.client
                .put_metric_data()
                .namespace(namespace)
                .set_metric_data(Some(data))
                .send()
                .boxed()
                .await
                .map_err(|err| from_sdk(Service::CloudWatch, err))?;
        }
        Ok(())
    }
}

fn to_sdk(datum: &Datum) -> MetricDatum {
    let dimensions = datum
        .dimensions
        .iter()
        .map(|(name, value)| Dimension::builder().name(name).value(value).build())
        .collect();
    let unit = match datum.unit {
        DatumUnit::Count => StandardUnit::Count,
        DatumUnit::Milliseconds => StandardUnit::Milliseconds,
        DatumUnit::Bytes => StandardUnit::Bytes,
        DatumUnit::None => StandardUnit::None,
    };
    let builder = MetricDatum::builder()
        .metric_name(&datum.name)
        .set_dimensions(Some(dimensions))
        .unit(unit)
        .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from(
            std::time::SystemTime::now(),
        ));
    match datum.value {
        DatumValue::Value(value) => builder.value(value),
        DatumValue::Statistics {
            count,
            sum,
            min,
            max,
        } => builder.statistic_values(
            StatisticSet::builder()
                .sample_count(count)
                .sum(sum)
                .minimum(min)
                .maximum(max)
                .build(),
        ),
    }
    .build()
}
