#!/usr/bin/env python3
"""Validates chaos/k8s/*.yaml: Chaos Mesh resources against the JSON
Schemas in chaos/k8s/schemas (transcribed from the Chaos Mesh v2.7 CRDs:
the CRD files are in no package registry CI can reach), core resources
(Job, ConfigMap) against Kubernetes' own OpenAPI schemas with
kubernetes-validate in strict mode. (The experiment embedded in the
steady-state ConfigMap is parsed by txmesh's own loader in the Rust tests.)
Exits non-zero when any document is invalid."""
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
KUBERNETES_VERSION = "1.33.0"


def main() -> int:
    schemas = {p.stem: json.loads(p.read_text()) for p in (HERE / "schemas").glob("*.json")}
    checked = 0
    failed = 0
    for path in sorted(HERE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            where = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                if doc.get("apiVersion", "").startswith("chaos-mesh.org/"):
                    schema = schemas.get(doc["kind"])
                    if schema is None:
                        raise ValueError(f"no schema for {doc['kind']}")
                    jsonschema.Draft202012Validator(schema).validate(doc)
                else:
                    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except Exception as e:  # noqa: BLE001 - every failure is reported the same way
                failed += 1
                print(f"INVALID {where}: {getattr(e, 'message', e)}")
                continue
            checked += 1
            print(f"ok      {where}")
    print(f"{checked} valid, {failed} invalid")
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
