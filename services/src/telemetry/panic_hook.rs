//! The process's panic hook. Account actors run on the shards' arbiter
//! threads, where a panic is caught by supervision and answered; Rust's
//! default hook would meanwhile print to stderr and, with `RUST_BACKTRACE`
//! set, capture and symbolize a backtrace on that very thread: a few hundred
//! milliseconds during which no account of the shard is screened (the
//! actor-crash-storm experiment measured a p99 of 0.3 to 0.9 s from this
//! alone). Here a panic is one structured log event instead; a backtrace is
//! captured (when `RUST_BACKTRACE` asks for it) only for the first panic at
//! each code location, and never for an injected fault, whose location is
//! known and whose cost would be the experiment's, not the system's.

use std::{
    collections::HashSet,
    sync::{Mutex, OnceLock},
};

/// Locations whose backtrace was already printed; bounded so a bug that
/// panics in many places cannot grow it without limit.
const LOCATIONS_KEPT: usize = 256;

/// What injected faults panic with (`txmesh_actors`' fault points).
const INJECTED: &str = "injected fault";

static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();

/// Installs the hook for the whole process (idempotent in effect: a second
/// call replaces the first with the same hook).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(non-text panic payload)");
        let location = info
            .location()
            .map_or_else(|| "unknown".to_owned(), ToString::to_string);
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        if message.starts_with(INJECTED) {
            tracing::debug!(%location, thread, "{message}");
            return;
        }
        let first = SEEN
            .get_or_init(Default::default)
            .lock()
            .map(|mut seen| seen.len() < LOCATIONS_KEPT && seen.insert(location.clone()))
            .unwrap_or(false);
        if first {
            let backtrace = std::backtrace::Backtrace::capture();
            tracing::error!(%location, thread, %backtrace, "panic: {message}");
        } else {
            tracing::error!(%location, thread, "panic: {message} (backtrace printed once per location)");
        }
    }));
}
