// fedpriv monitor: renders /events snapshots. No external assets, no inline code (CSP).
// Every number shown carries data-field (its path in the snapshot) and data-value (raw JSON).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined && text !== null) n.textContent = String(text);
  return n;
}

function field(node, path, value, text) {
  node.dataset.field = path;
  node.dataset.value = JSON.stringify(value === undefined ? null : value);
  node.textContent = text;
  return node;
}

const isNum = (v) => typeof v === "number" && isFinite(v);
const pct = (v) => (isNum(v) ? (100 * v).toFixed(1) + "%" : "–");
const fix = (v, d) => (isNum(v) ? v.toFixed(d) : "–");
function bytes(b) {
  if (!isNum(b)) return "–";
  if (b >= 1 << 30) return (b / (1 << 30)).toFixed(2) + " GiB";
  if (b >= 1 << 20) return (b / (1 << 20)).toFixed(2) + " MiB";
  if (b >= 1 << 10) return (b / (1 << 10)).toFixed(1) + " KiB";
  return b + " B";
}

function card(path, label, value, text, sub, tone) {
  const c = el("div", "card" + (tone ? " " + tone : ""));
  c.appendChild(el("div", "label", label));
  c.appendChild(field(el("div", "value"), path, value, text));
  c.appendChild(el("div", "sub", sub || "\u00a0"));
  return c;
}

function renderHeader(doc) {
  const r = doc.run || {};
  $("run-name").textContent = r.name || "waiting for a run\u2026";
  const st = $("run-status");
  st.dataset.status = r.status || "waiting";
  field(st, "run.status", r.status, r.status || "waiting");
  const total = r.rounds_total;
  const done = r.rounds_done || 0;
  const pt = $("progress-text");
  pt.textContent = "";
  pt.appendChild(document.createTextNode("round "));
  pt.appendChild(field(el("span"), "run.rounds_done", done, done));
  pt.appendChild(document.createTextNode(" of "));
  pt.appendChild(field(el("span"), "run.rounds_total", total, isNum(total) ? total : "?"));
  $("progress-fill").style.width = (isNum(r.progress) ? 100 * r.progress : 0) + "%";
  const meta = [];
  if (r.num_clients) meta.push(r.num_clients + " clients");
  meta.push("DP " + (r.privacy_mode || "off"));
  meta.push("encryption " + (r.encryption || "off"));
  if (isNum(r.max_epsilon)) meta.push("\u03b5 budget " + r.max_epsilon + " (\u03b4 " + r.delta + ", " + r.accountant + ")");
  $("run-meta").textContent = meta.join("  \u00b7  ");
  $("run-folder").textContent = r.folder || "watching " + (doc.watching || "");
  $("run-updated").textContent = r.updated ? "last write " + r.updated : "";
  const sr = $("stop-reason");
  sr.hidden = !r.stop_reason;
  sr.textContent = r.stop_reason ? "stopped early: " + r.stop_reason : "";
}

function renderCards(doc) {
  const t = doc.totals || {};
  const r = doc.run || {};
  const box = $("cards");
  box.textContent = "";
  const rounds = doc.rounds || [];
  const last = rounds.length ? rounds[rounds.length - 1] : null;
  box.appendChild(card("totals.accepted", "accepted updates", t.accepted || 0, t.accepted || 0,
    last ? "last round " + last.accepted + " of " + last.sampled : ""));
  box.appendChild(card("totals.refused", "refusals", t.refused || 0, t.refused || 0,
    "ledger: " + (t.ledger_refusals || 0), t.refused ? "warn" : ""));
  const bad = (t.failed || 0) + (t.rejected || 0);
  box.appendChild(card("totals.failed_rejected", "failed / rejected", bad, bad,
    (t.failed || 0) + " failed, " + (t.rejected || 0) + " rejected", bad ? "bad" : ""));
  if (isNum(r.max_epsilon)) {
    const used = isNum(t.epsilon_max) ? t.epsilon_max / r.max_epsilon : 0;
    box.appendChild(card("totals.epsilon_max", "max \u03b5 spent", t.epsilon_max,
      fix(t.epsilon_max, 3), "of budget " + r.max_epsilon + " (" + pct(used) + ")",
      used > 0.9 ? "warn" : ""));
  } else {
    box.appendChild(card("totals.epsilon_max", "max \u03b5 spent", null, "–", "record-level DP off"));
  }
  box.appendChild(card("totals.federated_accuracy", "federated accuracy", t.federated_accuracy,
    pct(t.federated_accuracy), "clients' local test splits"));
  box.appendChild(card("totals.heldout_accuracy", "held-out accuracy", t.heldout_accuracy,
    pct(t.heldout_accuracy), isNum(t.heldout_accuracy) ? "decrypted by the key holder" : "after the run (key holder)"));
  box.appendChild(card("totals.bytes_up", "bytes up", t.bytes_up || 0, bytes(t.bytes_up || 0),
    "down " + bytes(t.bytes_down || 0)));
}

