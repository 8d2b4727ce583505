#!/usr/bin/env python3
"""Renders and validates helm/txmesh and argocd/ offline, as CI does.

For every values set (the defaults, each shipped profile, the
existing-Secrets mode, a trust-bundle ConfigMap, and every environment of
argocd/applicationset.yaml with its valueFiles) the chart is checked against
values.schema.json, linted (strict) and rendered with Helm's own engine
(helm-python-sdk); every rendered object is validated: core kinds with
kubernetes-validate --strict against Kubernetes KUBERNETES_VERSION, custom
resources (cert-manager, Prometheus Operator, Argo CD) with the upstream
schemas of @kubernetes-models (validate-crds.mjs). Rendering twice must give
the same bytes (nothing random: Argo CD stays in sync). Bad values must be
refused by the schema. promtool checks and unit-tests the alerts.

Exit 0 when everything holds, 1 on any failure, 3 when a tool is missing.
"""
import copy
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CHART = HERE / "txmesh"
KUBERNETES_VERSION = "1.33.0"
NAMESPACE = "txmesh"
CUSTOM_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/", "argoproj.io/")

try:
    import helm_python
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - CI installs them
    print(f"MISSING: {e} (pip install helm-python-sdk kubernetes-validate PyYAML)")
    sys.exit(3)
for tool in ("node", "promtool"):
    if shutil.which(tool) is None:
        print(f"MISSING: {tool} on PATH")
        sys.exit(3)
if not (HERE / "node_modules" / "@kubernetes-models" / "cert-manager").is_dir():
    print("MISSING: helm/node_modules (npm ci --prefix helm)")
    sys.exit(3)

failures = []


def fail(what):
    failures.append(what)
    print(f"FAIL    {what}")


def merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_values(*files):
    values = {}
    for f in files:
        values = merge(values, yaml.safe_load((CHART / f).read_text()) or {})
    return values


def value_sets():
    sets = {
        "defaults": {},
        "production": load_values("values-production.yaml"),
        "staging": load_values("values-staging.yaml"),
        "existing-secrets": {"certificates": {"mode": "existingSecrets"}},
        "trust-bundle": merge(
            load_values("values-production.yaml"),
            {"certificates": {"trustBundle": {"configMap": "txmesh-trust"}}},
        ),
        "replicas": {"ingress": {"replicas": 3}},
        # Shrinking, first step: four pods, three in the set.
        "replicas-leaving": {"ingress": {"replicas": 4, "members": [0, 1, "txmesh-ingress-2"]}},
        "everything-off": {
            "networkPolicy": {"enabled": False},
            "podDisruptionBudget": {"enabled": False},
            "smokeTest": {"enabled": False},
            "topologySpread": {"enabled": False},
        },
    }
    appset = yaml.safe_load((ROOT / "argocd" / "applicationset.yaml").read_text())
    for element in appset["spec"]["generators"][0]["list"]["elements"]:
        files = [f for f in element["valueFiles"] if f != "values.yaml"]
        sets[f"argocd-{element['env']}"] = load_values(*files)
    return sets


# Values the schema must refuse: (description, values).
BAD_VALUES = [
    ("an unknown top-level key", {"ingres": {}}),
    ("an unknown nested key", {"ingress": {"replica": 2}}),
    ("more ingress replicas than the chart supports", {"ingress": {"replicas": 33}}),
    ("zero ingress replicas", {"ingress": {"replicas": 0}}),
    ("a replica set member that is not a name", {"ingress": {"replicas": 3, "members": ["Ingress 0"]}}),
    ("an unknown certificate mode", {"certificates": {"mode": "helmGenerated"}}),
    ("a journal sync policy that does not exist", {"ingress": {"journalSync": "sometimes"}}),
    ("a trust domain with a scheme", {"trustDomain": "spiffe://txmesh.local"}),
    ("a negative txgen rate", {"txgen": {"rate": -1}}),
    ("a duration without a unit", {"certificates": {"certManager": {"duration": "24"}}}),
    ("a volume size that is not a quantity", {"ingress": {"persistence": {"size": "lots"}}}),
    ("a string where a boolean goes", {"networkPolicy": {"enabled": "yes"}}),
    ("an image tag with spaces", {"image": {"tag": "latest please"}}),
]


