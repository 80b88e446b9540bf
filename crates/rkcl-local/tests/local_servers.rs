//! The embedded servers answer the AWS SDK like AWS does, stop when told,
//! and keep their data in a directory when given one.

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::ShardIteratorType;
use rkcl_local::{Local, LocalError};

async fn create_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    client
        .create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("leaseKey")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("leaseKey")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
}

async fn wait_active(client: &aws_sdk_kinesis::Client, stream: &str) {
    for _ in 0..100 {
        let out = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .unwrap();
        if out
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
    panic!("stream {stream} never became active");
}

#[tokio::test]
async fn both_servers_answer_the_sdk_and_stop_on_shutdown() {
    let local = Local::start().await.unwrap();
    assert!(local.kinesis_endpoint().starts_with("http://127.0.0.1:"));
    assert!(local.dynamodb_endpoint().starts_with("http://127.0.0.1:"));

    let kinesis = local.kinesis_client();
    kinesis
        .create_stream()
        .stream_name("s")
        .shard_count(1)
        .send()
        .await
        .unwrap();
    wait_active(&kinesis, "s").await;
    let put = kinesis
        .put_record()
        .stream_name("s")
        .partition_key("k")
        .data(Blob::new("hello"))
        .send()
        .await
        .unwrap();
    let iterator = kinesis
        .get_shard_iterator()
        .stream_name("s")
        .shard_id(put.shard_id())
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    let records = kinesis
        .get_records()
        .shard_iterator(iterator.shard_iterator().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(records.records().len(), 1);
    assert_eq!(records.records()[0].data().as_ref(), b"hello");

    let dynamodb = local.dynamodb_client();
    create_table(&dynamodb, "leases").await;
    dynamodb
        .put_item()
        .table_name("leases")
        .item("leaseKey", AttributeValue::S("shardId-0".into()))
        .send()
        .await
        .unwrap();

    let kinesis_endpoint = local.kinesis_endpoint().to_owned();
    local.shutdown().await;
    let after = rkcl_local::kinesis_client(&kinesis_endpoint)
        .list_streams()
        .send()
        .await;
    assert!(
        after.is_err(),
        "the Kinesis server still answers after shutdown"
    );
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error_and_a_free_one_is_used() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = Local::builder()
        .kinesis_port(port)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LocalError::Bind {
                service: "Kinesis",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&port.to_string()));

    drop(taken);
    let local = Local::builder().dynamodb_port(port).start().await.unwrap();
    assert_eq!(
        local.dynamodb_endpoint(),
        format!("http://127.0.0.1:{port}")
    );
}

#[tokio::test]
async fn a_data_directory_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!(
        "rkcl-local-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    {
        let local = Local::builder().data_dir(&dir).start().await.unwrap();
        let dynamodb = local.dynamodb_client();
        create_table(&dynamodb, "leases").await;
        dynamodb
            .put_item()
            .table_name("leases")
            .item("leaseKey", AttributeValue::S("shardId-7".into()))
            .item("checkpoint", AttributeValue::S("42".into()))
            .send()
            .await
            .unwrap();
        local.shutdown().await;
    }
    let local = Local::builder().data_dir(&dir).start().await.unwrap();
    let item = local
        .dynamodb_client()
        .get_item()
        .table_name("leases")
        .key("leaseKey", AttributeValue::S("shardId-7".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        item.item().and_then(|i| i.get("checkpoint")),
        Some(&AttributeValue::S("42".into()))
    );
    local.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_put_records_call_of_five_mebibytes_is_accepted() {
    let local = Local::start().await.unwrap();
    let kinesis = local.kinesis_client();
    kinesis
        .create_stream()
        .stream_name("big")
        .shard_count(1)
        .send()
        .await
        .unwrap();
    wait_active(&kinesis, "big").await;
    // 5 entries of 1000 KiB: 5 MiB of data, 6.7 MiB on the wire.
    let entries = (0..5)
        .map(|i| {
            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                .partition_key(format!("k{i}"))
                .data(Blob::new(vec![b'z'; 1000 * 1024]))
                .build()
                .unwrap()
        })
        .collect();
    let out = kinesis
        .put_records()
        .stream_name("big")
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_record_count(), Some(0));
}