function axes(svg, W, H, pad, yMax, yFmt, xs) {
  for (let i = 0; i <= 4; i++) {
    const y = H - pad.b - ((H - pad.t - pad.b) * i) / 4;
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("x1", pad.l); line.setAttribute("x2", W - pad.r);
    line.setAttribute("y1", y); line.setAttribute("y2", y);
    line.setAttribute("stroke", "#e5e9f0");
    svg.appendChild(line);
    const tx = document.createElementNS(SVG, "text");
    tx.setAttribute("x", pad.l - 6); tx.setAttribute("y", y + 4);
    tx.setAttribute("text-anchor", "end");
    tx.textContent = yFmt((yMax * i) / 4);
    svg.appendChild(tx);
  }
  const step = Math.max(1, Math.ceil(xs.length / 12));
  xs.forEach((x, i) => {
    if (i % step) return;
    const tx = document.createElementNS(SVG, "text");
    tx.setAttribute("x", x.x); tx.setAttribute("y", H - pad.b + 16);
    tx.setAttribute("text-anchor", "middle");
    tx.textContent = x.label;
    svg.appendChild(tx);
  });
}

function legend(id, items) {
  const box = $(id);
  box.textContent = "";
  items.forEach(([name, color]) => {
    const s = el("span");
    const i = el("i");
    i.style.background = color;
    s.appendChild(i);
    s.appendChild(document.createTextNode(name));
    box.appendChild(s);
  });
}

function renderAccuracy(rounds) {
  const svg = $("chart-acc");
  svg.textContent = "";
  const W = 520, H = 220, pad = { l: 44, r: 12, t: 10, b: 26 };
  const n = Math.max(rounds.length, 1);
  const xAt = (i) => pad.l + ((W - pad.l - pad.r) * (n === 1 ? 0.5 : i / (n - 1)));
  const yAt = (v) => H - pad.b - (H - pad.t - pad.b) * v;
  axes(svg, W, H, pad, 1, (v) => Math.round(100 * v) + "%",
    rounds.map((r, i) => ({ x: xAt(i), label: r.round })));
  const series = [["federated accuracy", "#2563eb", "federated_accuracy"],
    ["held-out accuracy", "#16a34a", "heldout_accuracy"]];
  series.forEach(([, color, key]) => {
    const pts = rounds.map((r, i) => [xAt(i), r[key]]).filter((p) => isNum(p[1]));
    if (!pts.length) return;
    const path = document.createElementNS(SVG, "polyline");
    path.setAttribute("points", pts.map((p) => p[0] + "," + yAt(p[1])).join(" "));
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", color);
    path.setAttribute("stroke-width", "2.5");
    svg.appendChild(path);
    pts.forEach((p) => {
      const c = document.createElementNS(SVG, "circle");
      c.setAttribute("cx", p[0]); c.setAttribute("cy", yAt(p[1]));
      c.setAttribute("r", "3.5"); c.setAttribute("fill", color);
      svg.appendChild(c);
    });
  });
  legend("legend-acc", series.map(([name, color]) => [name, color]));
}

