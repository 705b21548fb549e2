//! The one typed, validated configuration every part of the gateway is built from.
//!
//! Loading goes: read the file, substitute `${VAR}`, parse with exact positions, validate
//! everything the types cannot, resolve secret files. Every problem found on the way is reported
//! with file:line:column and its field path; nothing reads the YAML or the environment later.

mod device;
mod diagnostic;
mod interpolate;
mod preset;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use cairn_adapters::AdapterConfig;
use serde::Deserialize;

pub use device::DeviceConfig;
pub use diagnostic::{Problem, Report};
pub use preset::LinkPreset;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who this gateway is and where it keeps its files.
    pub gateway: GatewayConfig,
    /// The upstream broker. Without this section there is none: readings stay in the outbox
    /// (within `buffer.max_bytes` and `max_age`) until one is configured.
    #[serde(default = "MqttConfig::absent")]
    pub mqtt: MqttConfig,
    /// The store-and-forward outbox.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// The dashboard, WebSocket feed and HTTP API on site.
    #[serde(default)]
    pub feed: FeedConfig,
    /// Home Assistant MQTT discovery (off by default).
    #[serde(default)]
    pub homeassistant: HomeAssistantConfig,
    /// The devices to read.
    #[serde(default)]
    pub devices: Vec<Spanned<DeviceConfig>>,
}

/// `gateway:` — identity and files.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The gateway's id: a topic level, so letters, digits, `-` and `_` only.
    pub id: String,
    /// Where the outbox and other state live (default `/var/lib/cairn`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How long shutdown may take to flush the store and leave the broker cleanly.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_timeout: Duration,
}

/// `mqtt:` — the uplink.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Whether there is an uplink (default true when the `mqtt:` section is present, false
    /// when it is absent). Off, nothing connects anywhere and readings wait in the outbox.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The kind of link: `lan` (the default), `cellular`, `satellite` or `dialup`. It chooses
    /// the encoding, batching, lanes, window, keepalive and timeouts; any of those set here
    /// wins over it.
    pub link: Option<LinkPreset>,
    /// `mqtt://host:port` or `mqtts://host:port`; an alternative to `host`, `port` and `tls`.
    pub url: Option<Spanned<String>>,
    /// Broker host name or address.
    pub host: Option<String>,
    /// Broker port (default 1883, or 8883 with TLS).
    pub port: Option<u16>,
    /// MQTT client id (default `cairn-<gateway id>`).
    pub client_id: Option<String>,
    /// User name for the broker.
    pub username: Option<String>,
    /// Password, best given as `${VAR}` or through `password_file`.
    pub password: Option<String>,
    /// A file whose content (trailing newline removed) is the password.
    pub password_file: Option<Spanned<PathBuf>>,
    /// TLS settings; present means TLS is on.
    pub tls: Option<TlsConfig>,
    /// MQTT keepalive: the broker drops the connection after 1.5 times this without traffic.
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keepalive: Duration,
    /// How long an answer (an acknowledgement, a ping's response) may take before the link
    /// counts as dead and is dropped, whatever the keepalive (default 30s).
    #[serde(default = "default_dead_after", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub dead_after: Duration,
    /// How long a TCP+TLS+MQTT connect may take; satellite links need tens of seconds.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// QoS of data messages: 1 (default, at least once) or 0 (fire and forget).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// First topic level (default `cairn`).
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Messages published but not yet acknowledged; bounds duplicates after a lost connection.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Reconnect backoff: first delay.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reconnect_min: Duration,
    /// Reconnect backoff: longest delay.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reconnect_max: Duration,
    /// How readings are written: `json` (one per message, the default) or `cbor` (columnar
    /// batches, see docs/wire-format.md).
    #[serde(default = "default_encoding")]
    pub encoding: Encoding,
    /// Compression of `cbor` batches: `none` (default), `zstd`, or `deflate` (zlib).
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// How `cbor` batches are filled (the live lane's; see `lanes` for the backlog's).
    #[serde(default)]
    pub batch: BatchConfig,
    /// Live readings first, the backlog paced behind them.
    #[serde(default)]
    pub lanes: LanesConfig,
    /// Bytes the link may use per day and per month (UTC), TLS and reconnects included.
    pub budget: Option<BudgetConfig>,
    /// Connect only in windows (a schedule, a backlog threshold, an alarm); without it,
    /// always.
    pub connect: Option<ConnectConfig>,
    /// Most bytes published and not yet acknowledged, so that a slow link never holds more
    /// than it can carry in a few seconds ahead of a live reading (default 1 MiB).
    #[serde(default = "default_inflight_bytes")]
    #[schemars(schema_with = "size_schema")]
    pub max_inflight_bytes: ByteSize,
    /// The largest PUBLISH packet Cairn sends (topic and headers included); batches split to
    /// fit, and a reading that cannot fit is dropped and counted. Default 128 KiB, which
    /// every common broker accepts (AWS IoT Core's limit).
    #[serde(default = "default_max_message")]
    #[schemars(schema_with = "size_schema")]
    pub max_message: ByteSize,
}

