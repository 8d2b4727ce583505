//! `txmesh journal inspect` and `txmesh journal verify`: what an operator
//! reads off the journal under the state directory (the ingress's verdict
//! journal and the dashboard's applied-batch log), safe while the services
//! run (read only). `verify` checks every header and checksum and exits 1
//! when anything is damaged.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Subcommand;
use serde::Serialize;
use txmesh_actors::journal::{
    format::{LogKind, ScanEnd, HEADER_LEN},
    log, publisher_positions, snapshot,
};

use crate::config::TxmeshConfig;

#[derive(Subcommand)]
pub enum JournalCommand {
    /// Segments, records, positions, acknowledged position, snapshots and disk use.
    Inspect {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every segment header and record checksum; exit 1 on damage.
    Verify,
}

/// One log (a shard's journal, or the dashboard's applied log).
#[derive(Debug, Serialize)]
struct LogReport {
    name: String,
    dir: PathBuf,
    segments: Vec<SegmentReport>,
    records: u64,
    first: Option<u64>,
    last: Option<u64>,
    /// The dashboard's acknowledged position (ingress shards).
    acknowledged: Option<u64>,
    snapshot: Option<u64>,
    disk_bytes: u64,
    problems: Vec<String>,
}

#[derive(Debug, Serialize)]
struct SegmentReport {
    file: String,
    base: u64,
    bytes: u64,
    records: u64,
    first: Option<u64>,
    last: Option<u64>,
}

/// Runs a journal command.
///
/// # Errors
/// When the state directory cannot be read.
pub fn command(command: &JournalCommand, config: &TxmeshConfig) -> anyhow::Result<ExitCode> {
    let reports = read_all(config)?;
    match command {
        JournalCommand::Inspect { json } => {
            if *json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                print_table(&reports);
            }
            Ok(ExitCode::SUCCESS)
        }
        JournalCommand::Verify => {
            let mut ok = true;
            for r in &reports {
                for p in &r.problems {
                    ok = false;
                    println!("DAMAGED {}: {p}", r.name);
                }
                if r.problems.is_empty() {
                    println!(
                        "ok      {}: {} records in {} segments",
                        r.name,
                        r.records,
                        r.segments.len()
                    );
                }
            }
            if reports.is_empty() {
                println!("no journal under {}", config.state_dir.display());
            }
            Ok(super::exit(ok))
        }
    }
}

fn read_all(config: &TxmeshConfig) -> anyhow::Result<Vec<LogReport>> {
    let mut reports = Vec::new();
    let root = crate::ingress::journal_dir(config);
    if root.is_dir() {
        let acked = publisher_positions(&root).map(|p| p.1).unwrap_or_default();
        let mut shards: Vec<(usize, PathBuf)> = std::fs::read_dir(&root)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let n = e
                    .file_name()
                    .into_string()
                    .ok()?
                    .strip_prefix("shard-")?
                    .parse()
                    .ok()?;
                Some((n, e.path()))
            })
            .collect();
        shards.sort();
        for (n, dir) in shards {
            let mut report = read_log(&format!("ingress shard {n}"), &dir, LogKind::Verdicts);
            report.acknowledged = Some(acked.get(n).copied().unwrap_or(0));
            report.snapshot = snapshot::list(&dir).first().map(|s| s.0);
            reports.push(report);
        }
    }
    if !config.dashboard.state_file.is_empty() {
        let dir = config
            .state_dir
            .join(&config.dashboard.state_file)
            .with_extension("log");
        if dir.is_dir() {
            reports.push(read_log("dashboard applied log", &dir, LogKind::Applied));
        }
    }
    Ok(reports)
}

fn read_log(name: &str, dir: &Path, kind: LogKind) -> LogReport {
    let mut report = LogReport {
        name: name.to_owned(),
        dir: dir.to_owned(),
        segments: Vec::new(),
        records: 0,
        first: None,
        last: None,
        acknowledged: None,
        snapshot: None,
        disk_bytes: 0,
        problems: Vec::new(),
    };
    let segments = match log::list(dir) {
        Ok(s) => s,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    for segment in segments {
        report.disk_bytes += segment.bytes;
        let file = segment.path.display().to_string();
        match log::read_segment(&segment, kind, |_, _| {}) {
            Ok(read) => {
                report.records += read.records;
                report.first = report.first.or(read.first_lsn);
                report.last = read.last_lsn.or(report.last);
                match read.end {
                    ScanEnd::Clean => {}
                    ScanEnd::Torn { offset } => report.problems.push(format!(
                        "{file}: torn tail at byte {} ({} bytes after the last whole record)",
                        offset + HEADER_LEN,
                        segment.bytes - read.valid_bytes
                    )),
                    ScanEnd::Damaged { offset } => report.problems.push(format!(
                        "{file}: damaged record at byte {} (checksum or length); {} bytes from there are unreadable",
                        offset + HEADER_LEN,
                        segment.bytes - read.valid_bytes
                    )),
                }
                report.segments.push(SegmentReport {
                    file,
                    base: segment.base_lsn,
                    bytes: segment.bytes,
                    records: read.records,
                    first: read.first_lsn,
                    last: read.last_lsn,
                });
            }
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    report
}

fn print_table(reports: &[LogReport]) {
    for r in reports {
        let range = match (r.first, r.last) {
            (Some(a), Some(b)) => format!("{a}..={b}"),
            _ => "empty".to_owned(),
        };
        println!(
            "{}: {} records ({range}), {} segments, {} bytes on disk",
            r.name,
            r.records,
            r.segments.len(),
            r.disk_bytes
        );
        if let Some(acked) = r.acknowledged {
            let unacked = r.last.unwrap_or(0).saturating_sub(acked);
            println!("  acknowledged by the dashboard up to {acked} ({unacked} not yet)");
        }
        if let Some(lsn) = r.snapshot {
            println!("  window snapshot covers up to {lsn}");
        }
        for s in &r.segments {
            println!("  {}  {} records  {} bytes", s.file, s.records, s.bytes);
        }
        for p in &r.problems {
            println!("  DAMAGED: {p}");
        }
    }
}
