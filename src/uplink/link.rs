//! The link: the TCP (and TLS) connection to the broker, owned by Cairn rather than by
//! rumqttc, which speaks MQTT to it over a private Unix socket. Owning the socket lets Cairn
//!
//! - count the bytes that cross it, TLS included ([`super::meter`]);
//! - notice a dead link within `mqtt.dead_after`, whatever the keepalive: an answer (CONNACK,
//!   PUBACK, SUBACK, PINGRESP) must come within that time of each packet that asks for one,
//!   and the kernel gives up on unacknowledged data as soon (`TCP_USER_TIMEOUT`);
//! - ping only when the link is idle: rumqttc pings every keepalive whatever the traffic, so
//!   it runs with its pings off, the CONNECT it writes is given the configured keepalive, and
//!   the link sends a PINGREQ only after a keepalive without a packet that asks for an answer;
//! - resume TLS sessions: one rustls configuration, and so one session cache, for the
//!   gateway's life.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::meter::Meter;
use crate::config::{MqttConfig, TlsConfig};

/// A PINGREQ: packet type 12, no remaining length.
const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// The largest packet the link takes apart; larger ones pass through whole, unexamined.
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Why the link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Dialing, TLS or the connection itself failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// TCP and TLS took longer than `connect_timeout`.
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    /// Nothing answered a packet that asks for an answer within `dead_after`.
    #[error("the link is dead: no answer for {0:?}")]
    Dead(Duration),
    /// The TLS settings cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// What the link knows right now, for the status and the dashboard.
#[derive(Debug, Default)]
pub struct LinkState {
    /// When each packet still waiting for its answer was written, oldest first.
    unanswered: Mutex<VecDeque<Instant>>,
}

impl LinkState {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        self.unanswered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the oldest packet that asked for an answer has waited for it.
    pub fn waiting(&self) -> Option<Duration> {
        self.lock().front().map(Instant::elapsed)
    }
}

/// Where and how to reach the broker.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    keepalive: Duration,
    dead_after: Duration,
}

/// The uplink's side of the link: a private Unix socket that rumqttc connects to, and the
/// settings each connection to the broker is made with.
pub struct Link {
    listener: UnixListener,
    path: PathBuf,
    target: Target,
    meter: Arc<Meter>,
    state: Arc<LinkState>,
}

