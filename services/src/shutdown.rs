//! The process's shutdown: a `tokio_util` `CancellationToken` handed to
//! every listener and task (cancelled once, seen by every clone), and the
//! signals that start it.

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends first).
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
