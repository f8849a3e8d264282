// The status page: every value is inserted with textContent or as an SVG
// attribute, never as markup, so a pod or host name cannot inject anything.
"use strict";

const phaseColors = {Running: "#1a7f37", Pending: "#9a6700", Scheduled: "#bf8700", Provisioning: "#d4a72c",
  Migrating: "#0969da", Failed: "#c62828", Terminating: "#6e7781", Rejected: "#8250df"};

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function link(href, text) {
  const a = el("a", text);
  a.href = href;
  return a;
}

function meter(value, max, title) {
  const m = document.createElement("meter");
  m.min = 0; m.max = max > 0 ? max : 1; m.value = Math.min(value, m.max);
  m.high = m.max * 0.85; m.optimum = 0;
  m.title = title;
  const span = el("span");
  span.append(m, " ", el("span", title, "muted"));
  return span;
}

const shown = {};

function fill(id, rows, cells, extra) {
  // Unchanged data is not redrawn, so a row under the pointer stays put
  // (extra is what else the cells depend on: the time, for ages).
  const key = JSON.stringify(rows) + (extra || "");
  if (shown[id] === key) return;
  shown[id] = key;
  const body = document.querySelector("#" + id + " tbody");
  const out = [];
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const c of cells(r)) {
      const td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === undefined || c === null || c === "" ? "-" : String(c);
      tr.appendChild(td);
    }
    out.push(tr);
  }
  if (out.length === 0) {
    const tr = el("tr"); const td = el("td", "none", "muted"); td.colSpan = 9; tr.appendChild(td); out.push(tr);
  }
  body.replaceChildren(...out);
}

function gib(b) { return (b / (1 << 30)).toFixed(1) + " GiB"; }
function size(b) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b) + " " + u[i];
}
function age(t, now) {
  const s = Math.max(0, (now - new Date(t)) / 1000);
  if (s < 60) return Math.floor(s) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + Math.floor(s % 60) + "s";
  if (s < 172800) return Math.floor(s / 3600) + "h";
  return Math.floor(s / 86400) + "d";
}

function render(d) {
  const now = new Date(d.now);
  document.getElementById("endpoints").textContent = "NATS " + d.nats + " · registry " + d.registry;
  fill("hosts", d.hosts, h => [h.name, h.cluster, h.state,
    meter(h.cpuMilli, h.cpuCapMilli, (h.cpuMilli / 1000).toFixed(1) + " of " + (h.cpuCapMilli / 1000).toFixed(0) + " CPUs"),
    meter(h.memory, h.memoryCap, gib(h.memory) + " of " + gib(h.memoryCap)), h.pods]);
  fill("pods", d.pods, p => {
    const links = el("span");
    links.append(link("/trace/" + encodeURIComponent(p.namespace) + "/" + encodeURIComponent(p.name), "trace"), " · ",
      link("/logs/" + encodeURIComponent(p.namespace) + "/" + encodeURIComponent(p.name), "logs"));
    const phase = el("span", p.phase + (p.reason ? " (" + p.reason + ")" : ""), "phase-" + p.phase);
    return [p.namespace, p.name, phase, p.host, p.ip, age(p.created, now), links];
  }, d.pods.map(p => age(p.created, now)).join());
  fill("networks", d.networks, n => [n.name, n.vlan, n.cidr, n.status, n.ready + "/" + n.scope, n.ipsUsed]);
  fill("images", d.images, i => [i.image, i.layers, size(i.size), i.refs, i.datastore, i.state]);
  fill("migrations", d.migrations, m => [m.pod, m.from, m.to, m.phase + (m.reason ? " (" + m.reason + ")" : ""),
    meter(m.percent, 100, m.percent + "%")]);
  chart(d.history);
}

const svgNS = "http://www.w3.org/2000/svg";
function chart(history) {
  const svg = document.getElementById("chart");
  const legend = document.getElementById("legend");
  const phases = new Set();
  let top = 1;
  for (const s of history) for (const [p, n] of Object.entries(s.phases)) { phases.add(p); top = Math.max(top, n); }
  const shapes = [];
  const names = [...phases].sort();
  const legendItems = [];
  for (const p of names) {
    const pts = history.map((s, i) => {
      const x = history.length > 1 ? i * 600 / (history.length - 1) : 600;
      const y = 155 - 150 * (s.phases[p] || 0) / top;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    const line = document.createElementNS(svgNS, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", phaseColors[p] || "#57606a");
    line.setAttribute("stroke-width", "2");
    line.setAttribute("data-phase", p);
    shapes.push(line);
    const last = history.length ? (history[history.length - 1].phases[p] || 0) : 0;
    const item = el("span", "■ " + p + " " + last, "legend phase-" + p);
    legendItems.push(item);
  }
  svg.replaceChildren(...shapes);
  legend.replaceChildren(...legendItems);
}

function feed(e) {
  const list = document.getElementById("feed");
  const li = el("li", new Date(e.time).toLocaleTimeString() + "  " + e.type + "  " + (e.subject || "") + "  ← " + e.source);
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

function connect() {
  const live = document.getElementById("live");
  const es = new EventSource("/api/stream");
  es.addEventListener("open", () => { live.textContent = "live"; });
  es.addEventListener("error", () => { live.textContent = "reconnecting…"; });
  es.addEventListener("state", m => render(JSON.parse(m.data)));
  es.addEventListener("feed", m => feed(JSON.parse(m.data)));
}

connect();
