//! Three ingress replicas as three real processes on 127.0.0.1 (ports
//! chosen by the OS, published in the state directory's address files),
//! one dashboard, txgen connected to one replica only: every transaction
//! answered once, history kept at each account's owner whichever replica
//! the work arrived at, a killed replica's accounts answered retryably
//! until it is back with its history, and forwarded work with a stale
//! epoch refused.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use txmesh::config::TxmeshConfig;
use txmesh_actors::partition::{PartitionMap, Replica};
use txmesh_proto::v1::{
    ingress_client::IngressClient, replica_client::ReplicaClient, txn_result::Outcome,
    ForwardRequest, ForwardedTxn, PartitionMapRequest, Reason, Transaction, TxnErrorCode,
    TxnResult, Verdict,
};

use crate::support::*;

const NAMES: [&str; 3] = ["ingress-0", "ingress-1", "ingress-2"];

/// The replicas' processes and gRPC addresses, index = ordinal.
struct Replicas {
    sets: Vec<(&'static str, String)>,
    names: Vec<String>,
    children: Vec<Option<std::process::Child>>,
    addrs: Vec<SocketAddr>,
    metrics: Vec<SocketAddr>,
}

impl Replicas {
    /// Starts the three replicas publishing to `dashboard`, and waits until
    /// each is SERVING.
    async fn start(config: &TxmeshConfig, dashboard: SocketAddr) -> Self {
        Self::start_with(config, dashboard, &[]).await
    }

