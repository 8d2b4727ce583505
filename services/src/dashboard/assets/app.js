// The operator's page. Everything a client of the ingress chose (ids,
// merchants, countries) is set as text (textContent), never as markup. On
// connect the dashboard sends who we are ("hello") and a snapshot; then
// numbered updates with only what changed. A missing number means an update
// was dropped for a slow browser: we ask for a snapshot again ("resync").
// Rows are kept and updated in place, so selecting and copying work.
"use strict";

const $ = (id) => document.getElementById(id);
const STALE_AFTER_MS = 3000;
const RECONNECT_CAP_MS = 3000;
const FEED_ROWS = 200;

const S = {
  seq: null,
  hist: null,
  historySecs: 3600,
  publishers: {},
  mesh: [],
  partitionMap: null, // owner per partition, when the ingress runs as replicas
  drawnMap: null,
  me: null,
  lastMessageAt: 0,
  open: false,
  closeReason: "",
  attempt: 0,
  reconnectAt: 0,
  rangeSecs: 300,
  skewMs: 0, // the dashboard's clock minus ours
  received: [], // [ms, bytes] of the last seconds
};

// ---- formatting ----------------------------------------------------------

const int = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
const fixed = (x, d) => (x == null ? "–" : Number(x).toFixed(d));
const ms = (x) => fixed(x, 2);
const rate = (x) => fixed(x, 1);

function duration(secs) {
  if (!isFinite(secs)) return "–";
  const neg = secs < 0;
  let s = Math.abs(Math.round(secs));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const out = d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
  return neg ? `-${out}` : out;
}

const clock = (unixMs) => new Date(unixMs).toLocaleTimeString("en-GB", { hour12: false });

// `amount_minor` in the currency's minor units, with its ISO 4217 exponent.
function amount(minor, exponent, currency) {
  if (exponent == null) return `${int(minor)} (minor units) ${currency}`;
  const neg = minor < 0;
  const digits = String(Math.abs(minor)).padStart(exponent + 1, "0");
  const whole = digits.slice(0, digits.length - exponent);
  const frac = exponent ? "." + digits.slice(digits.length - exponent) : "";
  return `${neg ? "-" : ""}${Number(whole).toLocaleString("en-US")}${frac} ${currency}`;
}

function setText(el, text) {
  if (el && el.textContent !== text) el.textContent = text;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  tr.appendChild(td);
  return td;
}

// A table whose rows are kept by key and only their changed cells touched.
function keyedRows(tbody, columns) {
  const rows = new Map();
  return {
    rows,
    set(key, values, rowClass) {
      let r = rows.get(key);
      if (!r) {
        const tr = document.createElement("tr");
        const tds = columns.map((cls) => cell(tr, "", cls));
        r = { tr, tds };
        rows.set(key, r);
        tbody.appendChild(tr);
      }
      // null: a cell its caller fills itself.
      values.forEach((v, i) => v !== null && setText(r.tds[i], String(v)));
      const cls = rowClass || "";
      if (r.tr.className !== cls) r.tr.className = cls;
      return r;
    },
    keep(keys) {
      for (const [k, r] of rows) if (!keys.has(k)) { r.tr.remove(); rows.delete(k); }
    },
  };
}

// ---- golden tiles and totals ----------------------------------------------

function renderGolden(g, totals) {
  for (const el of document.querySelectorAll(".window")) setText(el, String(g.window_secs));
  const i = g.ingress, l = g.link;
  setText($("gi-rate"), rate(i.tx_per_sec));
  setText($("gi-error"), fixed(i.error_pct, 2));
  setText($("gi-p50"), ms(i.p50_ms));
  setText($("gi-p95"), ms(i.p95_ms));
  setText($("gi-p99"), ms(i.p99_ms));
  setText($("gi-approved"), rate(i.approved_per_sec));
  setText($("gi-flagged"), rate(i.flagged_per_sec));
  setText($("gi-rejected"), rate(i.rejected_per_sec));
  setText($("gl-rate"), rate(l.verdicts_per_sec));
  setText($("gl-retries"), rate(l.retries_per_sec));
  setText($("gl-backlog"), int(l.backlog));
  setText($("gl-breakers"), `${l.breakers_not_closed} of ${l.publishers_live}`);
  setText($("gl-gaps"), int(l.gaps));
  setText($("gl-shed"), int(l.shed));
  setText($("gl-duplicates"), int(l.duplicates));
  for (const k of ["verdicts", "approved", "flagged", "rejected", "replayed"]) {
    setText($("t-" + k), int(totals[k]));
  }
  const keys = new Set();
  for (const [reason, n] of Object.entries(totals.by_reason)) {
    keys.add(reason);
    reasons.set(reason, [reason, int(n)]);
    addReasonOption(reason);
  }
  reasons.keep(keys);
}

