//! Multi-stream mode: the set of streams a worker reads, re-read while it
//! runs, and what happens to the leases of streams that leave the set.
//!
//! A [`MultiStreamConfig`] turns the mode on
//! ([`SchedulerConfig::builder_for_streams`](crate::SchedulerConfig::builder_for_streams)).
//! Its [`StreamTracker`] says which streams to read (a fixed list,
//! [`StaticStreams`]; a file of identifiers, [`StreamsFile`]; or your own
//! source), and the scheduler asks it again every
//! [`refresh_interval`](MultiStreamConfig::refresh_interval). Every lease of
//! every stream lives in one table under keys
//! `account:streamName:creationEpoch:shardId`, the Java KCL's multi-stream
//! format, and one fair share is computed over all of them.
//!
//! Streams that leave the set are no longer read: their consumers finish
//! (checkpointing as on a shutdown) and release their leases, and no worker
//! takes them again. Their leases are then kept or deleted as
//! [`FormerStreams`] says — never while a worker holds one, and never for a
//! stream still listed.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use rkcl::tracker::{FormerStreams, MultiStreamConfig, StaticStreams, StreamConfig};
//! use rkcl::{
//!     Checkpointer, InitialPosition, ProcessRecordsInput, ProcessorError, RecordProcessor,
//!     Scheduler, SchedulerConfig, ShardInfo,
//! };
//!
//! # #[allow(dead_code)]
//! struct Print(String);
//!
//! impl RecordProcessor for Print {
//!     async fn process_records(
//!         &mut self,
//!         input: &ProcessRecordsInput,
//!         checkpointer: &Checkpointer,
//!     ) -> Result<(), ProcessorError> {
//!         tracing::info!(stream = %self.0, records = input.records.len(), "a batch");
//!         checkpointer.checkpoint().await?;
//!         Ok(())
//!     }
//! }
//!
//! # #[allow(dead_code)]
//! # async fn run(kinesis: rkcl::Kinesis, store: rkcl::DynamoDbLeaseStore) -> rkcl::Result<()> {
//! let streams = MultiStreamConfig::new(StaticStreams(vec![
//!     StreamConfig::new("orders"),
//!     StreamConfig::new("payments").initial_position(InitialPosition::Latest),
//! ]))
//! .former_streams(FormerStreams::DeleteUnlisted {
//!     wait: Duration::from_secs(3_600),
//! });
//! let config = SchedulerConfig::builder_for_streams("billing", streams).build()?;
//! let scheduler = Scheduler::start(config, kinesis, store, |shard: &ShardInfo| {
//!     Print(shard.stream.as_ref().map(|s| s.name().to_owned()).unwrap_or_default())
//! })
//! .await?;
//! scheduler.run_until_signal(Duration::from_secs(30)).await;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::aws::{Kinesis, StreamRef};
use crate::error::{Error, Result};
use crate::model::{InitialPosition, StreamIdentifier};

/// How a stream is named in a [`StreamConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StreamSelector {
    /// `account:streamName:creationEpoch`, used as given.
    Identifier(StreamIdentifier),
    /// The stream's ARN; its creation time is looked up with
    /// DescribeStreamSummary.
    Arn(String),
    /// The stream's name in the client's account and region; its account
    /// and creation time are looked up with DescribeStreamSummary.
    Name(String),
}

impl StreamSelector {
    /// Reads an identifier (three parts, the last a number), an ARN (text
    /// starting `arn:`) or a name.
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        if text.starts_with("arn:") {
            return Self::Arn(text.to_owned());
        }
        match StreamIdentifier::parse(text) {
            Ok(id) => Self::Identifier(id),
            Err(_) => Self::Name(text.to_owned()),
        }
    }
}

impl fmt::Display for StreamSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identifier(id) => id.fmt(f),
            Self::Arn(text) | Self::Name(text) => f.write_str(text),
        }
    }
}

/// One stream of a multi-stream application and its own settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamConfig {
    /// The stream.
    pub stream: StreamSelector,
    /// Where its shards without a checkpoint start. `None`: the scheduler's
    /// initial position for streams read from start-up, and
    /// [`MultiStreamConfig::new_stream_position`] (`LATEST` by default) for
    /// streams that appear later.
    pub initial_position: Option<InitialPosition>,
    /// With enhanced fan-out, the stream consumer to read through. `None`:
    /// the consumer named after the application, registered if missing.
    pub consumer_arn: Option<String>,
}

