//! The senders' side of the engine: receipts and errors, the outstanding
//! limits (semaphores), the `Sink` and the stream of receipts.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, Sink, Stream};
use tokio::sync::{Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::time::Instant;

use super::engine::{Engine, Msg, Queued};
use super::{MAX_PARTITION_KEY_CHARS, ProducerConfig};
use crate::aws::{Kinesis, StreamRef};
use crate::error::Error;
use crate::kpl::{Aggregator, MAX_KINESIS_RECORD_SIZE};
use crate::model::{HashKey, SequenceNumber, ShardId};
use crate::record::ProducerRecord;

/// Where a record sent with [`Producer::send`](super::Producer::send) was
/// written.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The shard the record is in.
    pub shard_id: ShardId,
    /// The sequence number of the Kinesis record that carries it.
    pub sequence_number: SequenceNumber,
    /// Its index in the KPL aggregate that carries it, `None` when it was
    /// written as a plain Kinesis record. A consumer sees it at
    /// (sequence number, sub-sequence number).
    pub sub_sequence_number: Option<u64>,
    /// How many PutRecords calls carried it (1 when the first one wrote it).
    pub attempts: u32,
    /// From `send` to the start of the call that wrote it.
    pub time_in_buffer: Duration,
}

/// Why a record sent with [`Producer::send`](super::Producer::send) was not
/// written.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// [`Producer::try_send`](super::Producer::try_send) found the producer
    /// at its limit of outstanding records or bytes; the record is given
    /// back, nothing was sent.
    #[error("the producer holds its limit of outstanding records or bytes")]
    Full(Box<ProducerRecord>),
    /// Kinesis would refuse the record (partition key, hash key or size);
    /// nothing was sent.
    #[error("the record is invalid: {0}")]
    Invalid(Arc<Error>),
    /// The record's time-to-live passed before it was written (while it
    /// waited for room, in the buffer, or while being retried).
    #[error("the record's time-to-live passed after {attempts} attempts{}", last_error.as_ref().map(|e| format!(", the last failing with {e}")).unwrap_or_default())]
    Expired {
        /// How many PutRecords calls carried it.
        attempts: u32,
        /// Why the last of them did not write it.
        last_error: Option<String>,
    },
    /// A PutRecords call failed in a way retrying cannot fix (a missing
    /// stream, no access).
    #[error("the record could not be written: {0}")]
    Failed(Arc<Error>),
    /// The producer was shut down, or its task stopped, before the record
    /// was answered; it may or may not have been written.
    #[error("the producer was shut down before the record was answered")]
    Closed,
}

impl SendError {
    /// Whether sending the same record again may succeed: the producer was
    /// full, or the record expired.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SendError::Full(_) | SendError::Expired { .. })
    }
}

/// What a record's sender waits on.
pub(crate) type Answer = oneshot::Receiver<Result<Receipt, SendError>>;

/// The senders' handle on one engine task.
#[derive(Debug)]
pub(crate) struct EngineHandle {
    tx: mpsc::UnboundedSender<Msg>,
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    config: ProducerConfig,
    pub(crate) shut_down: AtomicBool,
}