impl Link {
    /// A link for `config`, with its socket in `dir` (made private to this user).
    pub fn new(config: &MqttConfig, dir: &Path, meter: Arc<Meter>) -> Result<Self, LinkError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let path = dir.join("uplink.sock");
        // A socket file left by a run that was killed.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let endpoint = config.endpoint();
        let tls = if endpoint.tls {
            let server = ServerName::try_from(endpoint.host.clone())
                .map_err(|e| LinkError::Tls(format!("{}: {e}", endpoint.host)))?;
            Some((tls_connector(config.tls.as_ref())?, server))
        } else {
            None
        };
        Ok(Self {
            listener,
            path,
            target: Target {
                host: endpoint.host,
                port: endpoint.port,
                tls,
                connect_timeout: config.connect_timeout,
                keepalive: config.keepalive,
                dead_after: config.dead_after,
            },
            meter,
            state: Arc::default(),
        })
    }

    /// The socket rumqttc connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the link knows now.
    pub fn state(&self) -> Arc<LinkState> {
        self.state.clone()
    }

    /// Takes rumqttc's next connection and carries it to the broker until either side ends,
    /// the link dies, or `cancel` fires.
    pub async fn carry(&self, cancel: CancellationToken) -> Result<(), LinkError> {
        tokio::select! {
            () = cancel.cancelled() => Ok(()),
            result = self.connect_and_pump() => result,
        }
    }

    async fn connect_and_pump(&self) -> Result<(), LinkError> {
        let local = loop {
            let (stream, _) = self.listener.accept().await?;
            // Only this process may use the gateway's credentials.
            if stream.peer_cred().ok().and_then(|c| c.pid()) == Some(std::process::id() as i32) {
                break stream;
            }
        };
        self.state.lock().clear();
        let target = &self.target;
        let dial = async {
            let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
            tcp.set_nodelay(true)?;
            socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(target.dead_after))?;
            Ok::<_, io::Error>(tcp)
        };
        let tcp = tokio::time::timeout(target.connect_timeout, dial)
            .await
            .map_err(|_| LinkError::ConnectTimeout(target.connect_timeout))??;
        let metered = Metered {
            inner: tcp,
            meter: self.meter.clone(),
        };
        match &target.tls {
            Some((connector, server)) => {
                let handshake = connector.connect(server.clone(), metered);
                let tls = tokio::time::timeout(target.connect_timeout, handshake)
                    .await
                    .map_err(|_| LinkError::ConnectTimeout(target.connect_timeout))??;
                self.meter.connected();
                pump(local, tls, target, &self.state).await
            }
            None => {
                self.meter.connected();
                pump(local, metered, target, &self.state).await
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One rustls configuration for the gateway's life, so that its session cache lets every
/// reconnect resume the TLS session instead of a full handshake.
fn tls_connector(tls: Option<&TlsConfig>) -> Result<tokio_rustls::TlsConnector, LinkError> {
    let error = |e: &dyn std::fmt::Display| LinkError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match tls {
        Some(tls) => {
            let pem = std::fs::read(&tls.ca_file.value)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.map_err(|e| error(&e))?)
                    .map_err(|e| error(&e))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| error(&e))?
        .with_root_certificates(roots);
    let config = match tls.and_then(|t| Some((t.cert_file.as_ref()?, t.key_file.as_ref()?))) {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_slice_iter(&std::fs::read(&cert.value)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| error(&e))?;
            let key = PrivateKeyDer::from_pem_slice(&std::fs::read(&key.value)?)
                .map_err(|e| error(&e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| error(&e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Carries bytes between rumqttc (`local`) and the broker (`remote`), packet by packet up.
async fn pump<R: AsyncRead + AsyncWrite + Unpin>(
    local: UnixStream,
    remote: R,
    target: &Target,
    state: &LinkState,
) -> Result<(), LinkError> {
    let (mut local_read, mut local_write) = local.into_split();
    let (mut remote_read, remote_write) = tokio::io::split(remote);
    let remote_write = tokio::sync::Mutex::new(remote_write);
    // When a packet that asks for an answer last went up.
    let asked = Mutex::new(Instant::now());
    let up = async {
        let mut frames = Frames::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = local_read.read(&mut buf).await?;
            if n == 0 {
                remote_write.lock().await.shutdown().await?;
                return Ok::<(), LinkError>(());
            }
            frames.extend(&buf[..n]);
            while let Some(mut packet) = frames.next() {
                if packet.first().map(|b| b >> 4) == Some(1) {
                    set_keepalive(&mut packet, target.keepalive);
                }
                let mut writer = remote_write.lock().await;
                if asks_for_answer(&packet) {
                    state.lock().push_back(Instant::now());
                    *asked.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                }
                writer.write_all(&packet).await?;
                writer.flush().await?;
            }
        }
    };
    let down = async {
        let mut frames = Frames::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = remote_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), LinkError>(());
            }
            frames.extend(&buf[..n]);
            while let Some(packet) = frames.next() {
                if is_answer(&packet) {
                    state.lock().pop_front();
                }
                local_write.write_all(&packet).await?;
            }
        }
    };
    let watch = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Some(oldest) = state.lock().front()
                && oldest.elapsed() >= target.dead_after
            {
                return Err::<(), _>(LinkError::Dead(target.dead_after));
            }
            let idle = asked.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
            if idle >= target.keepalive && state.lock().is_empty() {
                debug!("Link idle for a keepalive; pinging");
                let mut writer = remote_write.lock().await;
                state.lock().push_back(Instant::now());
                *asked.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                writer.write_all(&PINGREQ).await?;
                writer.flush().await?;
            }
        }
    };
    tokio::select! {
        result = up => result,
        result = down => result,
        result = watch => result,
    }
}

/// Whether a packet from Cairn asks the broker for an answer: CONNECT, PUBLISH at QoS 1 or 2,
/// SUBSCRIBE, UNSUBSCRIBE, PINGREQ.
fn asks_for_answer(packet: &[u8]) -> bool {
    match packet.first() {
        Some(b) => match b >> 4 {
            1 | 8 | 10 | 12 => true,
            3 => b & 0x06 != 0,
            _ => false,
        },
        None => false,
    }
}

/// Whether a packet from the broker answers one: CONNACK, PUBACK, PUBREC, PUBCOMP, SUBACK,
/// UNSUBACK, PINGRESP.
fn is_answer(packet: &[u8]) -> bool {
    packet
        .first()
        .is_some_and(|b| matches!(b >> 4, 2 | 4 | 5 | 7 | 9 | 11 | 13))
}

/// Writes `keepalive` into a CONNECT packet, in place. rumqttc wrote 0 there: its own pings
/// are off, and the broker must still know how long to wait before giving up on Cairn.
fn set_keepalive(packet: &mut [u8], keepalive: Duration) {
    let Some(header) = header_len(packet) else {
        return;
    };
    // Variable header: protocol name (2-byte length, then the name), level, flags, keepalive.
    let Some(name) = packet.get(header..header + 2) else {
        return;
    };
    let at = header + 2 + usize::from(u16::from_be_bytes([name[0], name[1]])) + 2;
    let seconds = u16::try_from(keepalive.as_secs()).unwrap_or(u16::MAX);
    if let Some(field) = packet.get_mut(at..at + 2) {
        field.copy_from_slice(&seconds.to_be_bytes());
    }
}

/// The size of a packet's fixed header and its remaining length, once the header is complete.
fn frame_len(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut remaining = 0usize;
    for (i, byte) in bytes.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((2 + i, remaining));
        }
    }
    None
}

