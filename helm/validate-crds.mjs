// Validates custom resources against the upstream CRD schemas packaged by
// @kubernetes-models (cert-manager, Prometheus Operator, Argo CD). Reads
// [{where, doc}] as JSON on stdin; prints {valid, invalid: [message]}; exit 1
// on any invalid document or unknown kind.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const packages = {
  "cert-manager.io": "@kubernetes-models/cert-manager",
  "trust.cert-manager.io": "@kubernetes-models/cert-manager",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "argoproj.io": "@kubernetes-models/argo-cd",
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
const items = JSON.parse(input);
const invalid = [];
let valid = 0;
for (const { where, doc } of items) {
  const [group, version] = doc.apiVersion.split("/");
  const pkg = packages[group];
  if (!pkg) {
    invalid.push(`${where}: no schema for ${doc.apiVersion}`);
    continue;
  }
  let Model;
  try {
    Model = require(`${pkg}/${group}/${version}/${doc.kind}`)[doc.kind];
  } catch (e) {
    invalid.push(`${where}: no schema for ${doc.apiVersion} ${doc.kind}`);
    continue;
  }
  try {
    new Model(doc).validate();
    valid += 1;
  } catch (e) {
    invalid.push(`${where}: ${e.message}`);
  }
}
process.stdout.write(JSON.stringify({ valid, invalid }));
process.exit(invalid.length ? 1 : 0);
