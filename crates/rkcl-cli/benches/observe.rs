//! What seeing a worker costs, on the local Kinesis and DynamoDB, with the
//! release `rkcl` binary.
//!
//! (1) Overhead of the Prometheus exporter: `rkcl consume` reads 200,000
//!     records of 100 bytes on 4 shards, without `--metrics` and with
//!     `--metrics prometheus` scraped every second, three runs of each,
//!     interleaved (each on a lease table of its own, from the start of the
//!     stream). Measured: records/s from start to the last record written,
//!     and the process's CPU seconds. Medians.
//! (2) The size of `/metrics` for a worker holding 1,000 leases of an idle
//!     1,000-shard stream, scraped once every lease is held and the shards
//!     have been read for 10 s; and the time a scrape takes.
//! (3) The size of `/metrics` when each of 1,000 shards has every per-shard
//!     series (records and bytes processed, behind latest, processing and
//!     checkpoint times), rendered from a registry filled in-process; and
//!     the time a render takes. `cargo bench -p rkcl-cli --bench observe --
//!     render` runs only this part.
//!
//! Run with `cargo bench -p rkcl-cli --bench observe`. It prints its
//! figures.
#![allow(clippy::print_stdout)]

#[path = "common/proc.rs"]
mod proc;
use proc::{cpu_seconds, with_local_env};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rkcl::{Kinesis, aws::StreamRef, leases::LeaseStore, record::ProducerRecord};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::Plain;
use rkcl_local::testkit::{create_stream, eventually_every, put};

const SHARDS: u32 = 4;
const RECORDS: usize = 200_000;
const RECORD_SIZE: usize = 100;
const RUNS: usize = 5;
const IDLE_SHARDS: u32 = 1_000;

/// A free port on 127.0.0.1.
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// `GET /metrics`: the body's size in bytes and lines.
fn scrape(addr: SocketAddr) -> Option<(usize, usize)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then_some((body.len(), body.lines().count()))
}

fn consume(local: &Local, app: &str, stream: &str, metrics: Option<SocketAddr>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rkcl"));
    with_local_env(&mut command, local);
    command
        .args(["consume", "--app", app, "--stream", stream])
        .args(["--worker-id", app])
        .env_remove("RKCL_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(addr) = metrics {
        command.args(["--metrics", &format!("prometheus:{addr}")]);
    }
    command.spawn().unwrap()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// How a run is observed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Observed {
    /// No `--metrics`.
    Not,
    /// `--metrics prometheus`, never scraped.
    Unscraped,
    /// `--metrics prometheus`, scraped every second.
    Scraped,
}