const reasons = keyedRows($("reasons").tBodies[0], ["", "n"]);

// ---- charts (uPlot) -----------------------------------------------------

const COLORS = { approved: "#4fd1a5", flagged: "#f6c453", rejected: "#f2686b", errors: "#c792ea",
  p50: "#7aa7ff", p95: "#f6c453", p99: "#f2686b", transitions: "#f2686b", shed: "#c792ea", gaps: "#f6c453" };

const axis = { stroke: "#8596a8", grid: { stroke: "#243447", width: 1 }, ticks: { stroke: "#243447" } };
const bars = uPlot.paths.bars({ size: [0.7, 10] });

function line(label, color, extra) {
  return Object.assign({ label, stroke: color, width: 1.5, points: { show: false } }, extra);
}
function bar(label, color) {
  return { label, stroke: color, fill: color + "99", paths: bars, points: { show: false } };
}

const chartSpecs = [
  { el: "c-rate", fields: ["approved", "flagged", "rejected", "errors"],
    series: [line("approved", COLORS.approved), line("flagged", COLORS.flagged),
      line("rejected", COLORS.rejected), line("errors (ingress)", COLORS.errors)], unit: "/s" },
  { el: "c-latency", fields: ["p50_ms", "p95_ms", "p99_ms"],
    series: [line("p50", COLORS.p50), line("p95", COLORS.p95), line("p99", COLORS.p99)], unit: " ms" },
  { el: "c-events", fields: ["transitions", "shed", "gaps"],
    series: [bar("breaker transitions", COLORS.transitions), bar("shed", COLORS.shed), bar("gaps", COLORS.gaps)], unit: "" },
];

const charts = chartSpecs.map((spec) => {
  const el = $(spec.el);
  const opts = {
    width: Math.max(200, el.clientWidth),
    height: 200,
    series: [{}, ...spec.series.map((s) => Object.assign({ value: (u, v) => (v == null ? "–" : v + spec.unit) }, s))],
    axes: [Object.assign({ space: 90, values: (u, ticks) => ticks.map((t) => clock(t * 1000)) }, axis), Object.assign({ size: 50 }, axis)],
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max == null ? 1 : max * 1.1, 1)] } },
    cursor: { drag: { x: false, y: false } },
    legend: { live: true },
  };
  const data = [[], ...spec.fields.map(() => [])];
  const u = new uPlot(opts, data, el);
  new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height: 200 })).observe(el);
  return { spec, u, el };
});

function emptyHistory() {
  return { t: [], approved: [], flagged: [], rejected: [], errors: [], p50_ms: [], p95_ms: [], p99_ms: [], transitions: [], shed: [], gaps: [] };
}

function appendHistory(h) {
  if (!h || !h.t.length) return;
  const last = S.hist.t.length ? S.hist.t[S.hist.t.length - 1] : -Infinity;
  for (let i = 0; i < h.t.length; i++) {
    if (h.t[i] <= last) continue;
    for (const k of Object.keys(S.hist)) S.hist[k].push(h[k][i]);
  }
  const extra = S.hist.t.length - S.historySecs;
  if (extra > 0) for (const k of Object.keys(S.hist)) S.hist[k].splice(0, extra);
}

function drawCharts() {
  const t = S.hist.t;
  const end = t.length ? t[t.length - 1] : Math.floor(Date.now() / 1000);
  let from = 0;
  while (from < t.length && t[from] <= end - S.rangeSecs) from++;
  for (const c of charts) {
    const zeroIsNothing = c.spec.el === "c-events";
    const cols = c.spec.fields.map((f) => S.hist[f].slice(from).map((v) => (zeroIsNothing && v === 0 ? null : v)));
    c.u.setData([t.slice(from), ...cols]);
    c.el.dataset.points = String(t.length - from);
  }
}

