//! The live feed on site (axum): the dashboard at `/`, the WebSocket push feed at `/ws`, the
//! JSON API under `/api/`, Prometheus `/metrics` and `/healthz`.
//!
//! It reads the live bus ([`hub`]), the store's counters and the devices' status, and writes
//! only its own chart history ([`history`]); it cannot block the pipeline or the uplink, and
//! it serves whether or not the broker is reachable.

mod api;
pub use api::running_status;
mod assets;
mod cbor;
pub mod history;
pub mod hub;
mod metrics;
pub mod offer;
mod server;
mod ws;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::backoff::Backoff;
use crate::commands::SetRequest;
use crate::config::FeedConfig;
use crate::live::LiveBus;
use crate::store::StoreReader;
use crate::supervisor::DeviceHandle;
use crate::uplink::UplinkStatus;
use crate::uplink::topics::DeviceMeta;
use history::History;
use hub::{Filter, Format, Hub};

/// What the feed reads from the rest of the gateway.
pub struct FeedSources {
    /// The gateway's id.
    pub gateway: String,
    /// Devices as announced upstream (units, writable values).
    pub metas: Vec<DeviceMeta>,
    /// The supervised devices (status, counters).
    pub devices: Vec<DeviceHandle>,
    /// Where writes from the page go (the router MQTT `.../set` uses); `None` when no device
    /// takes writes.
    pub commands: Option<mpsc::Sender<SetRequest>>,
    /// The uplink's state.
    pub uplink: watch::Receiver<UplinkStatus>,
    /// The outbox's counters and oldest unsent reading.
    pub store: StoreReader,
    /// Every reading the outbox takes, and every status change.
    pub live: LiveBus,
    /// Readings the uplink delivered per lane.
    pub delivered: Arc<crate::uplink::lanes::Delivered>,
    /// What divides the live lane from the backlog.
    pub live_age: Duration,
    /// The bytes that crossed the link.
    pub meter: Arc<crate::uplink::meter::Meter>,
    /// Answers the link waits for.
    pub link: Arc<crate::uplink::link::LinkState>,
    /// How long an answer may wait before the link shows as stalled.
    pub stall_after: Duration,
    /// The link budget.
    pub budget: Arc<crate::uplink::budget::Budget>,
    /// Whether the wall clock is known good.
    pub clock: Arc<crate::clock::Clock>,
}

/// Everything a request handler may read.
#[derive(Clone)]
struct AppState {
    gateway: Arc<str>,
    token: Option<Arc<str>>,
    hub: Hub,
    history: Option<History>,
    history_keep: Duration,
    devices: Arc<[DeviceHandle]>,
    commands: Option<mpsc::Sender<SetRequest>>,
    uplink: watch::Receiver<UplinkStatus>,
    meter: Arc<crate::uplink::meter::Meter>,
    link: Arc<crate::uplink::link::LinkState>,
    stall_after: Duration,
    budget: Arc<crate::uplink::budget::Budget>,
    clock: Arc<crate::clock::Clock>,
    store: StoreReader,
    started: SystemTime,
    rates: api::Rates,
    clients: Arc<Semaphore>,
    max_clients: usize,
    deflate_clients: Arc<Semaphore>,
    server: Arc<server::ServerCounters>,
    cancel: CancellationToken,
}

/// Starts the feed in the background: its hub, its history, and the server, which keeps
/// trying to bind its port (another program may hold it) without holding anything else up.
pub async fn start(
    config: &FeedConfig,
    data_dir: &Path,
    sources: FeedSources,
    cancel: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    // Subscribed before the devices' current status is read, so that no change falls between.
    let live = sources.live.subscribe();
    let hub = Hub::new(&sources.metas, config.replay);
    hub.seed_status(
        sources
            .devices
            .iter()
            .map(|d| (&*d.name, d.status.borrow().clone())),
    );
    tasks.spawn(hub.clone().run(live, cancel.clone()));
    let history = if config.history.keep.is_zero() {
        None
    } else {
        let path = data_dir.join("history.db");
        match History::open(&path, &config.history).await {
            Ok(history) => {
                tasks.spawn(
                    history
                        .clone()
                        .run(sources.live.subscribe(), cancel.clone()),
                );
                Some(history)
            }
            Err(e) => {
                error!(path = %path.display(), error = %e, "Cannot open the chart history; charts start empty");
                None
            }
        }
    };
    let limits = server::Limits {
        max_connections: config.max_connections,
        max_per_client: config.max_per_client,
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
    }
    .fitted(sources.devices.len());
    let counters = Arc::new(server::ServerCounters::default());
    let rates = api::Rates::default();
    tasks.spawn(rates.clone().run(
        sources.store.clone(),
        sources.live_age,
        sources.delivered.clone(),
        cancel.clone(),
    ));
    let state = AppState {
        gateway: Arc::from(sources.gateway.as_str()),
        token: config.token.as_deref().map(Arc::from),
        hub,
        history,
        history_keep: config.history.keep,
        devices: Arc::from(sources.devices),
        commands: sources.commands,
        uplink: sources.uplink,
        meter: sources.meter,
        link: sources.link,
        stall_after: sources.stall_after,
        budget: sources.budget,
        clock: sources.clock,
        store: sources.store,
        started: SystemTime::now(),
        rates,
        clients: Arc::new(Semaphore::new(config.max_clients)),
        max_clients: config.max_clients,
        deflate_clients: Arc::new(Semaphore::new(config.deflate_clients)),
        server: counters.clone(),
        cancel: cancel.clone(),
    };
    let open = config.token.is_none();
    let listen = config.listen;
    tasks.spawn(async move {
        if let Some(listener) = bind(listen, &cancel).await {
            server::serve(listener, router(state), limits, counters, open, cancel).await;
        }
    });
}

