//! The process runtime: an actix `System` on a multi-threaded tokio runtime
//! of `io_threads` workers (two for `up` and `chaos run`, which run every
//! service in one process).
//! Actors (aggregator, publisher) run on the system thread, each shard on
//! its own arbiter thread, and tonic's connections on the tokio workers.

use std::future::Future;

/// Runs `fut` to completion inside a new actix system.
///
/// # Errors
/// When the tokio runtime cannot be built.
pub fn block_on<F: Future>(worker_threads: usize, fut: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .thread_name("txmesh-io")
        .enable_all()
        .build()?;
    let system = actix_rt::System::with_tokio_rt(|| runtime);
    Ok(system.block_on(fut))
}
