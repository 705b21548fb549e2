//! The dashboard's HTTP server: the router behind an accept loop that bounds what the LAN
//! can take. axum's own `serve` keeps every connection for as long as the client likes, with
//! no header timeout: 5,000 idle or slowloris connections stayed open, and 1,100 of them used
//! up a systemd service's 1,024 descriptors, so that the uplink could not reconnect. Here:
//!
//! - at most `max_connections` at once (lowered to fit the descriptor limit, keeping a
//!   reserve for the outbox, the uplink and the devices), and `max_per_client` per address;
//!   more are closed at once and counted;
//! - a request's headers must arrive within `header_timeout` (hyper's timer);
//! - a connection without a byte either way for `idle_timeout` is closed (a WebSocket pings
//!   its client well within that, and watches its own silence).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::logging::Throttle;

/// Descriptors kept for everything but the dashboard: the outbox and its WAL, the history,
/// the uplink and its socket, the journal, and slack.
const RESERVED_FDS: u64 = 64;

/// Descriptors each device may hold (a serial port, a Modbus or UDP socket).
const FDS_PER_DEVICE: u64 = 2;

/// What the server lets the LAN hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once, all clients together.
    pub max_connections: usize,
    /// Connections at once from one address.
    pub max_per_client: usize,
    /// Time for a request's headers to arrive.
    pub header_timeout: Duration,
    /// Time without a byte either way before a connection is closed.
    pub idle_timeout: Duration,
}

impl Limits {
    /// `self`, with `max_connections` lowered to what the process's descriptor limit leaves
    /// after the reserve for `devices`. Raises the soft limit to the hard one first.
    pub fn fitted(mut self, devices: usize) -> Self {
        let limit = raise_fd_limit();
        let reserve = RESERVED_FDS + FDS_PER_DEVICE * devices as u64;
        let fits = usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
        if fits < self.max_connections {
            warn!(
                fd_limit = limit,
                max_connections = fits,
                configured = self.max_connections,
                "The descriptor limit leaves room for fewer dashboard connections than configured; raise LimitNOFILE"
            );
            self.max_connections = fits.max(1);
        }
        self
    }
}