for (const b of document.querySelectorAll("#range button")) {
  b.addEventListener("click", () => {
    S.rangeSecs = Number(b.dataset.secs);
    for (const o of document.querySelectorAll("#range button")) o.classList.toggle("on", o === b);
    drawCharts();
  });
}

// ---- breakers ----------------------------------------------------------

const breakerTiles = new Map();

function breakerTile(id) {
  let t = breakerTiles.get(id);
  if (t) return t;
  const box = $("breakers");
  const empty = box.querySelector(".empty");
  if (empty) empty.remove();
  const div = document.createElement("div");
  div.className = "breaker";
  const name = document.createElement("div");
  name.className = "id";
  name.textContent = id;
  const state = document.createElement("div");
  state.className = "state";
  const dl = document.createElement("dl");
  const fields = {};
  for (const [k, label] of [["since", "in state for"], ["transitions", "transitions"], ["rate", "verdicts/s"],
    ["retries", "retries"], ["backlog", "backlog"], ["shed", "shed"], ["gaps", "gaps"], ["seen", "last seen"]]) {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dl.append(dt, dd);
    fields[k] = dd;
  }
  div.append(name, state, dl);
  box.appendChild(div);
  t = { div, state, fields };
  breakerTiles.set(id, t);
  return t;
}

function renderBreakers(now) {
  for (const [id, p] of Object.entries(S.publishers)) {
    const t = breakerTile(id);
    const gone = p.gone;
    const cls = "breaker " + (gone ? "GONE" : p.breaker || "CLOSED");
    if (t.div.className !== cls) t.div.className = cls;
    setText(t.state, gone ? `GONE (was ${(p.breaker || "?").replace("_", "-")})` : (p.breaker || "?").replace("_", "-"));
    setText(t.fields.since, p.breaker_since_unix_ms ? duration((now - p.breaker_since_unix_ms) / 1000) : "–");
    setText(t.fields.transitions, int(p.breaker_transitions_total));
    setText(t.fields.rate, gone ? "–" : rate(p.verdicts_per_sec));
    setText(t.fields.retries, int(p.retries_total));
    setText(t.fields.backlog, int(p.outbox_depth));
    setText(t.fields.shed, int(p.shed_total));
    setText(t.fields.gaps, int(p.gap_verdicts));
    setText(t.fields.seen, p.last_seen_unix_ms ? duration((now - p.last_seen_unix_ms) / 1000) + " ago" : "never");
  }
}

// ---- shards and poison ---------------------------------------------------

const shardRows = keyedRows($("shards").tBodies[0], ["", "n", "n", "n", "n", "n", "n", "n", "n"]);
const poisonRows = keyedRows($("poison").tBodies[0], ["", "", "", "n", "n", ""]);

function renderShards(now) {
  const keys = new Set(), poison = new Set();
  for (const [id, p] of Object.entries(S.publishers)) {
    const gone = p.gone ? "gone" : "";
    for (const s of p.shards || []) {
      const key = id + "\u0000" + s.shard;
      keys.add(key);
      shardRows.set(key, [id, s.shard, int(s.active_accounts), int(s.passivated_accounts), int(s.passivations_total),
        int(s.restarts_total), int(s.quarantines_total), int(s.poison_total), int(s.overloaded_total)], gone);
    }
    for (const r of p.poison || []) {
      const key = [id, r.transaction_id, r.unix_ms, r.shard].join("\u0000");
      poison.add(key);
      poisonRows.set(key, [clock(r.unix_ms), r.transaction_id, r.account, r.attempts, r.shard, r.message], gone);
    }
  }
  shardRows.keep(keys);
  poisonRows.keep(poison);
  $("poison-none").hidden = poison.size > 0;
}

// ---- partitions ------------------------------------------------------------

// One colour per replica (by its index in the claims); gone, unclaimed and
// claimed twice have their own.
const OWNER_COLOURS = ["#7aa7ff", "#4fd1a5", "#c792ea", "#f6c453", "#5fd4e8", "#f0a06b", "#9ccc65", "#e57fb3"];
const GONE_COLOUR = "#3a4654", UNCLAIMED_COLOUR = "#1b2633", CONFLICT_COLOUR = "#f2686b", MOVING_COLOUR = "#ffffff";
const claimRows = keyedRows($("partition-claims").tBodies[0], ["", "", "n", "n", "n", "n", "n", "n", "n", "n", ""]);