function renderBytes(rounds) {
  const svg = $("chart-bytes");
  svg.textContent = "";
  const W = 520, H = 220, pad = { l: 58, r: 12, t: 10, b: 26 };
  const max = Math.max(1, ...rounds.map((r) => Math.max(r.bytes_up, r.bytes_down)));
  const n = Math.max(rounds.length, 1);
  const slot = (W - pad.l - pad.r) / n;
  const bw = Math.max(2, Math.min(22, slot / 2.6));
  axes(svg, W, H, pad, max, (v) => bytes(Math.round(v)),
    rounds.map((r, i) => ({ x: pad.l + slot * (i + 0.5), label: r.round })));
  rounds.forEach((r, i) => {
    [[r.bytes_up, "#7c3aed", -1], [r.bytes_down, "#0d9488", 0]].forEach(([v, color, off]) => {
      const h = ((H - pad.t - pad.b) * v) / max;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", pad.l + slot * (i + 0.5) + off * bw + (off ? -1 : 1));
      rect.setAttribute("y", H - pad.b - h);
      rect.setAttribute("width", bw);
      rect.setAttribute("height", Math.max(0, h));
      rect.setAttribute("fill", color);
      svg.appendChild(rect);
    });
  });
  legend("legend-bytes", [["uploaded (updates)", "#7c3aed"], ["downloaded (global model)", "#0d9488"]]);
}

function renderSignals(doc) {
  const ul = $("signals");
  ul.textContent = "";
  const sig = doc.signals || [];
  if (!sig.length) {
    ul.appendChild(el("li", "ok", (doc.rounds || []).length ? "No drift signal so far." : "Waiting for the first round."));
    return;
  }
  sig.forEach((s) => {
    const li = el("li");
    li.appendChild(el("b", null, "round " + s.round + " \u00b7 " + s.kind));
    li.appendChild(document.createTextNode(s.text));
    ul.appendChild(li);
  });
}

function table(id, head, rows, empty) {
  const t = $(id);
  t.textContent = "";
  const thead = el("thead");
  const tr = el("tr");
  head.forEach(([name, cls]) => tr.appendChild(el("th", cls || "", name)));
  thead.appendChild(tr);
  t.appendChild(thead);
  const tb = el("tbody");
  if (!rows.length) {
    const r = el("tr");
    const td = el("td", "empty", empty);
    td.colSpan = head.length;
    r.appendChild(td);
    tb.appendChild(r);
  }
  rows.forEach((cells) => {
    const r = el("tr");
    cells.forEach((c) => r.appendChild(c));
    tb.appendChild(r);
  });
  t.appendChild(tb);
}

function cell(path, value, text, cls) {
  return field(el("td", cls || ""), path, value, text);
}

function renderRounds(rounds) {
  const head = [["round"], ["sampled"], ["accepted"], ["refused"], ["failed"], ["rejected"],
    ["fed. acc"], ["fed. loss"], ["held-out acc"], ["up"], ["down"], ["round s"], ["aggregate s"]];
  const rows = rounds.slice().reverse().map((r) => {
    const p = "rounds." + r.round + ".";
    return [
      cell(p + "round", r.round, r.round),
      cell(p + "sampled", r.sampled, r.sampled),
      cell(p + "accepted", r.accepted, r.accepted),
      cell(p + "refused", r.refused, r.refused),
      cell(p + "failed", r.failed, r.failed),
      cell(p + "rejected", r.rejected, r.rejected),
      cell(p + "federated_accuracy", r.federated_accuracy, pct(r.federated_accuracy)),
      cell(p + "federated_loss", r.federated_loss, fix(r.federated_loss, 4)),
      cell(p + "heldout_accuracy", r.heldout_accuracy, pct(r.heldout_accuracy)),
      cell(p + "bytes_up", r.bytes_up, bytes(r.bytes_up)),
      cell(p + "bytes_down", r.bytes_down, bytes(r.bytes_down)),
      cell(p + "seconds", r.seconds, fix(r.seconds, 1)),
      cell(p + "aggregate_seconds", r.aggregate_seconds, fix(r.aggregate_seconds, 2)),
    ];
  });
  table("rounds", head, rows, "No round finished yet.");
}

