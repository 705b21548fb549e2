// Cairn dashboard: the snapshot and live readings from /ws, device health and the uplink from
// /api, a chart per numeric value (uPlot; backfilled from /api/history over the chosen range,
// then live).
"use strict";

const RANGES = { "15m": 900, "1h": 3600, "24h": 86400 }; // seconds
const POINTS = 600;         // per chart and range: the history averages down to this
const state = {
  devices: {}, charts: {}, seq: null, token: localStorage.getItem("cairn-token") || "",
  range: RANGES[localStorage.getItem("cairn-range")] ? localStorage.getItem("cairn-range") : "1h",
};
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

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// A value's chart: time axis, value scale, and the value under the pointer in its legend.
function chart(device, metric) {
  const key = device + "\u0000" + metric;
  if (!state.charts[key]) {
    // Only numbers get a chart; it appears with the first one.
    const row = metricRow(device, metric);
    const box = el("div", { class: "chart" });
    row.append(box);
    const unit = (state.devices[device] && state.devices[device].units || {})[metric] || "";
    const axis = { stroke: css("--dim"), grid: { stroke: "#0001" }, ticks: { stroke: "#0002" } };
    const plot = new uPlot({
      width: Math.max(200, row.clientWidth), height: 150,
      cursor: { drag: { x: false, y: false } },
      // The time axis spans the chosen range up to now, however few points it holds yet.
      scales: { x: { time: true, range: () => { const now = Date.now() / 1000; return [now - RANGES[state.range], now]; } } },
      series: [
        { value: (u, t) => t == null ? "–" : new Date(t * 1000).toLocaleString() },
        { label: metric, stroke: css("--line"), width: 1.5, value: (u, v) => v == null ? "–" : format(v) + (unit ? " " + unit : "") },
      ],
      axes: [axis, { ...axis, size: 52 }],
    }, [[], []], box);
    state.charts[key] = { device, metric, plot, xs: [], ys: [], n: 0 };
    backfill(state.charts[key]);
  }
  return state.charts[key];
}

// The chart's range from the history, averaged to POINTS; live points then join it.
function backfill(c) {
  const range = RANGES[state.range];
  const step = range * 1000 / POINTS;
  c.xs = []; c.ys = []; c.n = 0; c.dirty = true;
  api(`/api/history?device=${encodeURIComponent(c.device)}&metric=${encodeURIComponent(c.metric)}`
    + `&since=${state.range}&step=${Math.round(step)}&limit=${POINTS}`)
    .then((history) => {
      const first = c.xs.length ? c.xs[0] : Infinity;
      const old = history.points.filter((p) => p.ts / 1000 < first && typeof p.value === "number");
      c.xs = old.map((p) => p.ts / 1000).concat(c.xs);
      c.ys = old.map((p) => p.value).concat(c.ys);
      c.dirty = true;
    }).catch(() => {});
}

// A live point: averaged into the newest one while within a step of it, as the history is.
function addPoint(c, t, v) {
  const range = RANGES[state.range], step = range / POINTS, last = c.xs.length - 1;
  if (last >= 0 && c.n > 0 && t - c.start < step && t >= c.xs[last]) {
    c.ys[last] = (c.ys[last] * c.n + v) / (c.n + 1);
    c.xs[last] = t;
    c.n += 1;
  } else {
    c.xs.push(t); c.ys.push(v); c.start = t; c.n = 1;
  }
  while (c.xs.length && c.xs[0] < t - range) { c.xs.shift(); c.ys.shift(); }
  c.dirty = true;
}

function draw(c) {
  c.plot.setData([c.xs, c.ys]);
}

function chooseRange(range) {
  state.range = range;
  localStorage.setItem("cairn-range", range);
  document.querySelectorAll("#ranges button").forEach((b) => b.classList.toggle("on", b.dataset.range === range));
  Object.values(state.charts).forEach(backfill);
}

function showValue(device, metric, value, ts) {
  const shown = metricRow(device, metric).querySelector(".value");
  shown.textContent = format(value);
  shown.title = "read at " + ts;
  if (typeof value === "number") addPoint(chart(device, metric), Date.parse(ts) / 1000, value);
}

// A writable point's control: a value asked for, confirmed, then written through the same
// path as MQTT `.../set`; the answer shows the value read back from the device.
function writeControl(device, point) {
  const row = metricRow(device, point);
  if (row.querySelector("button.set")) return;
  const answer = el("span", { class: "answer" });
  const button = el("button", { class: "set", "data-device": device, "data-point": point }, "Set…");
  button.addEventListener("click", () => write(device, point, answer));
  row.append(el("div", { class: "write" }, button, answer));
}

async function write(device, point, answer) {
  const now = metricRow(device, point).querySelector(".value").textContent;
  const text = prompt(`New value for ${device} · ${point} (now ${now})`);
  if (text === null || text.trim() === "") return;
  const t = text.trim();
  const value = t === "true" ? true : t === "false" ? false : isNaN(Number(t)) ? t : Number(t);
  if (!confirm(`Set ${device} · ${point} to ${JSON.stringify(value)}?`)) return;
  answer.textContent = "writing…";
  answer.className = "answer";
  try {
    const response = await fetch("api/set", {
      method: "POST", headers: { ...headers(), "Content-Type": "application/json" },
      body: JSON.stringify({ device, point, value }),
    });
    const json = (response.headers.get("content-type") || "").includes("json");
    const result = json ? await response.json() : { ok: false, error: await response.text() };
    answer.textContent = result.ok ? "set · read back " + (result.value == null ? "nothing" : format(result.value)) : "refused: " + result.error;
    answer.className = "answer " + (result.ok ? "ok" : "bad");
  } catch (e) {
    answer.textContent = "failed: " + e.message;
    answer.className = "answer bad";
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
  socket.onopen = () => {
    // Whether the feed is compressed (permessage-deflate): what a slow link cares about.
    const deflate = socket.extensions.includes("permessage-deflate");
    $("live").textContent = deflate ? "live · compressed" : "live";
    $("live").title = socket.extensions || "uncompressed";
    $("live").dataset.extensions = socket.extensions;
    $("live").className = "badge";
    delay = 1000;
  };
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
    $("uplink-state").textContent = !u.configured ? "no broker configured: readings wait in the outbox (add an mqtt: section to the config)"
      : u.sleeping_until ? "sleeping until " + new Date(u.sleeping_until).toLocaleString()
      : (u.connected ? (u.stalled ? "stalled: no answer for " + Math.round(u.waiting_s) + " s" : "connected") : "down") + " since " + ago(u.since) + (u.last_error && !u.connected ? " (" + u.last_error + ")" : "");
    $("uplink").className = "panel " + (u.sleeping_until || !u.configured ? "" : !u.connected ? "down" : u.stalled ? "stalled" : "");
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
    const devices = await api("/api/devices");
    $("no-devices").hidden = devices.length > 0;
    for (const device of devices) {
      (device.writable || []).forEach((point) => writeControl(device.name, point));
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
  document.querySelectorAll("#ranges button").forEach((b) => b.addEventListener("click", () => chooseRange(b.dataset.range)));
  chooseRange(state.range);
  window.addEventListener("resize", () => Object.values(state.charts).forEach((c) =>
    c.plot.setSize({ width: Math.max(200, c.plot.root.parentElement.parentElement.clientWidth), height: 150 })));
  connect(1000);
  refresh();
  setInterval(refresh, 5000);
  // Charts redraw at most twice a second, however fast readings come.
  setInterval(() => Object.values(state.charts).forEach((c) => { if (c.dirty) { c.dirty = false; draw(c); } }), 500);
}

start();
