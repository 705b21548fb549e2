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

/// Samples kept for rates: one a second over the last ten seconds.
const RATE_SAMPLES: usize = 11;

/// The outbox as sampled once a second: rates over the last ten seconds, and the oldest unsent
/// reading. Sampled, so that however many clients ask, the feed queries the outbox once a
/// second at most.
#[derive(Clone, Default)]
pub struct Rates(Arc<Mutex<Samples>>);

#[derive(Default)]
struct Samples {
    /// (when, accepted, delivered)
    counts: VecDeque<(SystemTime, u64, u64)>,
    oldest_unsent_ms: Option<i64>,
}

impl Rates {
    /// Samples the store every second until `cancel` fires.
    pub async fn run(self, store: StoreReader, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stats = store.stats();
            let oldest = store.oldest_unsent_ms().await.ok().flatten();
            let mut samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if samples.counts.len() == RATE_SAMPLES {
                samples.counts.pop_front();
            }
            samples
                .counts
                .push_back((SystemTime::now(), stats.accepted, stats.delivered));
            samples.oldest_unsent_ms = oldest;
        }
    }

    /// When the oldest unsent reading was taken, at the last sample.
    pub fn oldest_unsent_ms(&self) -> Option<i64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .oldest_unsent_ms
    }

    /// (readings in, readings published) per second.
    pub fn per_second(&self) -> (f64, f64) {
        let samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let samples = &samples.counts;
        let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
            return (0.0, 0.0);
        };
        let span = last
            .0
            .duration_since(first.0)
            .unwrap_or_default()
            .as_secs_f64();
        if span <= 0.0 {
            return (0.0, 0.0);
        }
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / span;
        (rate(first.1, last.1), rate(first.2, last.2))
    }
}

fn rfc3339(ts: SystemTime) -> String {
    humantime::format_rfc3339_millis(ts).to_string()
}

fn from_millis(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// `/api/status`: the gateway, its uplink and its outbox.
pub async fn status(_: Authorized, State(state): State<AppState>) -> Json<serde_json::Value> {
    let stats = state.store.stats();
    let oldest = state.rates.oldest_unsent_ms();
    let uplink = state.uplink.borrow().clone();
    let now = SystemTime::now();
    let (readings_per_s, published_per_s) = state.rates.per_second();
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
            "connected": uplink.connected,
            "since": rfc3339(uplink.since),
            "last_error": uplink.last_error,
            "ignored_commands": uplink.ignored_commands,
        },
        "backlog": {
            "readings": stats.backlog,
            "bytes": stats.bytes,
            "oldest_unsent": oldest.map(|ms| rfc3339(from_millis(ms))),
            "oldest_age_s": oldest.map(|ms| (unix_millis(now) - ms).max(0) as f64 / 1000.0),
        },
        "dropped": dropped,
        "accepted": stats.accepted,
        "delivered": stats.delivered,
        "readings_per_s": readings_per_s,
        "published_per_s": published_per_s,
        "ws_clients": state.hub.clients(),
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
                "status": view.map_or("offline", |v| v.status),
                "error": view.and_then(|v| v.error.clone()),
                "last_seen": view.and_then(|v| v.last_seen.clone()),
                "readings": d.counters.readings(),
                "requests": d.counters.requests(),
                "restarts": d.counters.restarts(),
                "errors": d.counters.errors(),
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
    let limit = query.limit.unwrap_or(1000).min(MAX_POINTS);
    match history
        .query(&query.device, &query.metric, unix_millis(since), limit)
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