function budgetCell(c) {
  const td = el("td");
  const wrap = el("div", "budget");
  if (isNum(c.budget)) {
    const track = el("div", "track");
    const used = el("div", "used");
    const f = isNum(c.budget_used) ? c.budget_used : 0;
    used.style.width = Math.min(100, 100 * f) + "%";
    if (f > 1) used.classList.add("over");
    else if (f > 0.8) used.classList.add("high");
    track.appendChild(used);
    wrap.appendChild(track);
    wrap.appendChild(field(el("span"), "clients." + c.id + ".budget_used", c.budget_used, pct(c.budget_used)));
  } else {
    wrap.appendChild(el("span", null, "–"));
  }
  td.appendChild(wrap);
  return td;
}

function renderClients(doc) {
  const r = doc.run || {};
  $("budget-note").textContent = isNum(r.max_epsilon)
    ? "\u03b5 spent (from the privacy ledger) against the budget " + r.max_epsilon
    : (isNum(r.client_max_epsilon) ? "client-level budget " + r.client_max_epsilon : "");
  const head = [["client", "text"], ["last status", "text"], ["accepted"], ["refused"], ["failed"],
    ["\u03b5 spent"], ["budget used"]];
  const rows = (doc.clients || []).map((c) => {
    const p = "clients." + c.id + ".";
    return [
      field(el("td", "text"), p + "id", c.id, c.id),
      cell(p + "last_status", c.last_status, c.last_status, "text status " + c.last_status),
      cell(p + "accepted", c.accepted, c.accepted),
      cell(p + "refused", c.refused, c.refused),
      cell(p + "failed_rejected", c.failed + c.rejected, c.failed + c.rejected),
      cell(p + "epsilon", c.epsilon, fix(c.epsilon, 3)),
      budgetCell(c),
    ];
  });
  table("clients", head, rows, "No client has answered yet.");
}

function renderEvents(doc) {
  const head = [["round"], ["client", "text"], ["status", "text"], ["reason", "text"]];
  const rows = (doc.events || []).map((e, i) => {
    const p = "events." + i + ".";
    return [
      cell(p + "round", e.round, e.round),
      cell(p + "client_id", e.client_id, e.client_id, "text"),
      cell(p + "status", e.status, e.status, "text status " + e.status),
      cell(p + "reason", e.reason, e.reason, "reason"),
    ];
  });
  table("events", head, rows, "Every sampled client delivered an update.");
}

function renderFooter(doc) {
  const t = doc.totals || {};
  const chain = t.ledger_chain_ok === null || t.ledger_chain_ok === undefined ? "" :
    (t.ledger_chain_ok ? ", hash chain intact" : ", HASH CHAIN BROKEN");
  const f = $("footer-files");
  f.textContent = "";
  f.appendChild(document.createTextNode("privacy ledger: "));
  f.appendChild(field(el("span"), "totals.ledger_entries", t.ledger_entries || 0, t.ledger_entries || 0));
  f.appendChild(document.createTextNode(" entries" + chain + " \u00b7 egress record: "));
  f.appendChild(field(el("span"), "totals.egress_messages", t.egress_messages || 0, t.egress_messages || 0));
  f.appendChild(document.createTextNode(" messages, " + bytes(t.egress_bytes || 0) +
    " \u00b7 updated " + (doc.generated || "")));
}

function render(doc) {
  renderHeader(doc);
  renderCards(doc);
  const rounds = doc.rounds || [];
  renderAccuracy(rounds);
  renderBytes(rounds);
  renderSignals(doc);
  renderRounds(rounds);
  renderClients(doc);
  renderEvents(doc);
  renderFooter(doc);
  document.body.dataset.generated = doc.generated || "";
  document.body.dataset.roundsDone = String((doc.run || {}).rounds_done || 0);
  document.body.dataset.status = (doc.run || {}).status || "waiting";
}

function live(state, text) {
  const l = $("live");
  l.dataset.state = state;
  l.textContent = text;
}

function connect() {
  const es = new EventSource("/events");
  es.addEventListener("snapshot", (ev) => {
    live("live", "live");
    render(JSON.parse(ev.data));
  });
  es.onerror = () => live("lost", "reconnecting\u2026");
}

document.addEventListener("DOMContentLoaded", () => {
  fetch("/api/snapshot").then((r) => r.json()).then(render).catch(() => {});
  connect();
});
