//! The pushing exporters against a local HTTP endpoint that records what it
//! is sent: CloudWatch's PutMetricData (decoded from CBOR here, by a
//! decoder of the test's own) with the Java KCL's namespace, names,
//! dimensions and levels, and OTLP/HTTP JSON.
#![cfg(all(feature = "cloudwatch", feature = "otlp"))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use rkcl::aws::CloudWatch;
use rkcl::observe::cloudwatch::{CloudWatchConfig, CloudWatchExporter, MetricsLevel};
use rkcl::observe::otlp::{OtlpConfig, OtlpExporter};
use rkcl::observe::{MetricsRegistry, Telemetry};
use serde_json::{Value, json};

/// One request the endpoint got.
#[derive(Clone, Debug)]
struct Recorded {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// Starts an endpoint on 127.0.0.1 answering every request as CloudWatch's
/// RPCv2-CBOR protocol or an OTLP collector would; returns its URL and what
/// it got.
async fn endpoint() -> (String, Arc<Mutex<Vec<Recorded>>>) {
    let recorded: Arc<Mutex<Vec<Recorded>>> = Arc::default();
    let sink = recorded.clone();
    let handler = move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push(Recorded {
                path: uri.path().to_owned(),
                headers,
                body,
            });
            if uri.path().starts_with("/service/") {
                (
                    StatusCode::OK,
                    [
                        ("smithy-protocol", "rpc-v2-cbor"),
                        ("content-type", "application/cbor"),
                    ],
                    vec![0xa0_u8],
                )
                    .into_response()
            } else {
                (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    b"{}".to_vec(),
                )
                    .into_response()
            }
        }
    };
    let router = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, recorded)
}

/// A CBOR data item as JSON (maps with text keys, arrays, text, numbers,
/// booleans; tags are looked through).
fn cbor(bytes: &[u8], at: &mut usize) -> Value {
    let initial = bytes[*at];
    *at += 1;
    let (major, info) = (initial >> 5, initial & 0x1f);
    let argument = |info: u8, at: &mut usize| -> Option<u64> {
        let n = match info {
            0..=23 => return Some(u64::from(info)),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            31 => return None,
            _ => panic!("reserved additional information {info}"),
        };
        let value = bytes[*at..*at + n]
            .iter()
            .fold(0_u64, |v, b| (v << 8) | u64::from(*b));
        *at += n;
        Some(value)
    };
    match major {
        0 => json!(argument(info, at).unwrap()),
        1 => json!(-1 - argument(info, at).unwrap() as i64),
        2 | 3 => {
            let n = argument(info, at).expect("definite strings only") as usize;
            let text = String::from_utf8_lossy(&bytes[*at..*at + n]).into_owned();
            *at += n;
            json!(text)
        }
        4 => {
            let mut items = Vec::new();
            match argument(info, at) {
                Some(n) => (0..n).for_each(|_| items.push(cbor(bytes, at))),
                None => {
                    while bytes[*at] != 0xff {
                        items.push(cbor(bytes, at));
                    }
                    *at += 1;
                }
            }
            Value::Array(items)
        }
        5 => {
            let mut map = serde_json::Map::new();
            let mut entry = |at: &mut usize| {
                let key = cbor(bytes, at).as_str().unwrap().to_owned();
                let value = cbor(bytes, at);
                map.insert(key, value);
            };
            match argument(info, at) {
                Some(n) => (0..n).for_each(|_| entry(at)),
                None => {
                    while bytes[*at] != 0xff {
                        entry(at);
                    }
                    *at += 1;
                }
            }
            Value::Object(map)
        }
        6 => {
            argument(info, at);
            cbor(bytes, at)
        }
        _ => match info {
            20 => json!(false),
            21 => json!(true),
            22 | 23 => Value::Null,
            25 => {
                let half = u16::from_be_bytes([bytes[*at], bytes[*at + 1]]);
                *at += 2;
                json!(half_to_f64(half))
            }
            26 => {
                let v = f32::from_be_bytes(bytes[*at..*at + 4].try_into().unwrap());
                *at += 4;
                json!(f64::from(v))
            }
            27 => {
                let v = f64::from_be_bytes(bytes[*at..*at + 8].try_into().unwrap());
                *at += 8;
                json!(v)
            }
            _ => panic!("simple value {info}"),
        },
    }
}

