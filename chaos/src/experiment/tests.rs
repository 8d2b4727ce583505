use super::*;

const MINIMAL: &str = r#"
title = "t"
description = "d"
[steady_state]
title = "h"
[[steady_state.probes]]
name = "errors"
type = "ratio"
numerator = { target = "ingress", metric = "a", labels = { status = "error" } }
denominator = { target = "ingress", metric = "a" }
max = 0.001
[[method]]
type = "fault"
target = "dashboard"
kind = "ingest_refusal"
code = "UNAVAILABLE"
duration_secs = 5
"#;

fn error_of(text: &str) -> ChaosError {
    Experiment::parse("x.toml", text).expect_err("must be refused")
}

#[test]
fn a_minimal_experiment_parses_with_its_defaults() {
    let e = Experiment::parse("x.toml", MINIMAL).expect("parses");
    assert_eq!(e.steady_state.interval_ms, 500);
    assert!(!e.steady_state.abort_on_breach);
    let probe = &e.steady_state.probes[0];
    assert_eq!(probe.when, [Phase::Before, Phase::During, Phase::After]);
    let spec = e.method[0].fault_spec().expect("valid").expect("a fault");
    assert_eq!(spec.kind, FaultKind::IngestRefusal { code: 14 });
    assert_eq!(spec.rate, 1.0);
    assert_eq!(spec.duration, Duration::from_secs(5));
    assert_eq!(e.replicas, 1);
}

#[test]
fn mistakes_are_refused_naming_the_key() {
    let typo = MINIMAL.replace("duration_secs = 5", "duraton_secs = 5");
    let msg = error_of(&typo).to_string();
    assert!(
        msg.contains("x.toml") && msg.contains("duraton_secs"),
        "{msg}"
    );

    let kind = MINIMAL.replace("ingest_refusal", "meteor_strike");
    let msg = error_of(&kind).to_string();
    assert!(
        msg.contains("method[0]") && msg.contains("meteor_strike"),
        "{msg}"
    );

    let code = MINIMAL.replace("\"UNAVAILABLE\"", "\"TEAPOT\"");
    assert!(error_of(&code).to_string().contains("TEAPOT"));

    let probe = MINIMAL.replace("type = \"ratio\"", "type = \"vibes\"");
    let msg = error_of(&probe).to_string();
    assert!(msg.contains("vibes"), "{msg}");

    let load_during = MINIMAL.replace(
        "[[method]]",
        "[[steady_state.probes]]\nname = \"l\"\ntype = \"load\"\nfield = \"errors\"\nmax = 0\n[[method]]",
    );
    assert!(error_of(&load_during).to_string().contains("after"));

    let replica_link = format!(
        "{MINIMAL}[[method]]\ntype = \"wire\"\nlink = \"replica_link\"\n\
         fault = {{ kind = \"black_hole\" }}\nduration_secs = 1\n"
    );
    let msg = error_of(&replica_link).to_string();
    assert!(
        msg.contains("method[1].link") && msg.contains("replicas"),
        "{msg}"
    );
    let clustered = replica_link.replace("title = \"t\"", "title = \"t\"\nreplicas = 3");
    assert_eq!(
        Experiment::parse("x.toml", &clustered)
            .expect("parses")
            .replicas,
        3
    );
    let too_many = MINIMAL.replace("title = \"t\"", "title = \"t\"\nreplicas = 0");
    assert!(error_of(&too_many).to_string().contains("replicas"));
}

#[test]
fn every_shipped_experiment_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("experiments folder") {
        let path = entry.expect("entry").path();
        let e = Experiment::load(&path).unwrap_or_else(|err| panic!("{err}"));
        assert!(!e.method.is_empty(), "{}", path.display());
        names.push(
            path.file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    assert_eq!(
        names,
        [
            "actor-crash-storm.toml",
            "cert-rotation-under-load.toml",
            "dashboard-outage.toml",
            "ingress-crash.toml",
            "ingress-stream-resets.toml",
            "replica-partition.toml",
            "slow-dashboard-link.toml",
        ]
    );
}

#[test]
fn the_cluster_steady_state_experiment_is_valid() {
    // chaos/k8s/steady-state.yaml embeds an experiment in a ConfigMap; it
    // is the block under `steady-state.toml: |`, indented four spaces.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s");
    let yaml = std::fs::read_to_string(dir.join("steady-state.yaml")).expect("manifest");
    let (_, block) = yaml
        .split_once("steady-state.toml: |\n")
        .expect("the ConfigMap holds steady-state.toml");
    let toml: String = block
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let e = Experiment::parse("steady-state.yaml", &toml).unwrap_or_else(|err| panic!("{err}"));
    assert!(matches!(e.method[0], Action::Load { .. }));
}