impl StreamConfig {
    /// A stream named by identifier, ARN or name (see
    /// [`StreamSelector::parse`]), with the default settings.
    pub fn new(stream: &str) -> Self {
        Self {
            stream: StreamSelector::parse(stream),
            initial_position: None,
            consumer_arn: None,
        }
    }

    /// The same stream starting at `position` when it has no checkpoint.
    pub fn initial_position(mut self, position: InitialPosition) -> Self {
        self.initial_position = Some(position);
        self
    }

    /// The same stream read through the stream consumer `arn` (fan-out).
    pub fn consumer_arn(mut self, arn: impl Into<String>) -> Self {
        self.consumer_arn = Some(arn.into());
        self
    }
}

/// Where the set of streams comes from; asked at start and then every
/// [`MultiStreamConfig::refresh_interval`].
pub trait StreamTracker: Send + Sync + fmt::Debug + 'static {
    /// The streams to read now. An error keeps the set as it was (logged);
    /// an empty list means no stream is read.
    fn streams(&self) -> BoxFuture<'_, Result<Vec<StreamConfig>>>;

    /// Streams whose leases to delete under
    /// [`FormerStreams::DeleteNamed`], once they have been named (and not
    /// listed by [`streams`](Self::streams)) for the wait period. Default:
    /// none.
    fn streams_to_delete(&self) -> BoxFuture<'_, Result<Vec<StreamIdentifier>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A fixed set of streams.
#[derive(Clone, Debug, Default)]
pub struct StaticStreams(pub Vec<StreamConfig>);

impl StreamTracker for StaticStreams {
    fn streams(&self) -> BoxFuture<'_, Result<Vec<StreamConfig>>> {
        let streams = self.0.clone();
        Box::pin(async move { Ok(streams) })
    }
}

/// Streams listed in a file, one per line (an identifier, an ARN or a
/// name); blank lines and lines starting with `#` are skipped. Read again
/// at every refresh, so streams are added and removed by editing it.
#[derive(Clone, Debug)]
pub struct StreamsFile {
    path: PathBuf,
}

impl StreamsFile {
    /// Streams listed in the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The streams a file's text lists.
    pub fn parse(text: &str) -> Vec<StreamConfig> {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(StreamConfig::new)
            .collect()
    }
}

impl StreamTracker for StreamsFile {
    fn streams(&self) -> BoxFuture<'_, Result<Vec<StreamConfig>>> {
        Box::pin(async move {
            let text = tokio::fs::read_to_string(&self.path).await.map_err(|err| {
                Error::Config(format!(
                    "could not read the streams file {}: {err}",
                    self.path.display()
                ))
            })?;
            Ok(Self::parse(&text))
        })
    }
}

/// What happens to the leases of streams that are no longer listed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormerStreams {
    /// Keep them: a stream listed again resumes at its checkpoints. The
    /// default (the Java KCL's `NO_STREAMS_LEASES_DELETION`).
    #[default]
    Keep,
    /// Delete the leases of every stream found in the table and not listed,
    /// once it has been unlisted for `wait`.
    DeleteUnlisted {
        /// How long a stream must stay unlisted.
        wait: Duration,
    },
    /// Delete the leases of the streams
    /// [`StreamTracker::streams_to_delete`] names, once named (and not
    /// listed) for `wait`.
    DeleteNamed {
        /// How long a stream must have been named.
        wait: Duration,
    },
}

/// Multi-stream mode's settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MultiStreamConfig {
    /// Where the streams come from.
    pub tracker: Arc<dyn StreamTracker>,
    /// How often the tracker is asked again. Default: 60 s (the Java KCL's).
    pub refresh_interval: Duration,
    /// What happens to leases of streams no longer listed. Default:
    /// [`FormerStreams::Keep`].
    pub former_streams: FormerStreams,
    /// Where a stream that appears after start-up starts when its
    /// [`StreamConfig`] does not say. Default: `LATEST` (as in the Java KCL).
    pub new_stream_position: InitialPosition,
}

/// The default refresh interval of the stream tracker.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

impl MultiStreamConfig {
    /// Multi-stream mode over the streams `tracker` lists, with the
    /// defaults.
    pub fn new(tracker: impl StreamTracker) -> Self {
        Self {
            tracker: Arc::new(tracker),
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            former_streams: FormerStreams::Keep,
            new_stream_position: InitialPosition::Latest,
        }
    }

