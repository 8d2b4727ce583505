"use strict";
const $ = (id) => document.getElementById(id);
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; }
function render(s) {
  for (const k of ["verdicts", "approved", "flagged", "rejected"]) $("t-" + k).textContent = s.totals[k].toLocaleString();
  const tp = s.throughput || [];
  $("rate").textContent = (tp.length > 1 ? tp[tp.length - 2] : 0).toLocaleString() + " verdicts/s";
  const reasons = $("reasons").tBodies[0]; reasons.replaceChildren();
  for (const [name, n] of Object.entries(s.totals.by_reason)) { const r = reasons.insertRow(); cell(r, name); cell(r, n.toLocaleString()); }
  const pubs = $("publishers").tBodies[0]; pubs.replaceChildren();
  for (const [id, p] of Object.entries(s.publishers)) {
    const r = pubs.insertRow(); cell(r, id); cell(r, p.breaker, p.breaker); cell(r, p.outbox_depth); cell(r, p.shed_total);
    cell(r, p.gap_verdicts || 0, p.gap_verdicts ? "OPEN" : ""); cell(r, p.retries_total);
  }
  const shards = $("shards").tBodies[0]; shards.replaceChildren();
  const poison = $("poison").tBodies[0]; poison.replaceChildren();
  for (const [id, p] of Object.entries(s.publishers)) {
    for (const h of p.shards || []) {
      const r = shards.insertRow(); cell(r, id + "/" + h.shard); cell(r, h.active_accounts.toLocaleString());
      cell(r, h.passivated_accounts.toLocaleString()); cell(r, h.restarts_total); cell(r, h.quarantines_total);
      cell(r, h.poison_total); cell(r, h.overloaded_total);
    }
    for (const x of p.poison || []) {
      const r = poison.insertRow(); cell(r, x.transaction_id); cell(r, x.account); cell(r, x.attempts); cell(r, x.shard); cell(r, x.message);
    }
  }
  const alerts = $("alerts").tBodies[0]; alerts.replaceChildren();
  for (const a of s.recent_alerts.slice(0, 20)) {
    const r = alerts.insertRow();
    cell(r, a.transaction_id); cell(r, a.account); cell(r, a.status, a.status); cell(r, a.reasons.join(", "));
    cell(r, a.risk_score); cell(r, a.amount_minor + " " + a.currency); cell(r, a.country);
  }
  const c = $("spark"), g = c.getContext("2d"), max = Math.max(1, ...tp);
  g.clearRect(0, 0, c.width, c.height); g.strokeStyle = "#4fc3f7"; g.beginPath();
  tp.forEach((v, i) => { const x = i * c.width / Math.max(1, tp.length - 1), y = c.height - v * (c.height - 4) / max; i ? g.lineTo(x, y) : g.moveTo(x, y); });
  g.stroke();
}
let delay = 500;
function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.onopen = () => { $("conn").textContent = "live"; $("conn").className = "live"; delay = 500; };
  ws.onmessage = (e) => render(JSON.parse(e.data));
  ws.onclose = () => {
    $("conn").textContent = "reconnecting…"; $("conn").className = "";
    setTimeout(connect, delay); delay = Math.min(delay * 2, 10000);
  };
}
connect();