function ownerColour(map, owner) {
  if (owner === -3) return MOVING_COLOUR;
  if (owner === -2) return CONFLICT_COLOUR;
  if (owner < 0) return UNCLAIMED_COLOUR;
  return map.claims[owner].gone ? GONE_COLOUR : OWNER_COLOURS[owner % OWNER_COLOURS.length];
}

function renderPartitions() {
  const map = S.partitionMap;
  $("partitions").hidden = !map;
  if (!map) return;
  setText($("pm-partitions"), int(map.partitions));
  setText($("pm-replicas"), int(map.replicas.length));
  setText($("pm-gone"), int(map.owners.filter((o) => o >= 0 && map.claims[o].gone).length));
  setText($("pm-unclaimed"), int(map.unclaimed));
  setText($("pm-conflicts"), int(map.conflicts));
  $("pm-conflicts").className = "num" + (map.conflicts > 0 ? " bad" : "");
  setText($("pm-moving"), int(map.moving));
  $("pm-moving").className = "num" + (map.moving > 0 ? " warn" : "");
  $("pm-handoffs").replaceChildren(...map.handoffs.map((h) => {
    const li = document.createElement("li");
    li.textContent = `${h.from} → ${h.to}: ${int(h.partitions)} partitions handing over`;
    return li;
  }));
  $("pm-sets").hidden = !map.sets_differ;
  if (S.drawnMap !== map) {
    S.drawnMap = map;
    // A grid of cells, partition 0 top left, row by row.
    const canvas = $("partition-strip");
    const rows = 4, cols = Math.ceil(map.partitions / rows);
    canvas.width = cols;
    canvas.height = rows;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, cols, rows);
    map.owners.forEach((owner, p) => {
      g.fillStyle = ownerColour(map, owner);
      g.fillRect(p % cols, Math.floor(p / cols), 1, 1);
    });
  }
  const keys = new Set();
  map.claims.forEach((c, i) => {
    keys.add(c.publisher);
    const epoch = c.epoch_min === c.epoch_max ? String(c.epoch_max) : `${c.epoch_min}–${c.epoch_max}`;
    const r = claimRows.set(c.publisher, [null, c.publisher, int(c.owned), epoch, int(c.forwarded_sent),
      int(c.forwarded_failed), int(c.forwarded_received), int(c.forwarded_refused),
      `${int(c.incoming)} / ${int(c.outgoing)}`, `${int(c.handoffs_sent)} / ${int(c.handoffs_received)}`,
      c.gone ? "GONE" : (c.incoming || c.outgoing) ? "handing over" : "publishing"],
      c.gone ? "gone" : "");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = ownerColour(map, i);
    r.tds[0].replaceChildren(swatch, document.createTextNode(c.replica));
  });
  claimRows.keep(keys);
}

// ---- mesh ----------------------------------------------------------------

const EDGES = [
  { service: "screen", label: "txgen → ingress", server: "ingress" },
  { service: "publish", label: "ingress → dashboard", server: "dashboard" },
  { service: "forward", label: "ingress → ingress (forward)", server: "ingress", replicas: true },
  { service: "dashboard_ui", label: "operator → dashboard", server: "dashboard" },
  { service: "metrics", label: "prometheus → metrics", server: "*" },
  { service: "chaos_inject", label: "chaos → inject", server: "*" },
  { service: "chaos_list", label: "chaos → list", server: "*" },
];
const edgeRows = keyedRows($("mesh-edges").tBodies[0], ["", "", "", "", "n", "n", ""]);
const refusalRows = keyedRows($("mesh-refusals").tBodies[0], ["", "", "", "n"]);
const RENEWAL_WINDOW_SECS = 8 * 3600;

