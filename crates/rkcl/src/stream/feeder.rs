//! The record processor behind the Stream API: it feeds each shard's
//! records into that shard's stream within the in-flight budget, and
//! checkpoints the commit watermark in the background.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ShardRecords;
use super::budget::{Budget, ShardBudget};
use super::committable::{CommittableRecord, ShardState};
use crate::backoff::FailureStreak;
use crate::checkpoint::Checkpointer;
use crate::error::Error;
use crate::model::ExtendedSequenceNumber;
use crate::processor::{
    InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor, ShardInfo,
};
use crate::stop::StopSignal;

/// What every shard's feeder shares.
#[derive(Debug)]
pub(crate) struct FeedShared {
    pub(crate) settings: FeedSettings,
    pub(crate) total: Arc<Budget>,
    /// Where new shard streams go.
    pub(crate) shards: mpsc::UnboundedSender<(ShardInfo, ShardRecords)>,
}

/// The consumer settings a feeder needs.
#[derive(Clone, Debug)]
pub(crate) struct FeedSettings {
    pub(crate) checkpoint_every: u64,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) max_records_per_shard: usize,
    pub(crate) max_bytes_per_shard: usize,
    pub(crate) max_bytes: usize,
    pub(crate) warn_after: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) commit_on_drop: bool,
}

/// Feeds one shard's stream.
#[derive(Debug)]
pub(crate) struct Feeder {
    shared: Arc<FeedShared>,
    state: Option<Arc<ShardState>>,
    /// The shard's stop signal, from `initialize`.
    stop: Option<StopSignal>,
    sender: Option<mpsc::UnboundedSender<CommittableRecord>>,
    checkpoints: Option<JoinHandle<()>>,
}

impl Feeder {
    pub(crate) fn new(shared: Arc<FeedShared>) -> Self {
        Self {
            shared,
            state: None,
            stop: None,
            sender: None,
            checkpoints: None,
        }
    }

    fn state(&self) -> Result<&Arc<ShardState>, ProcessorError> {
        self.state
            .as_ref()
            .ok_or_else(|| "the shard's stream was not opened".into())
    }

    /// Ends the shard's stream: no more records, the background
    /// checkpoints stop, the in-flight share of the total budget is free.
    fn end(&mut self) {
        self.sender = None;
        if let Some(task) = self.checkpoints.take() {
            task.abort();
        }
        if let Some(state) = &self.state {
            state.close();
        }
    }

