//! rkcl as a library, counting: the bench binary run again as a child
//! process (`fanout rkcl-worker-child MODE KINESIS DYNAMODB APP STREAM
//! EXPECTED`) holding one `Scheduler` whose processor only counts, as the
//! kcl-rs script's does (no checkpoint but the one a finished shard needs,
//! the default `shard_ended`). It prints `first SECONDS` and `done COUNT
//! SECONDS` lines and exits when a line (or the end of input) arrives on
//! stdin.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rkcl::{
    Checkpointer, DynamoDbLeaseStore, Kinesis, ProcessRecordsInput, ProcessorError,
    RecordProcessor, Scheduler, SchedulerConfig, ShardInfo,
    retrieval::{FanOutConfig, PollingConfig, Retrieval},
};

/// The first argument that makes the bench binary this child.
pub(crate) const CHILD_ARG: &str = "rkcl-worker-child";

/// Counts user records over every shard of the worker.
struct Counting {
    count: Arc<AtomicU64>,
    started: Instant,
    expected: u64,
    done: Arc<tokio::sync::Notify>,
}

impl RecordProcessor for Counting {
    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        _checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        let n = input.records.len() as u64;
        let before = self.count.fetch_add(n, Ordering::SeqCst);
        if before == 0 && n > 0 {
            println!("first {:.3}", self.started.elapsed().as_secs_f64());
        }
        if before < self.expected && before + n >= self.expected {
            self.done.notify_one();
        }
        Ok(())
    }
}

/// Runs the child: see the module docs.
pub(crate) async fn child(args: &[String]) {
    let [mode, kinesis, dynamodb, app, stream, expected] = args else {
        panic!("usage: {CHILD_ARG} polling|fan-out KINESIS DYNAMODB APP STREAM EXPECTED");
    };
    let started = Instant::now();
    let expected: u64 = expected.parse().unwrap();
    let retrieval = match mode.as_str() {
        "fan-out" => Retrieval::FanOut(FanOutConfig::default()),
        _ => Retrieval::Polling(PollingConfig::default()),
    };
    let store = DynamoDbLeaseStore::new(rkcl_local::dynamodb_client(dynamodb), app.as_str());
    store.ensure_table(Duration::from_secs(30)).await.unwrap();
    let config = SchedulerConfig::builder(app.as_str(), stream.as_str())
        .retrieval(retrieval)
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let factory = {
        let (count, done) = (count.clone(), done.clone());
        move |_: &ShardInfo| Counting {
            count: count.clone(),
            started,
            expected,
            done: done.clone(),
        }
    };
    let scheduler = Scheduler::start(
        config,
        Kinesis::new(rkcl_local::kinesis_client(kinesis)),
        store,
        factory,
    )
    .await
    .unwrap();
    done.notified().await;
    let seconds = started.elapsed().as_secs_f64();
    println!("done {} {seconds:.3}", count.load(Ordering::SeqCst));
    tokio::task::spawn_blocking(|| std::io::stdin().read(&mut [0]))
        .await
        .unwrap()
        .unwrap();
    drop(scheduler);
    std::process::exit(0);
}
