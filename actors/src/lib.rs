//! txmesh-actors: where transactions are screened.
//!
//! ```text
//! ShardRouter (a cheap handle, cloned into every ingress stream)
//!   --locate(account)--> Shard (one actor per arbiter, owns the accounts of its hash range)
//!        --try_send--> AccountActor (one per account, supervised, holds its HistoryWindow;
//!                      restart intensity -> quarantine, poison messages; passivated when idle)
//!             evaluate(&window, &txn, &rules) -> Verdict, then the window learns the txn
//!             --ReplySlot--> BatchReply (assembles one response per request batch)
//!                               --> the caller's stream and the DashboardPublisher's outbox
//! DashboardPublisher (actor): outbox -> batches with sequence numbers -> PublishTransport,
//!   retries with exponential backoff and jitter, guarded by a circuit breaker.
//! ```
//!
//! Nothing here knows about tonic or HTTP: the network lives in `services`,
//! behind [`publisher::PublishTransport`]. Every mailbox is bounded; a full one
//! answers the transaction with a retryable RESOURCE_EXHAUSTED error.
#![forbid(unsafe_code)]

pub mod account;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod currency;
mod error;
pub mod journal;
pub mod partition;
pub mod publisher;
pub mod reply;
pub mod router;
pub mod rules;
pub mod stats;
pub mod supervision;
pub mod window;

pub use account::AccountActor;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use config::{
    ActorsConfig, PublisherConfig, RulesConfig, ShardsConfig, SupervisionConfig, WindowConfig,
};
pub use error::{ActorError, JournalError};
pub use publisher::{DashboardPublisher, PublishTransport, PublisherStatusView};
pub use reply::{BatchReply, ReplySlot};
pub use router::{Cluster, Location, RemotePart, RemoteScreen, RouterOptions, ShardRouter};
pub use stats::{mask_account, ScreeningStats};
pub use window::HistoryWindow;