    /// Waits until `done` holds for the shard's state, or `deadline`.
    async fn wait_until(
        state: &ShardState,
        done: impl Fn(&ShardState) -> bool,
        deadline: Option<Instant>,
        stop: Option<&StopSignal>,
    ) -> bool {
        loop {
            let changed = state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(state) {
                return true;
            }
            let stop = async {
                match stop {
                    Some(stop) => {
                        stop.requested().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let until = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut changed => {}
                () = stop => return done(state),
                () = until => return done(state),
            }
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.end();
    }
}

/// Checkpoints the watermark when it is past the stored checkpoint.
async fn checkpoint_mark(
    state: &ShardState,
    checkpointer: &Checkpointer,
) -> crate::error::Result<()> {
    let Some(ExtendedSequenceNumber::Sequence {
        sequence_number,
        sub_sequence_number,
    }) = state.mark()
    else {
        return Ok(());
    };
    let mark = ExtendedSequenceNumber::new(sequence_number.clone(), sub_sequence_number);
    if mark <= checkpointer.last_checkpoint() {
        return Ok(());
    }
    checkpointer
        .checkpoint_at(&sequence_number, sub_sequence_number)
        .await
}

/// The background task of one shard: checkpoints the watermark every N
/// commits or T time, and warns about a record left uncommitted too long.
async fn checkpoint_loop(
    state: Arc<ShardState>,
    checkpointer: Checkpointer,
    settings: FeedSettings,
) {
    let shard = state.info.shard_id.as_str().to_owned();
    let stream = state
        .info
        .lease_key
        .stream_identifier()
        .unwrap_or_default()
        .to_owned();
    let check = (settings.warn_after / 2)
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(10));
    let mut due = Instant::now() + settings.checkpoint_interval;
    let mut warned = None;
    let mut streak = FailureStreak::new("checkpoint of the watermark");
    loop {
        let now = Instant::now();
        if now >= due || state.take_commit_trigger() {
            match checkpoint_mark(&state, &checkpointer).await {
                Ok(()) => {
                    streak.succeeded();
                    due = Instant::now() + settings.checkpoint_interval;
                }
                Err(Error::LeaseLost { .. }) => return,
                Err(err) => {
                    streak.failed(&err);
                    due = Instant::now() + check;
                }
            }
        }
        if let Some(oldest) = state.oldest()
            && now.duration_since(oldest.delivered_at) >= settings.warn_after
            && warned != Some(oldest.index)
        {
            warned = Some(oldest.index);
            crate::metrics::UNCOMMITTED_RECORDS_WARNED
                .counter(&[stream.as_str(), shard.as_str()])
                .increment(1);
            tracing::warn!(
                shard_id = %shard,
                position = %oldest.position,
                waited_ms = now.duration_since(oldest.delivered_at).as_millis() as u64,
                dropped_without_commit = oldest.abandoned,
                "a record has not been committed; the shard's checkpoint cannot move past it",
            );
        }
        tokio::select! {
            () = state.checkpoint_due.notified() => {}
            () = tokio::time::sleep_until(due.min(Instant::now() + check)) => {}
        }
    }
}

impl RecordProcessor for Feeder {
    async fn initialize(&mut self, input: &InitializationInput) -> Result<(), ProcessorError> {
        let settings = &self.shared.settings;
        let budget = ShardBudget::new(
            settings.max_records_per_shard,
            settings.max_bytes_per_shard,
            (self.shared.total.clone(), settings.max_bytes),
        );
        let state = Arc::new(ShardState::new(
            input.shard.clone(),
            budget,
            settings.checkpoint_every,
            settings.commit_on_drop,
        ));
        let (sender, receiver) = mpsc::unbounded_channel();
        let records = ShardRecords {
            info: input.shard.clone(),
            receiver,
        };
        self.shared
            .shards
            .send((input.shard.clone(), records))
            .map_err(|_| "the consumer's stream was dropped")?;
        self.end();
        self.stop = Some(input.stop.clone());
        self.state = Some(state);
        self.sender = Some(sender);
        Ok(())
    }

    async fn process_records(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        let state = self.state()?.clone();
        if self.checkpoints.is_none() {
            self.checkpoints = Some(tokio::spawn(checkpoint_loop(
                state.clone(),
                checkpointer.clone(),
                self.shared.settings.clone(),
            )));
        }
        let Some(sender) = &self.sender else {
            return Err("the shard's stream has ended".into());
        };
        if let Some(admitted) = state.try_admit_all(&input.records) {
            for record in admitted {
                if sender.send(record).is_err() {
                    return Err("the shard's stream was dropped".into());
                }
            }
            return Ok(());
        }
        for record in &input.records {
            let admitted = tokio::select! {
                biased;
                admitted = state.admit(record.clone()) => admitted,
                // Stop fetching: what was admitted stays in the stream.
                _ = input.stop.requested() => return Ok(()),
            };
            if sender.send(admitted).is_err() {
                return Err("the shard's stream was dropped".into());
            }
        }
        Ok(())
    }

    async fn lease_lost(&mut self) {
        // Nothing can be written any more.
        self.end();
    }

    async fn shard_ended(&mut self, checkpointer: &Checkpointer) -> Result<(), ProcessorError> {
        self.sender = None;
        let state = self.state()?.clone();
        // The children wait until every record of this shard is committed.
        if !Self::wait_until(&state, ShardState::is_drained, None, self.stop.as_ref()).await {
            return Err("stopped before every record of the shard was committed".into());
        }
        self.end();
        checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shutdown_requested(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        self.sender = None;
        let state = self.state()?.clone();
        let deadline = Instant::now() + self.shared.settings.shutdown_grace;
        let settled = Self::wait_until(&state, |s| s.in_hand() == 0, Some(deadline), None).await;
        if !settled {
            tracing::warn!(
                uncommitted = state.in_hand(),
                "records still uncommitted at the end of the shutdown grace time; \
                 the checkpoint stays before them"
            );
        }
        if let Some(task) = self.checkpoints.take() {
            task.abort();
        }
        let written = checkpoint_mark(&state, checkpointer).await;
        self.end();
        written?;
        Ok(())
    }
}