/// `mqtt.encoding:` — the payload format of readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `{"seq","ts","values"}`, one reading per message.
    Json,
    /// Columnar CBOR batches with a format byte in front.
    Cbor,
}

/// `mqtt.compression:` — how `cbor` batches are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Not compressed.
    None,
    /// Zstandard (RFC 8878).
    Zstd,
    /// Deflate in a zlib stream (RFC 1950), for consumers without zstd.
    Deflate,
}

/// Which readings share a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Grouping {
    /// One device per batch, on the device's topic.
    Device,
    /// Every device in one batch, on `<prefix>/<gateway>/batch`.
    Gateway,
}

/// `mqtt.batch:` — bounds of one `cbor` message.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most readings in one message (default 100).
    #[serde(default = "default_batch_readings")]
    pub max_readings: usize,
    /// Most bytes of readings in one message before compression (default 64 KiB).
    #[serde(default = "default_batch_bytes")]
    #[schemars(schema_with = "size_schema")]
    pub max_bytes: ByteSize,
    /// Longest a reading waits for others to share its message (default 1s).
    #[serde(default = "default_linger", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub linger: Duration,
    /// `device` (default) or `gateway`.
    #[serde(default = "default_grouping")]
    pub group: Grouping,
}

/// `mqtt.connect:` — connection windows, for links billed per session or powered on a
/// schedule. Between windows the uplink is disconnected and its retained status says
/// `sleeping until <next window>`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// A window every this long, counted from local midnight (`1h`: on the hour).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub every: Option<Duration>,
    /// Windows at these local times, `HH:MM`.
    #[serde(default)]
    pub at: Vec<String>,
    /// How long a window stays open at most (default 15m).
    #[serde(rename = "for", default = "default_window", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub open_for: Duration,
    /// Leave as soon as the outbox is empty (default true).
    #[serde(default = "default_true")]
    pub until_drained: bool,
    /// Open a window at once when the backlog passes this many readings.
    pub backlog_over: Option<u64>,
    /// Open a window at once when an alarm reading is committed (default true).
    #[serde(default = "default_true")]
    pub on_alarm: bool,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        Self {
            every: None,
            at: Vec::new(),
            open_for: default_window(),
            until_drained: true,
            backlog_over: None,
            on_alarm: true,
        }
    }
}

fn default_window() -> Duration {
    Duration::from_secs(15 * 60)
}

/// `mqtt.budget:` — what the link may cost. Near the end of a budget the backlog pauses (at
/// 80 %), then live readings thin to one per device per `thin_to` (at 90 %), then only alarms
/// go (at 100 %); nothing is dropped, it waits in the outbox.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Bytes per day (UTC).
    #[serde(default)]
    #[schemars(schema_with = "optional_size_schema")]
    pub day: Option<ByteSize>,
    /// Bytes per calendar month (UTC).
    #[serde(default)]
    #[schemars(schema_with = "optional_size_schema")]
    pub month: Option<ByteSize>,
    /// One live reading per device per this long once live readings are thinned (default 15m).
    #[serde(default = "default_thin_to", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub thin_to: Duration,
}

fn default_thin_to() -> Duration {
    Duration::from_secs(15 * 60)
}

/// An optional size, as [`size_schema`].
fn optional_size_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    size_schema(generator)
}

/// `mqtt.lanes:` — how the live lane and the backlog share the link.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LanesConfig {
    /// A reading committed less than this long ago is live; older unsent ones are backlog,
    /// sent behind the live ones and marked as history (default 1m).
    #[serde(default = "default_live_age", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub live_age: Duration,
    /// Bytes per second the backlog still gets while live readings wait (default 1 KiB); with
    /// no live reading waiting, it takes the whole link.
    #[serde(default = "default_backlog_rate")]
    #[schemars(schema_with = "size_schema")]
    pub backlog_rate: ByteSize,
    /// Readings per backlog message (`cbor`; default 1000).
    #[serde(default = "default_backlog_readings")]
    pub backlog_readings: usize,
    /// How often a summary of the lanes goes upstream, retained, on `<prefix>/<gateway>/summary`
    /// (default 15m; `0s`: never).
    #[serde(default = "default_summary_every", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub summary_every: Duration,
}

impl Default for LanesConfig {
    fn default() -> Self {
        Self {
            live_age: default_live_age(),
            backlog_rate: default_backlog_rate(),
            backlog_readings: default_backlog_readings(),
            summary_every: default_summary_every(),
        }
    }
}

