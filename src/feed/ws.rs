//! `/ws`: the live push feed (RFC 6455). A client gets a snapshot (or, with `?since=SEQ`, what it
//! missed), then every message as it happens. Each client reads from its own bounded queue; one
//! that falls behind gets a fresh snapshot, and one that keeps falling behind or stops reading
//! is closed with a reason, so that no client can slow the others or the pipeline.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as Frame, Utf8Bytes, WebSocket, close_code};
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::hub::{Filter, Hub, Message, Start};

/// Largest message a client may send (a subscribe message is a few hundred bytes).
pub const MAX_INCOMING: usize = 4096;

/// How often the server pings, and how long a client may stay silent (no pong, nothing).
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// How long one send may take before the client counts as stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Falling behind this often within `LAG_WINDOW` closes the connection.
const LAGS_ALLOWED: u32 = 3;
const LAG_WINDOW: Duration = Duration::from_secs(60);

/// Why a session ended, as the close frame says.
struct Close(u16, &'static str);

/// Serves one WebSocket client until it leaves, fails, or `cancel` fires.
pub async fn serve(
    mut socket: WebSocket,
    hub: Hub,
    mut filter: Filter,
    since: Option<u64>,
    cancel: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let (start, rx) = hub.join(since, &filter);
    let close = session(&mut socket, &hub, &mut filter, start, rx, &cancel).await;
    if let Some(Close(code, reason)) = close {
        info!(reason, code, "WebSocket client closed");
        let frame = Frame::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(frame)).await;
    }
}

/// Sends `frame`; `Err` ends the session, with a close frame to send if the client is stuck
/// rather than gone.
async fn send(socket: &mut WebSocket, frame: Frame) -> Result<(), Option<Close>> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(Close(
            close_code::POLICY,
            "client too slow: stopped reading",
        ))),
    }
}

async fn session(
    socket: &mut WebSocket,
    hub: &Hub,
    filter: &mut Filter,
    start: Start,
    mut rx: broadcast::Receiver<Arc<Message>>,
    cancel: &CancellationToken,
) -> Option<Close> {
    // Messages up to this feed seq are in what the client already has.
    let mut seen = match start {
        Start::Snapshot(text, seq) => {
            if let Err(close) = send(socket, Frame::Text(text)).await {
                return close;
            }
            seq
        }
        Start::Replay(messages) => {
            let mut last = 0;
            for message in messages {
                last = message.seq;
                if let Some(text) = message.text_for(filter) {
                    if let Err(close) = send(socket, Frame::Text(text)).await {
                        return close;
                    }
                }
            }
            last
        }
    };
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut heard = Instant::now();
    let mut lags: Vec<Instant> = Vec::new();
    loop {
        // Each turn sends at most one text frame, for whichever event came first.
        let text = tokio::select! {
            () = cancel.cancelled() => return Some(Close(close_code::AWAY, "gateway shutting down")),
            incoming = socket.recv() => {
                heard = Instant::now();
                let text = match incoming {
                    Some(Ok(Frame::Text(text))) => text,
                    Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => continue, // pongs, pings (answered by the library), binary
                };
                match Filter::from_client_message(&text) {
                    Ok(subscribe) => {
                        *filter = subscribe;
                        let (snapshot, seq) = hub.snapshot(filter);
                        seen = seen.max(seq);
                        snapshot
                    }
                    Err(e) => Utf8Bytes::from(
                        serde_json::json!({"type": "error", "message": e.to_string()}).to_string(),
                    ),
                }
            }
            message = rx.recv() => match message {
                Ok(message) if message.seq <= seen => continue,
                Ok(message) => {
                    seen = message.seq;
                    match message.text_for(filter) {
                        Some(text) => text,
                        None => continue,
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let now = Instant::now();
                    lags.retain(|at| now.duration_since(*at) < LAG_WINDOW);
                    lags.push(now);
                    if lags.len() as u32 > LAGS_ALLOWED {
                        return Some(Close(close_code::AGAIN, "client too slow: fell behind repeatedly"));
                    }
                    // Start again from the present; what is still queued is older than it.
                    let (snapshot, seq) = hub.snapshot(filter);
                    seen = seq;
                    snapshot
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Some(Close(close_code::AWAY, "gateway shutting down"));
                }
            },
            _ = ping.tick() => {
                if heard.elapsed() > SILENCE_LIMIT {
                    return Some(Close(close_code::AWAY, "no answer to pings"));
                }
                if let Err(close) = send(socket, Frame::Ping(Default::default())).await {
                    return close;
                }
                continue;
            }
        };
        if let Err(close) = send(socket, Frame::Text(text)).await {
            return close;
        }
    }
}
