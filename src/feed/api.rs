//! The JSON API: `/api/status`, `/api/devices`, `/api/latest`, `/api/history`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::history::MAX_POINTS;
use super::{AppState, Authorized};
use crate::pipeline::unix_millis;
use crate::store::StoreReader;
use crate::uplink::lanes::{self, Delivered, Depth, Lane};

/// Samples kept for rates: one a second over the last ten seconds.
const RATE_SAMPLES: usize = 11;

/// The outbox as sampled once a second: rates over the last ten seconds, the oldest unsent
/// reading, and each lane's depth and drain rate. Sampled, so that however many clients ask,
/// the feed queries the outbox once a second at most.
#[derive(Clone, Default)]
pub struct Rates(Arc<Mutex<Samples>>);

#[derive(Default)]
struct Samples {
    /// (when, accepted, delivered, delivered per lane)
    counts: VecDeque<(SystemTime, u64, u64, [u64; 3])>,
    oldest_unsent_ms: Option<i64>,
    lanes: [Depth; 3],
    wear: crate::wear::Wear,
}

/// One lane as the API and metrics show it.
#[derive(Debug, Clone, Copy)]
pub struct LaneView {
    /// The lane.
    pub lane: Lane,
    /// Its share of the outbox.
    pub depth: Depth,
    /// Readings of it delivered per second over the last ten seconds.
    pub drain_per_s: f64,
}

impl LaneView {
    /// Seconds until the lane is empty at its current drain rate, when it drains at all.
    pub fn eta_s(&self) -> Option<f64> {
        (self.drain_per_s > 0.0).then(|| (self.depth.readings as f64 / self.drain_per_s).ceil())
    }
}

impl Rates {
    /// Samples the store every second until `cancel` fires; `live_age` divides the live lane
    /// from the backlog as the uplink does, and `delivered` counts what each lane delivered.
    pub async fn run(
        self,
        store: StoreReader,
        live_age: Duration,
        delivered: Arc<Delivered>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stats = store.stats();
            let oldest = store.oldest_unsent_ms().await.ok().flatten();
            let lanes = lanes::depths(&store, live_age).await.ok();
            let per_lane = Lane::ALL.map(|lane| delivered.get(lane));
            let written = crate::wear::written_bytes().await;
            let mut samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if samples.counts.len() == RATE_SAMPLES {
                samples.counts.pop_front();
            }
            samples.counts.push_back((
                SystemTime::now(),
                stats.accepted,
                stats.delivered,
                per_lane,
            ));
            samples.oldest_unsent_ms = oldest;
            if let Some(written) = written {
                samples.wear.record(tokio::time::Instant::now(), written);
            }
            if let Some(lanes) = lanes {
                samples.lanes = lanes.map(|(_, depth)| depth);
            }
        }
    }

    /// When the oldest unsent reading was taken, at the last sample.
    pub fn oldest_unsent_ms(&self) -> Option<i64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .oldest_unsent_ms
    }

    /// Bytes written to storage since start, and per day over the last day.
    pub fn wear(&self) -> (Option<u64>, Option<f64>) {
        let samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (samples.wear.written(), samples.wear.per_day())
    }

    /// (readings in, readings published) per second.
    pub fn per_second(&self) -> (f64, f64) {
        let samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match rate_span(&samples.counts) {
            Some((first, last, span)) => (
                last.1.saturating_sub(first.1) as f64 / span,
                last.2.saturating_sub(first.2) as f64 / span,
            ),
            None => (0.0, 0.0),
        }
    }

    /// Each lane's depth and drain rate, at the last sample.
    pub fn lanes(&self) -> [LaneView; 3] {
        let samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let span = rate_span(&samples.counts);
        Lane::ALL.map(|lane| {
            let i = lane as usize;
            LaneView {
                lane,
                depth: samples.lanes[i],
                drain_per_s: span.map_or(0.0, |(first, last, span)| {
                    last.3[i].saturating_sub(first.3[i]) as f64 / span
                }),
            }
        })
    }
}

type Sample = (SystemTime, u64, u64, [u64; 3]);

/// The first and last samples and the seconds between them, when there are two.
fn rate_span(samples: &VecDeque<Sample>) -> Option<(&Sample, &Sample, f64)> {
    let (first, last) = (samples.front()?, samples.back()?);
    let span = last
        .0
        .duration_since(first.0)
        .unwrap_or_default()
        .as_secs_f64();
    (span > 0.0).then_some((first, last, span))
}

/// The link meter as `/api/status` shows it.
fn link_json(c: &crate::uplink::meter::Counts) -> serde_json::Value {
    let bytes = |b: &crate::uplink::meter::Bytes| json!({"up": b.up, "down": b.down});
    json!({
        "total": bytes(&c.total),
        "connects": c.connects,
        "connection": bytes(&c.connection),
        "hour": bytes(&c.hour.bytes),
        "today": bytes(&c.day.bytes),
        "month": bytes(&c.month.bytes),
    })
}