fn default_live_age() -> Duration {
    Duration::from_secs(60)
}
fn default_backlog_rate() -> ByteSize {
    ByteSize::kib(1)
}
fn default_backlog_readings() -> usize {
    1000
}
fn default_summary_every() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_inflight_bytes() -> ByteSize {
    ByteSize::mib(1)
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_readings: default_batch_readings(),
            max_bytes: default_batch_bytes(),
            linger: default_linger(),
            group: default_grouping(),
        }
    }
}

fn default_dead_after() -> Duration {
    Duration::from_secs(30)
}
fn default_encoding() -> Encoding {
    Encoding::Json
}
fn default_compression() -> Compression {
    Compression::None
}
fn default_max_message() -> ByteSize {
    ByteSize::kib(128)
}
fn default_batch_readings() -> usize {
    100
}
fn default_batch_bytes() -> ByteSize {
    ByteSize::kib(64)
}
fn default_linger() -> Duration {
    Duration::from_secs(1)
}
fn default_grouping() -> Grouping {
    Grouping::Device
}

/// The smallest and largest `mqtt.max_message`: below 1 KiB a reading with a few names may not
/// fit; MQTT's remaining-length field stops at 256 MiB.
const MIN_MESSAGE: u64 = 1024;
const MAX_MESSAGE: u64 = 268_435_455;

/// Device names that are gateway-level topics (`<prefix>/<gateway>/status` and the
/// gateway-wide batches), and so cannot be a device's topic level.
pub const RESERVED_NAMES: [&str; 3] = ["status", "batch", "summary"];

/// `mqtt.tls:` — rustls settings.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the broker's certificate.
    pub ca_file: Spanned<PathBuf>,
    /// PEM client certificate, for brokers that authenticate clients by certificate.
    pub cert_file: Option<Spanned<PathBuf>>,
    /// PEM private key of the client certificate.
    pub key_file: Option<Spanned<PathBuf>>,
}

/// What to drop when the outbox reaches `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Delete the oldest unsent readings to make room (keeps the present).
    DropOldest,
    /// Refuse new readings until there is room (keeps the past).
    DropNewest,
}

/// SQLite's `synchronous` setting for the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// fsync at every commit: a power cut loses nothing committed.
    Full,
    /// fsync at WAL checkpoints: a power cut may lose the last commits, never corrupts.
    Normal,
}

/// `buffer:` — the outbox.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// The SQLite file (default `<data_dir>/outbox.db`).
    pub path: Option<PathBuf>,
    /// Upper bound on the outbox on disk: unsent readings (their encoded size plus per-row
    /// overhead) and SQLite's write-ahead log, which is kept to an eighth of it.
    #[serde(default = "default_max_bytes")]
    #[schemars(schema_with = "size_schema")]
    pub max_bytes: ByteSize,
    /// Free space kept on the outbox's disk (default 8MiB): below it new readings are refused
    /// and counted (`disk_full`), so that deletes and checkpoints can always run. Half of it
    /// is held in a file beside the outbox, given up if something else fills the disk.
    #[serde(default = "default_reserve")]
    #[schemars(schema_with = "size_schema")]
    pub reserve: ByteSize,
    /// Unsent readings older than this are dropped.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub max_age: Option<Duration>,
    /// Which readings go when `max_bytes` is reached.
    #[serde(default = "default_when_full")]
    pub when_full: WhenFull,
    /// SQLite durability (default `full`).
    #[serde(default = "default_synchronous")]
    pub synchronous: Synchronous,
    /// Longest a reading waits to be committed (default 20s); the writer commits sooner once
    /// a transaction's worth has gathered, or an alarm came. Readings reach the live feed at
    /// once, and the uplink once committed. A crash or power cut loses at most this much.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub commit_interval: Duration,
    /// Most readings in one transaction.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

/// `homeassistant:` — announcing every value to Home Assistant's MQTT discovery.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Publish a retained discovery config for every value (default false). Needs the `json`
    /// encoding, whose per-device messages Home Assistant's templates read.
    #[serde(default)]
    pub discovery: bool,
    /// Home Assistant's discovery prefix (default `homeassistant`).
    #[serde(default = "default_discovery_prefix")]
    pub prefix: String,
}

fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        Self {
            discovery: false,
            prefix: default_discovery_prefix(),
        }
    }
}