/// Raises the soft descriptor limit to the hard one and returns it.
fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    // No hard limit (None) still meets the kernel's own cap: ask for a generous number.
    let wanted = limit.maximum.unwrap_or(1 << 16);
    if limit.current.is_some_and(|current| current < wanted) {
        limit.current = Some(wanted);
        if setrlimit(Resource::Nofile, limit).is_err() {
            limit = getrlimit(Resource::Nofile);
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// What the server turned away, since start.
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Connections refused because all `max_connections` were taken.
    pub refused_full: AtomicU64,
    /// Connections refused because their address held `max_per_client`.
    pub refused_per_client: AtomicU64,
    /// Connections closed for slow headers or idleness.
    pub timed_out: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
}

/// Who holds which connections.
#[derive(Debug, Default)]
struct Occupancy {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// One connection's place; given back when the connection (or its WebSocket) ends.
struct Slot {
    occupancy: Arc<Mutex<Occupancy>>,
    counters: Arc<ServerCounters>,
    client: IpAddr,
}

impl Slot {
    fn take(
        occupancy: &Arc<Mutex<Occupancy>>,
        counters: &Arc<ServerCounters>,
        client: IpAddr,
        limits: &Limits,
    ) -> Option<Self> {
        let mut held = occupancy.lock().unwrap_or_else(|p| p.into_inner());
        if held.total >= limits.max_connections {
            counters.refused_full.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mine = held.per_client.entry(client).or_default();
        if *mine >= limits.max_per_client {
            counters.refused_per_client.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *mine += 1;
        held.total += 1;
        counters.open.fetch_add(1, Ordering::Relaxed);
        Some(Self {
            occupancy: occupancy.clone(),
            counters: counters.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.occupancy.lock().unwrap_or_else(|p| p.into_inner());
        held.total = held.total.saturating_sub(1);
        if let Some(mine) = held.per_client.get_mut(&self.client) {
            *mine -= 1;
            if *mine == 0 {
                held.per_client.remove(&self.client);
            }
        }
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `app` on `listener` within `limits` until `cancel` fires; `open`: no token is
/// required.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    counters: Arc<ServerCounters>,
    open: bool,
    cancel: CancellationToken,
) {
    let local = listener.local_addr().ok();
    let shown = local.map_or_else(|| "?".to_string(), |a| a.to_string());
    info!(
        listen = %shown,
        max_connections = limits.max_connections,
        max_per_client = limits.max_per_client,
        "Dashboard and feed listening"
    );
    if open && local.is_some_and(|a| !a.ip().is_loopback()) {
        warn!(listen = %shown, "No feed.token: anyone who can reach this address reads every reading, device status and the gateway's counters, and sees its devices' names");
    }
    let occupancy = Arc::new(Mutex::new(Occupancy::default()));
    let mut connections = JoinSet::new();
    let mut refusals = Throttle::new(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = Slot::take(&occupancy, &counters, peer.ip(), &limits) else {
                        if let Some(more) = refusals.pass() {
                            warn!(client = %peer.ip(), more_refused = more, "Dashboard connection refused: too many at once");
                        }
                        continue;
                    };
                    connections.spawn(connection(stream, peer, app.clone(), slot, limits, cancel.clone()));
                }
                Err(e) => {
                    // Out of descriptors (EMFILE) or the like: wait for some to come back
                    // rather than spin on the error.
                    if let Some(more) = refusals.pass() {
                        warn!(error = %e, more_refused = more, "Cannot accept a dashboard connection");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
    drop(listener);
    // Each connection has seen `cancel` and is closing; a WebSocket says goodbye itself.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

/// One connection: HTTP/1.1 with upgrades, closed when idle or when `cancel` fires.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    slot: Slot,
    limits: Limits,
    cancel: CancellationToken,
) {
    let counters = slot.counters.clone();
    let activity = Arc::new(Activity::default());
    let io = Watched {
        inner: stream,
        activity: activity.clone(),
        _slot: slot,
    };
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(limits.idle_timeout.min(Duration::from_secs(5)));
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if e.is_timeout() {
                        counters.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    debug!(client = %peer, error = %e, "Dashboard connection ended");
                }
                return;
            }
            () = cancel.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tick.tick() => {
                if activity.idle() >= limits.idle_timeout {
                    counters.timed_out.fetch_add(1, Ordering::Relaxed);
                    debug!(client = %peer, "Dashboard connection idle; closing");
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte.
#[derive(Debug)]
struct Activity {
    since: Instant,
    /// Milliseconds after `since`.
    last: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        self.since
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// A connection's stream that notes each byte moved, and holds its slot for as long as it
/// lives: through a WebSocket upgrade too.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_in_total_and_per_client_and_given_back() {
        let occupancy = Arc::new(Mutex::new(Occupancy::default()));
        let counters = Arc::new(ServerCounters::default());
        let limits = Limits {
            max_connections: 3,
            max_per_client: 2,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let take = |ip| Slot::take(&occupancy, &counters, ip, &limits);
        let a1 = take(a).unwrap();
        let _a2 = take(a).unwrap();
        assert!(take(a).is_none(), "a third from one client");
        let b1 = take(b).unwrap();
        assert!(take(b).is_none(), "all three taken");
        drop(a1);
        let _a3 = take(a).unwrap();
        drop(b1);
        assert_eq!(counters.refused_per_client.load(Ordering::Relaxed), 1);
        assert_eq!(counters.refused_full.load(Ordering::Relaxed), 1);
        assert_eq!(counters.open.load(Ordering::Relaxed), 2);
        assert!(!occupancy.lock().unwrap().per_client.contains_key(&b));
    }
}
