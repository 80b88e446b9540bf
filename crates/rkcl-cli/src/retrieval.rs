//! How `consume` and `tail` read shards: `--retrieval`, `--consumer-name`
//! and `--idle-interval-ms`, turned into the library's `Retrieval`.

use std::time::Duration;

use rkcl::retrieval::{FanOutConfig, PollingConfig, Retrieval};

/// The ways of reading a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// GetRecords calls: 5 calls/s and 2 MiB/s per shard, shared with every
    /// other reader of the stream.
    Polling,
    /// SubscribeToShard through a registered stream consumer: 2 MiB/s per
    /// shard of its own, records pushed as they arrive.
    FanOut,
}

/// The reading flags of a command.
#[derive(Debug, clap::Args)]
pub(crate) struct RetrievalArgs {
    /// How shards are read: `polling` (GetRecords; shares the shard's read
    /// limits with every other reader) or `fan-out` (SubscribeToShard
    /// through a stream consumer, registered if missing; 2 MiB/s per shard
    /// of its own, lower latency, billed per consumer and shard hour).
    #[arg(long, value_enum, default_value_t = Mode::Polling)]
    retrieval: Mode,
    /// The stream consumer fan-out reads through. Default: the application
    /// name for `consume`, `rkcl-reader` for `tail`.
    #[arg(long, value_name = "NAME")]
    consumer_name: Option<String>,
    /// Polling: the pause between GetRecords calls on a caught-up shard, in
    /// milliseconds (at least 200).
    #[arg(long, default_value_t = 500)]
    idle_interval_ms: u64,
}

impl RetrievalArgs {
    /// The library's setting for these flags.
    pub(crate) fn retrieval(&self) -> anyhow::Result<Retrieval> {
        Ok(match self.retrieval {
            Mode::Polling => Retrieval::Polling(
                PollingConfig::builder()
                    .idle_interval(Duration::from_millis(self.idle_interval_ms))
                    .build()?,
            ),
            Mode::FanOut => Retrieval::FanOut(
                FanOutConfig::builder()
                    .consumer_name(self.consumer_name.clone())
                    .build()?,
            ),
        })
    }
}