    /// [`Self::start`] with more settings for every replica.
    async fn start_with(
        config: &TxmeshConfig,
        dashboard: SocketAddr,
        more: &[(&'static str, String)],
    ) -> Self {
        let mut sets = vec![
            ("state_dir", config.state_dir.display().to_string()),
            ("ingress.dashboard_addr", dashboard.to_string()),
            ("actors.shards.count", "2".to_owned()),
            ("cluster.replicas", NAMES.join(",")),
            ("cluster.address_dir", "cluster".to_owned()),
            (
                "ingress.handshake_timeout_ms",
                config.ingress.handshake_timeout_ms.to_string(),
            ),
        ];
        for (k, v) in more {
            sets.retain(|(key, _)| key != k);
            sets.push((k, v.clone()));
        }
        let mut replicas = Self {
            sets,
            names: NAMES.iter().map(|n| (*n).to_owned()).collect(),
            children: Vec::new(),
            addrs: Vec::new(),
            metrics: Vec::new(),
        };
        for i in 0..NAMES.len() {
            replicas.add_started(i);
        }
        for addr in &replicas.addrs {
            wait_serving(config, *addr, "ingress").await;
        }
        replicas
    }

    fn add_started(&mut self, i: usize) {
        let (child, addr, metrics) = self.spawn(i);
        self.children.push(Some(child));
        self.addrs.push(addr);
        self.metrics.push(metrics);
    }

    fn spawn(&self, i: usize) -> (std::process::Child, SocketAddr, SocketAddr) {
        let mut sets = self.sets.clone();
        sets.push(("cluster.name", self.names[i].clone()));
        spawn_ingress_listening(&sets, "127.0.0.1:0".parse().expect("addr"))
    }

    /// Handoffs replica `i` counted with `outcome`.
    async fn handoffs(&self, config: &TxmeshConfig, i: usize, outcome: &str) -> f64 {
        let (_, body) = scrape(config, "operator", "ingress", self.metrics[i]).await;
        value(
            &body,
            &format!("txmesh_handoffs_total{{outcome=\"{outcome}\"}}"),
        )
    }

    /// Partitions replica `i` reports in `state` (serving, incoming,
    /// outgoing).
    async fn partitions(&self, config: &TxmeshConfig, i: usize, state: &str) -> f64 {
        let (_, body) = scrape(config, "operator", "ingress", self.metrics[i]).await;
        value(&body, &format!("txmesh_partitions{{state=\"{state}\"}}"))
    }

    /// Transactions replica `i` has forwarded with `outcome`.
    async fn forwarded(&self, config: &TxmeshConfig, i: usize, outcome: &str) -> f64 {
        let (_, body) = scrape(config, "operator", "ingress", self.metrics[i]).await;
        value(
            &body,
            &format!("txmesh_forwarded_transactions_total{{outcome=\"{outcome}\"}}"),
        )
    }

    /// Stops every replica with SIGTERM (each drains its publisher).
    async fn stop(mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let status = signal(child, "-TERM").await;
            assert!(status.success(), "{status:?}");
        }
    }
}

/// A test that fails leaves no replica running.
impl Drop for Replicas {
    fn drop(&mut self) {
        for mut child in self.children.iter_mut().filter_map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The map every replica computes from the configured set.
fn map() -> PartitionMap {
    let set = NAMES
        .iter()
        .map(|n| Replica {
            name: (*n).to_owned(),
            addr: String::new(),
        })
        .collect();
    PartitionMap::new(1024, set).expect("valid map")
}

/// An account that replica `owner` owns (`tag` makes it unique).
fn account_of(owner: usize, tag: &str) -> String {
    let map = map();
    (0..)
        .map(|i| format!("{tag}-{i}"))
        .find(|a| map.locate(a).1.name == NAMES[owner])
        .expect("some account hashes to every replica")
}

/// Account `account`'s transaction `i` of `amount`, `secs_ago` old.
fn txn_at(account: &str, i: u32, amount: i64, secs_ago: i64) -> Transaction {
    let mut t = txn(&format!("{account}-{i}"), account, amount);
    t.timestamp_unix_ms = txmesh_actors::clock::system_unix_ms() - secs_ago * 1000;
    t
}

async fn screen_via(config: &TxmeshConfig, addr: SocketAddr, t: Transaction) -> TxnResult {
    let mut client = IngressClient::new(channel_as(config, "txgen", "ingress", addr));
    client.screen_one(t).await.expect("answered").into_inner()
}

fn verdict(r: &TxnResult) -> &Verdict {
    match &r.outcome {
        Some(Outcome::Verdict(v)) => v,
        other => panic!("expected a verdict for {}, got {other:?}", r.transaction_id),
    }
}

/// Waits until the dashboard has applied at least `n` verdicts in all.
async fn dashboard_counts(dash: &txmesh::dashboard::DashboardHandle, n: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = dash.snapshot().await.expect("snapshot").totals.verdicts;
        if got >= n || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn three_replicas_answer_everything_sent_to_one_with_history_at_each_owner() {
    let dir = TempDir::new("replicas");
    let mut config = test_config(&dir.0);
    let _machine = machine_shared().await;
    let dash = txmesh::dashboard::start(&config).await.expect("dashboard");
    let replicas = Replicas::start(&config, dash.grpc_addr).await;

    // The map each serves: three replicas with their addresses, every
    // partition covered once, at epoch 1.
    let mut client = IngressClient::new(channel_as(&config, "txgen", "ingress", replicas.addrs[1]));
    let served = client
        .get_partition_map(PartitionMapRequest {})
        .await
        .expect("map served")
        .into_inner();
    assert_eq!(served.partitions, 1024);
    assert_eq!(served.served_by, "ingress-1");
    let addrs: Vec<String> = served.replicas.iter().map(|r| r.addr.clone()).collect();
    let expected: Vec<String> = replicas.addrs.iter().map(ToString::to_string).collect();
    assert_eq!(addrs, expected);
    let covered: u32 = served.ranges.iter().map(|r| r.last - r.first + 1).sum();
    assert_eq!(covered, 1024);
    assert!(served.ranges.iter().all(|r| r.epoch == 1));

    // VELOCITY and STRUCTURING for accounts owned by ingress-2 whose
    // transactions arrive through ingress-0 and ingress-1 in turn.
    let fast = account_of(2, "fast");
    let mut last = None;
    for i in 0..11 {
        let via = replicas.addrs[i as usize % 2];
        last = Some(screen_via(&config, via, txn_at(&fast, i, 1_000, 30 - i64::from(i))).await);
    }
    let last = last.expect("screened");
    assert_eq!(verdict(&last).reasons, vec![Reason::Velocity as i32]);
    let split = account_of(2, "split");
    let mut reasons = Vec::new();
    for i in 0..3 {
        let via = replicas.addrs[i as usize % 2];
        let r = screen_via(&config, via, txn_at(&split, i, 950_000, 60 - i64::from(i))).await;
        reasons = verdict(&r).reasons.clone();
    }
    assert!(
        reasons.contains(&(Reason::Structuring as i32)),
        "{reasons:?}"
    );
    let own = 14;

    // Load through ingress-0 alone: two thirds of it is forwarded.
    config.txgen.target = replicas.addrs[0].into();
    config.txgen.rate = 2_000;
    config.txgen.duration_secs = 4;
    config.txgen.accounts = 600;
    let report = run_txgen(&config).await;
    println!("{}", report.summary());
    assert_eq!(report.answered, report.sent, "{}", report.summary());
    assert_eq!(report.errors, 0, "{:?}", report.by_error);
    assert_eq!(report.unanswered, 0);
    for (pattern, count) in &report.injected {
        assert_eq!(count.detected, count.sent, "{pattern} detected every time");
    }
    assert_eq!(report.clean.flagged, 0, "no clean transaction flagged");
    let forwarded = replicas.forwarded(&config, 0, "sent").await;
    let share = forwarded / report.sent as f64;
    assert!(
        (0.5..0.8).contains(&share),
        "{forwarded} of {} forwarded",
        report.sent
    );
    assert_eq!(replicas.forwarded(&config, 0, "failed").await, 0.0);

    // Partition-aware: straight to each owner, (almost) nothing forwarded.
    config.txgen.partition_aware = true;
    config.txgen.seed = 7;
    config.txgen.duration_secs = 2;
    let aware = run_txgen(&config).await;
    println!("{}", aware.summary());
    assert_eq!(aware.answered, aware.sent, "{}", aware.summary());
    assert_eq!(aware.errors, 0, "{:?}", aware.by_error);
    let mut after = 0.0;
    for i in 0..NAMES.len() {
        after += replicas.forwarded(&config, i, "sent").await;
    }
    // Only malformed input whose account id hashes elsewhere still hops.
    assert!(
        after - forwarded < aware.sent as f64 / 100.0,
        "{} of {} forwarded",
        after - forwarded,
        aware.sent
    );

    // Every replica published what it owns; the dashboard's totals equal
    // the answers.
    let answered = report.answered + aware.answered + own;
    let total = dashboard_counts(&dash, answered).await;
    assert_eq!(total, answered);
    let snapshot = dash.snapshot().await.expect("snapshot");
    for name in NAMES {
        let published: u64 = snapshot
            .publishers
            .iter()
            .filter(|(id, _)| id.contains(&format!("/{name}-")))
            .map(|(_, p)| p.record.applied.values().sum::<u64>())
            .sum();
        assert!(
            published > report.answered / 6,
            "{name} published {published}"
        );
    }
    // The page's partition map, assembled from what each replica claims:
    // every partition owned once, at epoch 1, by the replica the map names.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let claimed = loop {
        let map = dash.snapshot().await.expect("snapshot").partition_map;
        match map {
            Some(m) if m.claims.len() == NAMES.len() => break m,
            _ if tokio::time::Instant::now() >= deadline => panic!("no partition map: {map:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!((claimed.conflicts, claimed.unclaimed), (0, 0));
    assert!(!claimed.sets_differ);
    let expected = map();
    for (p, owner) in claimed.owners.iter().enumerate() {
        let claim = &claimed.claims[usize::try_from(*owner).expect("claimed")];
        let p = u32::try_from(p).expect("partition");
        assert_eq!(claim.replica, expected.owner(p).0.name);
    }
    let zero = &claimed.claims[0];
    assert_eq!(zero.replica, NAMES[0]);
    assert!(zero.forwarded_sent as f64 >= forwarded, "{zero:?}");
    assert!(claimed.claims[1..].iter().all(|c| c.forwarded_received > 0));
    replicas.stop().await;
    dash.stop().await;
}

#[actix_rt::test]
async fn a_killed_replica_is_answered_retryably_and_returns_with_its_history() {
    let dir = TempDir::new("replica-kill");
    let mut config = test_config(&dir.0);
    let _machine = machine_shared().await;
    let dash = txmesh::dashboard::start(&config).await.expect("dashboard");
    let mut replicas = Replicas::start(&config, dash.grpc_addr).await;

    // Ten transactions of an account ingress-1 owns, through ingress-0.
    let acct = account_of(1, "kill");
    for i in 0..10 {
        let r = screen_via(
            &config,
            replicas.addrs[0],
            txn_at(&acct, i, 1_000, 10 - i64::from(i)),
        )
        .await;
        verdict(&r);
    }

    config.txgen.target = replicas.addrs[0].into();
    config.txgen.rate = 3_000;
    config.txgen.duration_secs = 8;
    let (load, progress) = spawn_txgen_watched(&config);
    answered_at_least(&progress, 4_000).await;
    let child = replicas.children[1].take().expect("running");
    let killed = signal(child, "-KILL").await;
    assert!(!killed.success(), "killed, not exited: {killed:?}");

    // Meanwhile its accounts are answered with a retryable UNAVAILABLE
    // naming it, and a retry delay.
    let r = screen_via(&config, replicas.addrs[0], txn_at(&acct, 99, 1_000, 0)).await;
    let Some(Outcome::Error(e)) = &r.outcome else {
        panic!("an error while the owner is down: {r:?}");
    };
    assert_eq!(e.code(), TxnErrorCode::Unavailable);
    assert!(e.retryable && e.retry_after_ms > 0, "{e:?}");
    assert_eq!(e.owner, "ingress-1");

    let (child, addr, metrics) = replicas.spawn(1);
    replicas.children[1] = Some(child);
    replicas.addrs[1] = addr;
    replicas.metrics[1] = metrics;
    let report = tokio::time::timeout(Duration::from_secs(90), load)
        .await
        .expect("txgen finished its run")
        .expect("txgen task")
        .expect("txgen runs");
    println!("{}", report.summary());
    assert!(report.retries > 0, "{}", report.summary());
    assert_eq!(report.unanswered, 0, "{}", report.summary());
    assert_eq!(report.answered, report.sent, "{}", report.summary());
    assert_eq!(report.errors, 0, "{:?}", report.by_error);
    assert_eq!(report.screened_twice, 0, "{}", report.summary());

    // The history from before the kill: the eleventh is VELOCITY (the
    // refused one above never entered it: it may be sent again).
    let r = screen_via(&config, replicas.addrs[2], txn_at(&acct, 10, 1_000, 0)).await;
    assert!(
        verdict(&r).reasons.contains(&(Reason::Velocity as i32)),
        "{r:?}"
    );
    replicas.stop().await;
    let totals = dash.snapshot().await.expect("snapshot").totals;
    assert!(
        totals.verdicts >= report.answered + 11,
        "{} verdicts: {}",
        totals.verdicts,
        report.summary()
    );
    dash.stop().await;
}

#[actix_rt::test]
async fn forwarded_work_stamped_with_an_old_epoch_is_refused() {
    let dir = TempDir::new("replica-fence");
    let mut config = test_config(&dir.0);
    // The audit's idle-connection check waits this long.
    config.ingress.handshake_timeout_ms = 1_000;
    let _machine = machine_shared().await;
    let dash = txmesh::dashboard::start(&config).await.expect("dashboard");
    let replicas = Replicas::start(&config, dash.grpc_addr).await;
    let acct = account_of(2, "fence");
    let partition = map().partition_of(&acct);
    let forward = |epoch: u64, i: u32, request_id: u64| ForwardRequest {
        request_id,
        transactions: vec![ForwardedTxn {
            transaction: Some(txn_at(&acct, i, 1_000, 0)),
            partition,
            epoch,
        }],
        traceparent: String::new(),
        origin: "test".into(),
    };
    let send = |identity: &'static str, requests: Vec<ForwardRequest>| {
        let channel = channel_as(&config, identity, "ingress", replicas.addrs[2]);
        async move {
            let mut client = ReplicaClient::new(channel);
            let mut answers = client
                .forward(tokio_stream::iter(requests))
                .await?
                .into_inner();
            let mut out = Vec::new();
            while let Some(a) = answers.message().await? {
                out.push(a);
            }
            Ok::<_, tonic::Status>(out)
        }
    };
    // The refusal holds the account at the owner: transaction 2, sent
    // after 1, waits until 1 comes back at the current epoch.
    let answers = send(
        "ingress",
        vec![
            forward(0, 1, 1),
            forward(1, 2, 2),
            forward(1, 1, 3),
            forward(1, 2, 4),
        ],
    )
    .await
    .expect("answered");
    let result = |id: u64| {
        answers
            .iter()
            .find(|a| a.request_id == id)
            .and_then(|a| a.results.first())
            .expect("one result")
            .clone()
    };
    let Some(Outcome::Error(e)) = result(1).outcome else {
        panic!("a stale epoch is refused");
    };
    assert_eq!(e.code(), TxnErrorCode::WrongOwner);
    assert_eq!((e.owner.as_str(), e.owner_epoch), ("ingress-2", 1));
    let Some(Outcome::Error(e)) = result(2).outcome else {
        panic!("held behind the refused one");
    };
    assert_eq!(e.code(), TxnErrorCode::Held);
    verdict(&result(3));
    verdict(&result(4));
    // Only replicas may forward.
    let denied = send("txgen", vec![forward(1, 3, 5)])
        .await
        .expect_err("denied");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // `txmesh audit` covers the forwarding listener: mTLS only, ingress
    // allowed, txgen denied.
    let target = txmesh::cli::audit::AuditTarget {
        name: "ingress-2-forward".into(),
        addr: replicas.addrs[2],
        kind: txmesh::cli::audit::ListenerKind::ReplicaGrpc,
    };
    let options = txmesh::cli::audit::AuditOptions::for_config(&config);
    let report = txmesh::cli::audit::run(&[target], &options).await;
    assert_eq!(
        (report.failed, report.skipped),
        (0, 0),
        "{}",
        report.table()
    );
    assert!(report.passed >= 20, "{}", report.table());
    replicas.stop().await;

    // A replica started with another partition count than its map was
    // saved with refuses to start, naming the key: the count is fixed for
    // the life of a cluster (a changed replica set is a handoff instead).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_txmesh"))
        .arg("ingress")
        .args([
            "--set",
            &format!("state_dir={}", config.state_dir.display()),
        ])
        .args(["--set", "cluster.name=ingress-0"])
        .args(["--set", &format!("cluster.replicas={}", NAMES.join(","))])
        .args(["--set", "cluster.partitions=512"])
        .args(["--set", "ingress.listen=127.0.0.1:0"])
        .args(["--set", "ingress.metrics_listen=127.0.0.1:0"])
        .output()
        .expect("txmesh ingress");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cluster.partitions"), "{stderr}");
    dash.stop().await;
}

/// The `up --report json` object in `stdout`, and what it sent (at least
/// `min_sent`): every transaction answered once, no error, every pattern
/// detected, the dashboard applied exactly what the ingresses answered.
fn up_report(stdout: &[u8], min_sent: u64) -> (serde_json::Value, u64) {
    let report: serde_json::Value = serde_json::from_slice(stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(stdout)));
    let sent = report["sent"].as_u64().expect("sent");
    assert!(sent >= min_sent, "{report}");
    assert_eq!(report["answered"].as_u64(), Some(sent), "{report}");
    assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
    assert_eq!(report["screened_twice"].as_u64(), Some(0), "{report}");
    for (pattern, p) in report["injected"].as_object().expect("injected") {
        assert_eq!(p["detected"], p["sent"], "{pattern}: {report}");
    }
    assert_eq!(
        report["ingress_verdicts"], report["dashboard_this_run"],
        "{report}"
    );
    (report, sent)
}

/// `txmesh up --replicas 3` as the README has a newcomer run it (the real
/// binary, its own state directory and certificates, the shipped
/// defaults): every transaction answered once through ingress-0, every
/// pattern detected, and the dashboard applied exactly what the three
/// replicas answered.
#[actix_rt::test]
async fn up_with_three_replicas_answers_everything_once() {
    let dir = TempDir::new("up-replicas");
    let _machine = machine_shared().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_txmesh"))
        .current_dir(&dir.0)
        .args(["up", "--replicas", "3", "--rate", "500", "--duration", "3s"])
        .args(["--port-offset", "21000", "--report", "json", "--state-dir"])
        .arg(dir.0.join("state"))
        .kill_on_drop(true)
        .output()
        .await
        .expect("txmesh up runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let (report, sent) = up_report(&out.stdout, 1_000);
    assert_eq!(report["ingress_verdicts"].as_u64(), Some(sent), "{report}");
    assert_eq!(report["publisher_drained"], true, "{report}");
    // Each replica kept its own journal.
    for name in NAMES {
        let journal = dir.0.join("state/replicas").join(name).join("journal");
        assert!(journal.is_dir(), "{}", journal.display());
    }
}

const FOUR: [&str; 4] = ["ingress-0", "ingress-1", "ingress-2", "ingress-3"];

/// Writes the members file the replicas watch (renamed into place, so a
/// replica never reads half of it).
fn write_members(state_dir: &std::path::Path, names: &[&str]) {
    let file = state_dir.join("cluster/members");
    std::fs::create_dir_all(file.parent().expect("dir")).expect("cluster dir");
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("# the replica set\n{}\n", names.join("\n"))).expect("write");
    std::fs::rename(&tmp, &file).expect("rename");
}

/// Waits until no live replica has a partition on the move and replica
/// `busiest` serves some: every handoff of the last change is done.
async fn settled(replicas: &Replicas, config: &TxmeshConfig, live: &[usize], serves: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut moving = 0.0;
        for &i in live {
            moving += replicas.partitions(config, i, "incoming").await;
            moving += replicas.partitions(config, i, "outgoing").await;
        }
        let serving = replicas.partitions(config, serves, "serving").await;
        if moving == 0.0 && serving > 0.0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "handoffs not done: {moving} partitions moving, {} serves {serving}",
            replicas.names[serves]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The partitions replica `name` saved as holding.
fn held(state_dir: &std::path::Path, name: &str) -> Vec<u32> {
    let file = state_dir
        .join("replicas")
        .join(name)
        .join("partition-map.json");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("saved map")).expect("json");
    saved["held"]
        .as_array()
        .expect("held")
        .iter()
        .flat_map(|run| {
            let first = run[0].as_u64().expect("first");
            let last = run[1].as_u64().expect("last");
            (first..=last).map(|p| u32::try_from(p).expect("partition"))
        })
        .collect()
}

/// Scale 3 -> 4 -> 3 under load through one replica: every transaction
/// answered exactly once, every pattern detected, the dashboard = the
/// answers; an account's history moves with it (VELOCITY across both
/// moves); at the end every partition is held by exactly one replica and
/// every account's window, read from the journals, is in the order txgen
/// sent its transactions.
#[actix_rt::test]
async fn scaling_three_to_four_to_three_under_load_moves_history_in_order() {
    let dir = TempDir::new("replica-scale");
    let mut config = test_config(&dir.0);
    let _machine = machine_shared().await;
    let dash = txmesh::dashboard::start(&config).await.expect("dashboard");
    write_members(&config.state_dir, &NAMES);
    let more = [
        ("cluster.members_file", "cluster/members".to_owned()),
        ("cluster.members_poll_ms", "200".to_owned()),
        // The set each replica may be part of (the file says which it is).
        ("cluster.replicas", FOUR.join(",")),
    ];
    let mut replicas = Replicas::start_with(&config, dash.grpc_addr, &more).await;

    // An account that moves to ingress-3 and back, with ten transactions
    // before the first move.
    let four = PartitionMap::new(
        1024,
        FOUR.iter()
            .map(|n| Replica {
                name: (*n).to_owned(),
                addr: String::new(),
            })
            .collect(),
    )
    .expect("map");
    let moving = (0..)
        .map(|i| format!("mover-{i}"))
        .find(|a| four.locate(a).1.name == "ingress-3")
        .expect("an account of ingress-3");
    let base = txmesh_actors::clock::system_unix_ms() - 30_000;
    let at = |i: i64| {
        let mut t = txn(&format!("{moving}-{i}"), &moving, 1_000);
        t.timestamp_unix_ms = base + i * 1_000;
        t
    };
    for i in 0..10 {
        verdict(&screen_via(&config, replicas.addrs[0], at(i)).await);
    }

    config.txgen.target = replicas.addrs[0].into();
    config.txgen.rate = 1_500;
    config.txgen.duration_secs = 30;
    config.txgen.accounts = 1_500;
    let (load, progress) = spawn_txgen_watched(&config);
    answered_at_least(&progress, 3_000).await;

    // 3 -> 4: the new replica starts without a map, takes the epochs from
    // a peer, and serves what it wins once the old owners handed it over.
    write_members(&config.state_dir, &FOUR);
    replicas.names.push(FOUR[3].to_owned());
    replicas.add_started(3);
    settled(&replicas, &config, &[0, 1, 2, 3], 3).await;
    for i in 0..3 {
        assert!(replicas.handoffs(&config, i, "sent").await >= 1.0);
    }
    assert!(replicas.handoffs(&config, 3, "received").await >= 3.0);
    let r = screen_via(&config, replicas.addrs[1], at(10)).await;
    assert!(
        verdict(&r).reasons.contains(&(Reason::Velocity as i32)),
        "the history moved to ingress-3: {r:?}"
    );
    let during = progress.answered.load(std::sync::atomic::Ordering::Relaxed);
    answered_at_least(&progress, during + 3_000).await;

    // 4 -> 3: ingress-3 hands everything back, then stops.
    write_members(&config.state_dir, &NAMES);
    settled(&replicas, &config, &[0, 1, 2, 3], 0).await;
    assert_eq!(replicas.partitions(&config, 3, "serving").await, 0.0);
    assert!(replicas.handoffs(&config, 3, "sent").await >= 3.0);
    let child = replicas.children[3].take().expect("running");
    assert!(signal(child, "-TERM").await.success());
    let r = screen_via(&config, replicas.addrs[2], at(11)).await;
    assert!(
        verdict(&r).reasons.contains(&(Reason::Velocity as i32)),
        "the history came back: {r:?}"
    );

    let report = tokio::time::timeout(Duration::from_secs(120), load)
        .await
        .expect("txgen finished its run")
        .expect("txgen task")
        .expect("txgen runs");
    println!("{}", report.summary());
    assert_eq!(report.unanswered, 0, "{}", report.summary());
    assert_eq!(report.answered, report.sent, "{}", report.summary());
    assert_eq!(report.errors, 0, "{:?}", report.by_error);
    assert_eq!(report.screened_twice, 0, "{}", report.summary());
    for (pattern, count) in &report.injected {
        assert_eq!(count.detected, count.sent, "{pattern} detected every time");
    }
    assert_eq!(report.clean.flagged, 0, "no clean transaction flagged");
    let answered = report.answered + report.recovered_by_replay + 12;
    assert_eq!(dashboard_counts(&dash, answered).await, answered);
    replicas.stop().await;
    dash.stop().await;

    // Every partition held by exactly one replica; ingress-3 holds none.
    let mut holder = HashMap::new();
    for name in FOUR {
        for p in held(&config.state_dir, name) {
            assert_eq!(holder.insert(p, name), None, "partition {p} held twice");
        }
    }
    assert_eq!(holder.len(), 1024);
    assert!(held(&config.state_dir, "ingress-3").is_empty());
    // Each account's window at its holder, as its journal recovers it:
    // txgen's transactions of each stream in the order it numbered them.
    let mut accounts = 0;
    for name in NAMES {
        let journal = config.state_dir.join("replicas").join(name).join("journal");
        let (journals, recovered) = txmesh_actors::journal::Journals::open(
            Some(&journal),
            &config.actors.journal,
            &config.actors.window,
            2,
            &txmesh_actors::journal::JournalHistograms::default(),
        )
        .expect("journal opens");
        for (account, window) in recovered.windows.iter().flatten() {
            let p = txmesh_actors::partition::partition_of(account, 1024);
            if holder[&p] != name {
                continue;
            }
            accounts += 1;
            let mut last: HashMap<&str, u64> = HashMap::new();
            for e in window.entries() {
                let id = e.transaction_id;
                let Some((stream, n)) = id.rsplit_once('-') else {
                    continue;
                };
                let n: u64 = n.parse().expect("a numbered id");
                if let Some(before) = last.insert(stream, n) {
                    assert!(
                        before < n,
                        "{account} (partition {p}, owner {} of four) at {name}: {before} before \
                         {n}: {:?}\nscreened, per replica in journal order:\n{}",
                        four.owner(p).0.name,
                        window
                            .entries()
                            .map(|e| e.transaction_id)
                            .collect::<Vec<_>>(),
                        screened_at(&config.state_dir, account)
                    );
                }
            }
        }
        journals.close();
    }
    assert!(accounts >= 1_000, "{accounts} accounts checked");
}

/// What each replica's journal recorded for `account`, in journal order
/// (what a failed order check shows).
fn screened_at(state_dir: &std::path::Path, account: &str) -> String {
    use txmesh_actors::journal::format::{scan, VerdictRecord, HEADER_LEN};
    let mut out = String::new();
    for name in FOUR {
        let journal = state_dir.join("replicas").join(name).join("journal");
        for shard in 0..2 {
            let dir = journal.join(format!("shard-{shard}"));
            let mut segments: Vec<_> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect();
            segments.sort();
            for seg in segments {
                let bytes = std::fs::read(&seg).unwrap_or_default();
                let body = bytes.get(HEADER_LEN..).unwrap_or_default();
                scan(body, |found| {
                    if let Some(r) = VerdictRecord::decode(found.payload) {
                        if &*r.account_id == account {
                            out.push_str(&format!(
                                "{name} lsn {} {} learned={} replayed={}\n",
                                found.lsn, r.entry.transaction_id, r.learned, r.replayed
                            ));
                        }
                    }
                });
            }
        }
    }
    out
}

/// `txmesh up --replicas 3 --partition-aware` scaled by its members file
/// the way the README says, under load: ingress-3 joins (started by `up`,
/// partitions handed to it), then leaves (handed back, then stopped);
/// every transaction answered once, the dashboard applied exactly what the
/// replicas answered, and ingress-3 ends holding nothing. txgen, told by
/// the replicas that its map went stale, refreshed it and sent ingress-3's
/// accounts straight to ingress-3 while it was in the set.
#[actix_rt::test]
async fn up_scales_by_its_members_file_under_load() {
    use tokio::io::AsyncBufReadExt;
    let dir = TempDir::new("up-scale");
    let _machine = machine_shared().await;
    let state = dir.0.join("state");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_txmesh"))
        .current_dir(&dir.0)
        .args([
            "up",
            "--replicas",
            "3",
            "--rate",
            "800",
            "--duration",
            "16s",
            "--partition-aware",
        ])
        .args(["--port-offset", "25000", "--report", "json", "--state-dir"])
        .arg(&state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("txmesh up starts");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut said = Vec::new();
    let mut wait_for = async |what: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {what:?} in:\n{}", said.join("\n")))
                .expect("stderr readable")
                .unwrap_or_else(|| panic!("up ended before {what:?}:\n{}", said.join("\n")));
            let found = line.contains(what);
            said.push(line);
            if found {
                return;
            }
        }
    };
    wait_for("Ctrl-C stops everything").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    write_members(&state, &FOUR);
    wait_for("ingress-3 joined").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    write_members(&state, &NAMES);
    wait_for("ingress-3 left").await;
    let out = child.wait_with_output().await.expect("up runs");
    assert!(out.status.success(), "{}", out.status);
    let (report, sent) = up_report(&out.stdout, 8_000);
    assert_eq!(report["publisher_drained"], true, "{report}");
    assert!(report["map_refreshes"].as_u64() >= Some(2), "{report}");
    // ingress-3 owned about a quarter of the accounts for about a quarter
    // of the run.
    let direct = report["sent_to"]["ingress-3"].as_u64().unwrap_or(0);
    assert!(
        direct > sent / 40,
        "{direct} of {sent} straight to ingress-3: {report}"
    );
    assert!(held(&state, "ingress-3").is_empty());
    let held_by_three: usize = NAMES.iter().map(|n| held(&state, n).len()).sum();
    assert_eq!(held_by_three, 1024);
}