/// `feed:` — the local dashboard, WebSocket push feed and HTTP API.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Whether to serve the feed at all (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address and port to listen on (default `0.0.0.0:8080`).
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
    /// A token the API and WebSocket require, best given as `${VAR}` or through `token_file`;
    /// none means open to the local network.
    pub token: Option<String>,
    /// A file whose content (trailing newline removed) is the token.
    pub token_file: Option<Spanned<PathBuf>>,
    /// Most WebSocket clients at once (default 256).
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Most WebSocket clients compressed with permessage-deflate at once (default 32); the
    /// others are served uncompressed. Each holds its compressor's state (README: about
    /// 200 KiB), so this bounds what compression costs in all; 0 turns it off.
    #[serde(default = "default_deflate_clients")]
    pub deflate_clients: usize,
    /// Most connections at once, all clients together (default 512; lowered to fit the
    /// process's descriptor limit).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections at once from one address (default 32).
    #[serde(default = "default_max_per_client")]
    pub max_per_client: usize,
    /// Time a request's headers may take to arrive (default 10s).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub header_timeout: Duration,
    /// Time without a byte either way before an HTTP connection is closed (default 60s;
    /// WebSockets ping their clients and are not affected).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Feed messages kept for clients that reconnect with `?since=` (default 10000).
    #[serde(default = "default_replay")]
    pub replay: usize,
    /// The local history that charts backfill from.
    #[serde(default)]
    pub history: HistoryConfig,
}

/// `feed.history:` — recent values kept on site, apart from the outbox.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// How long values are kept (default 24h; `0s` turns history off).
    #[serde(default = "default_history_keep", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keep: Duration,
    /// At most one reading per device per this period is kept (default 1s).
    #[serde(default = "default_history_every", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub every: Duration,
    /// How often kept points are written to `history.db` (default 10m); a power cut loses the
    /// charts' unwritten points, never readings. Shorter wears an SD card more.
    #[serde(default = "default_history_flush", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub flush: Duration,
}

fn default_reserve() -> ByteSize {
    ByteSize::mib(8)
}
fn default_max_connections() -> usize {
    512
}
fn default_max_per_client() -> usize {
    32
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_true() -> bool {
    true
}
fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_max_clients() -> usize {
    256
}
fn default_deflate_clients() -> usize {
    32
}
fn default_replay() -> usize {
    10_000
}
fn default_history_keep() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_history_every() -> Duration {
    Duration::from_secs(1)
}
fn default_history_flush() -> Duration {
    Duration::from_secs(600)
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen(),
            token: None,
            token_file: None,
            max_clients: default_max_clients(),
            deflate_clients: default_deflate_clients(),
            max_connections: default_max_connections(),
            max_per_client: default_max_per_client(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            replay: default_replay(),
            history: HistoryConfig::default(),
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            keep: default_history_keep(),
            every: default_history_every(),
            flush: default_history_flush(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/cairn")
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(60)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_qos() -> u8 {
    1
}
fn default_topic_prefix() -> String {
    "cairn".into()
}
fn default_max_inflight() -> u16 {
    64
}
fn default_reconnect_min() -> Duration {
    Duration::from_secs(1)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(300)
}

/// A size as the config may write it: `512MB`, `64KiB`, or a number of bytes.
fn size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}],
    })
}

fn default_max_bytes() -> ByteSize {
    ByteSize::mib(512)
}
fn default_when_full() -> WhenFull {
    WhenFull::DropOldest
}
fn default_synchronous() -> Synchronous {
    Synchronous::Full
}
/// 20 s: a commit costs about two 4 KiB blocks of WAL and one of its index whatever it holds,
/// so at one reading a second 10 s wrote 1.0 KB per reading on a Pi-like ext4 and 20 s 0.72 KB
/// (README, "SD cards"); a power cut loses at most this much.
fn default_commit_interval() -> Duration {
    Duration::from_secs(20)
}
fn default_max_batch() -> usize {
    2000
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            link: None,
            url: None,
            host: None,
            port: None,
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            tls: None,
            keepalive: default_keepalive(),
            dead_after: default_dead_after(),
            connect_timeout: default_connect_timeout(),
            qos: default_qos(),
            topic_prefix: default_topic_prefix(),
            max_inflight: default_max_inflight(),
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
            encoding: default_encoding(),
            compression: default_compression(),
            batch: BatchConfig::default(),
            lanes: LanesConfig::default(),
            budget: None,
            connect: None,
            max_inflight_bytes: default_inflight_bytes(),
            max_message: default_max_message(),
        }
    }
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_bytes: default_max_bytes(),
            reserve: default_reserve(),
            max_age: None,
            when_full: default_when_full(),
            synchronous: default_synchronous(),
            commit_interval: default_commit_interval(),
            max_batch: default_max_batch(),
        }
    }
}

/// Where the uplink connects, resolved from `url` or `host`/`port`/`tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether to speak TLS.
    pub tls: bool,
}

