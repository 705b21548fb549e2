//! Clients of Cairn's feed: plain HTTP/1.1 requests over a socket, and WebSocket clients
//! (tokio-tungstenite) that collect what they receive.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// `GET path` with an optional bearer token; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    http_get_with(addr, path, &auth)
}

/// `GET path` with extra `headers` (each ending in CRLF): (status, body).
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    // Bodies of unknown length come chunked; the tests' bodies are small enough to join.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// `GET path` as JSON, expecting 200.
pub fn api(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path, None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket connection to `/ws` with `query` (e.g. `since=3`).
pub async fn connect(addr: SocketAddr, query: &str) -> Socket {
    let url = format!("ws://{addr}/ws?{query}");
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// The next JSON text message, skipping pings; `None` when the connection ends.
pub async fn next(socket: &mut Socket) -> Option<serde_json::Value> {
    loop {
        let message = tokio::time::timeout(super::PATIENCE, socket.next())
            .await
            .expect("a message in time")?;
        match message.ok()? {
            Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// A WebSocket handshake on a raw socket, offering `extensions` (raw header bytes, none if
/// empty): the open socket and the response's head.
pub fn handshake(addr: SocketAddr, extensions: &[u8]) -> (std::net::TcpStream, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    .into_bytes();
    if !extensions.is_empty() {
        request.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        request.extend_from_slice(extensions);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}