/// One run: records/s and CPU seconds until every record was written.
fn run(local: &Local, app: &str, observed: Observed) -> (f64, f64) {
    let addr = (observed != Observed::Not).then(free_addr);
    let started = Instant::now();
    let mut child = consume(local, app, "overhead", addr);
    let pid = child.id();
    let scraper = addr.filter(|_| observed == Observed::Scraped).map(|addr| {
        std::thread::spawn(move || {
            let mut scrapes = 0;
            while scrape(addr).is_some() || scrapes == 0 {
                scrapes += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            scrapes
        })
    });
    let stdout = child.stdout.take().unwrap();
    let mut lines = 0;
    for line in BufReader::new(stdout).lines() {
        if line.is_err() {
            break;
        }
        lines += 1;
        if lines == RECORDS {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(f64::NAN);
    assert_eq!(lines, RECORDS, "{app} wrote {lines} records");
    stop(child);
    if let Some(scraper) = scraper {
        scraper.join().unwrap();
    }
    (RECORDS as f64 / elapsed, cpu)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn overhead(local: &Local) {
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream: StreamRef = create_stream(&kinesis, "overhead", SHARDS).await;
    let records: Vec<ProducerRecord> = (0..RECORDS)
        .map(|i| ProducerRecord::new(format!("key-{i}"), vec![b'x'; RECORD_SIZE]))
        .collect();
    put(&kinesis, &stream, records, Plain).await;
    let (mut plain, mut unscraped, mut scraped) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        plain.push(run(local, &format!("plain-{i}"), Observed::Not));
        unscraped.push(run(local, &format!("unscraped-{i}"), Observed::Unscraped));
        scraped.push(run(local, &format!("scraped-{i}"), Observed::Scraped));
    }
    let rate = |runs: &[(f64, f64)]| median(runs.iter().map(|r| r.0).collect());
    let cpu = |runs: &[(f64, f64)]| median(runs.iter().map(|r| r.1).collect());
    println!(
        "Prometheus exporter overhead, `rkcl consume` of {RECORDS} records of {RECORD_SIZE} B \
         on {SHARDS} shards, median of {RUNS} interleaved runs:"
    );
    println!(
        "  without --metrics: {:.0} records/s, {:.2} CPU-s",
        rate(&plain),
        cpu(&plain)
    );
    println!(
        "  with --metrics prometheus, not scraped: {:.0} records/s, {:.2} CPU-s \
         ({:+.1}% records/s, {:+.1}% CPU)",
        rate(&unscraped),
        cpu(&unscraped),
        (rate(&unscraped) / rate(&plain) - 1.0) * 100.0,
        (cpu(&unscraped) / cpu(&plain) - 1.0) * 100.0,
    );
    println!(
        "  with --metrics prometheus, scraped every second: {:.0} records/s, {:.2} CPU-s \
         ({:+.1}% records/s, {:+.1}% CPU)",
        rate(&scraped),
        cpu(&scraped),
        (rate(&scraped) / rate(&plain) - 1.0) * 100.0,
        (cpu(&scraped) / cpu(&plain) - 1.0) * 100.0,
    );
}

async fn size() {
    let local = Local::start().await.unwrap();
    let kinesis = Kinesis::new(local.kinesis_client());
    create_stream(&kinesis, "idle", IDLE_SHARDS).await;
    let addr = free_addr();
    let child = consume(&local, "idle-app", "idle", Some(addr));
    let store = rkcl::DynamoDbLeaseStore::new(local.dynamodb_client(), "idle-app");
    let held = eventually_every(
        "rkcl consume to hold every lease",
        Duration::from_secs(900),
        Duration::from_millis(500),
        || {
            let store = &store;
            async move {
                store.list().await.is_ok_and(|leases| {
                    leases.len() == IDLE_SHARDS as usize
                        && leases
                            .iter()
                            .all(|l| l.owner.as_deref() == Some("idle-app"))
                })
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let started = Instant::now();
    let (bytes, lines) = scrape(addr).expect("a scrape");
    let took = started.elapsed();
    println!(
        "/metrics of a worker holding {IDLE_SHARDS} leases of an idle stream (all held after \
         {:.0} s): {:.0} KB, {lines} lines, scraped in {:.0} ms",
        held.as_secs_f64(),
        bytes as f64 / 1000.0,
        took.as_secs_f64() * 1000.0
    );
    stop(child);
    local.shutdown().await;
}

fn render() {
    let registry = rkcl::observe::MetricsRegistry::with_labels([(
        "worker".to_owned(),
        "worker-0123456789abcdef".to_owned(),
    )]);
    metrics::with_local_recorder(&registry, || {
        rkcl::metrics::describe_all();
        for i in 0..IDLE_SHARDS {
            let shard = format!("shardId-{i:012}");
            metrics::counter!("rkcl_records_processed", "shard" => shard.clone()).increment(1);
            metrics::counter!("rkcl_bytes_processed", "shard" => shard.clone()).increment(100);
            metrics::gauge!("rkcl_millis_behind_latest", "shard" => shard.clone()).set(0.0);
            metrics::histogram!("rkcl_process_seconds", "shard" => shard.clone()).record(0.001);
            metrics::histogram!("rkcl_checkpoint_seconds", "shard" => shard).record(0.01);
        }
    });
    let started = Instant::now();
    let text = rkcl::observe::prometheus::render(&registry);
    let took = started.elapsed();
    println!(
        "/metrics with every per-shard series of {IDLE_SHARDS} shards: {:.0} KB, {} lines, \
         rendered in {:.0} ms",
        text.len() as f64 / 1000.0,
        text.lines().count(),
        took.as_secs_f64() * 1000.0
    );
}

#[tokio::main]
async fn main() {
    render();
    if std::env::args().any(|a| a == "render") {
        return;
    }
    let local = Local::start().await.unwrap();
    overhead(&local).await;
    local.shutdown().await;
    size().await;
}