fn header_len(packet: &[u8]) -> Option<usize> {
    frame_len(packet).map(|(header, _)| header)
}

/// Cuts a byte stream into MQTT packets.
#[derive(Debug, Default)]
struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole packet, if it has arrived. A malformed length (more than four bytes)
    /// passes the rest through as it is: the broker will refuse it.
    fn next(&mut self) -> Option<Vec<u8>> {
        if self.buf.is_empty() {
            return None;
        }
        let len = match frame_len(&self.buf) {
            Some((header, remaining)) if remaining <= MAX_FRAME => header + remaining,
            Some(_) => self.buf.len(),
            None if self.buf.len() >= 5 => self.buf.len(),
            None => return None,
        };
        if self.buf.len() < len {
            return None;
        }
        let rest = self.buf.split_off(len);
        Some(std::mem::replace(&mut self.buf, rest))
    }
}

/// A stream that counts what crosses it.
struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.meter.count(0, read as u64);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.meter.count(*n as u64, 0);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_cut_and_classified() {
        let mut frames = Frames::default();
        // A PUBLISH at QoS 1 (remaining length 200, two bytes), then a PINGRESP, in pieces.
        let mut publish = vec![0x32, 0xC8, 0x01];
        publish.extend(std::iter::repeat_n(7, 200));
        let mut stream = publish.clone();
        stream.extend([0xD0, 0x00]);
        frames.extend(&stream[..1]);
        assert_eq!(frames.next(), None);
        frames.extend(&stream[1..150]);
        assert_eq!(frames.next(), None);
        frames.extend(&stream[150..]);
        let first = frames.next().unwrap();
        assert_eq!(first, publish);
        assert!(asks_for_answer(&first));
        let second = frames.next().unwrap();
        assert!(is_answer(&second) && !asks_for_answer(&second));
        assert_eq!(frames.next(), None);
        assert!(!asks_for_answer(&[0x30, 0x00]), "QoS 0 asks for nothing");
    }

    #[test]
    fn connect_gets_the_keepalive() {
        // CONNECT: fixed header, "MQTT", level 4, flags 2, keepalive 0, client id "c".
        let mut connect = vec![
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 0, 0, 1, b'c',
        ];
        set_keepalive(&mut connect, Duration::from_secs(300));
        assert_eq!(&connect[10..12], &300u16.to_be_bytes());
        set_keepalive(&mut connect[..5], Duration::from_secs(1));
    }
}
