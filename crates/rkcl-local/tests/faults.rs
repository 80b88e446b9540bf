//! The fault layer injects each kind of fault at its rate, as the AWS SDK
//! sees it from AWS; the same seed replays the same faults; without faults
//! it adds no error; SubscribeToShard still streams through it; and fault
//! specs parse, or say which part is wrong. Requests are counted by
//! service and operation, faulted or not, also with no faults asked for.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::get_item::GetItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use rkcl_local::{FaultKind, FaultPlan, FaultSpecErrorKind, Local, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Calls per rate test: at 20 %, a rate outside 14–26 % is more than four
/// standard deviations away.
const CALLS: u64 = 1_000;
const SHARD: &str = "shardId-000000000000";

async fn start(spec: &str, seed: u64) -> Local {
    Local::builder()
        .faults(FaultPlan::parse(spec).unwrap())
        .fault_seed(seed)
        .start()
        .await
        .unwrap()
}

/// A Kinesis client of `local` that does not retry: every fault reaches
/// the test.
fn kinesis(local: &Local) -> aws_sdk_kinesis::Client {
    let config = local
        .kinesis_client()
        .config()
        .to_builder()
        .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

/// A DynamoDB client of `local` that does not retry.
fn dynamodb(local: &Local) -> aws_sdk_dynamodb::Client {
    let config = local
        .dynamodb_client()
        .config()
        .to_builder()
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

fn assert_rate(hits: u64, calls: u64, low_percent: u64, high_percent: u64) {
    assert!(
        hits * 100 >= low_percent * calls && hits * 100 <= high_percent * calls,
        "{hits} of {calls} calls, expected {low_percent}-{high_percent} %"
    );
}

/// Creates a one-shard stream and waits until it is active.
async fn create_stream(client: &aws_sdk_kinesis::Client, name: &str) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(1)
        .send()
        .await
        .unwrap();
    for _ in 0..200 {
        let summary = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .unwrap();
        if summary
            .stream_description_summary()
            .unwrap()
            .stream_status()
            .as_str()
            == "ACTIVE"
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("stream {name} never became active");
}

async fn trim_horizon(client: &aws_sdk_kinesis::Client, stream: &str) -> String {
    client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(SHARD)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator()
        .unwrap()
        .to_owned()
}

async fn create_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    client
        .create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("k")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("k")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
}

async fn get_item(
    client: &aws_sdk_dynamodb::Client,
) -> Result<(), SdkError<GetItemError, aws_sdk_dynamodb::config::http::HttpResponse>> {
    client
        .get_item()
        .table_name("table")
        .key("k", AttributeValue::S("a".into()))
        .send()
        .await
        .map(|_| ())
}

fn status<E, R>(err: &SdkError<E, R>) -> Option<u16>
where
    R: HasStatus,
{
    err.raw_response().map(HasStatus::status)
}

trait HasStatus {
    fn status(&self) -> u16;
}

impl HasStatus for aws_sdk_dynamodb::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

#[tokio::test]
async fn get_records_is_throttled_at_its_rate() {
    let local = start("kinesis.GetRecords:throttle=20%", 7).await;
    let client = kinesis(&local);
    create_stream(&client, "s").await;
    let iterator = trim_horizon(&client, "s").await;
    let mut throttled = 0;
    for _ in 0..CALLS {
        if let Err(err) = client.get_records().shard_iterator(&iterator).send().await {
            assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
            let err = err.into_service_error();
            assert!(
                matches!(
                    err,
                    GetRecordsError::ProvisionedThroughputExceededException(_)
                ),
                "{err:?}"
            );
            throttled += 1;
        }
    }
    assert_rate(throttled, CALLS, 14, 26);
    let counts = local.fault_counts();
    assert_eq!(
        counts.get(Service::Kinesis, "GetRecords", FaultKind::Throttle),
        throttled
    );
    assert_eq!(
        counts.iter().count(),
        1,
        "only GetRecords is throttled: {counts}"
    );
}

#[tokio::test]
async fn dynamodb_item_calls_and_others_are_throttled_as_on_aws() {
    let local = start(
        "dynamodb.GetItem:throttle=20%,dynamodb.DescribeTable:throttle=100%",
        8,
    )
    .await;
    let client = dynamodb(&local);
    create_table(&client, "table").await;
    let mut throttled = 0;
    for _ in 0..CALLS {
        if let Err(err) = get_item(&client).await {
            assert_eq!(status(&err), Some(400));
            let err = err.into_service_error();
            assert!(
                matches!(err, GetItemError::ProvisionedThroughputExceededException(_)),
                "{err:?}"
            );
            throttled += 1;
        }
    }
    assert_rate(throttled, CALLS, 14, 26);
    let err = client
        .describe_table()
        .table_name("table")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ThrottlingException"), "{err:?}");
    let counts = local.fault_counts();
    assert_eq!(
        counts.get(Service::DynamoDb, "GetItem", FaultKind::Throttle),
        throttled
    );
    assert_eq!(
        counts.get(Service::DynamoDb, "DescribeTable", FaultKind::Throttle),
        1
    );
}

#[tokio::test]
async fn requests_are_counted_by_operation_with_or_without_faults() {
    let counting = Local::builder().count_requests().start().await.unwrap();
    assert_eq!(counting.fault_plan(), None);
    assert_eq!(counting.fault_seed(), None);
    let client = dynamodb(&counting);
    create_table(&client, "table").await;
    for _ in 0..5 {
        get_item(&client).await.unwrap();
    }
    kinesis(&counting).list_streams().send().await.unwrap();
    let counts = counting.request_counts();
    assert_eq!(counts.get(Service::DynamoDb, "CreateTable"), 1, "{counts}");
    assert_eq!(counts.get(Service::DynamoDb, "GetItem"), 5, "{counts}");
    assert_eq!(counts.get(Service::Kinesis, "ListStreams"), 1, "{counts}");
    assert_eq!(counts.get(Service::Kinesis, "GetItem"), 0, "{counts}");
    assert_eq!(counts.total(Service::DynamoDb), 6, "{counts}");
    assert!(counting.fault_counts().is_empty());

    // Faulted requests count too.
    let faulted = start("dynamodb.GetItem:throttle=100%", 10).await;
    let client = dynamodb(&faulted);
    create_table(&client, "table").await;
    for _ in 0..3 {
        get_item(&client).await.unwrap_err();
    }
    let counts = faulted.request_counts();
    assert_eq!(counts.get(Service::DynamoDb, "GetItem"), 3, "{counts}");
    assert!(
        counts.to_string().contains("dynamodb.GetItem 3"),
        "{counts}"
    );

    // Without the layer nothing is counted.
    let plain = Local::start().await.unwrap();
    plain.kinesis_client().list_streams().send().await.unwrap();
    assert!(plain.request_counts().is_empty());
}

#[tokio::test]
async fn iterators_expire_at_their_rate() {
    let local = start("*:expired=20%", 9).await;
    let client = kinesis(&local);
    create_stream(&client, "s").await;
    let iterator = trim_horizon(&client, "s").await;
    let mut expired = 0;
    for _ in 0..CALLS {
        if let Err(err) = client.get_records().shard_iterator(&iterator).send().await {
            let err = err.into_service_error();
            assert!(
                matches!(err, GetRecordsError::ExpiredIteratorException(_)),
                "{err:?}"
            );
            expired += 1;
        }
    }
    assert_rate(expired, CALLS, 14, 26);
    let counts = local.fault_counts();
    assert_eq!(counts.total(FaultKind::Expired), expired);
    assert_eq!(
        counts.get(Service::Kinesis, "GetRecords", FaultKind::Expired),
        expired,
        "`*` gives expired iterators to GetRecords only: {counts}"
    );
}

#[tokio::test]
async fn server_errors_come_at_their_rate_as_500_and_503() {
    let local = start(
        "kinesis.ListShards:error=20%,dynamodb.GetItem:error=20%",
        10,
    )
    .await;
    let kinesis = kinesis(&local);
    create_stream(&kinesis, "s").await;
    let mut statuses = Vec::new();
    for _ in 0..CALLS {
        if let Err(err) = kinesis.list_shards().stream_name("s").send().await {
            let status = err.raw_response().map(|r| r.status().as_u16());
            let expected = match status {
                Some(500) => "InternalFailure",
                Some(503) => "ServiceUnavailable",
                _ => panic!("not a 500 or 503: {err:?}"),
            };
            assert_eq!(err.code(), Some(expected));
            statuses.push(status);
        }
    }
    assert_rate(statuses.len() as u64, CALLS, 14, 26);
    assert!(statuses.contains(&Some(500)) && statuses.contains(&Some(503)));

    let dynamodb = dynamodb(&local);
    create_table(&dynamodb, "table").await;
    let mut errors = 0;
    for _ in 0..CALLS {
        if let Err(err) = get_item(&dynamodb).await {
            match status(&err) {
                Some(500) => assert!(matches!(
                    err.into_service_error(),
                    GetItemError::InternalServerError(_)
                ),),
                Some(503) => assert_eq!(err.code(), Some("ServiceUnavailable")),
                _ => panic!("not a 500 or 503: {err:?}"),
            }
            errors += 1;
        }
    }
    assert_rate(errors, CALLS, 14, 26);

    let counts = local.fault_counts();
    assert_eq!(
        counts.get(Service::Kinesis, "ListShards", FaultKind::Error),
        statuses.len() as u64
    );
    assert_eq!(
        counts.get(Service::DynamoDb, "GetItem", FaultKind::Error),
        errors
    );
}

#[tokio::test]
async fn resets_cut_answers_at_their_rate() {
    let local = start("dynamodb.GetItem:reset=20%", 11).await;
    let client = dynamodb(&local);
    create_table(&client, "table").await;
    client
        .put_item()
        .table_name("table")
        .item("k", AttributeValue::S("a".into()))
        .item("v", AttributeValue::S("x".repeat(200)))
        .send()
        .await
        .unwrap();
    let mut resets = 0;
    for _ in 0..CALLS {
        match get_item(&client).await {
            Ok(()) => {}
            // The head came; the body broke off.
            Err(SdkError::ResponseError(_)) => resets += 1,
            Err(err) => panic!("not a cut answer: {err:?}"),
        }
    }
    assert_rate(resets, CALLS, 14, 26);
    assert_eq!(
        local
            .fault_counts()
            .get(Service::DynamoDb, "GetItem", FaultKind::Reset),
        resets
    );
}

#[tokio::test]
async fn a_reset_sends_the_head_and_part_of_the_body_then_drops_the_connection() {
    let local = start("dynamodb.ListTables:reset=100%", 12).await;
    let addr = local.dynamodb_endpoint().trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(
            b"POST / HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/x-amz-json-1.0\r\n\
              X-Amz-Target: DynamoDB_20120810.ListTables\r\n\
              X-Amz-Date: 20240101T000000Z\r\n\
              Authorization: AWS4-HMAC-SHA256 Credential=rkcl-local/20240101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0\r\n\
              Content-Length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    let read_all = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read_all)
        .await
        .expect("the connection is dropped, not kept open");
    let text = String::from_utf8_lossy(&received);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a content length");
    assert!(
        !body.is_empty() && body.len() < length,
        "{} of {length} bytes",
        body.len()
    );
}

#[tokio::test]
async fn latency_is_added_within_its_range() {
    let local = start("kinesis.ListStreams:latency=150..200ms", 13).await;
    let client = kinesis(&local);
    for _ in 0..10 {
        let started = Instant::now();
        client.list_streams().send().await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
    let started = Instant::now();
    client.describe_limits().send().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "no latency for others"
    );
    let counts = local.fault_counts();
    assert_eq!(
        counts.get(Service::Kinesis, "ListStreams", FaultKind::Latency),
        10
    );
    assert_eq!(counts.total(FaultKind::Latency), 10);
}

/// What each of `calls` ListStreams calls met: success or an error code.
async fn outcomes(seed: u64, calls: usize) -> Vec<Option<String>> {
    let local = start("*:throttle=20%,*:error=20%", seed).await;
    let client = kinesis(&local);
    let mut outcomes = Vec::new();
    for _ in 0..calls {
        let result = client.list_streams().send().await;
        outcomes.push(result.err().map(|e| e.code().unwrap_or("?").to_owned()));
    }
    outcomes
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults() {
    let first = outcomes(21, 200).await;
    assert!(first.iter().any(Option::is_some));
    assert!(
        first
            .iter()
            .any(|o| o.as_deref() == Some("LimitExceededException"))
    );
    assert_eq!(outcomes(21, 200).await, first);
    assert_ne!(outcomes(22, 200).await, first);
}

#[tokio::test]
async fn without_faults_the_layer_adds_no_error() {
    let local = Local::builder()
        .faults(FaultPlan::new())
        .start()
        .await
        .unwrap();
    assert_eq!(local.fault_seed(), Some(rkcl_local::DEFAULT_FAULT_SEED));
    let kinesis = kinesis(&local);
    let dynamodb = dynamodb(&local);
    create_stream(&kinesis, "s").await;
    create_table(&dynamodb, "table").await;
    for i in 0..200 {
        kinesis
            .put_record()
            .stream_name("s")
            .partition_key("k")
            .data(Blob::new(format!("record {i}")))
            .send()
            .await
            .unwrap();
        dynamodb
            .put_item()
            .table_name("table")
            .item("k", AttributeValue::S(format!("{i}")))
            .send()
            .await
            .unwrap();
        get_item(&dynamodb).await.unwrap();
    }
    let iterator = trim_horizon(&kinesis, "s").await;
    let records = kinesis
        .get_records()
        .shard_iterator(iterator)
        .send()
        .await
        .unwrap();
    assert_eq!(records.records().len(), 200);
    assert!(local.fault_counts().is_empty());

    let plain = Local::start().await.unwrap();
    assert_eq!(plain.fault_seed(), None);
    assert!(plain.fault_plan().is_none());
    assert!(plain.fault_counts().is_empty());
}

#[tokio::test]
async fn faults_touch_only_their_targets() {
    let local = start("dynamodb.Scan:error=100%", 14).await;
    let kinesis = kinesis(&local);
    let dynamodb = dynamodb(&local);
    create_table(&dynamodb, "table").await;
    for _ in 0..50 {
        kinesis.list_streams().send().await.unwrap();
        dynamodb.list_tables().send().await.unwrap();
        let err = dynamodb
            .scan()
            .table_name("table")
            .send()
            .await
            .unwrap_err();
        assert!(matches!(status(&err), Some(500 | 503)), "{err:?}");
    }
    let counts = local.fault_counts();
    assert_eq!(counts.get(Service::DynamoDb, "Scan", FaultKind::Error), 50);
    assert_eq!(counts.iter().count(), 1, "{counts}");
}

/// A registered, active consumer of stream `s`, and its ARN.
async fn active_consumer(client: &aws_sdk_kinesis::Client) -> String {
    let stream_arn = client
        .describe_stream_summary()
        .stream_name("s")
        .send()
        .await
        .unwrap()
        .stream_description_summary()
        .unwrap()
        .stream_arn()
        .to_owned();
    let consumer_arn = client
        .register_stream_consumer()
        .stream_arn(&stream_arn)
        .consumer_name("c")
        .send()
        .await
        .unwrap()
        .consumer()
        .unwrap()
        .consumer_arn()
        .to_owned();
    for _ in 0..100 {
        let described = client
            .describe_stream_consumer()
            .consumer_arn(&consumer_arn)
            .send()
            .await
            .unwrap();
        if described.consumer_description().unwrap().consumer_status() == &ConsumerStatus::Active {
            return consumer_arn;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the consumer never became active");
}

fn from_trim_horizon() -> StartingPosition {
    StartingPosition::builder()
        .r#type(ShardIteratorType::TrimHorizon)
        .build()
        .unwrap()
}

#[tokio::test]
async fn subscribe_to_shard_streams_through_the_layer() {
    let local = start("kinesis.SubscribeToShard:latency=1..5ms", 15).await;
    let client = kinesis(&local);
    create_stream(&client, "s").await;
    client
        .put_record()
        .stream_name("s")
        .partition_key("k")
        .data(Blob::new("hello"))
        .send()
        .await
        .unwrap();
    let consumer = active_consumer(&client).await;
    // The session lasts minutes: an event before then came as a stream,
    // not as a body held back until it ended.
    let received = tokio::time::timeout(Duration::from_secs(10), async {
        let mut subscription = client
            .subscribe_to_shard()
            .consumer_arn(&consumer)
            .shard_id(SHARD)
            .starting_position(from_trim_horizon())
            .send()
            .await
            .unwrap();
        loop {
            match subscription.event_stream.recv().await.unwrap() {
                Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))
                    if !event.records().is_empty() =>
                {
                    return event.records().len();
                }
                Some(_) => {}
                None => panic!("the subscription ended"),
            }
        }
    })
    .await
    .expect("an event within 10 s");
    assert_eq!(received, 1);
    assert_eq!(
        local
            .fault_counts()
            .get(Service::Kinesis, "SubscribeToShard", FaultKind::Latency),
        1
    );
}

#[tokio::test]
async fn subscribe_to_shard_is_throttled_and_cut_like_other_calls() {
    let local = start(
        "kinesis.SubscribeToShard:throttle=50%,kinesis.SubscribeToShard:reset=50%",
        16,
    )
    .await;
    let client = kinesis(&local);
    create_stream(&client, "s").await;
    let consumer = active_consumer(&client).await;
    let mut throttled = 0;
    let mut cut = 0;
    for _ in 0..20 {
        let subscribed = client
            .subscribe_to_shard()
            .consumer_arn(&consumer)
            .shard_id(SHARD)
            .starting_position(from_trim_horizon())
            .send()
            .await;
        match subscribed {
            Err(err) if err.code() == Some("ProvisionedThroughputExceededException") => {
                throttled += 1;
            }
            // Half of the first frame came, then the connection dropped.
            Err(_) => cut += 1,
            Ok(mut subscription) => {
                let next =
                    tokio::time::timeout(Duration::from_secs(5), subscription.event_stream.recv())
                        .await
                        .expect("the cut stream ends");
                assert!(next.is_err(), "{next:?}");
                cut += 1;
            }
        }
    }
    let counts = local.fault_counts();
    assert_eq!(
        counts.get(Service::Kinesis, "SubscribeToShard", FaultKind::Throttle),
        throttled
    );
    assert_eq!(
        counts.get(Service::Kinesis, "SubscribeToShard", FaultKind::Reset),
        cut
    );
    assert!(throttled > 0 && cut > 0);
}

#[test]
fn good_specs_parse_and_print_back() {
    for spec in [
        "kinesis.GetRecords:throttle=2%,dynamodb.UpdateItem:error=1%,*:latency=0..300ms,*:reset=0.2%",
        "kinesis.*:expired=5%",
        "*:latency=50ms",
        "dynamodb.*:throttle=100%,kinesis.PutRecords:throttle=0%",
    ] {
        let plan = FaultPlan::parse(spec).unwrap();
        assert_eq!(plan.to_string(), spec);
        assert_eq!(spec.parse::<FaultPlan>().unwrap(), plan);
    }
    assert_eq!(
        FaultPlan::parse(" *:error=1% , dynamodb.GetItem:reset=3.5% ")
            .unwrap()
            .to_string(),
        "*:error=1%,dynamodb.GetItem:reset=3.5%"
    );
    assert!(FaultPlan::parse("").unwrap().is_empty());
    assert!(FaultPlan::parse("  ").unwrap().is_empty());
}

#[test]
fn bad_specs_name_the_bad_part() {
    /// A spec, the part its error names, and a check of the error's kind.
    type Case = (&'static str, &'static str, fn(&FaultSpecErrorKind) -> bool);
    let cases: &[Case] = &[
        (
            "*:jitter=1%",
            "*:jitter=1%",
            |k| matches!(k, FaultSpecErrorKind::UnknownKind(kind) if kind == "jitter"),
        ),
        (
            "*:error=1%,kinesis.GetRecords:throttle=2",
            "kinesis.GetRecords:throttle=2",
            |k| matches!(k, FaultSpecErrorKind::BadPercent(_)),
        ),
        ("*:throttle=101%", "*:throttle=101%", |k| {
            matches!(k, FaultSpecErrorKind::BadPercent(_))
        }),
        ("*:throttle=-1%", "*:throttle=-1%", |k| {
            matches!(k, FaultSpecErrorKind::BadPercent(_))
        }),
        ("*:throttle=NaN%", "*:throttle=NaN%", |k| {
            matches!(k, FaultSpecErrorKind::BadPercent(_))
        }),
        ("*:latency=300..100ms", "*:latency=300..100ms", |k| {
            matches!(k, FaultSpecErrorKind::BadRange(_))
        }),
        ("*:latency=1..2s", "*:latency=1..2s", |k| {
            matches!(k, FaultSpecErrorKind::BadRange(_))
        }),
        ("*:latency=..5ms", "*:latency=..5ms", |k| {
            matches!(k, FaultSpecErrorKind::BadRange(_))
        }),
        (
            "sqs.SendMessage:error=1%",
            "sqs.SendMessage:error=1%",
            |k| matches!(k, FaultSpecErrorKind::UnknownService(s) if s == "sqs"),
        ),
        (
            "kinesis.GetRecord:error=1%",
            "kinesis.GetRecord:error=1%",
            |k| matches!(k, FaultSpecErrorKind::UnknownOperation { service: Service::Kinesis, operation } if operation == "GetRecord"),
        ),
        ("kinesis:error=1%", "kinesis:error=1%", |k| {
            matches!(k, FaultSpecErrorKind::BadTarget(_))
        }),
        ("kinesis.GetRecords", "kinesis.GetRecords", |k| {
            matches!(k, FaultSpecErrorKind::Malformed)
        }),
        ("*:throttle", "*:throttle", |k| {
            matches!(k, FaultSpecErrorKind::Malformed)
        }),
        ("*:error=1%,,*:reset=1%", "", |k| {
            matches!(k, FaultSpecErrorKind::EmptyPart)
        }),
        ("dynamodb.*:expired=1%", "dynamodb.*:expired=1%", |k| {
            matches!(k, FaultSpecErrorKind::NotApplicable)
        }),
        (
            "kinesis.PutRecord:expired=1%",
            "kinesis.PutRecord:expired=1%",
            |k| matches!(k, FaultSpecErrorKind::NotApplicable),
        ),
        ("*:error=1%,*:error=2%", "*:error=2%", |k| {
            matches!(k, FaultSpecErrorKind::Duplicate(FaultKind::Error))
        }),
    ];
    for (spec, part, is_expected) in cases {
        let err = FaultPlan::parse(spec).unwrap_err();
        assert_eq!(err.part(), *part, "{spec}");
        assert!(is_expected(err.kind()), "{spec}: {:?}", err.kind());
        assert!(err.to_string().contains(&format!("`{part}`")), "{err}");
    }
}
