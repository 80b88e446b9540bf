//! `rkcl demo`: rkcl end to end on the embedded Kinesis, with nothing to set
//! up. It produces records (half of them KPL-aggregated), reads every shard
//! back with the stream reader (children after parents, KPL de-aggregation
//! by each shard's hash-key range), and reports what arrived.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use rkcl::{
    Kinesis, PollingConfig, Producer, ProducerConfig, ProducerRecord, StartingPosition,
    StreamEvent, StreamReader, StreamRef,
};

use crate::output::write_json_line;

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How many user records to produce.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// How many shards the demo stream has.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Print the report as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// How many distinct partition keys the demo writes.
const KEYS: usize = 1_000;

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    produced: usize,
    consumed: usize,
    duplicates: usize,
    lost: usize,
    out_of_order: usize,
    kinesis_records: u64,
    produce_seconds: f64,
    consume_seconds: f64,
    records_per_second: f64,
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let local = rkcl_local::Local::start().await?;
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = StreamRef::parse("rkcl-demo");
    kinesis.create_stream(stream.name(), args.shards).await?;
    kinesis
        .wait_until_active(&stream, Duration::from_secs(30))
        .await?;
    progress(
        &args,
        &format!("stream {stream} with {} shards is active", args.shards),
    );

    let mut report = Report {
        produced: args.records,
        ..Report::default()
    };
    let started = Instant::now();
    let half = args.records / 2;
    for (aggregate, range) in [(false, 0..half), (true, half..args.records)] {
        let config = ProducerConfig {
            aggregate,
            ..ProducerConfig::default()
        };
        let mut producer = Producer::new(kinesis.clone(), stream.clone(), config)?;
        let records: Vec<ProducerRecord> = range
            .map(|i| {
                ProducerRecord::new(
                    format!("key-{}", i % KEYS),
                    format!("{}:{}", i % KEYS, i / KEYS),
                )
            })
            .collect();
        for chunk in records.chunks(10_000) {
            let summary = producer.put(chunk.to_vec()).await?;
            report.kinesis_records += summary.kinesis_records;
        }
    }
    report.produce_seconds = started.elapsed().as_secs_f64();
    progress(
        &args,
        &format!(
            "produced {} user records in {} Kinesis records in {:.1} s",
            args.records, report.kinesis_records, report.produce_seconds
        ),
    );

    let started = Instant::now();
    let mut seen = vec![0u32; args.records.div_ceil(KEYS) * KEYS];
    let mut next_per_key: HashMap<usize, usize> = HashMap::new();
    let mut reader = StreamReader::start(
        kinesis.clone(),
        stream.clone(),
        StartingPosition::TrimHorizon,
        PollingConfig::default(),
    )
    .await?;
    while let Some(event) = reader.next().await {
        let batch = match event? {
            StreamEvent::Records(batch) => batch,
            StreamEvent::ShardEnded(_) => continue,
            StreamEvent::CaughtUp => break,
        };
        for user in batch.records {
            let (key, n) =
                parse_demo_record(&user.data).context("a record the demo did not write")?;
            let index = n * KEYS + key;
            let Some(count) = seen.get_mut(index) else {
                anyhow::bail!("a record the demo did not write: key {key}, number {n}");
            };
            *count += 1;
            report.consumed += 1;
            let expected = next_per_key.entry(key).or_default();
            if n < *expected {
                report.out_of_order += usize::from(*count == 1);
            } else {
                *expected = n + 1;
            }
        }
    }
    report.consume_seconds = started.elapsed().as_secs_f64();
    report.records_per_second = report.consumed as f64 / report.consume_seconds.max(1e-9);
    let produced = seen.iter().take(args.records);
    for &count in produced {
        match count {
            0 => report.lost += 1,
            1 => {}
            n => report.duplicates += n as usize - 1,
        }
    }
    report.consumed -= report.duplicates;
    local.shutdown().await;

    let mut out = std::io::stdout().lock();
    if args.json {
        write_json_line(&mut out, &report)?;
    } else {
        progress(
            &args,
            &format!(
                "read back {} user records in {:.1} s ({:.0} records/s)",
                report.consumed, report.consume_seconds, report.records_per_second
            ),
        );
        crate::output::write_line(
            &mut out,
            &format!(
                "produced {}, consumed {} (unique), duplicates {}, lost {}, out of order {}",
                report.produced,
                report.consumed,
                report.duplicates,
                report.lost,
                report.out_of_order
            ),
        )?;
    }
    Ok(if report.lost == 0 && report.out_of_order == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn parse_demo_record(data: &[u8]) -> Option<(usize, usize)> {
    let text = std::str::from_utf8(data).ok()?;
    let (key, n) = text.split_once(':')?;
    Some((key.parse().ok()?, n.parse().ok()?))
}

fn progress(args: &DemoArgs, text: &str) {
    if !args.json {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("rkcl demo: {text}");
        }
    }
}