impl EngineHandle {
    /// Spawns the engine on the current runtime.
    pub(crate) fn start(
        kinesis: Kinesis,
        stream: StreamRef,
        config: ProducerConfig,
    ) -> Result<Self, SendError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            SendError::Failed(Arc::new(Error::Config(
                "Producer::send needs a tokio runtime".into(),
            )))
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(Engine::new(kinesis, stream, config.clone(), rx).run());
        Ok(Self {
            tx,
            records: Arc::new(Semaphore::new(config.max_outstanding_records)),
            bytes: Arc::new(Semaphore::new(config.max_outstanding_bytes)),
            config,
            shut_down: AtomicBool::new(false),
        })
    }

    /// Records sent and not answered yet.
    pub(crate) fn outstanding(&self) -> usize {
        self.config
            .max_outstanding_records
            .saturating_sub(self.records.available_permits())
    }

    /// The record's size as Kinesis counts it, if Kinesis would take it.
    fn validate(&self, record: &ProducerRecord) -> Result<usize, SendError> {
        let invalid = |e: Error| SendError::Invalid(Arc::new(e));
        let chars = record.partition_key.chars().count();
        if !(1..=MAX_PARTITION_KEY_CHARS).contains(&chars) {
            return Err(invalid(Error::InvalidInput(format!(
                "a partition key must have 1 to {MAX_PARTITION_KEY_CHARS} characters, got {chars}"
            ))));
        }
        HashKey::of_record(&record.partition_key, record.explicit_hash_key.as_deref())
            .map_err(invalid)?;
        let size = record.data.len() + record.partition_key.len();
        if self.config.aggregate {
            let mut aggregator =
                Aggregator::with_max_size(self.config.aggregate_max_size).map_err(invalid)?;
            aggregator.add(record.clone()).map_err(invalid)?;
        } else if size > MAX_KINESIS_RECORD_SIZE {
            return Err(invalid(Error::RecordTooLarge {
                size,
                max: MAX_KINESIS_RECORD_SIZE,
            }));
        }
        Ok(size)
    }

    fn byte_permits(&self, size: usize) -> u32 {
        u32::try_from(size.clamp(1, self.config.max_outstanding_bytes)).unwrap_or(u32::MAX)
    }

    fn submit(
        &self,
        record: ProducerRecord,
        size: usize,
        enqueued: Instant,
        permits: (
            tokio::sync::OwnedSemaphorePermit,
            tokio::sync::OwnedSemaphorePermit,
        ),
    ) -> Result<Answer, SendError> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            record,
            size,
            enqueued,
            deadline: enqueued + self.config.record_ttl,
            reply,
            _permits: permits,
            id: 0,
            attempts: 0,
            last_error: None,
        };
        self.tx
            .send(Msg::Record(queued))
            .map_err(|_| SendError::Closed)?;
        Ok(answer)
    }

    /// Queues the record at once if there is room.
    pub(crate) fn try_enqueue(&self, record: ProducerRecord) -> Result<Answer, SendError> {
        let size = self.validate(&record)?;
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(SendError::Closed);
        }
        let full = |record| SendError::Full(Box::new(record));
        let records = match self.records.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => return Err(full(record)),
            Err(TryAcquireError::Closed) => return Err(SendError::Closed),
        };
        let bytes = match self
            .bytes
            .clone()
            .try_acquire_many_owned(self.byte_permits(size))
        {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => return Err(full(record)),
            Err(TryAcquireError::Closed) => return Err(SendError::Closed),
        };
        self.submit(record, size, Instant::now(), (records, bytes))
    }

    /// Queues the record, waiting for room at most its time-to-live.
    pub(crate) async fn enqueue(&self, record: ProducerRecord) -> Result<Answer, SendError> {
        let size = self.validate(&record)?;
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(SendError::Closed);
        }
        let enqueued = Instant::now();
        let deadline = enqueued + self.config.record_ttl;
        let expired = || SendError::Expired {
            attempts: 0,
            last_error: Some("no room in the producer before the time-to-live".into()),
        };
        let records = tokio::time::timeout_at(deadline, self.records.clone().acquire_owned())
            .await
            .map_err(|_| expired())?
            .map_err(|_| SendError::Closed)?;
        let bytes = tokio::time::timeout_at(
            deadline,
            self.bytes
                .clone()
                .acquire_many_owned(self.byte_permits(size)),
        )
        .await
        .map_err(|_| expired())?
        .map_err(|_| SendError::Closed)?;
        self.submit(record, size, enqueued, (records, bytes))
    }

    /// Queues the record: at once if there is room, otherwise waiting for
    /// room; the answer's future.
    pub(crate) fn send(
        self: &Arc<Self>,
        record: ProducerRecord,
    ) -> impl Future<Output = Result<Receipt, SendError>> + Send + 'static + use<> {
        let handle = Arc::clone(self);
        let now = handle.try_enqueue(record);
        async move {
            let answer = match now {
                Ok(answer) => answer,
                Err(SendError::Full(record)) => handle.enqueue(*record).await?,
                Err(error) => return Err(error),
            };
            wait(answer).await
        }
    }

    /// Answers once every record sent before the call is answered.
    pub(crate) fn flush(
        &self,
    ) -> impl Future<Output = Result<(), SendError>> + Send + 'static + use<> {
        let (done, answer) = oneshot::channel();
        let sent = self.tx.send(Msg::Flush(done));
        async move {
            sent.map_err(|_| SendError::Closed)?;
            answer.await.map_err(|_| SendError::Closed)
        }
    }

    /// Flushes, then stops the engine; how many records were answered with
    /// [`SendError::Closed`] at the deadline.
    pub(crate) async fn shutdown(&self, timeout: Duration) -> u64 {
        self.shut_down.store(true, Ordering::Relaxed);
        let (done, answer) = oneshot::channel();
        let deadline = Instant::now() + timeout;
        if self.tx.send(Msg::Shutdown { deadline, done }).is_err() {
            return 0;
        }
        self.records.close();
        self.bytes.close();
        answer.await.unwrap_or(0)
    }
}

/// Waits for a record's answer.
pub(crate) async fn wait(answer: Answer) -> Result<Receipt, SendError> {
    answer.await.unwrap_or(Err(SendError::Closed))
}

/// One record's place in a [`Receipts`] stream.
pub(crate) enum Slot {
    Answer(Answer),
    Error(SendError),
}

