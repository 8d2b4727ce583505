//! Counters of the screening pipeline, per shard (never per account), and
//! the log of poison messages: read by the publisher (which sends them to
//! the dashboard with every batch) and by tests.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;

use txmesh_proto::v1::{PoisonRecord, ScreeningStatus, ShardStatus, Transaction};

/// Poison records kept for operators, most recent first.
const POISON_KEPT: usize = 32;

/// A counter or gauge shared between threads.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

/// The counters of one shard.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Live account actors.
    pub active: Counter,
    /// Accounts held in passivated form.
    pub passivated: Counter,
    pub restarts: Counter,
    pub quarantines: Counter,
    pub poison: Counter,
    /// Transactions answered RESOURCE_EXHAUSTED (a full mailbox; order holds
    /// answer HELD and are not counted here).
    pub overloaded: Counter,
    pub passivations: Counter,
    /// Accounts started again from their passivated state.
    pub reactivations: Counter,
    /// Bytes the passivated accounts' windows take (their store's chunks
    /// and index), as of the last sweep.
    pub passivated_bytes: Counter,
}

/// The poison messages seen by a router, most recent first.
#[derive(Debug, Default)]
pub struct PoisonLog {
    records: Mutex<VecDeque<PoisonRecord>>,
}

/// Every shard's counters and the poison log of one router.
#[derive(Debug, Clone)]
pub struct ScreeningStats {
    pub shards: Arc<[Arc<ShardStats>]>,
    pub poison: Arc<PoisonLog>,
}

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        // A gauge never goes below zero, even if an update races.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl PoisonLog {
    /// Records a poison message (the account is masked) and logs it.
    pub fn record(
        &self,
        shard: u32,
        txn: &Transaction,
        attempts: u32,
        message: &str,
        unix_ms: i64,
    ) {
        let account = mask_account(&txn.account_id);
        tracing::error!(
            shard,
            transaction_id = %txn.transaction_id,
            %account,
            attempts,
            message,
            "poison message: the transaction crashed its account actor on every attempt"
        );
        let mut records = self.records.lock();
        if records.len() == POISON_KEPT {
            records.pop_back();
        }
        records.push_front(PoisonRecord {
            transaction_id: txn.transaction_id.clone(),
            account,
            attempts,
            message: message.to_owned(),
            unix_ms,
            shard,
        });
    }

    /// The records, most recent first.
    pub fn records(&self) -> Vec<PoisonRecord> {
        self.records.lock().iter().cloned().collect()
    }
}

impl ScreeningStats {
    /// The wire form sent to the dashboard.
    pub fn to_wire(&self) -> ScreeningStatus {
        ScreeningStatus {
            shards: self
                .shards
                .iter()
                .enumerate()
                .map(|(i, s)| ShardStatus {
                    shard: u32::try_from(i).unwrap_or(u32::MAX),
                    active_accounts: s.active.get(),
                    passivated_accounts: s.passivated.get(),
                    restarts_total: s.restarts.get(),
                    quarantines_total: s.quarantines.get(),
                    poison_total: s.poison.get(),
                    overloaded_total: s.overloaded.get(),
                    passivations_total: s.passivations.get(),
                })
                .collect(),
            poison: self.poison.records(),
        }
    }

    /// The sum of one counter over every shard.
    pub fn total(&self, counter: impl Fn(&ShardStats) -> &Counter) -> u64 {
        self.shards.iter().map(|s| counter(s).get()).sum()
    }
}

/// An account id as shown to operators: only its last four characters.
pub fn mask_account(account: &str) -> String {
    let skip = account.chars().count().saturating_sub(4);
    let tail: String = account.chars().skip(skip).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_masked_to_their_last_four_characters() {
        assert_eq!(mask_account("acct-00001234"), "…1234");
        assert_eq!(mask_account("ab"), "…ab");
    }

    #[test]
    fn the_poison_log_is_bounded_and_newest_first() {
        let log = PoisonLog::default();
        for i in 0..40 {
            let txn = Transaction {
                transaction_id: format!("t{i}"),
                account_id: "acct-9999".into(),
                ..Transaction::default()
            };
            log.record(0, &txn, 3, "boom", i);
        }
        let records = log.records();
        assert_eq!(records.len(), POISON_KEPT);
        assert_eq!(records[0].transaction_id, "t39");
        assert_eq!(records[0].account, "…9999");
    }
}