/// The link budget as `/api/status` shows it (`null` without one).
fn budget_json(
    budget: &crate::uplink::budget::Budget,
    counts: &crate::uplink::meter::Counts,
) -> serde_json::Value {
    use crate::uplink::budget::Step;
    let Some(config) = budget.config() else {
        return serde_json::Value::Null;
    };
    let reached: serde_json::Map<String, serde_json::Value> = Step::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), json!(budget.reached(*s))))
        .collect();
    json!({
        "step": budget.current().as_str(),
        "day": {"used": counts.day.bytes.total(), "limit": config.day.map(|b| b.as_u64())},
        "month": {"used": counts.month.bytes.total(), "limit": config.month.map(|b| b.as_u64())},
        "reached": reached,
    })
}

/// The lanes as `/api/status` shows them.
fn lanes_json(lanes: &[LaneView; 3], now: SystemTime) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = lanes
        .iter()
        .map(|view| {
            let oldest = view.depth.oldest_ms;
            (
                view.lane.as_str().to_string(),
                json!({
                    "readings": view.depth.readings,
                    "bytes": view.depth.bytes,
                    "oldest": oldest.map(|ms| rfc3339(from_millis(ms))),
                    "oldest_age_s": oldest.map(|ms| (unix_millis(now) - ms).max(0) as f64 / 1000.0),
                    "drain_per_s": view.drain_per_s,
                    "eta_s": view.eta_s(),
                }),
            )
        })
        .collect();
    serde_json::Value::Object(map)
}

fn rfc3339(ts: SystemTime) -> String {
    humantime::format_rfc3339_millis(ts).to_string()
}

fn from_millis(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// `/api/status`: the gateway, its uplink and its outbox.
pub async fn status(_: Authorized, State(state): State<AppState>) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = state.store.stats();
    let oldest = state.rates.oldest_unsent_ms();
    let uplink = state.uplink.borrow().clone();
    let waiting = state.link.waiting();
    let now = SystemTime::now();
    let (readings_per_s, published_per_s) = state.rates.per_second();
    let (written, written_per_day) = state.rates.wear();
    let dropped: serde_json::Map<String, serde_json::Value> = stats
        .dropped
        .iter()
        .map(|(reason, n)| (reason.as_str().to_string(), json!(n)))
        .collect();
    Json(json!({
        "gateway": &*state.gateway,
        "version": env!("CARGO_PKG_VERSION"),
        "started": rfc3339(state.started),
        "uptime_s": now.duration_since(state.started).unwrap_or_default().as_secs(),
        "uplink": {
            "configured": uplink.configured,
            "connected": uplink.connected,
            "since": rfc3339(uplink.since),
            "last_error": uplink.last_error,
            "ignored_commands": uplink.ignored_commands,
            "waiting_s": waiting.map(|w| w.as_secs_f64()),
            "stalled": uplink.connected && waiting.is_some_and(|w| w >= state.stall_after),
            "sleeping_until": uplink.sleeping_until.map(rfc3339),
        },
        "clock": {
            "known": state.clock.known(),
            "steps": state.clock.steps(),
            "correction_s": state.clock.correction() / 1000,
        },
        "link": link_json(&state.meter.counts()),
        "budget": budget_json(&state.budget, &state.meter.counts()),
        "backlog": {
            "readings": stats.backlog,
            "bytes": stats.bytes,
            "oldest_unsent": oldest.map(|ms| rfc3339(from_millis(ms))),
            "oldest_age_s": oldest.map(|ms| (unix_millis(now) - ms).max(0) as f64 / 1000.0),
        },
        "lanes": lanes_json(&state.rates.lanes(), now),
        "disk": {
            "written_bytes": written,
            "written_per_day": written_per_day.map(|b| b.round()),
        },
        "dropped": dropped,
        "accepted": stats.accepted,
        "delivered": stats.delivered,
        "readings_per_s": readings_per_s,
        "published_per_s": published_per_s,
        "ws_clients": state.hub.clients(),
        "connections": {
            "open": state.server.open.load(Relaxed),
            "refused_full": state.server.refused_full.load(Relaxed),
            "refused_per_client": state.server.refused_per_client.load(Relaxed),
            "timed_out": state.server.timed_out.load(Relaxed),
        },
    }))
}