    /// Asks the tracker every `interval`. Default: 60 s.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// What happens to the leases of former streams. Default: keep them.
    pub fn former_streams(mut self, strategy: FormerStreams) -> Self {
        self.former_streams = strategy;
        self
    }

    /// Where streams that appear later start. Default: `LATEST`.
    pub fn new_stream_position(mut self, position: InitialPosition) -> Self {
        self.new_stream_position = position;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a refresh interval under a second.
    pub fn validate(&self) -> Result<()> {
        if self.refresh_interval < Duration::from_secs(1) {
            return Err(Error::Config(
                "multi-stream: refresh_interval must be at least 1 s".into(),
            ));
        }
        if let InitialPosition::AtTimestamp(at) = self.new_stream_position
            && at < SystemTime::UNIX_EPOCH
        {
            return Err(Error::Config(
                "multi-stream: new_stream_position is before 1970".into(),
            ));
        }
        Ok(())
    }
}

/// A stream a worker reads: who it is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TrackedStream {
    /// Its identifier: the prefix of its lease keys.
    pub(crate) id: StreamIdentifier,
    /// How its calls name it.
    pub(crate) stream: StreamRef,
    /// Where its shards without a checkpoint start.
    pub(crate) initial_position: InitialPosition,
    /// Its stream consumer, when fan-out reads through a given one.
    pub(crate) consumer_arn: Option<String>,
}

/// Finds the identifier of a stream and how to name it in calls, with
/// DescribeStreamSummary (logged): an ARN or a name is looked up for its
/// account and creation time. An identifier is checked against the stream
/// of its name in the client's account: the same stream is named by name;
/// one created again since (another creation time) is refused, since its
/// leases' checkpoints belong to the stream that was deleted; a stream of
/// another account is named by its ARN in the client's region.
///
/// # Errors
///
/// The errors of DescribeStreamSummary; [`Error::ResourceNotFound`] for an
/// identifier whose stream was deleted and created again;
/// [`Error::Config`] for another account's stream with no region
/// configured; [`Error::InvalidInput`] when an answer has no usable ARN.
pub(crate) async fn resolve(
    kinesis: &Kinesis,
    selector: &StreamSelector,
) -> Result<(StreamIdentifier, StreamRef)> {
    let stream = match selector {
        StreamSelector::Identifier(id) => return resolve_identifier(kinesis, id).await,
        StreamSelector::Arn(arn) => StreamRef::Arn(arn.clone()),
        StreamSelector::Name(name) => StreamRef::Name(name.clone()),
    };
    let summary = kinesis.describe_stream_summary(&stream).await?;
    let id = StreamIdentifier::from_arn(&summary.arn, summary.creation_epoch)?;
    Ok((id, stream))
}

/// [`resolve`] for a stream named by its identifier.
async fn resolve_identifier(
    kinesis: &Kinesis,
    id: &StreamIdentifier,
) -> Result<(StreamIdentifier, StreamRef)> {
    let by_name = StreamRef::Name(id.name().to_owned());
    match kinesis.describe_stream_summary(&by_name).await {
        Ok(summary) => {
            let found = StreamIdentifier::from_arn(&summary.arn, summary.creation_epoch)?;
            if found == *id {
                return Ok((id.clone(), by_name));
            }
            if found.account() == id.account() {
                return Err(Error::ResourceNotFound {
                    service: crate::error::Service::Kinesis,
                    message: format!(
                        "stream {id} no longer exists: the stream named {} now is {found}",
                        id.name()
                    ),
                });
            }
        }
        // Not in this account: perhaps in the identifier's.
        Err(Error::ResourceNotFound { .. }) => {}
        Err(err) => return Err(err),
    }
    let region = kinesis.region().ok_or_else(|| {
        Error::Config(format!(
            "stream {id} is in another account; a region is needed to name it by ARN"
        ))
    })?;
    Ok((id.clone(), StreamRef::Arn(id.arn(&region))))
}

/// How long a stream's looked-up identifier is used before it is looked up
/// again (DescribeStreamSummary allows 20 calls a second per account, shared
/// by every worker): a stream deleted and created again under its name is
/// read as the new stream within this time.
pub const LOOK_UP_AGAIN_AFTER: Duration = Duration::from_secs(900);