fn half_to_f64(half: u16) -> f64 {
    let exponent = (half >> 10) & 0x1f;
    let mantissa = f64::from(half & 0x3ff);
    let value = match exponent {
        0 => mantissa * 2f64.powi(-24),
        31 => f64::INFINITY,
        e => (1.0 + mantissa / 1024.0) * 2f64.powi(i32::from(e) - 15),
    };
    if half & 0x8000 != 0 { -value } else { value }
}

fn record(registry: &MetricsRegistry) {
    metrics::with_local_recorder(registry, || {
        rkcl::metrics::describe_all();
        metrics::counter!("rkcl_records_processed", "shard" => "shardId-000000000003").increment(5);
        metrics::gauge!("rkcl_leases_held", "worker" => "w-7").set(2.0);
        for seconds in [0.25, 0.75] {
            metrics::histogram!("rkcl_process_seconds", "shard" => "shardId-000000000003")
                .record(seconds);
        }
        metrics::histogram!("rkcl_checkpoint_seconds", "shard" => "shardId-000000000003")
            .record(0.02);
    });
}

/// Starts `builder`'s exporters over `registry`, records the test's
/// metrics and shuts down, which publishes what is buffered.
async fn record_and_publish(builder: rkcl::observe::TelemetryBuilder, registry: &MetricsRegistry) {
    let telemetry = builder.start(registry.clone()).await.unwrap();
    record(registry);
    telemetry.shutdown().await;
}

async fn cloudwatch_client(url: &str) -> CloudWatch {
    let config = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
        .region(aws_sdk_cloudwatch::config::Region::new("eu-west-1"))
        .credentials_provider(aws_credential_types::Credentials::for_tests())
        .endpoint_url(url)
        .build();
    CloudWatch::new(aws_sdk_cloudwatch::Client::from_conf(config))
}

