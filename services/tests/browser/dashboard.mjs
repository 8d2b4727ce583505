// The operator's page, checked in Debian's chromium (see
// services/tests/it/browser.rs, which starts the system and runs this).
// Prints `PASS <check>` per check and `ASK <what>` when the system must do
// something (the answer comes on stdin); exits non-zero on the first
// failure, saying why. Screenshots go to settings.screenshots.
import { chromium } from "playwright-core";
import http from "node:http";
import readline from "node:readline";
import path from "node:path";

const cfg = JSON.parse(process.argv[2]);
const origin = cfg.url.replace(/\/$/, "");
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
  "--no-first-run", "--disable-component-update", "--disable-sync"];

const pending = [];
let waiter = null;
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (waiter) { const w = waiter; waiter = null; w(line); } else pending.push(line);
});
function ask(what) {
  process.stdout.write(`ASK ${what}\n`);
  return new Promise((resolve) => (pending.length ? resolve(pending.shift()) : (waiter = resolve)));
}
const pass = (check, detail) => console.log(`PASS ${check}${detail ? " " + detail : ""}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, fn, timeoutMs = 10000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e.message; }
    await sleep(200);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}
function check(ok, what) { if (!ok) throw new Error(what); }

const browser = await chromium.launch({ executablePath: cfg.chromium, args: ARGS });
const contextFor = (who, extra = {}) => browser.newContext(Object.assign({
  // Playwright presents the client certificate through its own TLS proxy,
  // which the browser then sees as the server: server verification is the
  // audit's job (txmesh audit server_cert), not this test's.
  ignoreHTTPSErrors: true,
  viewport: { width: 1400, height: 900 },
  clientCertificates: who ? [{ origin, certPath: who.cert, keyPath: who.key }] : [],
}, extra));
async function shot(page, name, fullPage = true) {
  if (!fullPage) await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(cfg.screenshots, name), fullPage });
}

// A page on another origin (plain HTTP on another port) for the
// cross-origin checks.
const foreign = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/html" });
  res.end("<!doctype html><title>elsewhere</title><p>another site</p>");
});
await new Promise((r) => foreign.listen(0, "127.0.0.1", r));
const foreignUrl = `http://127.0.0.1:${foreign.address().port}/`;

// Whether a WebSocket to the dashboard opens from `page`.
const wsOpens = (page) => page.evaluate((url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.onopen = () => { ws.close(); resolve(true); };
  ws.onclose = () => resolve(false);
  setTimeout(() => resolve(false), 8000);
}), origin.replace("https:", "wss:") + "/ws");

let outage = false; // the dashboard is down on purpose: failed reconnects are expected
const problems = [];