/// The tracker's state between refreshes: what is read, since when streams
/// found in the table are unlisted, since when streams were named for
/// deletion.
#[derive(Debug, Default)]
pub(crate) struct Tracking {
    /// Identifiers already looked up, by the selector's text, with when.
    resolved: HashMap<String, (StreamIdentifier, StreamRef, Instant)>,
    /// The streams read now, by identifier text.
    pub(crate) active: BTreeMap<String, TrackedStream>,
    /// Streams in the lease table and not listed, with when that was first
    /// seen.
    unlisted_since: HashMap<String, Instant>,
    /// Streams named for deletion and not listed, with when they were first
    /// named.
    named_since: HashMap<String, Instant>,
}

/// What one refresh changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Streams read from now on.
    pub(crate) added: Vec<TrackedStream>,
    /// Streams no longer read.
    pub(crate) removed: Vec<TrackedStream>,
}

impl Tracking {
    /// Looks up what `configs` name and makes them the streams read;
    /// `position` gives a stream without its own initial position its
    /// start. Names, ARNs and identifiers are looked up when first listed
    /// and again after [`LOOK_UP_AGAIN_AFTER`] (a stream deleted and created
    /// again under its name is a new stream); when a look-up fails, the last
    /// answer for that selector stands (logged), and a selector never looked
    /// up is skipped until the next refresh.
    pub(crate) async fn update(
        &mut self,
        kinesis: &Kinesis,
        configs: &[StreamConfig],
        position: &InitialPosition,
    ) -> Changes {
        let mut listed: BTreeMap<String, TrackedStream> = BTreeMap::new();
        for config in configs {
            let key = config.stream.to_string();
            let now = Instant::now();
            let cached = self
                .resolved
                .get(&key)
                .filter(|(.., at)| now.duration_since(*at) < LOOK_UP_AGAIN_AFTER)
                .map(|(id, stream, _)| (id.clone(), stream.clone()));
            let looked_up = match cached {
                Some(found) => Ok(found),
                None => resolve(kinesis, &config.stream).await,
            };
            let found = match looked_up {
                Ok((id, stream)) => {
                    let known = self.resolved.insert(key, (id.clone(), stream.clone(), now));
                    if known.as_ref().map(|(id, ..)| id) != Some(&id) {
                        tracing::info!(stream = %config.stream, stream_identifier = %id, "found the stream's account and creation time with DescribeStreamSummary");
                    }
                    (id, stream)
                }
                Err(err) => match self.resolved.get(&key) {
                    Some((id, stream, _)) => {
                        tracing::warn!(stream = %config.stream, error = %err, "could not look up a listed stream; keeping its last identifier");
                        (id.clone(), stream.clone())
                    }
                    None => {
                        tracing::warn!(stream = %config.stream, error = %err, "could not look up a listed stream; it is skipped until the next refresh");
                        continue;
                    }
                },
            };
            let (id, stream) = found;
            let tracked = self
                .active
                .get(&id.to_string())
                .cloned()
                .unwrap_or(TrackedStream {
                    initial_position: config.initial_position.unwrap_or(*position),
                    consumer_arn: config.consumer_arn.clone(),
                    id,
                    stream,
                });
            listed.insert(tracked.id.to_string(), tracked);
        }
        let mut changes = Changes::default();
        for (id, tracked) in &listed {
            if !self.active.contains_key(id) {
                changes.added.push(tracked.clone());
            }
        }
        for (id, tracked) in &self.active {
            if !listed.contains_key(id) {
                changes.removed.push(tracked.clone());
            }
        }
        self.active = listed;
        changes
    }

    /// The identifiers of the streams read now.
    pub(crate) fn scope(&self) -> HashSet<String> {
        self.active.keys().cloned().collect()
    }

