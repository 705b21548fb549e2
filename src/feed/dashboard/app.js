// Cairn dashboard: the snapshot and live readings from /ws, device health and the uplink from
// /api, a small chart per numeric value (backfilled from /api/history, then live).
"use strict";

const KEEP = 600;           // points per chart
const state = { devices: {}, charts: {}, seq: null, token: localStorage.getItem("cairn-token") || "" };
const $ = (id) => document.getElementById(id);

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: headers() });
  if (response.status === 401) { askToken(); throw new Error("token required"); }
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

function askToken() {
  $("main").hidden = true;
  $("login").hidden = false;
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value;
  localStorage.setItem("cairn-token", state.token);
  $("login").hidden = true;
  start();
});

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(ts)) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function format(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(Math.abs(value) < 10 ? 2 : 1);
  return String(value);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

function deviceCard(name) {
  let card = document.querySelector(`.device[data-device="${CSS.escape(name)}"]`);
  if (!card) {
    card = el("section", { class: "device", "data-device": name },
      el("header", {}, el("h2", {}, name), el("span", { class: "badge off" }, "offline")),
      el("div", { class: "seen" }, "last seen never"),
      el("div", { class: "metrics" }));
    $("devices").append(card);
  }
  return card;
}

function showStatus(name, status, error) {
  const badge = deviceCard(name).querySelector(".badge");
  badge.textContent = status + (error ? ": " + error : "");
  badge.className = "badge" + (status === "online" ? "" : " off");
}

function metricRow(device, metric) {
  const card = deviceCard(device);
  let row = card.querySelector(`.metric[data-metric="${CSS.escape(metric)}"]`);
  if (!row) {
    const unit = (state.devices[device] && state.devices[device].units || {})[metric] || "";
    row = el("div", { class: "metric", "data-metric": metric },
      el("span", { class: "name" }, metric),
      el("span", {}, el("span", { class: "value", "data-device": device, "data-metric": metric }, "–"), el("span", { class: "unit" }, unit)));
    card.querySelector(".metrics").append(row);
  }
  return row;
}

function chart(device, metric) {
  const key = device + "\u0000" + metric;
  if (!state.charts[key]) {
    // Only numbers get a chart; the canvas appears with the first one.
    const canvas = el("canvas", { width: 300, height: 48 });
    metricRow(device, metric).append(canvas);
    state.charts[key] = { points: [], canvas };
    const since = encodeURIComponent("1h");
    api(`/api/history?device=${encodeURIComponent(device)}&metric=${encodeURIComponent(metric)}&since=${since}&limit=${KEEP}`)
      .then((history) => {
        const c = state.charts[key];
        const first = c.points.length ? c.points[0][0] : Infinity;
        const old = history.points.filter((p) => p.ts < first && typeof p.value === "number").map((p) => [p.ts, p.value]);
        c.points = old.concat(c.points).slice(-KEEP);
        draw(c);
      }).catch(() => {});
  }
  return state.charts[key];
}

function draw(c) {
  const ctx = c.canvas.getContext("2d");
  const { width, height } = c.canvas;
  ctx.clearRect(0, 0, width, height);
  if (c.points.length < 2) return;
  const xs = c.points.map((p) => p[0]), ys = c.points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const x = (t) => (x1 === x0 ? width : ((t - x0) / (x1 - x0)) * (width - 2) + 1);
  const y = (v) => (y1 === y0 ? height / 2 : height - 3 - ((v - y0) / (y1 - y0)) * (height - 6));
  ctx.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue("--line");
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  c.points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
  ctx.stroke();
}

function showValue(device, metric, value, ts) {
  const shown = metricRow(device, metric).querySelector(".value");
  shown.textContent = format(value);
  shown.title = "read at " + ts;
  if (typeof value === "number") {
    const c = chart(device, metric);
    c.points.push([Date.parse(ts), value]);
    if (c.points.length > KEEP) c.points.shift();
    c.dirty = true;
  }
}

function showSeen(device, ts) {
  if (state.devices[device]) state.devices[device].last_seen = ts;
}

function onSnapshot(message) {
  for (const [name, device] of Object.entries(message.devices)) {
    state.devices[name] = device;
    showStatus(name, device.status, device.error);
    showSeen(name, device.last_seen);
    for (const [metric, latest] of Object.entries(device.values)) showValue(name, metric, latest.value, latest.ts);
  }
}

function onMessage(event) {
  const message = JSON.parse(event.data);
  if (message.feed_seq !== undefined) state.seq = message.feed_seq;
  if (message.type === "snapshot") onSnapshot(message);
  else if (message.type === "reading") {
    for (const [metric, value] of Object.entries(message.values)) showValue(message.device, metric, value, message.ts);
    showSeen(message.device, message.ts);
  } else if (message.type === "status") showStatus(message.device, message.status, message.error);
}

function connect(delay) {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (state.token) url.searchParams.set("token", state.token);
  if (state.seq !== null) url.searchParams.set("since", state.seq);
  const socket = new WebSocket(url);
  socket.onopen = () => { $("live").textContent = "live"; $("live").className = "badge"; delay = 1000; };
  socket.onmessage = onMessage;
  socket.onclose = () => {
    $("live").textContent = "reconnecting";
    $("live").className = "badge off";
    setTimeout(() => connect(Math.min(delay * 2, 30000)), delay);
  };
}

async function refresh() {
  try {
    const status = await api("/api/status");
    $("gateway").textContent = status.gateway;
    const up = status.uptime_s;
    $("version").textContent = "v" + status.version + " · up " + (up < 3600 ? Math.floor(up / 60) + " min"
      : up < 172800 ? Math.floor(up / 3600) + " h" : Math.floor(up / 86400) + " days");
    const u = status.uplink;
    $("uplink-state").textContent = u.sleeping_until ? "sleeping until " + new Date(u.sleeping_until).toLocaleString()
      : (u.connected ? (u.stalled ? "stalled: no answer for " + Math.round(u.waiting_s) + " s" : "connected") : "down") + " since " + ago(u.since) + (u.last_error && !u.connected ? " (" + u.last_error + ")" : "");
    $("uplink").className = "panel " + (u.sleeping_until ? "" : !u.connected ? "down" : u.stalled ? "stalled" : "");
    const kib = (b) => ((b.up + b.down) / 1024).toFixed(1) + " KiB";
    $("link").textContent = kib(status.link.today) + " today, " + kib(status.link.month) + " this month, " + status.link.connects + " connects"
      + (status.budget && status.budget.step !== "open" ? " · budget: " + status.budget.step.replace("_", " ") : "");
    $("backlog").textContent = status.backlog.readings + " readings, " + (status.backlog.bytes / 1024).toFixed(1) + " KiB";
    $("oldest").textContent = status.backlog.oldest_unsent ? ago(status.backlog.oldest_unsent) : "none";
    // What wears the SD card: bytes that reached the disk, per day over the last day.
    const mb = (b) => (b / 1e6).toFixed(1) + " MB";
    $("wear").textContent = status.disk.written_bytes == null ? "not counted by this kernel"
      : (status.disk.written_per_day == null ? "measuring" : mb(status.disk.written_per_day) + " a day") + " · " + mb(status.disk.written_bytes) + " since start";
    // Each lane: its depth, and when it drains, how fast and how long it will take.
    $("lanes").textContent = Object.entries(status.lanes).map(([name, lane]) =>
      name + " " + lane.readings + (lane.eta_s != null ? " (" + lane.drain_per_s.toFixed(1) + "/s, empty in " + Math.round(lane.eta_s) + " s)" : "")
    ).join(" · ");
    $("rates").textContent = status.readings_per_s.toFixed(1) + " / " + status.published_per_s.toFixed(1) + " per s";
    const dropped = Object.entries(status.dropped).filter(([, v]) => v > 0).map(([k, v]) => k + ": " + v).join(", ");
    $("dropped").textContent = dropped || "none";
    for (const device of await api("/api/devices")) {
      const errors = Object.entries(device.errors).map(([k, v]) => k + " " + v).join(", ");
      const card = deviceCard(device.name);
      card.querySelector(".seen").textContent = (device.description ? device.description + " · " : "") + device.adapter
        + " · last seen " + ago(device.last_seen) + (device.restarts ? " · restarts " + device.restarts : "")
        + (errors ? " · errors: " + errors : "") + (device.error ? " · last error: " + device.error : "");
    }
  } catch (e) { /* shown by the badges; tried again */ }
}

let started = false;
async function start() {
  try { await api("/api/status"); } catch (e) { return; }
  $("main").hidden = false;
  if (started) return;
  started = true;
  connect(1000);
  refresh();
  setInterval(refresh, 5000);
  // Charts redraw at most twice a second, however fast readings come.
  setInterval(() => Object.values(state.charts).forEach((c) => { if (c.dirty) { c.dirty = false; draw(c); } }), 500);
}

start();