function expiry(td, spiffeId, notAfterUnix, now) {
  // Two lines: the identity, and its certificate's countdown.
  let id = td.firstChild, exp = td.lastChild;
  if (!td.dataset.built) {
    td.textContent = "";
    id = document.createElement("span");
    exp = document.createElement("span");
    exp.className = "exp";
    td.append(id, exp);
    td.dataset.built = "1";
  }
  setText(id, spiffeId || "(unknown)");
  if (!notAfterUnix) { setText(exp, "cert expiry unknown"); return false; }
  const left = notAfterUnix - now / 1000;
  const cls = left <= 0 ? "exp bad" : left < RENEWAL_WINDOW_SECS ? "exp warn" : "exp";
  if (exp.className !== cls) exp.className = cls;
  setText(exp, left <= 0 ? `certificate EXPIRED ${duration(-left)} ago` :
    `cert expires in ${duration(left)}${left < RENEWAL_WINDOW_SECS ? " (renewal due)" : ""}`);
  return left < RENEWAL_WINDOW_SECS;
}

// The mesh as a graph, Kiali style: a node per component, an edge per
// service a client calls, green when calls get through over mTLS, red when
// calls are denied or the server is gone, dashed when none were seen yet.
const SVG_NS = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs, parent) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}
const GRAPH_NODES = { txgen: [110, 60], ingress: [420, 60], dashboard: [740, 60], prometheus: [580, 195], operator: [890, 195] };
const GRAPH_EDGES = [
  { id: "screen", from: "txgen", to: "ingress", service: "screen" },
  { id: "publish", from: "ingress", to: "dashboard", service: "publish" },
  { id: "dashboard_ui", from: "operator", to: "dashboard", service: "dashboard_ui" },
  { id: "metrics-ingress", from: "prometheus", to: "ingress", service: "metrics" },
  { id: "metrics-dashboard", from: "prometheus", to: "dashboard", service: "metrics" },
];
const graphParts = (() => {
  const svg = $("mesh-graph");
  const defs = svgEl("defs", {}, svg);
  const marker = svgEl("marker", { id: "g-arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" }, defs);
  svgEl("path", { d: "M 0 0 L 10 5 L 0 10 z" }, marker);
  const edges = {}, nodes = {};
  const W = 190, H = 58;
  for (const e of GRAPH_EDGES) {
    const [x1, y1] = GRAPH_NODES[e.from], [x2, y2] = GRAPH_NODES[e.to];
    // From the client's box edge to the server's, so the arrow shows.
    const dx = x2 - x1, dy = y2 - y1;
    const scale = (k) => Math.min(Math.abs((W / 2) / (dx || 1e-9)), Math.abs((H / 2) / (dy || 1e-9))) * k;
    const s1 = scale(1), s2 = scale(1);
    const g = svgEl("g", { class: "g-edge", "data-edge": e.id }, svg);
    svgEl("line", { x1: x1 + dx * s1, y1: y1 + dy * s1, x2: x2 - dx * s2, y2: y2 - dy * s2, "marker-end": "url(#g-arrow)" }, g);
    const label = svgEl("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, "text-anchor": "middle" }, g);
    edges[e.id] = { g, label };
  }
  for (const [name, [x, y]] of Object.entries(GRAPH_NODES)) {
    const g = svgEl("g", { class: "g-node", "data-node": name }, svg);
    svgEl("rect", { x: x - W / 2, y: y - H / 2, width: W, height: H, rx: 8 }, g);
    const title = svgEl("text", { class: "name", x, y: y - 10, "text-anchor": "middle" }, g);
    title.textContent = name;
    const id = svgEl("text", { class: "id", x, y: y + 6, "text-anchor": "middle" }, g);
    const exp = svgEl("text", { class: "exp", x, y: y + 21, "text-anchor": "middle" }, g);
    nodes[name] = { g, id, exp };
  }
  return { edges, nodes };
})();

function certState(notAfterUnix, now) {
  if (!notAfterUnix) return ["", "cert expiry unknown"];
  const left = notAfterUnix - now / 1000;
  if (left <= 0) return ["bad", "cert EXPIRED"];
  return [left < RENEWAL_WINDOW_SECS ? "warn" : "", `cert ${duration(left)} left`];
}

function renderGraph(now) {
  const seen = {}; // node name -> [spiffe id, cert notAfter]
  for (const m of S.mesh.filter((m) => !m.gone)) seen[m.component] = seen[m.component] || [m.spiffe_id, m.cert_not_after_unix];
  for (const e of GRAPH_EDGES) {
    const servers = S.mesh.filter((m) => m.component === e.to);
    const peers = servers.flatMap((m) => m.peers.filter((p) => p.service === e.service));
    const allowed = peers.reduce((n, p) => n + p.allowed, 0), denied = peers.reduce((n, p) => n + p.denied, 0);
    const serverGone = servers.length > 0 && servers.every((m) => m.gone);
    if (peers.length && !seen[e.from]) seen[e.from] = [peers[0].spiffe_id, peers[0].cert_not_after_unix];
    const cls = "g-edge " + (denied > 0 || serverGone ? "bad" : allowed > 0 ? "ok" : "idle");
    const part = graphParts.edges[e.id];
    if (part.g.getAttribute("class") !== cls) part.g.setAttribute("class", cls);
    setText(part.label, allowed || denied ? `mTLS · ${e.service} · ${int(allowed)} ok${denied ? ` · ${int(denied)} denied` : ""}` : `${e.service}: no calls yet`);
  }
  for (const [name, part] of Object.entries(graphParts.nodes)) {
    const [id, notAfter] = seen[name] || ["", 0];
    const [state, text] = id ? certState(notAfter, now) : ["", ""];
    const cls = "g-node " + state;
    if (part.g.getAttribute("class") !== cls) part.g.setAttribute("class", cls);
    setText(part.id, id || "not seen");
    setText(part.exp, text);
  }
}

function renderMesh(now) {
  renderGraph(now);
  const keys = new Set(), refusals = new Set();
  for (const edge of EDGES) {
    const servers = S.mesh.filter((m) => edge.server === "*" || m.component === edge.server);
    let shown = 0;
    for (const m of servers) {
      for (const p of m.peers.filter((p) => p.service === edge.service)) {
        const key = [edge.service, m.spiffe_id, m.publisher || "", p.spiffe_id].join("\u0000");
        keys.add(key);
        const age = (now - p.last_seen_unix_ms) / 1000;
        const r = edgeRows.set(key, [edge.label, null, null, null, int(p.allowed), int(p.denied),
          p.last_seen_unix_ms ? duration(age) + " ago" : "–"], m.gone ? "gone" : "");
        const warnClient = expiry(r.tds[1], p.spiffe_id, p.cert_not_after_unix, now);
        const warnServer = expiry(r.tds[3], m.spiffe_id, m.cert_not_after_unix, now);
        if (!r.tds[2].firstChild) {
          const lock = document.createElement("span");
          lock.className = "lock";
          lock.textContent = "mTLS";
          lock.title = "mutual TLS 1.3: both ends verified against the trust bundle";
          r.tds[2].appendChild(lock);
        }
        const bad = p.denied > 0 || warnClient || warnServer || m.gone;
        r.tr.classList.toggle("bad", bad && !m.gone);
        shown++;
      }
    }
    // Forwarding is an edge only between replicas.
    if (!shown && edge.service !== "chaos_inject" && edge.service !== "chaos_list" && (!edge.replicas || S.partitionMap)) {
      const server = servers.find((m) => !m.gone);
      const key = edge.service + "\u0000none";
      keys.add(key);
      const r = edgeRows.set(key, [edge.label, "no calls seen yet", "", null, "0", "0", "–"], "gone");
      if (server) expiry(r.tds[3], server.spiffe_id, server.cert_not_after_unix, now);
    }
  }
  edgeRows.keep(keys);
  for (const m of S.mesh) {
    const where = m.component + (m.publisher ? ` ${m.publisher}` : "");
    for (const h of m.handshake_failures) {
      const key = [where, "tls", h.at, h.reason].join("\u0000");
      refusals.add(key);
      refusalRows.set(key, [where, `TLS handshake on ${h.at}`, h.reason, int(h.count)], "bad");
    }
    for (const d of m.denials) {
      const key = [where, "authz", d.at, d.reason].join("\u0000");
      refusals.add(key);
      refusalRows.set(key, [where, `call to ${d.at} denied`, d.reason, int(d.count)], "bad");
    }
  }
  refusalRows.keep(refusals);
  $("mesh-refusals-none").hidden = refusals.size > 0;
  $("mesh-refusals").hidden = refusals.size === 0;
}

// ---- alert feed ------------------------------------------------------------

const feed = { paused: false, pending: [], rows: [], omitted: 0 };
const alertsBody = $("alerts").tBodies[0];
const known = new Set([""]);

function addReasonOption(reason) {
  if (known.has(reason)) return;
  known.add(reason);
  const o = document.createElement("option");
  o.value = reason;
  o.textContent = reason;
  $("f-reason").appendChild(o);
}

function matches(a) {
  const status = $("f-status").value, reason = $("f-reason").value, q = $("f-search").value.trim();
  return (!status || a.status === status) && (!reason || a.reasons.includes(reason)) &&
    (!q || a.transaction_id.includes(q));
}

function alertRow(a) {
  const tr = document.createElement("tr");
  cell(tr, clock(a.unix_ms));
  cell(tr, a.transaction_id);
  cell(tr, a.account);
  cell(tr, a.status, a.status);
  cell(tr, a.reasons.join(", "));
  cell(tr, String(a.risk_score), "n");
  cell(tr, amount(a.amount_minor, a.exponent, a.currency), "n");
  cell(tr, a.merchant);
  cell(tr, a.country);
  tr.hidden = !matches(a);
  a.reasons.forEach(addReasonOption);
  return { a, tr };
}

// `alerts`: most recent first.
function addAlerts(alerts) {
  if (!alerts.length) return;
  if (feed.paused) {
    feed.pending = alerts.concat(feed.pending);
    setText($("f-pending"), `${int(feed.pending.length)} new while paused`);
    return;
  }
  const frag = document.createDocumentFragment();
  const rows = alerts.map(alertRow);
  for (const r of rows) frag.appendChild(r.tr);
  alertsBody.insertBefore(frag, alertsBody.firstChild);
  feed.rows = rows.concat(feed.rows);
  while (feed.rows.length > FEED_ROWS) feed.rows.pop().tr.remove();
  showFeedCount();
}

function showFeedCount() {
  const omitted = feed.omitted ? ` (${int(feed.omitted)} more arrived too fast to send)` : "";
  setText($("feed-count"), `${int(feed.rows.length)} most recent${omitted}`);
}

function resetAlerts(alerts) {
  feed.omitted = 0;
  feed.rows.forEach((r) => r.tr.remove());
  feed.rows = [];
  feed.pending = [];
  setText($("f-pending"), "");
  const paused = feed.paused;
  feed.paused = false;
  addAlerts(alerts);
  feed.paused = paused;
}

function refilter() {
  for (const r of feed.rows) {
    const hide = !matches(r.a);
    if (r.tr.hidden !== hide) r.tr.hidden = hide;
  }
}
for (const id of ["f-status", "f-reason"]) $(id).addEventListener("change", refilter);
$("f-search").addEventListener("input", refilter);
$("f-pause").addEventListener("click", () => {
  feed.paused = !feed.paused;
  $("f-pause").classList.toggle("on", feed.paused);
  setText($("f-pause"), feed.paused ? "resume" : "pause");
  if (!feed.paused) {
    const pending = feed.pending;
    feed.pending = [];
    setText($("f-pending"), "");
    addAlerts(pending);
  }
});

// ---- connection ------------------------------------------------------------

function applySnapshot(s) {
  S.seq = s.seq;
  S.historySecs = s.history_secs;
  S.hist = emptyHistory();
  appendHistory(s.history);
  S.publishers = s.publishers;
  S.mesh = s.mesh;
  S.partitionMap = s.partition_map;
  resetAlerts(s.recent_alerts);
  render(s);
  S.attempt = 0;
  S.closeReason = "";
  S.retryError = "";
}

function applyUpdate(u, ws) {
  if (S.seq == null || u.seq <= S.seq) return;
  if (u.seq !== S.seq + 1) {
    // Missed one: everything again.
    S.seq = null;
    ws.send("resync");
    return;
  }
  S.seq = u.seq;
  appendHistory(u.history);
  Object.assign(S.publishers, u.publishers);
  if (u.mesh) S.mesh = u.mesh;
  if (u.partition_map) S.partitionMap = u.partition_map;
  feed.omitted += u.alerts_omitted;
  addAlerts(u.alerts);
  showFeedCount();
  render(u);
}

const serverNow = () => Date.now() + S.skewMs;

function render(m) {
  S.skewMs = m.now_unix_ms - Date.now();
  renderGolden(m.golden, m.totals);
  drawCharts();
  const now = serverNow();
  renderBreakers(now);
  renderShards(now);
  renderMesh(now);
  renderPartitions();
  setText($("sessions"), `${m.sessions} browser session(s), ${int(m.dropped_updates)} update(s) dropped for slow browsers`);
}

function describeClose(e) {
  if (e.code === 1001) return e.reason || "dashboard shutting down";
  if (e.code === 1008) return e.reason || "refused by policy";
  if (e.code === 1006) return "connection lost (the dashboard is unreachable, or refused this browser's certificate)";
  return `closed (${e.code}${e.reason ? ": " + e.reason : ""})`;
}

function certExpired() {
  return S.me && S.me.cert_not_after_unix && Date.now() / 1000 >= S.me.cert_not_after_unix;
}

function connect() {
  S.reconnectAt = 0;
  const ws = new WebSocket(`wss://${location.host}/ws`);
  ws.onopen = () => { S.open = true; };
  ws.onmessage = (e) => {
    const now = Date.now();
    S.lastMessageAt = now;
    S.received.push([now, e.data.length]);
    let m;
    try { m = JSON.parse(e.data); } catch { return; }
    if (m.type === "hello") { S.me = m; setText($("me"), `as ${m.spiffe_id}`); }
    else if (m.type === "snapshot") applySnapshot(m);
    else if (m.type === "update") applyUpdate(m, ws);
    tick();
  };
  ws.onclose = (e) => {
    // Why the live connection ended stays shown; failed reconnects after
    // it are shown beside it.
    if (S.seq != null || !S.closeReason) { S.closeReason = describeClose(e); S.retryError = ""; }
    else S.retryError = describeClose(e);
    S.open = false;
    S.seq = null;
    // Jittered backoff: half to all of 0.5 s doubling, capped at 3 s.
    const cap = Math.min(RECONNECT_CAP_MS, 500 * 2 ** S.attempt);
    S.attempt++;
    const delay = cap / 2 + Math.random() * cap / 2;
    S.reconnectAt = Date.now() + delay;
    setTimeout(connect, delay);
    tick();
  };
}

// Once a second (and on every message): the honest state of the page.
function tick() {
  const now = Date.now();
  const age = now - S.lastMessageAt;
  const live = S.open && S.seq != null && age < STALE_AFTER_MS;
  document.body.classList.toggle("live", live);
  document.body.classList.toggle("stale", !live);
  setText($("conn"), live ? "live" : S.lastMessageAt ? "stale" : "connecting…");
  let detail = "";
  if (!live) {
    const parts = [];
    if (S.lastMessageAt) parts.push(`last update ${duration(age / 1000)} ago`);
    if (S.closeReason) parts.push(S.closeReason);
    if (S.retryError && S.retryError !== S.closeReason) parts.push(`then: ${S.retryError}`);
    if (S.reconnectAt > now) parts.push(`reconnecting in ${((S.reconnectAt - now) / 1000).toFixed(1)} s`);
    else if (!S.open) parts.push("reconnecting…");
    detail = parts.join(" · ");
  }
  setText($("conn-detail"), detail);
  const banner = $("banner");
  let message = "";
  if (certExpired() || /certificate expired/.test(S.closeReason)) {
    message = `Your client certificate${S.me ? " (" + S.me.spiffe_id + ")" : ""} has expired: the dashboard refuses it. ` +
      "Install a renewed operator certificate in this browser and reload the page.";
  } else if (S.me && S.me.cert_not_after_unix && S.me.cert_not_after_unix - now / 1000 < RENEWAL_WINDOW_SECS) {
    message = `Your client certificate expires in ${duration(S.me.cert_not_after_unix - now / 1000)}: renew it before then.`;
  }
  if (banner.textContent !== message) banner.textContent = message;
  banner.hidden = !message;
  while (S.received.length && S.received[0][0] < now - 10000) S.received.shift();
  const bytes = S.received.reduce((n, r) => n + r[1], 0);
  setText($("bytes"), `${int(Math.round(bytes / 10))} B/s received (last 10 s)`);
  if (S.open && S.seq != null) {
    renderBreakers(serverNow());
    renderMesh(serverNow());
  }
}

setInterval(tick, 1000);
S.hist = emptyHistory();
connect();