    /// The former streams whose leases may be deleted now under `strategy`:
    /// `in_table` are the streams with leases in the table, `named` the
    /// streams the tracker names for deletion. Never a stream read now.
    pub(crate) fn due_for_deletion(
        &mut self,
        strategy: FormerStreams,
        in_table: &HashSet<String>,
        named: &HashSet<String>,
        now: Instant,
    ) -> Vec<String> {
        let active = &self.active;
        self.unlisted_since
            .retain(|id, _| in_table.contains(id) && !active.contains_key(id));
        for id in in_table {
            if !active.contains_key(id) {
                self.unlisted_since.entry(id.clone()).or_insert(now);
            }
        }
        self.named_since
            .retain(|id, _| named.contains(id) && !active.contains_key(id));
        for id in named {
            if !active.contains_key(id) {
                self.named_since.entry(id.clone()).or_insert(now);
            }
        }
        let due = |since: &HashMap<String, Instant>, wait: Duration| -> Vec<String> {
            let mut ids: Vec<String> = since
                .iter()
                .filter(|(id, at)| in_table.contains(*id) && now.duration_since(**at) >= wait)
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            ids
        };
        match strategy {
            FormerStreams::Keep => Vec::new(),
            FormerStreams::DeleteUnlisted { wait } => due(&self.unlisted_since, wait),
            FormerStreams::DeleteNamed { wait } => due(&self.named_since, wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracking_of(ids: &[&str]) -> Tracking {
        let mut tracking = Tracking::default();
        for id in ids {
            let id = StreamIdentifier::parse(id).unwrap();
            tracking.active.insert(
                id.to_string(),
                TrackedStream {
                    stream: StreamRef::Name(id.name().to_owned()),
                    id,
                    initial_position: InitialPosition::Latest,
                    consumer_arn: None,
                },
            );
        }
        tracking
    }

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn selectors_tell_identifiers_arns_and_names_apart() {
        assert!(matches!(
            StreamSelector::parse(" 1:orders:17 "),
            StreamSelector::Identifier(_)
        ));
        assert!(matches!(
            StreamSelector::parse("arn:aws:kinesis:eu-west-1:1:stream/orders"),
            StreamSelector::Arn(_)
        ));
        assert_eq!(
            StreamSelector::parse("orders"),
            StreamSelector::Name("orders".into())
        );
        let file = StreamsFile::parse("# streams\n\norders\n  1:b:2  \n#off\n");
        let named: Vec<String> = file.iter().map(|c| c.stream.to_string()).collect();
        assert_eq!(named, ["orders", "1:b:2"]);
    }

    #[test]
    fn keep_never_deletes() {
        let mut tracking = tracking_of(&["1:a:1"]);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3_600);
        for now in [t0, later] {
            assert!(
                tracking
                    .due_for_deletion(
                        FormerStreams::Keep,
                        &set(&["1:a:1", "1:b:1"]),
                        &set(&[]),
                        now
                    )
                    .is_empty()
            );
        }
    }

    #[test]
    fn unlisted_streams_are_deleted_only_after_the_wait_and_never_while_listed() {
        let wait = Duration::from_secs(10);
        let strategy = FormerStreams::DeleteUnlisted { wait };
        let mut tracking = tracking_of(&["1:a:1"]);
        let t0 = Instant::now();
        let table = set(&["1:a:1", "1:b:1"]);
        assert!(
            tracking
                .due_for_deletion(strategy, &table, &set(&[]), t0)
                .is_empty()
        );
        assert!(
            tracking
                .due_for_deletion(strategy, &table, &set(&[]), t0 + Duration::from_secs(9))
                .is_empty()
        );
        assert_eq!(
            tracking.due_for_deletion(strategy, &table, &set(&[]), t0 + wait),
            ["1:b:1"]
        );
        // Listed again before the wait ends: the clock starts over after.
        let mut tracking = tracking_of(&["1:a:1"]);
        tracking.due_for_deletion(strategy, &table, &set(&[]), t0);
        let mut relisted = tracking_of(&["1:a:1", "1:b:1"]);
        std::mem::swap(&mut tracking.active, &mut relisted.active);
        assert!(
            tracking
                .due_for_deletion(strategy, &table, &set(&[]), t0 + wait)
                .is_empty()
        );
        std::mem::swap(&mut tracking.active, &mut relisted.active);
        assert!(
            tracking
                .due_for_deletion(
                    strategy,
                    &table,
                    &set(&[]),
                    t0 + wait + Duration::from_secs(1)
                )
                .is_empty()
        );
    }

    #[test]
    fn named_streams_are_deleted_after_the_wait_unless_listed() {
        let wait = Duration::from_secs(10);
        let strategy = FormerStreams::DeleteNamed { wait };
        let mut tracking = tracking_of(&["1:a:1"]);
        let t0 = Instant::now();
        let table = set(&["1:a:1", "1:b:1", "1:c:1"]);
        let named = set(&["1:a:1", "1:b:1"]);
        assert!(
            tracking
                .due_for_deletion(strategy, &table, &named, t0)
                .is_empty()
        );
        // a is listed: never deleted; c is unlisted but not named: kept.
        assert_eq!(
            tracking.due_for_deletion(strategy, &table, &named, t0 + wait),
            ["1:b:1"]
        );
    }
}