try {
  const ctx = await contextFor(cfg.operator);
  const page = await ctx.newPage();
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    if (outage && /WebSocket connection to .* failed/.test(m.text())) return;
    problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("response", (r) => { if (r.status() >= 400) problems.push(`${r.status()} for ${r.url()}`); });

  await page.goto(cfg.url);
  await until("the page to go live", () => page.evaluate(() => document.body.classList.contains("live")));
  pass("live");

  // Under load, the figures shown are the snapshot's (retried: both move).
  await ask("load");
  const shown = await until("the page's figures to equal /api/snapshot", () => page.evaluate(async () => {
    const s = await (await fetch("/api/snapshot")).json();
    const int = (n) => Number(n).toLocaleString("en-US");
    const f = (x, d) => (x == null ? "–" : Number(x).toFixed(d));
    const g = s.golden.ingress;
    const want = {
      "t-verdicts": int(s.totals.verdicts), "t-approved": int(s.totals.approved),
      "t-flagged": int(s.totals.flagged), "t-rejected": int(s.totals.rejected),
      "gi-rate": f(g.tx_per_sec, 1), "gi-p50": f(g.p50_ms, 2), "gi-p95": f(g.p95_ms, 2), "gi-p99": f(g.p99_ms, 2),
    };
    const got = Object.fromEntries(Object.keys(want).map((id) => [id, document.getElementById(id).textContent]));
    const same = Object.keys(want).every((id) => want[id] === got[id]);
    return same && g.p99_ms != null && s.totals.verdicts > 0 ? got : null;
  }), 20000);
  pass("equal_to_snapshot", JSON.stringify(shown));

  // The charts drew their series: pixels of the series' colours.
  const drawn = await until("the charts to draw data", () => page.evaluate(() => {
    const out = {};
    for (const [id, rgb] of [["c-rate", [79, 209, 165]], ["c-latency", [122, 167, 255]]]) {
      const el = document.getElementById(id);
      const canvas = el.querySelector("canvas");
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      let n = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (Math.abs(data[i] - rgb[0]) < 30 && Math.abs(data[i + 1] - rgb[1]) < 30 && Math.abs(data[i + 2] - rgb[2]) < 30 && data[i + 3] > 100) n++;
      }
      out[id] = { points: Number(el.dataset.points), pixels: n };
    }
    return Object.values(out).every((c) => c.points > 0 && c.pixels > 50) ? out : null;
  }));
  pass("charts_drawn", JSON.stringify(drawn));
  await shot(page, "live-1400.png");

  // A flagged high-amount transaction whose id and merchant are markup.
  const a = JSON.parse(await ask("screen a"));
  const row = (id) => page.evaluate((id) => {
    const r = [...document.querySelectorAll("#alerts tbody tr")].find((r) => r.cells[1].textContent === id);
    return r ? { status: r.cells[3].textContent, reasons: r.cells[4].textContent, amount: r.cells[6].textContent,
      merchant: r.cells[7].textContent, hidden: r.hidden } : null;
  }, id);
  const shownA = await until("the injected alert in the feed", () => row(a.transaction_id));
  check(shownA.amount === "1,234,567.89 EUR", `amount shown as ${shownA.amount}`);
  check(shownA.reasons.includes("HIGH_AMOUNT"), `reasons shown: ${shownA.reasons}`);
  check(shownA.merchant === a.merchant, `merchant shown as ${shownA.merchant}`);
  await page.hover("#alerts tbody tr:first-child td:nth-child(8)");
  await sleep(500);
  const ran = await page.evaluate(() => ({
    pwned: window.__pwned ?? null,
    elements: document.querySelectorAll("#alerts img, #alerts script, #alerts b").length,
  }));
  check(ran.pwned === null && ran.elements === 0, `markup ran or was parsed: ${JSON.stringify(ran)}`);
  // Updates keep arriving and the text stays selectable (no rebuilds).
  await page.evaluate((id) => {
    const td = [...document.querySelectorAll("#alerts tbody td")].find((td) => td.textContent === id);
    const range = document.createRange();
    range.selectNodeContents(td);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  }, a.transaction_id);
  await sleep(2000);
  const selected = await page.evaluate(() => getSelection().toString());
  check(selected === a.transaction_id, `the selection did not survive updates: ${JSON.stringify(selected)}`);
  pass("feed_shows_text", JSON.stringify(shownA));
  await shot(page, "feed-1400.png");

  // Filters: status, reason, transaction id.
  const other = shownA.status === "FLAGGED" ? "REJECTED" : "FLAGGED";
  await page.selectOption("#f-status", other);
  check((await row(a.transaction_id)).hidden, `a ${shownA.status} alert shown under status ${other}`);
  await page.selectOption("#f-status", shownA.status);
  check(!(await row(a.transaction_id)).hidden, "hidden under its own status");
  await page.selectOption("#f-status", "");
  await page.selectOption("#f-reason", "HIGH_AMOUNT");
  const reasonsShown = await page.evaluate(() => [...document.querySelectorAll("#alerts tbody tr")]
    .filter((r) => !r.hidden).map((r) => r.cells[4].textContent));
  check(reasonsShown.length > 0 && reasonsShown.every((r) => r.includes("HIGH_AMOUNT")), `reason filter shows ${reasonsShown}`);
  await page.selectOption("#f-reason", "");
  await page.fill("#f-search", "onerror=window");
  const ids = await page.evaluate(() => [...document.querySelectorAll("#alerts tbody tr")]
    .filter((r) => !r.hidden).map((r) => r.cells[1].textContent));
  check(ids.includes(a.transaction_id) && ids.every((id) => id.includes("onerror=window")), `search shows ${ids}`);
  await page.fill("#f-search", "");
  pass("filter");

  // Pause holds what arrives; resume shows it.
  await page.click("#f-pause");
  const b = JSON.parse(await ask("screen b"));
  await until("the paused feed to count what arrived", () =>
    page.evaluate(() => /new while paused/.test(document.getElementById("f-pending").textContent)));
  check(!(await row(b.transaction_id)), "an alert was added while paused");
  await page.click("#f-pause");
  await until("the alert held while paused", () => row(b.transaction_id));
  pass("pause");

  // The mesh: every identity, and certificate expiry.
  await ask("scrape");
  const mesh = await until("the mesh view", () => page.evaluate((td) => {
    const text = document.getElementById("mesh-edges").textContent;
    const ids = ["txgen", "ingress", "dashboard", "operator"].map((n) => `spiffe://${td}/${n}`);
    const edges = ["txgen → ingress", "ingress → dashboard", "operator → dashboard", "prometheus → metrics"];
    // The graph: every edge carried calls over mTLS; every node is known.
    const graph = [...document.querySelectorAll("#mesh-graph .g-edge")].map((g) => g.getAttribute("class"));
    const nodes = [...document.querySelectorAll("#mesh-graph .g-node .id")].map((t) => t.textContent);
    const ok = ids.every((id) => text.includes(id)) && edges.every((e) => text.includes(e)) &&
      /cert expires in \d/.test(text) && !text.includes("no calls seen yet") &&
      graph.length === 5 && graph.every((c) => c === "g-edge ok") && nodes.every((id) => id.startsWith("spiffe://"));
    return ok ? [...document.querySelectorAll("#mesh-edges tbody tr")].map((r) => r.textContent) : null;
  }, cfg.trust_domain));
  await page.locator("#mesh-graph").screenshot({ path: path.join(cfg.screenshots, "mesh-graph-1400.png") });
  pass("mesh", JSON.stringify(mesh));

  // Nothing overflows sideways, from 800 to 1920 px.
  for (const width of [800, 1920]) {
    await page.setViewportSize({ width, height: 1000 });
    await sleep(800);
    const over = await page.evaluate(() => {
      const doc = document.documentElement;
      const out = [...document.querySelectorAll(".card, table, .tile, .breaker")]
        .filter((e) => e.scrollWidth > e.clientWidth + 1)
        .map((e) => `${e.id || e.className} ${e.scrollWidth}>${e.clientWidth}`);
      if (doc.scrollWidth > doc.clientWidth) out.push(`page ${doc.scrollWidth}>${doc.clientWidth}`);
      return out;
    });
    await shot(page, `page-${width}.png`);
    check(over.length === 0, `overflow at ${width} px: ${over.join(", ")}`);
  }
  await page.setViewportSize({ width: 1400, height: 900 });
  pass("no_overflow");

  // The dashboard stops: stale within a few seconds, with the reason.
  outage = true;
  await ask("stop_dashboard");
  const stale = await until("the stale state", () => page.evaluate(() => {
    const detail = document.getElementById("conn-detail").textContent;
    const grey = Number(getComputedStyle(document.getElementById("t-verdicts")).opacity) < 1;
    const ok = document.body.classList.contains("stale") && grey && /dashboard shutting down/.test(detail);
    if (!ok) throw new Error(JSON.stringify({ detail, grey, body: document.body.className }));
    return detail;
  }), 5000);
  await shot(page, "stale-1400.png", false);
  pass("stale", stale);

  await ask("start_dashboard");
  await until("the page to reconnect by itself", () => page.evaluate(() => document.body.classList.contains("live")), 15000);
  outage = false;
  pass("reconnects");

  // An ingest outage under load: the breaker opens (the publisher keeps a
  // status-only link while open), then closes.
  await ask("outage");
  const tileState = () => page.evaluate(() => [...document.querySelectorAll(".breaker .state")].map((s) => s.textContent));
  const opened = await until("the breaker tile to show OPEN", async () => (await tileState()).find((s) => s === "OPEN"), 15000);
  await shot(page, "breaker-open-1400.png", false);
  await until("the breaker to close again", async () => (await tileState()).every((s) => s === "CLOSED"), 40000);
  // The restarted dashboard took the ingress's counters as a baseline: the
  // rate shown is the offered 100 tx/s, not a spike of what came before.
  const rate = Number(await page.evaluate(() => document.getElementById("gi-rate").textContent));
  check(rate > 0 && rate <= 150, `tx/s shown after the restart: ${rate}`);
  await ask("load_done");
  pass("breaker_open_then_closed", opened);
  await shot(page, "after-outage-1400.png");

  check(problems.length === 0, `console errors or failed requests: ${problems.join("; ")}`);
  pass("console_clean");
  await ctx.close();

  // No certificate: no page, no WebSocket.
  const bare = await contextFor(null);
  const bp = await bare.newPage();
  let refused = null;
  try { await bp.goto(cfg.url, { timeout: 10000 }); } catch (e) { refused = e.message.split("\n")[0]; }
  check(refused, "the page loaded without a client certificate");
  const bp2 = await bare.newPage();
  await bp2.goto(foreignUrl);
  check(!(await wsOpens(bp2)), "a WebSocket opened without a client certificate");
  pass("refused_without_cert", refused);
  await bare.close();

  // Another identity (txgen's): 403, and no WebSocket.
  const otherCtx = await contextFor(cfg.other);
  const op = await otherCtx.newPage();
  const resp = await op.goto(cfg.url);
  check(resp.status() === 403, `the page answered ${resp.status()} to txgen`);
  await op.goto(foreignUrl);
  check(!(await wsOpens(op)), "a WebSocket opened as txgen");
  pass("refused_other_identity", `page ${resp.status()}`);
  await otherCtx.close();

  // The operator's certificate, from a page on another origin: refused.
  const crossCtx = await contextFor(cfg.operator);
  const cp = await crossCtx.newPage();
  await cp.goto(foreignUrl);
  check(!(await wsOpens(cp)), "a WebSocket from another origin opened with the operator's certificate");
  pass("refused_cross_origin");

  // What a security reviewer then sees on the page: the refusal above, by
  // reason (txgen denied the page and the WebSocket).
  await cp.goto(cfg.url);
  const refusals = await until("the refusals in the mesh view", () => cp.evaluate(() => {
    const rows = [...document.querySelectorAll("#mesh-refusals tbody tr")].map((r) => r.textContent);
    const denied = rows.some((r) => /call to dashboard_ui denied/.test(r) && /not_allowed/.test(r));
    if (!denied) throw new Error(JSON.stringify(rows));
    return rows;
  }), 10000);
  pass("refusals_shown", JSON.stringify(refusals));
  await crossCtx.close();
} catch (e) {
  console.log(`FAIL ${e.message}`);
  for (const p of problems) console.log(`FAIL (seen) ${p}`);
  await browser.close();
  foreign.close();
  process.exit(1);
}
await browser.close();
foreign.close();
process.exit(0);