/// `/api/devices`: each device's adapter, health and counters.
pub async fn devices(_: Authorized, State(state): State<AppState>) -> Json<serde_json::Value> {
    let views = state.hub.devices();
    let devices: Vec<serde_json::Value> = state
        .devices
        .iter()
        .map(|d| {
            let view = views.get(&d.name);
            json!({
                "name": &*d.name,
                "adapter": d.adapter,
                "description": d.description.as_deref(),
                "status": view.map_or("offline", |v| v.status),
                "error": view.and_then(|v| v.error.clone()),
                "last_seen": view.and_then(|v| v.last_seen.clone()),
                "readings": d.counters.readings(),
                "requests": d.counters.requests(),
                "restarts": d.counters.restarts(),
                "errors": d.counters.errors(),
                "suppressed": {"readings": d.counters.suppressed().0, "values": d.counters.suppressed().1},
                "units": view.map(|v| v.units.clone()),
                "writable": d.writable,
            })
        })
        .collect();
    Json(json!(devices))
}

/// `/api/latest`: the latest value of every metric of every device.
pub async fn latest(_: Authorized, State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!(state.hub.devices()))
}

/// `/api/history` query.
#[derive(Deserialize)]
pub struct HistoryQuery {
    device: String,
    metric: String,
    /// Milliseconds since the epoch, an RFC 3339 time, or a duration back from now (`15m`).
    since: Option<String>,
    limit: Option<u32>,
    /// Averages the numbers per this duration (`144s`) or milliseconds, for long ranges.
    step: Option<String>,
}

/// A `step` in milliseconds, from milliseconds or a duration; at least 1 ms.
fn parse_step(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .ok()
        .or_else(|| {
            humantime::parse_duration(text)
                .ok()
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        })
        .filter(|ms| *ms >= 1)
        .ok_or_else(|| {
            format!("`step` must be milliseconds or a duration of 1 ms or more, not `{text}`")
        })
}

/// `/api/history`: recent values of one metric, oldest first.
pub async fn history(
    _: Authorized,
    State(state): State<AppState>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let Some(history) = &state.history else {
        return (
            StatusCode::NOT_FOUND,
            "history is off (feed.history.keep: 0s)",
        )
            .into_response();
    };
    let now = SystemTime::now();
    let since = match query.since.as_deref() {
        None => Ok(now - state.history_keep),
        Some(text) => text
            .parse::<i64>()
            .map(from_millis)
            .or_else(|_| humantime::parse_rfc3339_weak(text))
            .or_else(|_| humantime::parse_duration(text).map(|ago| now - ago))
            .map_err(|_| {
                format!(
                    "`since` must be milliseconds, an RFC 3339 time or a duration, not `{text}`"
                )
            }),
    };
    let since = match since {
        Ok(since) => since,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let step = match query.step.as_deref().map(parse_step).transpose() {
        Ok(step) => step,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let limit = query.limit.unwrap_or(1000).min(MAX_POINTS);
    match history
        .query(
            &query.device,
            &query.metric,
            unix_millis(since),
            limit,
            step,
        )
        .await
    {
        Ok(points) => Json(json!({
            "device": query.device,
            "metric": query.metric,
            "points": points,
        }))
        .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("history: {e}")).into_response(),
    }
}

/// `POST /api/set`: a write from the page.
#[derive(Deserialize)]
pub struct SetBody {
    device: String,
    point: String,
    /// A value, or `{"value": ..., "id": ...}`, as a `.../set` payload.
    value: serde_json::Value,
}

/// `POST /api/set`: writes a value through the same router, checks and answers as MQTT
/// `.../set`, and answers as `.../result` does (with the value read back). Only with a
/// feed token: a gateway open to its LAN shows its data, but nobody on that LAN may turn a
/// pump on.
pub async fn set(
    _: Authorized,
    State(state): State<AppState>,
    Json(body): Json<SetBody>,
) -> Response {
    if state.token.is_none() {
        return (
            StatusCode::FORBIDDEN,
            "writes from the dashboard need a feed token (feed.token)",
        )
            .into_response();
    }
    let Some(commands) = &state.commands else {
        return (
            StatusCode::NOT_FOUND,
            "no device on this gateway takes writes",
        )
            .into_response();
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = crate::commands::SetRequest {
        device: body.device,
        point: body.point,
        payload: serde_json::to_vec(&body.value).unwrap_or_default(),
        reply: Some(reply),
    };
    if commands.try_send(request).is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many writes waiting, or the gateway is stopping",
        )
            .into_response();
    }
    match answer.await {
        Ok(payload) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            payload,
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping").into_response(),
    }
}

/// `/api/status` of the gateway running with `config`, if its feed answers within a second:
/// how `cairn stats` shows what only the running gateway knows (its lanes).
pub fn running_status(config: &crate::config::FeedConfig) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    if !config.enabled {
        return None;
    }
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let timeout = Duration::from_secs(1);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let auth = config
        .token
        .as_deref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET /api/status HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.take(1 << 20).read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then_some(())?;
    serde_json::from_str(body).ok()
}
