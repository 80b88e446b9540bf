//! `rkcl multilang` beside `rkcl consume` on the local Kinesis and DynamoDB.
//!
//! (1) Throughput: the same 100,000 user records of 100 bytes (KPL
//!     aggregates) on a 4-shard stream, read from `TRIM_HORIZON` by
//!     (a) `rkcl consume` (JSON lines to a pipe, counted) and (b) `rkcl
//!     multilang` running the amazon-kclpy 3.2.0 sample unchanged (it logs
//!     one line per record on its stderr, which the daemon logs; the
//!     records are counted there). Measured from the spawn: the time to the
//!     first record and records/s until the last one. The children run with
//!     `PYTHONUNBUFFERED=1`, so each stderr line reaches the daemon when the
//!     sample writes it.
//! (2) Memory: the daemon's own VmRSS (`/proc/PID/status`; the children are
//!     separate processes and not counted) once it holds every lease of an
//!     idle stream of 4 and of 100 shards, with the smallest child
//!     (`benches/multilang/responder.sh`, one `sh` per shard), beside `rkcl
//!     consume` holding the same leases.
//!
//! The kclpy sdist is downloaded once into the target directory, as in the
//! tests; without python3 or the network, (1b) is skipped with a message.
//! Run with `cargo bench -p rkcl-cli --bench multilang`. It prints its
//! figures.
#![allow(clippy::print_stdout)]

#[path = "common/proc.rs"]
mod proc;
use proc::{status_kb, with_local_env};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rkcl::{DynamoDbLeaseStore, Kinesis, leases::LeaseStore, record::ProducerRecord};
use rkcl_local::Local;
use rkcl_local::testkit::Packing::Aggregated;
use rkcl_local::testkit::{create_stream, eventually_every, put};

const RECORDS: usize = 100_000;
const RECORD_SIZE: usize = 100;
const SHARDS: u32 = 4;
const IDLE_SHARD_COUNTS: [u32; 2] = [4, 100];
const TIMEOUT: Duration = Duration::from_secs(180);

fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("multilang-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The extracted amazon-kclpy sdist, downloaded once.
fn kclpy_sdist() -> Option<PathBuf> {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("multilang-cache");
    let root = cache.join("amazon_kclpy-3.2.0");
    if root.join("samples/sample_kclpy_app.py").exists() {
        return Some(root);
    }
    std::fs::create_dir_all(&cache).unwrap();
    let quiet = |command: &mut Command| {
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = quiet(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--no-binary", ":all:"])
            // Without a network, give up in seconds rather than minutes.
            .args(["--timeout", "20", "--retries", "1"])
            .args(["amazon_kclpy==3.2.0", "-d"])
            .arg(cache.join("pip")),
    ) && quiet(
        Command::new("tar")
            .arg("xzf")
            .arg(cache.join("pip/amazon_kclpy-3.2.0.tar.gz"))
            .arg("-C")
            .arg(&cache),
    );
    (ok && root.join("samples/sample_kclpy_app.py").exists()).then_some(root)
}

fn consume(local: &Local, app: &str, stream: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rkcl"));
    command
        .args(["consume", "--app", app, "--stream", stream])
        .args(["--checkpoint-every", "10000", "--idle-interval-ms", "200"]);
    with_local_env(&mut command, local);
    command
}

fn multilang(local: &Local, dir: &Path, app: &str, stream: &str, executable: &str) -> Command {
    let properties = dir.join(format!("{app}.properties"));
    std::fs::write(
        &properties,
        format!(
            "executableName = {executable}\napplicationName = {app}\nstreamName = {stream}\n\
             initialPositionInStream = TRIM_HORIZON\nidleTimeBetweenReadsInMillis = 200\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_rkcl"));
    command
        .args(["--log-format", "json", "multilang", "-p"])
        .arg(&properties);
    with_local_env(&mut command, local);
    command
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counts occurrences of `pattern` in lines of `reader` (in what `text_of`
/// takes from each line, per the source it names), recording the time of
/// the first.
fn count_in_lines(
    reader: impl std::io::Read + Send + 'static,
    pattern: &'static str,
    text_of: fn(&str) -> Option<(String, String)>,
) -> (Arc<AtomicUsize>, Arc<std::sync::Mutex<Option<Instant>>>) {
    let count = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(std::sync::Mutex::new(None));
    let (count_out, first_out) = (count.clone(), first.clone());
    std::thread::spawn(move || {
        // A pattern split across two messages of one source is counted
        // once: each source's carry is shorter than the pattern. (The
        // kclpy sample writes its log without newlines, so the daemon logs
        // it in pieces, and the pieces of different shards interleave.)
        let mut carries: std::collections::HashMap<String, String> = Default::default();
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            let Some((source, text)) = text_of(&line) else {
                continue;
            };
            let carry = carries.entry(source).or_default();
            let joined = format!("{carry}{text}");
            let found = joined.matches(pattern).count();
            if found > 0 {
                first.lock().unwrap().get_or_insert_with(Instant::now);
                count.fetch_add(found, Ordering::SeqCst);
            }
            let keep = joined.len().saturating_sub(pattern.len() - 1);
            *carry = joined.get(keep..).unwrap_or_default().to_owned();
        }
    });
    (count_out, first_out)
}

async fn wait_for(count: &AtomicUsize, child: &mut Child, what: &str) -> Duration {
    let started = Instant::now();
    while count.load(Ordering::SeqCst) < RECORDS {
        assert!(child.try_wait().unwrap().is_none(), "{what} exited");
        assert!(
            started.elapsed() < TIMEOUT,
            "{what}: only {count:?} records"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn throughput(local: &Local, dir: &Path) {
    let kinesis = Kinesis::new(local.kinesis_client());
    let stream = create_stream(&kinesis, "bench-throughput", SHARDS).await;
    let records: Vec<ProducerRecord> = (0..RECORDS)
        .map(|i| ProducerRecord::new(format!("key-{i}"), vec![b'x'; RECORD_SIZE]))
        .collect();
    put(&kinesis, &stream, records, Aggregated).await;
    println!("throughput, {RECORDS} records of {RECORD_SIZE} bytes on {SHARDS} shards:");

    let started = Instant::now();
    let mut child = consume(local, "bench-consume", "bench-throughput")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (count, first) = count_in_lines(child.stdout.take().unwrap(), "\"data\"", |line| {
        Some((String::new(), line.to_owned()))
    });
    wait_for(&count, &mut child, "rkcl consume").await;
    report("rkcl consume", started, *first.lock().unwrap());
    terminate(&mut child);

    let Some(sdist) = kclpy_sdist() else {
        println!("  rkcl multilang + kclpy sample: SKIPPED (python3 or the sdist is missing)");
        return;
    };
    let executable = format!(
        "python3 {}",
        sdist.join("samples/sample_kclpy_app.py").display()
    );
    let started = Instant::now();
    let mut child = multilang(local, dir, "bench-kclpy", "bench-throughput", &executable)
        .env("PYTHONPATH", &sdist)
        // The sample logs each record on stderr; unbuffered, so the daemon
        // sees each line when it is written (the sample itself unchanged).
        .env("PYTHONUNBUFFERED", "1")
        .env("RKCL_LOG", "warn,rkcl::multilang::stderr=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (count, first) = count_in_lines(child.stderr.take().unwrap(), "Data Size: ", |line| {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        let shard = event["fields"]["shard_id"].as_str()?.to_owned();
        Some((shard, event["fields"]["message"].as_str()?.to_owned()))
    });
    wait_for(&count, &mut child, "rkcl multilang").await;
    report(
        "rkcl multilang + kclpy sample",
        started,
        *first.lock().unwrap(),
    );
    terminate(&mut child);
}

fn report(what: &str, started: Instant, first: Option<Instant>) {
    let elapsed = started.elapsed().as_secs_f64();
    let first = first.map_or(f64::NAN, |f| (f - started).as_secs_f64());
    println!(
        "  {what:<32} first record after {first:>5.2} s, all after {elapsed:>6.2} s: {:>8.0} records/s",
        RECORDS as f64 / elapsed
    );
}

/// VmRSS of a process once it holds every lease of `app` and idled 5 s.
async fn rss_holding(local: &Local, mut child: Child, app: &str, shards: u32) -> u64 {
    let store = DynamoDbLeaseStore::new(local.dynamodb_client(), app);
    eventually_every(
        "every lease held",
        TIMEOUT,
        Duration::from_millis(200),
        || {
            assert!(child.try_wait().unwrap().is_none(), "{app} exited");
            let store = &store;
            async move {
                store.list().await.is_ok_and(|leases| {
                    leases.len() == shards as usize && leases.iter().all(|l| l.owner.is_some())
                })
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = status_kb(child.id(), "VmRSS:").unwrap_or_default();
    tokio::task::spawn_blocking(move || terminate(&mut child))
        .await
        .unwrap();
    rss
}

async fn memory(local: &Local, dir: &Path) {
    let responder = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/multilang/responder.sh");
    let kinesis = Kinesis::new(local.kinesis_client());
    println!("memory, VmRSS of the process alone, every lease of an idle stream held for 5 s:");
    for shards in IDLE_SHARD_COUNTS {
        let name = format!("bench-idle-{shards}");
        create_stream(&kinesis, &name, shards).await;
        let executable = format!("sh {}", responder.display());
        let child = multilang(local, dir, &format!("{name}-ml"), &name, &executable)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let multilang_rss = rss_holding(local, child, &format!("{name}-ml"), shards).await;
        let child = consume(local, &format!("{name}-c"), &name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let consume_rss = rss_holding(local, child, &format!("{name}-c"), shards).await;
        println!(
            "  {shards:>3} shards: rkcl multilang {:>6.1} MiB (children not counted), rkcl consume {:>6.1} MiB",
            multilang_rss as f64 / 1024.0,
            consume_rss as f64 / 1024.0
        );
    }
}

#[tokio::main]
async fn main() {
    let dir = scratch();
    let local = Local::start().await.unwrap();
    throughput(&local, &dir).await;
    memory(&local, &dir).await;
    local.shutdown().await;
}
