//! Exactly-once totals over at-least-once delivery: a batch is a run of a
//! publisher's journal positions; positions at or below what was applied
//! are duplicates (acknowledged, not counted), per publisher and journal; a
//! run that starts past the next position is a counted gap; and what was
//! acknowledged survives a restart without a graceful stop (a kill).

use txmesh_actors::config::{JournalConfig, SyncPolicy};
use txmesh_proto::v1::{Verdict, VerdictBatch, VerdictStatus};

use super::*;

fn aggregator(state: Option<&DurableState>) -> Aggregator {
    let stats = Arc::new(BroadcastStats::default());
    let broadcaster = Broadcaster::new(stats.clone()).start();
    Aggregator::new(state, broadcaster, stats, Duration::from_secs(1), 10, 60).expect("aggregator")
}

/// Publisher `publisher`'s journal `journal`, positions `first..=last`.
fn batch(publisher: &str, journal: u32, first: u64, statuses: &[VerdictStatus]) -> VerdictBatch {
    VerdictBatch {
        publisher_id: publisher.into(),
        sequence: first + statuses.len() as u64 - 1,
        first_sequence: first,
        journal,
        verdicts: statuses
            .iter()
            .enumerate()
            .map(|(i, s)| Verdict {
                transaction_id: format!("{publisher}-{journal}-{}", first + i as u64),
                status: *s as i32,
                ..Verdict::default()
            })
            .collect(),
        status: None,
    }
}

const A: VerdictStatus = VerdictStatus::Approved;
const F: VerdictStatus = VerdictStatus::Flagged;

/// Whether `b` was a duplicate.
fn apply(agg: &mut Aggregator, b: VerdictBatch) -> bool {
    agg.apply(b).expect("applied") == Applied::Duplicate
}

#[actix_rt::test]
async fn a_resent_batch_is_a_duplicate_and_a_gap_is_counted_not_hidden() {
    let mut agg = aggregator(None);
    assert!(!apply(&mut agg, batch("p", 0, 1, &[A, F])));
    assert!(!apply(&mut agg, batch("p", 0, 3, &[A])));
    // Resends after a broken stream: the same positions again.
    assert!(apply(&mut agg, batch("p", 0, 3, &[A])), "same positions");
    assert!(
        apply(&mut agg, batch("p", 0, 1, &[A, F])),
        "older positions"
    );
    assert_eq!(
        (agg.totals.verdicts, agg.totals.approved, agg.totals.flagged),
        (3, 2, 1)
    );
    assert_eq!(agg.publishers["p"].duplicates, 2);
    assert_eq!(agg.publishers["p"].applied[&0], 3);
    assert_eq!(agg.alerts.len(), 1, "a duplicate raises no second alert");

    // A run overlapping what was applied counts only its new part.
    assert!(!apply(&mut agg, batch("p", 0, 2, &[F, A, A, A])));
    assert_eq!(agg.totals.verdicts, 5, "positions 4 and 5 only");
    // A run past the next position: applied, and the gap is counted.
    assert!(!apply(&mut agg, batch("p", 0, 9, &[A])));
    assert_eq!(agg.publishers["p"].gap_verdicts, 3, "positions 6, 7, 8");
    // Another journal of the same publisher, and another publisher, have
    // their own positions.
    assert!(!apply(&mut agg, batch("p", 1, 1, &[F])));
    assert!(!apply(&mut agg, batch("q", 0, 1, &[F])));
    assert_eq!(agg.totals.verdicts, 8);
}

fn temp_state(name: &str) -> (PathBuf, DurableState) {
    let dir = std::env::temp_dir().join(format!(
        "txmesh-aggregator-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let journal = JournalConfig {
        sync: SyncPolicy::Never,
        ..JournalConfig::default()
    };
    let state = DurableState::beside(&dir.join("dashboard.json"), journal);
    (dir, state)
}

#[actix_rt::test]
async fn what_was_acknowledged_survives_a_kill_and_a_restart() {
    let (dir, state) = temp_state("kill");
    let mut agg = aggregator(Some(&state));
    apply(&mut agg, batch("p", 0, 1, &[A, A]));
    apply(&mut agg, batch("p", 0, 3, &[F]));
    // Killed: no snapshot, no graceful stop. The log has both batches.
    drop(agg);
    let mut again = aggregator(Some(&state));
    assert_eq!(
        (again.totals.verdicts, again.totals.flagged),
        (3, 1),
        "totals rebuilt from the log"
    );
    assert!(
        apply(&mut again, batch("p", 0, 3, &[F])),
        "applied before the kill: a duplicate"
    );
    assert!(!apply(&mut again, batch("p", 0, 4, &[A])));
    // A snapshot, more batches, another kill: snapshot plus the log after it.
    again.persist().expect("snapshot");
    apply(&mut again, batch("p", 0, 5, &[A, F]));
    drop(again);
    let third = aggregator(Some(&state));
    assert_eq!(third.totals.verdicts, 6);
    assert_eq!(third.totals.by_reason.values().sum::<u64>(), 0);
    assert_eq!(third.publishers["p"].applied[&0], 6);
    std::fs::remove_dir_all(&dir).ok();
}
