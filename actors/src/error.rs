//! The error types of txmesh-actors: how each screening error answers a
//! transaction, and how the dashboard link failed.

use txmesh_proto::v1::{TxnError, TxnErrorCode};

/// Why a transaction could not be screened (as opposed to a verdict, which
/// is a successful screening whatever its status).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActorError {
    #[error("{what} mailbox is full")]
    Overloaded {
        what: &'static str,
        retry_after_ms: u32,
    },
    #[error("account actor failed while screening: {0}")]
    AccountFailed(String),
    #[error("the screening pipeline is shutting down")]
    ShuttingDown,
    #[error("batch of {got} transactions exceeds the limit of {max}")]
    BatchTooLarge { got: usize, max: usize },
    #[error("transaction was dropped before it was answered")]
    Dropped,
    #[error("held to keep account order: an earlier transaction of this account was refused and its retry is awaited")]
    Held { retry_after_ms: u32 },
    #[error("transaction {transaction_id} crashed its account actor on all {attempts} attempts; recorded as poison, do not retry")]
    Poison {
        transaction_id: String,
        attempts: u32,
    },
    #[error("invalid configuration: {key}: {reason}")]
    Config { key: String, reason: String },
    #[error("the journal cannot write (disk full or unwritable): nothing is screened that could not be recorded; retry later")]
    JournalUnavailable { retry_after_ms: u32 },
    #[error("the ingress is rebuilding its account windows from its journal; retry shortly")]
    Recovering,
    #[error("this replica does not own partition {partition} at epoch {stamped}: {owner} owns it at epoch {epoch}; send it there, or through any replica")]
    WrongOwner {
        partition: u32,
        stamped: u64,
        owner: String,
        epoch: u64,
    },
    #[error("partition {partition} is being handed over between replicas: its accounts are answered once the new owner has their history; retry shortly")]
    PartitionMoving { partition: u32, retry_after_ms: u32 },
    #[error(
        "{owner}, the replica that owns this account, cannot be reached ({reason}){}; retry later",
        sent_note(*.sent)
    )]
    OwnerUnreachable {
        owner: String,
        reason: String,
        retry_after_ms: u32,
        /// It had been sent to the owner: it may have been screened there.
        sent: bool,
    },
}

fn sent_note(sent: bool) -> &'static str {
    if sent {
        " after it was sent there, so it may have been screened: a retry is answered with its verdict"
    } else {
        ""
    }
}

impl ActorError {
    /// Whether the caller may send the same transaction again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Overloaded { .. }
                | Self::Held { .. }
                | Self::AccountFailed(_)
                | Self::Dropped
                | Self::ShuttingDown
                | Self::JournalUnavailable { .. }
                | Self::Recovering
                | Self::WrongOwner { .. }
                | Self::OwnerUnreachable { .. }
                | Self::PartitionMoving { .. }
        )
    }

    /// The per-transaction error sent back on the stream.
    pub fn to_txn_error(&self) -> TxnError {
        let (code, retry_after_ms) = match self {
            Self::Overloaded { retry_after_ms, .. } => {
                (TxnErrorCode::ResourceExhausted, *retry_after_ms)
            }
            Self::Held { retry_after_ms } => (TxnErrorCode::Held, *retry_after_ms),
            Self::AccountFailed(_) => (TxnErrorCode::Unavailable, 10),
            Self::ShuttingDown => (TxnErrorCode::ShuttingDown, 1000),
            Self::BatchTooLarge { .. } => (TxnErrorCode::InvalidRequest, 0),
            Self::Dropped => (TxnErrorCode::Internal, 10),
            Self::Poison { .. } => (TxnErrorCode::Poison, 0),
            Self::Config { .. } => (TxnErrorCode::Internal, 0),
            Self::JournalUnavailable { retry_after_ms } => {
                (TxnErrorCode::Unavailable, *retry_after_ms)
            }
            Self::Recovering => (TxnErrorCode::Unavailable, 500),
            // A map change is quick: come back soon, to the named owner.
            Self::WrongOwner { .. } => (TxnErrorCode::WrongOwner, 50),
            Self::OwnerUnreachable { retry_after_ms, .. }
            | Self::PartitionMoving { retry_after_ms, .. } => {
                (TxnErrorCode::Unavailable, *retry_after_ms)
            }
        };
        let (owner, owner_epoch) = match self {
            Self::WrongOwner { owner, epoch, .. } => (owner.clone(), *epoch),
            Self::OwnerUnreachable { owner, .. } => (owner.clone(), 0),
            _ => (String::new(), 0),
        };
        let maybe_screened = matches!(self, Self::OwnerUnreachable { sent: true, .. });
        TxnError {
            code: code as i32,
            message: self.to_string(),
            retryable: self.is_retryable(),
            retry_after_ms,
            owner,
            owner_epoch,
            maybe_screened,
        }
    }
}

/// Why the dashboard link failed, as the transport classifies it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Not reachable, timed out, or the stream broke: retried with backoff
    /// and the breaker.
    #[error("dashboard unavailable: {0}")]
    Unavailable(String),
    /// The dashboard refused this publisher (PERMISSION_DENIED or
    /// UNAUTHENTICATED: its authz does not admit this identity). Retrying
    /// does not fix it, a configuration change does: it is reported loudly
    /// and tried again only at the breaker's longest pause.
    #[error("dashboard refused this publisher: {0}")]
    Refused(String),
}

impl PublishError {
    /// Whether only a change of configuration (not time) can fix it.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused(_))
    }
}

/// Why the journal could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {fault}; txmesh will not read or overwrite it (move it away, or set state_dir to another directory)", path.display())]
    Foreign {
        path: std::path::PathBuf,
        fault: String,
    },
    #[error("journal {} is in use by another txmesh process", path.display())]
    Locked { path: std::path::PathBuf },
    #[error("journal {} was written by {found} shards, but actors.shards.count gives {configured}: set actors.shards.count = {found} to use it", path.display())]
    ShardCount {
        path: std::path::PathBuf,
        found: usize,
        configured: usize,
    },
    #[error("the journal is closed")]
    Closed,
}

impl JournalError {
    /// Whether trying again later may succeed (a full disk, a directory
    /// made writable again), as opposed to a journal that must be looked at.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Io { .. })
    }
}
