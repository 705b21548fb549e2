//! `/ws`: the live push feed (RFC 6455, yawc). A client gets a snapshot (or, with `?since=SEQ`,
//! what it missed), then every message as it happens: JSON in text frames, or with
//! `?format=cbor` the same messages as CBOR in binary frames. Each client reads from its own
//! bounded queue; one that falls behind gets a fresh snapshot, and one that keeps falling
//! behind or stops reading is closed with a reason, so that no client can slow the others or
//! the pipeline.
//!
//! Messages are compressed with permessage-deflate (RFC 7692) when the client offers it and
//! a deflate place is free (`feed.deflate_clients`). Each client keeps its own context from
//! message to message, which is what makes a stream of similar readings small; its window is
//! `WINDOW_BITS`, which bounds the memory a client costs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;
use yawc::close::CloseCode;
use yawc::frame::{Frame, OpCode};
use yawc::{CompressionLevel, HttpStream, Options, WebSocket};

use super::hub::{Filter, Format, Hub, Message, Start};

/// Largest message a client may send (a subscribe message is a few hundred bytes), before
/// and after inflating it.
pub const MAX_INCOMING: usize = 4096;

/// The LZ77 window the server compresses with, in bits: 4 KiB holds the last 20 to 30
/// readings, which is where the likeness is. A wider window gained 3 % on the feed's
/// messages and costs more memory for every client (README, "The live feed").
pub const WINDOW_BITS: u8 = 12;

/// zlib's level 6: levels 1 to 9 differ by a few percent on these messages.
const LEVEL: u32 = 6;

/// How often the server pings, and how long a client may stay silent (no pong, nothing).
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// How long one send may take before the client counts as stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Falling behind this often within `LAG_WINDOW` closes the connection.
const LAGS_ALLOWED: u32 = 3;
const LAG_WINDOW: Duration = Duration::from_secs(60);

/// One client's connection.
pub type Socket = WebSocket<HttpStream>;

/// One client's terms, and the places it holds until it leaves.
pub struct Client {
    /// Which devices and values it wants.
    pub filter: Filter,
    /// The feed seq it has seen, to resume after.
    pub since: Option<u64>,
    /// Text or binary frames.
    pub format: Format,
    /// Its place among `max_clients`, held until it leaves.
    pub _permit: OwnedSemaphorePermit,
    /// Its place among `deflate_clients` if it compresses, held until it leaves.
    pub _deflate: Option<OwnedSemaphorePermit>,
}

/// The socket's options for a client: small incoming messages only, valid UTF-8 in text,
/// and deflate if `compress`.
pub fn options(compress: bool) -> Options {
    let options = Options::default()
        .with_max_payload_read(MAX_INCOMING)
        .with_max_read_buffer(MAX_INCOMING)
        .with_utf8();
    if compress {
        options
            .with_compression_level(CompressionLevel::new(LEVEL))
            .with_server_max_window_bits(WINDOW_BITS)
    } else {
        options.without_compression()
    }
}

/// Why a session ended, as the close frame says.
struct Close(CloseCode, &'static str);

/// Serves one WebSocket client until it leaves, fails, or `cancel` fires.
pub async fn serve(mut socket: Socket, hub: Hub, mut client: Client, cancel: CancellationToken) {
    let (start, rx) = hub.join(client.since, &client.filter);
    let close = session(&mut socket, &hub, &mut client, start, rx, &cancel).await;
    if let Some(Close(code, reason)) = close {
        info!(reason, code = u16::from(code), "WebSocket client closed");
        let frame = Frame::close(code, reason);
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(frame)).await;
    }
}

/// A message in the frame its format takes.
fn frame(format: Format, message: Bytes) -> Frame {
    match format {
        Format::Json => Frame::text(message),
        Format::Cbor => Frame::binary(message),
    }
}

/// Sends `message`; `Err` ends the session, with a close frame to send if the client is
/// stuck rather than gone.
async fn send(socket: &mut Socket, frame: Frame) -> Result<(), Option<Close>> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(Close(
            CloseCode::Policy,
            "client too slow: stopped reading",
        ))),
    }
}

async fn session(
    socket: &mut Socket,
    hub: &Hub,
    client: &mut Client,
    start: Start,
    mut rx: broadcast::Receiver<Arc<Message>>,
    cancel: &CancellationToken,
) -> Option<Close> {
    let format = client.format;
    // Messages up to this feed seq are in what the client already has.
    let mut seen = match start {
        Start::Snapshot(text, seq) => {
            if let Err(close) = send(socket, frame(format, format.encode(text))).await {
                return close;
            }
            seq
        }
        Start::Replay(messages) => {
            let mut last = 0;
            for message in messages {
                last = message.seq;
                if let Some(encoded) = message.encoded_for(&client.filter, format) {
                    if let Err(close) = send(socket, frame(format, encoded)).await {
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
        // Each turn sends at most one message, for whichever event came first.
        let message = tokio::select! {
            () = cancel.cancelled() => return Some(Close(CloseCode::Away, "gateway shutting down")),
            incoming = socket.next() => {
                heard = Instant::now();
                // The library answers pings and closes, and ends the stream on a protocol
                // error (an oversized, malformed or undecodable frame).
                let incoming = incoming?;
                match incoming.opcode() {
                    OpCode::Close => return None,
                    OpCode::Text => {}
                    _ => continue, // pongs, pings, binary
                }
                match Filter::from_client_message(incoming.as_str()) {
                    Ok(subscribe) => {
                        client.filter = subscribe;
                        let (snapshot, seq) = hub.snapshot(&client.filter);
                        seen = seen.max(seq);
                        format.encode(snapshot)
                    }
                    Err(e) => format.encode(Bytes::from(
                        serde_json::json!({"type": "error", "message": e.to_string()}).to_string(),
                    )),
                }
            }
            message = rx.recv() => match message {
                Ok(message) if message.seq <= seen => continue,
                Ok(message) => {
                    seen = message.seq;
                    match message.encoded_for(&client.filter, format) {
                        Some(encoded) => encoded,
                        None => continue,
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let now = Instant::now();
                    lags.retain(|at| now.duration_since(*at) < LAG_WINDOW);
                    lags.push(now);
                    if lags.len() as u32 > LAGS_ALLOWED {
                        return Some(Close(CloseCode::Again, "client too slow: fell behind repeatedly"));
                    }
                    // Start again from the present; what is still queued is older than it.
                    let (snapshot, seq) = hub.snapshot(&client.filter);
                    seen = seq;
                    format.encode(snapshot)
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Some(Close(CloseCode::Away, "gateway shutting down"));
                }
            },
            _ = ping.tick() => {
                if heard.elapsed() > SILENCE_LIMIT {
                    return Some(Close(CloseCode::Away, "no answer to pings"));
                }
                if let Err(close) = send(socket, Frame::ping(Bytes::new())).await {
                    return close;
                }
                continue;
            }
        };
        if let Err(close) = send(socket, frame(format, message)).await {
            return close;
        }
    }
}