fn router(state: AppState) -> Router {
    let files = assets::FILES
        .iter()
        .fold(Router::new(), |router, (path, ..)| {
            router.route(
                path,
                get(move |request: HeaderMap| async move { assets::serve(path, &request) }),
            )
        });
    files
        .route("/healthz", get(|| async { "ok" }))
        .route("/ws", get(websocket))
        .route("/metrics", get(metrics::metrics))
        .route("/api/status", get(api::status))
        .route("/api/devices", get(api::devices))
        .route("/api/latest", get(api::latest))
        .route("/api/history", get(api::history))
        .route("/api/set", axum::routing::post(api::set))
        .with_state(state)
}

/// Binds `addr`, retrying with backoff while it is taken; `None` once `cancel` fires.
async fn bind(addr: SocketAddr, cancel: &CancellationToken) -> Option<tokio::net::TcpListener> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Some(listener),
            Err(e) => {
                let retry_in = backoff.next_delay();
                warn!(listen = %addr, error = %e, retry_in = %humantime::format_duration(retry_in), "Cannot listen for the dashboard; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return None,
                    () = tokio::time::sleep(retry_in) => {}
                }
            }
        }
    }
}

/// Proof that a request carried the token, when one is configured: `Authorization: Bearer`,
/// or `?token=` (browsers cannot set headers on a WebSocket upgrade).
struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = &state.token else {
            return Ok(Authorized);
        };
        let from_header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        let from_query = Query::<TokenQuery>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|q| q.0.token);
        let given = from_header.map(str::to_string).or(from_query);
        if given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return Ok(Authorized);
        }
        Err((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            axum::Json(serde_json::json!({"error": "a valid token is required"})),
        )
            .into_response())
    }
}

/// The credentials of an `Authorization: Bearer` header; the scheme is case-insensitive
/// (RFC 9110, 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The token as a query parameter.
#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `/ws` query: where to resume, optional filters as comma-separated globs, and the format.
#[derive(Deserialize)]
struct WsQuery {
    since: Option<u64>,
    devices: Option<String>,
    values: Option<String>,
    #[serde(default)]
    format: Format,
}

fn globs(list: Option<String>) -> Vec<String> {
    list.map(|l| l.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

/// Whether `parts` ask for a WebSocket: `Upgrade: websocket` and `Connection: upgrade`
/// (RFC 6455 §4.2.1), which the library leaves to the caller.
fn asks_to_upgrade(parts: &Parts) -> bool {
    let has = |name, token: &str| {
        parts.headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

async fn websocket(
    _: Authorized,
    State(state): State<AppState>,
    Query(query): Query<WsQuery>,
    request: Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    if !asks_to_upgrade(&parts) {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "a WebSocket upgrade is required",
        )
            .into_response();
    }
    let Ok(permit) = state.clients.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("at most {} clients at once", state.max_clients),
        )
            .into_response();
    };
    // The offers are checked here and handed on as the one accepted, or not at all.
    let offers: Vec<&str> = parts
        .headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let offer = offer::accepted(&offers.join(","));
    parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    let deflate = match offer {
        Some(offer) => state
            .deflate_clients
            .clone()
            .try_acquire_owned()
            .ok()
            .inspect(|_| {
                if let Ok(value) = HeaderValue::from_str(&offer) {
                    parts
                        .headers
                        .insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
                }
            }),
        None => None,
    };
    let upgrade = match yawc::IncomingUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(status) => return (status, "not a valid WebSocket handshake").into_response(),
    };
    let (response, socket) = match upgrade.upgrade(ws::options(deflate.is_some())) {
        Ok(upgraded) => upgraded,
        Err(e) => {
            warn!(error = %e, "WebSocket handshake failed");
            return (StatusCode::BAD_REQUEST, "WebSocket handshake failed").into_response();
        }
    };
    let client = ws::Client {
        filter: Filter {
            devices: globs(query.devices),
            values: globs(query.values),
        },
        since: query.since,
        format: query.format,
        _permit: permit,
        _deflate: deflate,
    };
    tokio::spawn(async move {
        match socket.await {
            Ok(socket) => ws::serve(socket, state.hub, client, state.cancel).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
        }
    });
    response.map(axum::body::Body::new).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"s3cret", b"s3cret"));
        assert!(!same(b"s3cret", b"s3cre") && !same(b"s3cret", b"s3creT"));
    }
}
