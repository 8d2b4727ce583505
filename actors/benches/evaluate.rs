//! Nanoseconds per `rules::evaluate` call, by window size (the rules scan
//! the window, so a full 64-entry window is the worst case).
//!
//! `cargo bench -p txmesh-actors --bench evaluate`

use std::{hint::black_box, time::Instant};

use txmesh_actors::{
    rules::{evaluate, Evaluation},
    HistoryWindow, RulesConfig, WindowConfig,
};
use txmesh_proto::v1::Transaction;

const NOW: i64 = 1_800_000_000_000;

fn txn(i: i64) -> Transaction {
    Transaction {
        transaction_id: format!("t-{i:010}"),
        account_id: "acct-00000001".into(),
        amount_minor: 10_000 + (i % 7) * 100,
        currency: "EUR".into(),
        timestamp_unix_ms: NOW - 3_600_000 + i * 1_000,
        merchant_id: "m-00042".into(),
        country: "DE".into(),
        channel: 1,
    }
}

fn main() {
    let rules = RulesConfig::default();
    let config = WindowConfig::default();
    println!("window entries | ns per evaluate (median of 5 runs of 1,000,000)");
    for size in [0usize, 8, 32, 64] {
        let mut window = HistoryWindow::new();
        for i in 0..size as i64 {
            if let Evaluation::Fresh(v) = evaluate(&window, &txn(i), &rules, NOW) {
                window.record(&config, &txn(i), &v);
            }
        }
        let probe = txn(10_000);
        let mut runs = Vec::new();
        for _ in 0..5 {
            let n = 1_000_000u32;
            let start = Instant::now();
            for _ in 0..n {
                black_box(evaluate(black_box(&window), black_box(&probe), &rules, NOW));
            }
            runs.push(start.elapsed().as_nanos() as f64 / f64::from(n));
        }
        runs.sort_by(f64::total_cmp);
        println!("{:>14} | {:>8.1}", window.len(), runs[2]);
    }
}
