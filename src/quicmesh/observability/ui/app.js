// quicmesh web console: renders the node's snapshot (/ui/state, then /ui/events).
// Every string from the node is written with textContent (never as HTML), so a node id, topic
// or service name cannot inject markup or script. The page also runs under a CSP of 'self'.
"use strict";

const HISTORY = 60;            // fills remembered per container (one a second: the last minute)
const POLL_MS = 2000;          // polling period when the event stream is refused or unsupported
const fills = new Map();       // container name -> recent fills (0..1); pruned to the live names

function text(tag, value, cls) {
  const e = document.createElement(tag);
  if (value !== undefined && value !== null) e.textContent = String(value);
  if (cls) e.className = cls;
  return e;
}

function setText(id, value, cls) {
  const e = document.getElementById(id);
  if (!e) return;
  e.textContent = value === undefined || value === null ? "" : String(value);
  if (cls !== undefined) e.className = cls;
}

function rows(id, items, columns, makeRow) {
  const body = document.getElementById(id);
  const out = [];
  for (const item of items || []) out.push(makeRow(item));
  if (out.length === 0) {
    const tr = document.createElement("tr");
    const td = text("td", "none", "empty");
    td.colSpan = columns;
    tr.append(td);
    out.push(tr);
  }
  body.replaceChildren(...out);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.append(c instanceof Node ? c : text("td", c));
  return tr;
}

function total(shown, all) {
  const n = shown ? shown.length : 0;
  if (all === undefined || all === null) return "(" + n + ")";
  return n < all ? "(" + n + " of " + all + ")" : "(" + all + ")";
}

function spark(values) {
  const c = document.createElement("canvas");
  c.className = "spark";
  const ratio = window.devicePixelRatio || 1;
  c.width = 120 * ratio;
  c.height = 24 * ratio;
  const g = c.getContext("2d");
  if (!g) return c;
  g.scale(ratio, ratio);
  g.strokeStyle = "#d9dde3";
  g.beginPath(); g.moveTo(0, 23.5); g.lineTo(120, 23.5); g.stroke();
  if (values.length > 0) {
    const last = values[values.length - 1];
    g.strokeStyle = last >= 0.9 ? "#cf222e" : last >= 0.7 ? "#bf8700" : "#0969da";
    g.lineWidth = 1.5;
    g.beginPath();
    const step = 120 / (HISTORY - 1);
    const x0 = 120 - (values.length - 1) * step;
    values.forEach((v, i) => {
      const y = 22 - Math.max(0, Math.min(1, v)) * 20;
      if (i === 0) g.moveTo(x0, y); else g.lineTo(x0 + i * step, y);
    });
    g.stroke();
  }
  return c;
}

function render(s) {
  const realm = s.realm || {};
  setText("node-id", s.node_id);
  setText("realm", realm.name);
  setText("mode", realm.mode);
  setText("address", s.address || "");
  setText("status", s.status, s.status === "ok" ? "ok" : "bad");
  const ready = s.ready || {};
  setText("ready", ready.ok ? "yes" : "no: " + (ready.reason || ""), ready.ok ? "ok" : "warn");
  setText("updated", new Date((s.time || 0) * 1000).toLocaleTimeString());

  const peers = s.peers || [];
  setText("peers-total", total(peers, s.peers_total));
  rows("peers", peers, 5, (p) => {
    const tr = row([text("td", p.id, "id"), p.path, p.outbound ? "outbound" : "inbound", p.remote_address,
                    p.active ? "active view" : "-"]);
    tr.dataset.peer = String(p.id);
    return tr;
  });

  const topics = s.topics || [];
  setText("topics-total", total(topics, s.topics_total));
  rows("topics", topics, 5, (t) => {
    const tr = row([text("td", t.swarm, "id"), t.active, t.eager, t.lazy, (t.patterns || []).join(", ")]);
    tr.dataset.topic = String(t.swarm);
    return tr;
  });

  const subs = s.subscriptions || [];
  setText("subscriptions-total", total(subs, s.subscriptions_total));
  rows("subscriptions", subs, 2, (x) => row([text("td", x.pattern, "id"), x.handles]));

  const services = s.services || [];
  setText("services-total", total(services, s.services_total));
  rows("services", services, 3, (x) => {
    const provs = x.providers || [];
    const shown = provs.map((p) => p.slice(0, 16)).join(", ");
    const more = x.providers_total > provs.length ? " (+" + (x.providers_total - provs.length) + ")" : "";
    const tr = row([text("td", x.name, "id"), x.local ? "yes" : "-", text("td", shown + more, "id")]);
    tr.dataset.service = String(x.name);
    return tr;
  });

  const sent = s.sentinel;
  if (sent) {
    setText("sentinel", sent.status + " (" + sent.samples + " samples)", sent.status === "ok" ? "ok" : "bad");
    const items = (sent.reasons || []).map((r) => text("li", r.kind + " " + r.name + ": " + r.detail));
    document.getElementById("sentinel-reasons").replaceChildren(...items);
  } else {
    setText("sentinel", "not running");
  }

  const den = s.denials || {};
  const recent = den.recent || [];
  setText("denials-total", den.total === undefined ? "" : "(" + den.total + " in all)");
  rows("denials", recent, 3, (d) => row([d.n, d.action, text("td", d.subject, "id")]));

  // fullest first (a bound being approached is what an operator looks for), then by name
  const containers = (s.containers || []).slice().sort((x, y) =>
    (Number(y.fill) || 0) - (Number(x.fill) || 0) || String(x.name).localeCompare(String(y.name)));
  setText("containers-total", "(" + containers.length + ")");
  const live = new Set();
  rows("containers", containers, 7, (c) => {
    const key = c.name + "/" + c.kind;
    live.add(key);
    let h = fills.get(key);
    if (!h) { h = []; fills.set(key, h); }
    h.push(Number(c.fill) || 0);
    if (h.length > HISTORY) h.splice(0, h.length - HISTORY);
    const pct = Math.round((Number(c.fill) || 0) * 1000) / 10;
    const sparkCell = document.createElement("td");
    sparkCell.append(spark(h));
    const tr = row([text("td", c.name, "id"), c.kind, c.size + " / " + c.capacity,
                    text("td", pct + " %", pct >= 90 ? "bad" : pct >= 70 ? "warn" : ""), sparkCell,
                    c.evictions, c.rejections]);
    tr.dataset.container = String(c.name);
    return tr;
  });
  for (const key of Array.from(fills.keys())) if (!live.has(key)) fills.delete(key);
}

async function poll(mark) {
  try {
    const r = await fetch("/ui/state", { cache: "no-store" });
    if (r.ok) { render(await r.json()); if (mark) setText("conn", "polling", "warn"); }
  } catch (e) {
    setText("conn", "node unreachable", "bad");
  }
}

function start() {
  poll(false);
  if (!window.EventSource) { setInterval(poll, POLL_MS, true); return; }
  const es = new EventSource("/ui/events");
  let polling = null;
  es.addEventListener("state", (ev) => {
    if (polling !== null) { clearInterval(polling); polling = null; }
    setText("conn", "live", "ok");
    render(JSON.parse(ev.data));
  });
  es.addEventListener("error", () => {
    if (es.readyState === EventSource.CLOSED) {   // refused (e.g. 503: too many streams): poll instead
      setText("conn", "polling", "warn");
      if (polling === null) polling = setInterval(poll, POLL_MS, true);
    } else {
      setText("conn", "reconnecting", "warn");
    }
  });
}

document.addEventListener("DOMContentLoaded", start);