impl MqttConfig {
    /// What a config without an `mqtt:` section has: no uplink, so that a fresh install never
    /// retries a broker that does not exist.
    fn absent() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// The broker address. Only valid on a validated config.
    pub fn endpoint(&self) -> Endpoint {
        let parsed = self.url.as_ref().and_then(|url| parse_url(&url.value).ok());
        let tls = parsed
            .as_ref()
            .map_or(self.tls.is_some(), |(tls, _, _)| *tls);
        let host = parsed
            .as_ref()
            .map(|(_, host, _)| host.clone())
            .or_else(|| self.host.clone())
            .unwrap_or_else(|| "localhost".into());
        let port = parsed
            .and_then(|(_, _, port)| port)
            .or(self.port)
            .unwrap_or(if tls { 8883 } else { 1883 });
        Endpoint { host, port, tls }
    }
}

/// Splits `mqtt[s]://host[:port]` into (tls, host, port).
pub(crate) fn parse_url(url: &str) -> Result<(bool, String, Option<u16>), String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err("must start with mqtt:// or mqtts://".into());
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            let port = port
                .parse()
                .map_err(|_| format!("`{port}` is not a port number"))?;
            (host, Some(port))
        }
        _ => (rest, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') || host.contains('@') {
        return Err("expected mqtt://host:port (put credentials in username/password)".into());
    }
    Ok((tls, host.to_string(), port))
}

impl BufferConfig {
    /// The outbox file.
    pub fn path_in(&self, data_dir: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| data_dir.join("outbox.db"))
    }
}

/// The largest config file read; a thousand devices fit in a fraction of it.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