/// A [`Sink`] of [`ProducerRecord`]s into a [`Producer`](super::Producer),
/// from [`Producer::sink`](super::Producer::sink) or
/// [`Producer::sink_with_receipts`](super::Producer::sink_with_receipts).
///
/// `poll_ready` waits for room in the producer (the backpressure),
/// `poll_flush` until the records given so far are queued, and `poll_close`
/// until every record sent so far through the producer is answered; so
/// `records.forward(producer.sink()).await` returns once all are written.
///
/// Without receipts, a record that cannot be written (invalid, expired, or
/// failed) is the sink's error, noticed by a later call of the sink; with
/// receipts, every outcome is an item of the [`Receipts`] stream and the
/// sink fails only when the producer is shut down.
pub struct ProducerSink {
    handle: Arc<EngineHandle>,
    pending: Option<BoxFuture<'static, Result<Answer, SendError>>>,
    receipts: Option<mpsc::UnboundedSender<Slot>>,
    /// Without receipts: the answers not yet looked at.
    unchecked: FuturesOrdered<BoxFuture<'static, Result<Receipt, SendError>>>,
    closing: Option<BoxFuture<'static, Result<(), SendError>>>,
}

impl std::fmt::Debug for ProducerSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerSink")
            .field("receipts", &self.receipts.is_some())
            .finish_non_exhaustive()
    }
}

impl ProducerSink {
    pub(crate) fn new(
        handle: Arc<EngineHandle>,
        receipts: Option<mpsc::UnboundedSender<Slot>>,
    ) -> Self {
        Self {
            handle,
            pending: None,
            receipts,
            unchecked: FuturesOrdered::new(),
            closing: None,
        }
    }

    /// Hands a queued record's answer (or its error) on.
    fn deliver(&mut self, queued: Result<Answer, SendError>) -> Result<(), SendError> {
        match (&self.receipts, queued) {
            (Some(receipts), queued) => {
                let slot = match queued {
                    Ok(answer) => Slot::Answer(answer),
                    Err(SendError::Closed) => return Err(SendError::Closed),
                    Err(error) => Slot::Error(error),
                };
                // A dropped receipts stream only means nobody reads them.
                let _ = receipts.send(slot);
                Ok(())
            }
            (None, Ok(answer)) => {
                self.unchecked.push_back(wait(answer).boxed());
                Ok(())
            }
            (None, Err(error)) => Err(error),
        }
    }

    /// Without receipts: fails with the first error among the answers that
    /// came back, dropping the successful ones.
    fn poll_unchecked(&mut self, cx: &mut Context<'_>) -> Result<(), SendError> {
        while let Poll::Ready(Some(answer)) = Pin::new(&mut self.unchecked).poll_next(cx) {
            answer?;
        }
        Ok(())
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        if let Some(pending) = &mut self.pending {
            let queued = ready!(pending.as_mut().poll(cx));
            self.pending = None;
            self.deliver(queued)?;
        }
        Poll::Ready(self.poll_unchecked(cx))
    }
}

impl Sink<ProducerRecord> for ProducerSink {
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.get_mut().poll_pending(cx)
    }

    fn start_send(self: Pin<&mut Self>, record: ProducerRecord) -> Result<(), SendError> {
        let this = self.get_mut();
        match this.handle.try_enqueue(record) {
            Err(SendError::Full(record)) => {
                let handle = Arc::clone(&this.handle);
                this.pending = Some(async move { handle.enqueue(*record).await }.boxed());
                Ok(())
            }
            queued => this.deliver(queued),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.get_mut().poll_pending(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        let handle = &this.handle;
        let closing = this.closing.get_or_insert_with(|| handle.flush().boxed());
        let flushed = ready!(closing.as_mut().poll(cx));
        this.closing = None;
        // The receipts stream ends once it has handed out what is queued.
        this.receipts = None;
        flushed?;
        while let Some(answer) = futures_util::ready!(Pin::new(&mut this.unchecked).poll_next(cx)) {
            answer?;
        }
        Poll::Ready(Ok(()))
    }
}

/// The answers to the records given to a [`ProducerSink`], in the order
/// they were given: a [`Stream`] of `Result<Receipt, SendError>` that ends
/// after the sink is closed (or dropped) and every answer is out.
///
/// Answers wait here until read, so read them as they come.
pub struct Receipts {
    slots: mpsc::UnboundedReceiver<Slot>,
    open: bool,
    in_order: FuturesOrdered<BoxFuture<'static, Result<Receipt, SendError>>>,
}

impl std::fmt::Debug for Receipts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipts")
            .field("waiting", &self.in_order.len())
            .finish_non_exhaustive()
    }
}

impl Receipts {
    /// A sink and the stream of its receipts.
    pub(crate) fn pair(handle: Arc<EngineHandle>) -> (ProducerSink, Receipts) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            ProducerSink::new(handle, Some(tx)),
            Receipts {
                slots: rx,
                open: true,
                in_order: FuturesOrdered::new(),
            },
        )
    }
}

impl Stream for Receipts {
    type Item = Result<Receipt, SendError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while this.open {
            match this.slots.poll_recv(cx) {
                Poll::Ready(Some(Slot::Answer(answer))) => {
                    this.in_order.push_back(wait(answer).boxed());
                }
                Poll::Ready(Some(Slot::Error(error))) => {
                    this.in_order
                        .push_back(futures_util::future::ready(Err(error)).boxed());
                }
                Poll::Ready(None) => this.open = false,
                Poll::Pending => break,
            }
        }
        match Pin::new(&mut this.in_order).poll_next(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Ready(None) if !this.open => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}