/// The data of every PutMetricData the endpoint got, with its namespace.
fn put_metric_data(recorded: &[Recorded]) -> Vec<(String, Value)> {
    recorded
        .iter()
        .filter(|r| r.path.ends_with("/operation/PutMetricData"))
        .flat_map(|r| {
            assert_eq!(r.headers["smithy-protocol"], "rpc-v2-cbor");
            let body = cbor(&r.body, &mut 0);
            let namespace = body["Namespace"].as_str().unwrap().to_owned();
            body["MetricData"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| (namespace.clone(), d.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn dimensions(datum: &Value) -> Vec<(String, String)> {
    datum["Dimensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["Name"].as_str().unwrap().to_owned(),
                d["Value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn cloudwatch_gets_the_kcl_names_dimensions_and_statistics() {
    let (url, recorded) = endpoint().await;
    let registry = MetricsRegistry::new();
    let exporter = CloudWatchExporter::new(
        cloudwatch_client(&url).await,
        CloudWatchConfig::new("orders-app").buffer_time(Duration::from_millis(200)),
    );
    record_and_publish(Telemetry::builder().cloudwatch(exporter), &registry).await;
    let recorded = recorded.lock().unwrap().clone();
    let data = put_metric_data(&recorded);
    assert!(!data.is_empty(), "{recorded:?}");
    assert!(data.iter().all(|(namespace, _)| namespace == "orders-app"));
    let find = |name: &str| {
        data.iter()
            .map(|(_, d)| d)
            .find(|d| d["MetricName"] == name)
            .unwrap_or_else(|| panic!("no {name} in {data:?}"))
    };
    let records = find("RecordsProcessed");
    assert_eq!(
        dimensions(records),
        [
            ("Operation".into(), "ProcessTask".into()),
            ("ShardId".into(), "shardId-000000000003".into())
        ]
    );
    assert_eq!(records["Unit"], "Count");
    assert_eq!(records["Value"], 5.0);
    let leases = find("CurrentLeases");
    assert_eq!(
        dimensions(leases),
        [
            ("Operation".into(), "RenewAllLeases".into()),
            ("WorkerIdentifier".into(), "w-7".into())
        ]
    );
    let time = find("RecordProcessor.processRecords.Time");
    assert_eq!(time["Unit"], "Milliseconds");
    let statistics = &time["StatisticValues"];
    assert_eq!(statistics["SampleCount"], 2.0);
    assert_eq!(statistics["Sum"], 1000.0);
    assert_eq!(statistics["Minimum"], 250.0);
    assert_eq!(statistics["Maximum"], 750.0);
    assert!(
        data.iter()
            .any(|(_, d)| d["MetricName"] == "UpdateLease.Time")
    );
}

#[tokio::test]
async fn cloudwatch_at_summary_level_leaves_out_the_detailed_metrics_and_at_none_sends_nothing() {
    let (url, recorded) = endpoint().await;
    let registry = MetricsRegistry::new();
    let summary = CloudWatchExporter::new(
        cloudwatch_client(&url).await,
        CloudWatchConfig::new("orders-app")
            .level(MetricsLevel::Summary)
            .buffer_time(Duration::from_millis(200)),
    );
    record_and_publish(Telemetry::builder().cloudwatch(summary), &registry).await;
    let data = put_metric_data(&recorded.lock().unwrap());
    let names: Vec<&str> = data
        .iter()
        .map(|(_, d)| d["MetricName"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"RecordsProcessed"), "{names:?}");
    assert!(!names.contains(&"UpdateLease.Time"), "{names:?}");

    recorded.lock().unwrap().clear();
    let none = CloudWatchExporter::new(
        cloudwatch_client(&url).await,
        CloudWatchConfig::new("orders-app").level(MetricsLevel::None),
    );
    record_and_publish(Telemetry::builder().cloudwatch(none), &registry).await;
    assert!(recorded.lock().unwrap().is_empty());
}

#[tokio::test]
async fn otlp_gets_sums_gauges_and_histograms_as_json() {
    let (url, recorded) = endpoint().await;
    let registry = MetricsRegistry::with_labels([("worker".into(), "w-7".into())]);
    let exporter = OtlpExporter::new(
        OtlpConfig::new(&url)
            .service_name("orders-app")
            .interval(Duration::from_millis(200)),
    )
    .unwrap();
    record_and_publish(Telemetry::builder().otlp(exporter), &registry).await;
    let recorded = recorded.lock().unwrap().clone();
    let last = recorded.last().expect("a push");
    assert_eq!(last.path, "/v1/metrics");
    assert_eq!(last.headers["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&last.body).unwrap();
    let resource = &body["resourceMetrics"][0];
    assert_eq!(
        resource["resource"]["attributes"][0],
        json!({"key": "service.name", "value": {"stringValue": "orders-app"}})
    );
    let metrics = resource["scopeMetrics"][0]["metrics"].as_array().unwrap();
    let find = |name: &str| metrics.iter().find(|m| m["name"] == name).unwrap();
    let records = &find("rkcl_records_processed")["sum"];
    assert_eq!(records["isMonotonic"], true);
    assert_eq!(records["dataPoints"][0]["asInt"], "5");
    let held = &find("rkcl_leases_held")["gauge"]["dataPoints"][0];
    assert_eq!(held["asDouble"], 2.0);
    let time = &find("rkcl_process_seconds");
    assert_eq!(time["unit"], "s");
    assert_eq!(time["histogram"]["dataPoints"][0]["count"], "2");
}