def check_pod_specs(name, docs):
    """The chart's promises for every pod: non-root, read-only root, no
    capabilities, RuntimeDefault seccomp, exec probes (no plaintext port)."""
    for doc in docs:
        kind = doc.get("kind")
        if kind not in ("StatefulSet", "Deployment", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        where = f"{name}: {kind}/{doc['metadata']['name']}"
        psc = spec.get("securityContext", {})
        if not psc.get("runAsNonRoot") or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(f"{where}: pod securityContext is not non-root with RuntimeDefault seccomp")
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("capabilities", {}).get("drop") == ["ALL"]):
                fail(f"{where}/{c['name']}: container securityContext is not locked down")
            if "resources" not in c:
                fail(f"{where}/{c['name']}: no resources")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c and "exec" not in c[probe]:
                    fail(f"{where}/{c['name']}: {probe} is not an exec probe")
        if kind == "StatefulSet":
            c = spec["containers"][0]
            if not all(p in c for p in ("startupProbe", "readinessProbe", "livenessProbe")):
                fail(f"{where}: a server without all three probes")


def check_replicas(name, docs, values):
    """With ingress.replicas > 1 every replica is named after its pod, the
    set is the StatefulSet's pods, peers are reached through the headless
    Service, each journal is on its pod's volume, replicas are kept off one
    node, may call each other, and a PDB keeps all but one up. The ingress
    container's cluster environment goes to TXMESH_RENDERED_CONFIG_DIR as
    NAME.env, for the Rust test to load with the rendered txmesh.toml."""
    n = values.get("ingress", {}).get("replicas", 1)
    sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-ingress"))
    spec = sts["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    if n == 1:
        if any(k.startswith("TXMESH__CLUSTER__") for k in env) or mounts["journal"] != "/var/lib/txmesh/journal":
            fail(f"{name}: one ingress runs as a replica")
        return
    where = f"{name}: StatefulSet/{sts['metadata']['name']}"
    if sts["spec"]["replicas"] != n:
        fail(f"{where}: {sts['spec']['replicas']} replicas, not {n}")
    if env.get("TXMESH__CLUSTER__NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        fail(f"{where}: the replica's name is not its pod's")
    pods = [f"{sts['metadata']['name']}-{i}" for i in range(n)]
    if env.get("TXMESH__CLUSTER__REPLICAS", {}).get("value") != ",".join(pods):
        fail(f"{where}: cluster.replicas is not the StatefulSet's pods {pods}")
    if env.get("TXMESH__CLUSTER__MEMBERS_FILE", {}).get("value") != "/etc/txmesh/members":
        fail(f"{where}: the replicas do not read the set from the mounted members file")
    given = values.get("ingress", {}).get("members") or list(range(n))
    expected = [m if isinstance(m, str) else f"{sts['metadata']['name']}-{m}" for m in given]
    config = next(d for d in docs if d["kind"] == "ConfigMap" and "txmesh.toml" in d.get("data", {}))
    members = config["data"].get("members", "").split()
    if members != expected:
        fail(f"{where}: members file {members}, not {expected}")
    if not set(members) <= set(pods):
        fail(f"{where}: members {members} are not all pods {pods}")
    headless = sts["spec"]["serviceName"]
    if f"{{name}}.{headless}." not in env.get("TXMESH__CLUSTER__PEER_ADDR", {}).get("value", ""):
        fail(f"{where}: peers are not reached through {headless}")
    if not any(d["kind"] == "Service" and d["metadata"]["name"] == headless
               and d["spec"].get("clusterIP") == "None" for d in docs):
        fail(f"{where}: no headless Service {headless}")
    if mounts["journal"] != "/var/lib/txmesh/replicas":
        fail(f"{where}: the journal volume is not where a replica keeps its journal")
    if values.get("topologySpread", {}).get("enabled", True) and \
            "requiredDuringSchedulingIgnoredDuringExecution" not in \
            spec.get("affinity", {}).get("podAntiAffinity", {}):
        fail(f"{where}: no pod anti-affinity")
    if values.get("podDisruptionBudget", {}).get("enabled", True) and not any(
            d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"].endswith("-ingress") for d in docs):
        fail(f"{where}: no PodDisruptionBudget")
    if values.get("networkPolicy", {}).get("enabled", True):
        policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-ingress"))
        if not any(r["ports"] == [{"protocol": "TCP", "port": 7443}] for r in policy["spec"]["egress"]):
            fail(f"{name}: replicas may not reach each other (NetworkPolicy egress)")
        ingress_from = str(policy["spec"]["ingress"][0]["from"])
        if "'ingress'" not in ingress_from:
            fail(f"{name}: replicas may not be reached by each other (NetworkPolicy ingress)")
    out = os.environ.get("TXMESH_RENDERED_CONFIG_DIR")
    if out:
        lines = [f"TXMESH__CLUSTER__NAME={pods[-1]}"] + [
            f"{k}={e['value']}" for k, e in sorted(env.items()) if k.startswith("TXMESH__CLUSTER__") and "value" in e]
        pathlib.Path(out, f"{name}.env").write_text("\n".join(lines) + "\n")
        pathlib.Path(out, f"{name}.members").write_text(config["data"]["members"])


def save_config(name, docs):
    """Writes each rendered txmesh.toml to TXMESH_RENDERED_CONFIG_DIR (when
    set), where the Rust test loads it with txmesh's own config loader."""
    out = os.environ.get("TXMESH_RENDERED_CONFIG_DIR")
    for doc in docs:
        if doc["kind"] == "ConfigMap" and "txmesh.toml" in doc.get("data", {}):
            if out:
                pathlib.Path(out, f"{name}.toml").write_text(doc["data"]["txmesh.toml"])
            return
    fail(f"{name}: no txmesh.toml ConfigMap")


def render(chart, name, values):
    try:
        chart.validate_schema(values)
    except helm_python.HelmError as e:
        fail(f"{name}: the schema refuses the values: {e}")
        return []
    report = helm_python.lint(str(CHART), values, strict=True, namespace=NAMESPACE,
                              kube_version=f"v{KUBERNETES_VERSION}")
    for m in report.get("messages", []):
        if m.get("severity", 0) >= 2:
            fail(f"{name}: lint: {m.get('path')}: {m.get('error')}")
    first = chart.render(values, name="txmesh", namespace=NAMESPACE, is_install=True)
    again = chart.render(values, name="txmesh", namespace=NAMESPACE, is_install=True)
    if first != again:
        fail(f"{name}: two renders differ (random or generated values keep Argo CD OutOfSync)")
    docs = []
    for path, text in sorted(first.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def validate_core(name, docs):
    checked = 0
    for doc in docs:
        if doc.get("apiVersion", "").startswith(CUSTOM_GROUPS):
            continue
        where = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            checked += 1
        except Exception as e:  # noqa: BLE001 - every failure reported alike
            fail(f"{where}: {getattr(e, 'message', e)}")
    return checked


def validate_custom(batch):
    """batch: [(label, doc)] of custom resources, checked by node."""
    if not batch:
        return 0
    proc = subprocess.run(
        ["node", str(HERE / "validate-crds.mjs")],
        input=json.dumps([{"where": w, "doc": d} for w, d in batch]),
        capture_output=True, text=True, cwd=HERE,
    )
    result = json.loads(proc.stdout or "{}")
    for problem in result.get("invalid", []):
        fail(problem)
    if proc.returncode not in (0, 1) or "valid" not in result:
        fail(f"validate-crds.mjs: exit {proc.returncode}: {proc.stderr.strip()}")
    return result.get("valid", 0)


def check_dockerfile():
    """No Docker engine runs here, so the image is not built in CI; what can
    be checked offline is: every COPY source exists, the runtime user is the
    uid the chart runs as, and the chart's default image is this one."""
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            for src in parts[1:-1]:
                if not (ROOT / src).exists():
                    fail(f"Dockerfile: COPY {src}: no such file")
    if "USER 65532:65532" not in text:
        fail("Dockerfile: the runtime user is not 65532, the chart's runAsUser")
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    if defaults["image"]["repository"] not in text:
        fail("Dockerfile: does not build the chart's default image")
    print("checked Dockerfile")


def check_chaos_manifests(docs):
    """chaos/k8s selects the chart's pods (release `txmesh`, default values)
    and mounts the chart's Secrets."""
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs
            if d["kind"] in ("StatefulSet", "Deployment")]
    secrets = {d["spec"]["secretName"] for d in docs if d["kind"] == "Certificate"}

    def selectors(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "labelSelectors":
                    yield v
                else:
                    yield from selectors(v)
        elif isinstance(node, list):
            for v in node:
                yield from selectors(v)

    checked = 0
    for path in sorted((ROOT / "chaos" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            for sel in selectors(doc.get("spec", {})):
                checked += 1
                if sel.get("app.kubernetes.io/component") in ("chaos", "txgen"):
                    continue
                if not any(all(p.get(k) == v for k, v in sel.items()) for p in pods):
                    fail(f"chaos/k8s/{path.name}: selector {sel} matches no pod of the chart")
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for vol in pod.get("volumes", []):
                name = vol.get("secret", {}).get("secretName")
                if name and name not in secrets:
                    fail(f"chaos/k8s/{path.name}: Secret {name} is not one the chart makes")
    print(f"checked chaos/k8s: {checked} selectors")


def main():
    start = time.monotonic()
    check_dockerfile()
    chart = helm_python.Chart.load(str(CHART))
    valid = 0
    custom = []
    for name, values in value_sets().items():
        docs = render(chart, name, values)
        kinds = sorted({d["kind"] for d in docs})
        counts = {k: sum(1 for d in docs if d["kind"] == k) for k in kinds}
        print(f"rendered {name}: {len(docs)} objects: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
        check_pod_specs(name, docs)
        check_replicas(name, docs, values)
        save_config(name, docs)
        if name == "defaults":
            check_chaos_manifests(docs)
        if any(d["kind"] == "Secret" for d in docs):
            fail(f"{name}: the chart renders a Secret (certificates come from cert-manager or txmesh certs)")
        valid += validate_core(name, docs)
        custom += [(f"{name}: {d['kind']}/{d['metadata']['name']}", d) for d in docs
                   if d.get("apiVersion", "").startswith(CUSTOM_GROUPS)]
    for path in sorted((ROOT / "argocd").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                custom.append((f"argocd/{path.name}: {doc['kind']}/{doc['metadata']['name']}", doc))
    valid += validate_custom(custom)

    # The CRD check must be able to fail: a Certificate with a usage and a
    # key algorithm cert-manager does not know is refused.
    bad = {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "bad"},
           "spec": {"secretName": "s", "issuerRef": {"name": "i"}, "usages": ["any"],
                    "privateKey": {"algorithm": "DSA"}}}
    proc = subprocess.run(["node", str(HERE / "validate-crds.mjs")], capture_output=True, text=True,
                          input=json.dumps([{"where": "bad", "doc": bad}]), cwd=HERE)
    if proc.returncode != 1 or '"valid":0' not in proc.stdout:
        fail(f"validate-crds.mjs accepts a Certificate cert-manager would refuse: {proc.stdout}")
    else:
        print("refused a Certificate with an unknown usage and key algorithm (CRD schema)")

    for what, values in BAD_VALUES:
        try:
            chart.validate_schema(values)
            fail(f"the schema accepts {what}: {json.dumps(values)}")
        except helm_python.HelmError as e:
            first = " ".join(str(e).split()) or type(e).__name__
            print(f"refused {what}: {first[:160]}")

    files = CHART / "files"
    for args in (["check", "rules", str(files / "alerts.yaml")], ["test", "rules", str(files / "alerts.test.yaml")]):
        proc = subprocess.run(["promtool", *args], capture_output=True, text=True)
        print(f"promtool {' '.join(args[:2])}: exit {proc.returncode}")
        if proc.returncode != 0:
            fail(f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}")

    print(f"valid {valid}, invalid {len(failures)} ({time.monotonic() - start:.1f} s)")
    return 1 if failures or not valid else 0


if __name__ == "__main__":
    sys.exit(main())
