//! Waiting for SIGTERM or Ctrl-C.

/// Resolves on SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    Signals::register().recv().await;
}

/// SIGTERM and Ctrl-C handlers, installed when made (so a signal sent
/// right after is not missed), awaited later.
#[derive(Debug)]
pub(crate) struct Signals {
    #[cfg(unix)]
    handlers: Vec<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers; needs a tokio runtime.
    pub(crate) fn register() -> Self {
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
    pub(crate) async fn recv(self) {
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
