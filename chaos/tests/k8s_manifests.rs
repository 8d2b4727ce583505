//! The Chaos Mesh manifests in chaos/k8s are valid: Chaos Mesh resources
//! against the schemas in chaos/k8s/schemas, core resources against
//! Kubernetes' own (kubernetes-validate, strict). The check is
//! chaos/k8s/validate.py; without Python and its modules this test skips,
//! unless TXMESH_REQUIRE_K8S_VALIDATE=1 (as in CI) makes that a failure.

use std::{path::Path, process::Command};

#[test]
fn chaos_mesh_manifests_match_their_schemas() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/validate.py");
    let required = std::env::var("TXMESH_REQUIRE_K8S_VALIDATE").is_ok_and(|v| v == "1");
    let output = match Command::new("python3").arg(&script).output() {
        Ok(output) => output,
        Err(e) if !required => {
            skipped(&format!("python3 is not available ({e})"));
            return;
        }
        Err(e) => panic!("python3 is required: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !required && stderr.contains("ModuleNotFoundError") {
        skipped(&stderr);
        return;
    }
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(" valid, 0 invalid"), "{stdout}");
}

/// Says so past the test harness's capture: a skip is seen in every run.
fn skipped(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: Chaos Mesh manifests not validated: {why} \
         (TXMESH_REQUIRE_K8S_VALIDATE=1 makes this a failure, as in CI)"
    );
}