impl Config {
    /// Reads, parses and validates `path`; on failure, every problem found.
    pub fn load(path: &Path) -> Result<Config, Box<Report>> {
        use std::io::Read;
        let file = path.display().to_string();
        let refuse = |message: String| {
            Box::new(Report {
                file: file.clone(),
                text: String::new(),
                problems: vec![Problem::new(None, "", message)],
            })
        };
        // Read at most one byte past the cap: `--config /dev/zero` must not fill the memory.
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| refuse(format!("cannot read the file: {e}")))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(refuse(format!(
                "the file is larger than {} MiB; a config is a few kilobytes",
                MAX_CONFIG_BYTES >> 20
            )));
        }
        Self::from_text(&file, &text, |name| std::env::var(name).ok())
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn from_text(
        file: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, Box<Report>> {
        let report = |text: &str, problems| {
            Box::new(Report {
                file: file.to_string(),
                text: text.to_string(),
                problems,
            })
        };
        let text = interpolate::interpolate(text, env).map_err(|p| report(text, p))?;
        let mut config = parse(&text).map_err(|p| report(&text, vec![p]))?;
        if let Some(link) = config.mqtt.link {
            link.apply(&mut config.mqtt, &preset::present(&text));
        }
        let mut problems = config.problems();
        problems.extend(config.resolve_secrets());
        problems.sort_by_key(|p| p.line_column());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(report(&text, problems))
        }
    }

    /// Everything wrong that the types allow, in one pass.
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut push =
            |path: &str, message: String| problems.push(Problem::new(None, path, message));
        if !is_topic_level(&self.gateway.id) {
            push(
                "gateway.id",
                format!("`{}` must be letters, digits, `-` or `_`", self.gateway.id),
            );
        }
        let mqtt = &self.mqtt;
        if let Some(url) = &mqtt.url {
            if mqtt.host.is_some() || mqtt.port.is_some() {
                problems.push(Problem::new(
                    location(url),
                    "mqtt.url",
                    "give either `url` or `host`/`port`, not both",
                ));
            }
            if let Err(e) = parse_url(&url.value) {
                problems.push(Problem::new(location(url), "mqtt.url", e));
            }
        }
        let mut push =
            |path: &str, message: String| problems.push(Problem::new(None, path, message));
        if mqtt.qos > 1 {
            push(
                "mqtt.qos",
                format!("{} is not supported: use 1 (at least once) or 0", mqtt.qos),
            );
        }
        if mqtt.max_inflight == 0 {
            push("mqtt.max_inflight", "must be at least 1".into());
        }
        if mqtt.password.is_some() && mqtt.password_file.is_some() {
            push(
                "mqtt.password_file",
                "give either `password` or `password_file`, not both".into(),
            );
        }
        if mqtt.keepalive < Duration::from_secs(5) {
            push("mqtt.keepalive", "must be at least 5s".into());
        }
        // CONNECT carries the keepalive in 16 bits of seconds: more would wrap (24h reaching
        // the broker as 5.8 h, 18h12m16s as 0, which switches its check off).
        if mqtt.keepalive > Duration::from_secs(u64::from(u16::MAX)) {
            push(
                "mqtt.keepalive",
                format!(
                    "{} is more than MQTT can carry: at most 65535s (18h12m15s)",
                    humantime::format_duration(mqtt.keepalive)
                ),
            );
        }
        if mqtt.dead_after < Duration::from_secs(2) {
            push("mqtt.dead_after", "must be at least 2s".into());
        }
        if mqtt.keepalive.subsec_nanos() != 0 {
            push("mqtt.keepalive", "must be whole seconds".into());
        }
        if mqtt.reconnect_min.is_zero() || mqtt.reconnect_min > mqtt.reconnect_max {
            push(
                "mqtt.reconnect_min",
                "must be above zero and at most reconnect_max".into(),
            );
        }
        if mqtt.topic_prefix.is_empty() || mqtt.topic_prefix.contains(['+', '#']) {
            push(
                "mqtt.topic_prefix",
                "must be non-empty, without `+` or `#`".into(),
            );
        }
        if let Some(tls) = &mqtt.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            push("mqtt.tls", "`cert_file` and `key_file` go together".into());
        }
        let ha = &self.homeassistant;
        if ha.discovery && !mqtt.enabled {
            push(
                "homeassistant.discovery",
                "needs a broker: add an `mqtt:` section".into(),
            );
        }
        if ha.discovery && mqtt.encoding != Encoding::Json {
            push(
                "homeassistant.discovery",
                "needs `mqtt.encoding: json` (Home Assistant reads one JSON message per reading; \
                 the link preset may have chosen cbor)"
                    .into(),
            );
        }
        if ha.prefix.is_empty() || ha.prefix.contains(['+', '#']) {
            push(
                "homeassistant.prefix",
                "must be non-empty, without `+` or `#`".into(),
            );
        }
        if mqtt.compression != Compression::None && mqtt.encoding != Encoding::Cbor {
            push(
                "mqtt.compression",
                "compression applies to `encoding: cbor` only; `json` stays plain".into(),
            );
        }
        let max_message = mqtt.max_message.as_u64();
        if !(MIN_MESSAGE..=MAX_MESSAGE).contains(&max_message) {
            push(
                "mqtt.max_message",
                format!(
                    "must be between 1 KiB and 256 MiB (MQTT's limit), not {max_message} bytes"
                ),
            );
        }
        if mqtt.batch.max_readings == 0 || mqtt.lanes.backlog_readings == 0 {
            push(
                "mqtt.batch.max_readings",
                "`batch.max_readings` and `lanes.backlog_readings` must be at least 1".into(),
            );
        }
        if let Some(connect) = &mqtt.connect {
            if connect.every.is_none()
                && connect.at.is_empty()
                && connect.backlog_over.is_none()
                && !connect.on_alarm
            {
                push(
                    "mqtt.connect",
                    "give `every`, `at`, `backlog_over` or `on_alarm`: nothing would ever connect"
                        .into(),
                );
            }
            if connect.every.is_some_and(|e| e < Duration::from_secs(10)) {
                push("mqtt.connect.every", "must be at least 10s".into());
            }
            for (i, at) in connect.at.iter().enumerate() {
                if at.parse::<jiff::civil::Time>().is_err() {
                    push(
                        &format!("mqtt.connect.at[{i}]"),
                        format!("`{at}` is not a time of day such as 06:30"),
                    );
                }
            }
            if connect.open_for < Duration::from_secs(5) {
                push("mqtt.connect.for", "must be at least 5s".into());
            }
        }
        if let Some(budget) = &mqtt.budget
            && budget.day.is_none()
            && budget.month.is_none()
        {
            push("mqtt.budget", "give `day`, `month` or both".into());
        }
        if mqtt.max_inflight_bytes.as_u64() < 256 {
            push(
                "mqtt.max_inflight_bytes",
                "must be at least 256 bytes".into(),
            );
        }
        if mqtt.batch.max_bytes.as_u64() < 256 || mqtt.batch.max_bytes.as_u64() > max_message {
            push(
                "mqtt.batch.max_bytes",
                "must be at least 256 bytes and at most `mqtt.max_message`".into(),
            );
        }
        if self.buffer.max_bytes.as_u64() < 64 * 1024 {
            push("buffer.max_bytes", "must be at least 64 KiB".into());
        }
        if self.buffer.reserve.as_u64() < 64 * 1024 {
            push("buffer.reserve", "must be at least 64 KiB".into());
        }
        if self.buffer.commit_interval > Duration::from_secs(60) {
            push(
                "buffer.commit_interval",
                "must be at most 1m: a crash or power cut loses what waits".into(),
            );
        }
        if self.buffer.max_batch == 0 {
            push("buffer.max_batch", "must be at least 1".into());
        }
        let feed = &self.feed;
        if feed.token.is_some() && feed.token_file.is_some() {
            push(
                "feed.token_file",
                "give either `token` or `token_file`, not both".into(),
            );
        }
        if feed.token.as_ref().is_some_and(|t| t.trim().is_empty()) {
            push("feed.token", "must not be empty".into());
        }
        if feed.max_clients == 0 || feed.replay == 0 {
            push(
                "feed.max_clients",
                "`max_clients` and `replay` must be at least 1".into(),
            );
        }
        if feed.max_connections == 0 || feed.max_per_client == 0 {
            push(
                "feed.max_connections",
                "`max_connections` and `max_per_client` must be at least 1".into(),
            );
        }
        if feed.header_timeout < Duration::from_secs(1)
            || feed.idle_timeout < Duration::from_secs(1)
        {
            push(
                "feed.idle_timeout",
                "`header_timeout` and `idle_timeout` must be at least 1s".into(),
            );
        }
        if feed.history.every.is_zero() {
            push("feed.history.every", "must be longer than zero".into());
        }
        if feed.history.flush < Duration::from_secs(1) {
            push("feed.history.flush", "must be at least 1s".into());
        }
        for (i, device) in self.devices.iter().enumerate() {
            let at = location(device);
            let d = &device.value;
            if !is_topic_level(&d.name) {
                problems.push(Problem::new(
                    at,
                    format!("devices[{i}].name"),
                    format!("`{}` must be letters, digits, `-` or `_`", d.name),
                ));
            }
            if RESERVED_NAMES.contains(&d.name.as_str()) {
                problems.push(Problem::new(
                    at,
                    format!("devices[{i}].name"),
                    format!(
                        "`{}` is a gateway-level topic (`{}/<gateway>/{}`); choose another name",
                        d.name, mqtt.topic_prefix, d.name
                    ),
                ));
            }
            let meta = crate::uplink::topics::DeviceMeta::new(
                &d.name,
                d.adapter.kind().as_str(),
                d.description.clone(),
                &d.adapter.values(),
            );
            let meta_topic =
                crate::uplink::topics::Topics::new(&mqtt.topic_prefix, &self.gateway.id)
                    .meta(&d.name);
            if crate::uplink::publish_size(meta_topic.len(), meta.payload().len()) > max_message {
                problems.push(Problem::new(
                    at,
                    format!("devices[{i}]"),
                    format!(
                        "the device's metadata message ({} bytes: description, units, names) does not fit `mqtt.max_message` ({max_message} bytes)",
                        meta.payload().len()
                    ),
                ));
            }
            if self.devices[..i]
                .iter()
                .any(|other| other.value.name == d.name)
            {
                problems.push(Problem::new(
                    at,
                    format!("devices[{i}].name"),
                    format!("another device is already named `{}`", d.name),
                ));
            }
            for (path, message) in d.adapter.problems() {
                problems.push(Problem::new(at, format!("devices[{i}].{path}"), message));
            }
            if let Some(report) = &d.report {
                report.problems(&format!("devices[{i}].report"), &mut |path, message| {
                    problems.push(Problem::new(at, path, message))
                });
            }
            for value in d.adapter.values().iter().filter(|v| v.writable) {
                if !is_topic_level(&value.name) {
                    problems.push(Problem::new(
                        at,
                        format!("devices[{i}]"),
                        format!(
                            "the writable value `{}` names an MQTT topic level: use letters, digits, `-` or `_`",
                            value.name
                        ),
                    ));
                }
            }
        }
        let adapters: Vec<(&str, &AdapterConfig)> = self
            .devices()
            .map(|d| (d.name.as_str(), &d.adapter))
            .collect();
        for (i, path, message) in AdapterConfig::conflicts(&adapters) {
            problems.push(Problem::new(
                location(&self.devices[i]),
                format!("devices[{i}].{path}"),
                message,
            ));
        }
        problems
    }

    /// Reads `password_file` and checks that TLS files are readable, so that a bad path stops
    /// the gateway at start rather than at the first connect.
    fn resolve_secrets(&mut self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mqtt = &mut self.mqtt;
        if let Some(file) = &mqtt.password_file {
            mqtt.password = read_secret(file, "mqtt.password_file", &mut problems);
        }
        if let Some(file) = &self.feed.token_file {
            self.feed.token = read_secret(file, "feed.token_file", &mut problems);
        }
        let mqtt = &self.mqtt;
        if let Some(tls) = &mqtt.tls {
            let files = [
                ("ca_file", Some(&tls.ca_file)),
                ("cert_file", tls.cert_file.as_ref()),
                ("key_file", tls.key_file.as_ref()),
            ];
            for (name, file) in files {
                if let Some(file) = file
                    && let Err(e) = std::fs::File::open(&file.value)
                {
                    problems.push(Problem::new(
                        location(file),
                        format!("mqtt.tls.{name}"),
                        format!("cannot read {}: {e}", file.value.display()),
                    ));
                }
            }
        }
        problems
    }

    /// The JSON Schema of the file, pretty-printed, with a title and the dialect editors expect.
    pub fn json_schema() -> String {
        let mut schema = schemars::schema_for!(Config);
        schema.insert("title".into(), "Cairn configuration (cairn.yaml)".into());
        serde_json::to_string_pretty(&schema).unwrap_or_default()
    }

    /// The devices, without their positions in the file.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceConfig> {
        self.devices.iter().map(|d| &d.value)
    }
}

