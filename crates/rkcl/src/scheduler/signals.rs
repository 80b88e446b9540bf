//! Waiting for SIGTERM or Ctrl-C.

/// Resolves on SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    Signals::register().recv().await;
}

/// SIGTERM and Ctrl-C handlers, installed when made (so a signal sent
/// right after is not missed), awaited later.
///
/// Make one before a slow start-up (a scheduler's first shard sync, say):
/// from then on SIGTERM no longer ends the process at once, and a signal
/// that arrives meanwhile is answered as soon as [`recv`](Self::recv) is
/// awaited.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    handlers: Vec<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers; needs a tokio runtime. A handler that cannot
    /// be installed is logged and left out (Ctrl-C is then still awaited).
    pub fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let handlers = [SignalKind::terminate(), SignalKind::interrupt()]
                .into_iter()
                .filter_map(|kind| match signal(kind) {
                    Ok(handler) => Some(handler),
                    Err(err) => {
                        tracing::warn!(error = %err, "could not install a signal handler");
                        None
                    }
                })
                .collect();
            Self { handlers }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolves on the first signal.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: it consumes the handlers; a signal seen by a dropped
    /// call is lost.
    pub async fn recv(self) {
        #[cfg(unix)]
        {
            let waits = self.handlers.into_iter().map(|mut handler| {
                Box::pin(async move {
                    handler.recv().await;
                })
            });
            let waits: Vec<_> = waits.collect();
            if waits.is_empty() {
                let _ = tokio::signal::ctrl_c().await;
            } else {
                futures_util::future::select_all(waits).await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
