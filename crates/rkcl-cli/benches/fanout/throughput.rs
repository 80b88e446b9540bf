//! Throughput: every contender reads the same 400,000 user records, alone,
//! in interleaved runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rkcl::{Kinesis, aws::StreamRef, record::ProducerRecord};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::{Aggregated, Plain};
use rkcl_local::testkit::{create_stream, put};

use crate::contenders::{Contender, KCL_RS_VERSION, Setup, kcl_rs_python};
use crate::process::{Endpoints, Run, measure};
use crate::subscribe::{shard_ids, stream_arn};
use crate::{RECORD_SIZE, RECORDS, RUNS, SHARDS, median};

/// Half the records plain, half in KPL aggregates; the Kinesis records
/// written.
async fn fill(kinesis: &Kinesis, stream: &StreamRef) -> u64 {
    let half = RECORDS as usize / 2;
    let mut kinesis_records = 0;
    for (packing, first) in [(Plain, 0), (Aggregated, half)] {
        let records: Vec<ProducerRecord> = (first..first + half)
            .map(|i| ProducerRecord::new(format!("key-{i}"), vec![b'x'; RECORD_SIZE]))
            .collect();
        kinesis_records += put(kinesis, stream, records, packing).await.kinesis_records;
    }
    kinesis_records
}

/// One row of the throughput table: the medians of a contender's runs, or
/// why there are none.
fn row(contender: Contender, setup: &Setup, runs: Option<&Vec<Result<Run, String>>>) {
    let label = contender.label();
    let runs = match (contender.skipped(setup), runs) {
        (Some(why), _) => return println!("  {label:<38} {why}"),
        (None, None) => return println!("  {label:<38} no runs"),
        (None, Some(runs)) => runs,
    };
    if let Some(Err(why)) = runs.iter().find(|r| r.is_err()) {
        let failed = runs.iter().filter(|r| r.is_err()).count();
        return println!("  {label:<38} failed in {failed} of {RUNS} runs: {why}");
    }
    let runs: Vec<Run> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let of = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let gigabytes = (RECORDS as usize * RECORD_SIZE) as f64 / 1e9;
    let reading = of(|r| RECORDS as f64 / (r.last - r.first).as_secs_f64());
    let from_start = of(|r| RECORDS as f64 / r.last.as_secs_f64());
    let first = of(|r| r.first.as_secs_f64());
    let cpu_per_gb = of(|r| r.cpu_reading) / gigabytes;
    let cpu_total = of(|r| r.cpu_total);
    let peak = of(|r| r.peak_kib as f64) / 1024.0;
    println!(
        "  {label:<38} {reading:>9.0} {from_start:>11.0} {first:>8.1} s {cpu_per_gb:>9.1} \
         {cpu_total:>8.2} {peak:>9.1}"
    );
    let expected = contender.expected(setup);
    let counts: Vec<String> = runs
        .iter()
        .filter(|r| r.count != expected)
        .map(|r| r.count.to_string())
        .collect();
    if !counts.is_empty() {
        println!(
            "  {:<38} counted {} instead of {expected} (duplicates)",
            "",
            counts.join(", ")
        );
    }
}

/// Fills a stream on `local` and measures every contender on it.
pub(crate) async fn run(local: &Local, fan_out: bool) {
    let client = local.kinesis_client();
    let kinesis = Kinesis::new(client.clone());
    let stream = create_stream(&kinesis, "fanout", SHARDS).await;
    let filling = Instant::now();
    let kinesis_records = fill(&kinesis, &stream).await;
    println!(
        "put {RECORDS} user records ({kinesis_records} Kinesis records) in {:.1} s",
        filling.elapsed().as_secs_f64()
    );
    let installing = Instant::now();
    let python = tokio::task::spawn_blocking(kcl_rs_python).await.unwrap();
    match &python {
        Ok(python) => println!(
            "kcl-rs {KCL_RS_VERSION} ready in {:.1} s: {}",
            installing.elapsed().as_secs_f64(),
            python.display()
        ),
        Err(why) => println!("kcl-rs {KCL_RS_VERSION} could not be installed: {why}"),
    }
    let setup = Arc::new(Setup {
        endpoints: Endpoints::of(local),
        stream: stream.name().to_owned(),
        stream_arn: stream_arn(&client, stream.name()).await,
        shards: shard_ids(&client, stream.name()).await,
        kinesis_records,
        python,
        fan_out,
    });
    let mut results: BTreeMap<Contender, Vec<Result<Run, String>>> = BTreeMap::new();
    // Interleaved runs, as the local servers share the machine's cores with
    // the readers.
    for run in 0..RUNS {
        for contender in Contender::ALL {
            if contender.skipped(&setup).is_some() {
                continue;
            }
            let setup = setup.clone();
            let measured = tokio::task::spawn_blocking(move || {
                let (command, progress, stop) = contender.process(&setup, run);
                let name = format!("{}-{run}", contender.name());
                measure(&name, command, progress, stop)
            })
            .await
            .unwrap();
            let shown = match &measured {
                Ok(r) => format!(
                    "first record after {:.1} s, last after {:.1} s: {:.0} records/s reading",
                    r.first.as_secs_f64(),
                    r.last.as_secs_f64(),
                    RECORDS as f64 / (r.last - r.first).as_secs_f64()
                ),
                Err(why) => format!("failed: {why}"),
            };
            println!("  run {run}: {}: {shown}", contender.label());
            results.entry(contender).or_default().push(measured);
        }
    }
    println!();
    println!(
        "throughput, {SHARDS} shards, {RECORDS} user records of {RECORD_SIZE} bytes \
         ({kinesis_records} Kinesis records, half the user records aggregated), \
         one local Kinesis and DynamoDB, median of {RUNS} interleaved runs:"
    );
    println!(
        "  {:<38} {:>9} {:>11} {:>10} {:>9} {:>8} {:>9}",
        "", "records/s", "records/s", "first", "CPU s/GB", "CPU s", "peak RSS"
    );
    println!(
        "  {:<38} {:>9} {:>11} {:>10} {:>9} {:>8} {:>9}",
        "", "reading", "from start", "record", "reading", "total", "MiB"
    );
    for contender in Contender::ALL {
        row(contender, &setup, results.get(&contender));
    }
    println!("  rkcl consume writes a JSON line per record, which the bench counts;");
    println!("  kcl-rs first waits a random 1-30 s for another worker to fill its lease table;");
    println!("  kcl-rs polling keeps its defaults: up to 10,000 records a call, 1.5 s apart;");
    println!(
        "  the SDK loop counts Kinesis records, aggregates whole, and is shown per user record."
    );
}