/// A value with the place in the file it came from. Equal when the values are: a reload that
/// only moved lines changes nothing.
#[derive(Debug, Clone)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where the value is written.
    pub referenced: serde_saphyr::Location,
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

/// The schema of the value: positions are not part of the file's format.
impl<T: schemars::JsonSchema> schemars::JsonSchema for Spanned<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Self {
            value: spanned.value,
            referenced: spanned.referenced,
        })
    }
}

fn location<T>(spanned: &Spanned<T>) -> Option<(usize, usize)> {
    let l = spanned.referenced;
    (l.line() > 0).then(|| (l.line() as usize, l.column() as usize))
}

/// The content of a secret file, trailing newline removed, or a problem at `path`.
fn read_secret(file: &Spanned<PathBuf>, path: &str, problems: &mut Vec<Problem>) -> Option<String> {
    match std::fs::read_to_string(&file.value) {
        // An empty secret would let anyone in (an empty feed token is no token at all).
        Ok(secret) if secret.trim().is_empty() => {
            problems.push(Problem::new(
                location(file),
                path,
                format!("{} is empty", file.value.display()),
            ));
            None
        }
        Ok(secret) => Some(secret.trim_end_matches(['\n', '\r']).to_string()),
        Err(e) => {
            problems.push(Problem::new(
                location(file),
                path,
                format!("cannot read {}: {e}", file.value.display()),
            ));
            None
        }
    }
}

/// Whether `s` can be one MQTT topic level and a file-safe name.
fn is_topic_level(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Parses config text, keeping the position and field path of the first error.
fn parse(text: &str) -> Result<Config, Problem> {
    let mut path = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    parsed.map_err(|e| {
        let at = e
            .location()
            .filter(|l| l.line() > 0)
            .map(|l| (l.line() as usize, l.column() as usize));
        let rendered = e.render_with_options(serde_saphyr::render_options! {
            snippets: serde_saphyr::SnippetMode::Off,
        });
        let message = strip_position(&rendered);
        // `Spanned` wrappers show up as a `.value` segment that is not in the YAML.
        let path = if path == "." || path == "?" {
            String::new()
        } else {
            path.replace("].value", "]")
        };
        refine(text, Problem::new(at, path, message))
    })
}

/// Points a parse error at the line that caused it where the parser's position is off by a
/// line: a tab in an indentation is reported at the line before it, and a key indented
/// unlike its siblings as a `missing field` of the mapping above.
fn refine(text: &str, problem: Problem) -> Problem {
    let Some((line, column)) = problem.line_column() else {
        return problem;
    };
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    if problem.message.contains("tab") {
        let tabbed = (line.saturating_sub(1)..lines.len()).find_map(|i| {
            let lead = &lines[i][..lines[i].len() - lines[i].trim_start().len()];
            lead.find('\t').map(|at| (i + 1, at + 1))
        });
        if let Some(at) = tabbed {
            return Problem::at(
                at.0,
                at.1,
                problem.path.clone(),
                "a tab in the indentation: YAML indents with spaces only",
            );
        }
    }
    if let Some(field) = problem
        .message
        .strip_prefix("missing field `")
        .and_then(|m| m.split_once('`'))
        .map(|(f, _)| f)
    {
        let key = format!("{field}:");
        let misplaced = (line..lines.len()).find(|&i| {
            let l = lines[i].trim_start_matches([' ', '-']).trim_start();
            (l.starts_with(&key)) && indent(lines[i]) + 1 != column
        });
        if let Some(i) = misplaced {
            return Problem::at(
                i + 1,
                indent(lines[i]) + 1,
                problem.path.clone(),
                format!(
                    "`{field}` is indented unlike the other keys of its mapping (column {column}), so it is not read as one of them"
                ),
            );
        }
    }
    problem
}

/// serde-saphyr's plain rendering mentions the position we print ourselves; keep the message.
fn strip_position(rendered: &str) -> String {
    let message = rendered.trim();
    let message = message.strip_prefix("error: ").unwrap_or(message);
    if let Some(rest) = message.strip_prefix("line ")
        && let Some((_, tail)) = rest.split_once(": ")
    {
        return tail.to_string();
    }
    match message.rsplit_once(" at line ") {
        Some((head, tail)) if tail.contains(", column ") => head.to_string(),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests;
