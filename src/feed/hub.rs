//! The feed's hub: one task turns the live bus into feed messages, each serialized once for
//! every client, numbered, kept in a bounded replay ring, and folded into the latest-value
//! snapshot that new and lagging clients start from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use cairn_adapters::DeviceStatus;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use wildmatch::WildMatch;

use crate::live::LiveEvent;
use crate::store::Record;
use crate::uplink::encoding::json::{self, rfc3339_millis};
use crate::uplink::topics::DeviceMeta;

/// Messages a client may be behind before it lags and starts again from a snapshot.
pub const CLIENT_QUEUE: usize = 1024;

/// Live events taken in under one lock.
const BATCH: usize = 256;

/// One feed message, serialized once for all clients, when the first of them needs it (with
/// no client connected, a reading costs the hub almost nothing).
#[derive(Debug)]
pub struct Message {
    /// The feed's own sequence number (not the outbox `seq`).
    pub seq: u64,
    /// The device it is about.
    pub device: Arc<str>,
    /// For readings: the record the text is made from.
    pub record: Option<Arc<Record>>,
    text: OnceLock<Bytes>,
    /// The same in CBOR, made when the first binary client needs it.
    cbor: OnceLock<Bytes>,
}

/// The latest of one value.
#[derive(Debug, Clone, Serialize)]
pub struct Latest {
    /// The value.
    pub value: serde_json::Value,
    /// When it was read.
    pub ts: String,
    /// The reading's outbox `seq`.
    pub seq: i64,
}

/// What the feed knows of one device right now.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    /// Adapter type.
    pub adapter: &'static str,
    /// `online`, `offline`, `error` or `finished`.
    pub status: &'static str,
    /// Why, for `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When its last reading was taken.
    pub last_seen: Option<String>,
    /// Unit of each value.
    pub units: serde_json::Map<String, serde_json::Value>,
    /// The latest value of each metric.
    pub values: BTreeMap<String, Latest>,
}

/// What the hub keeps of a device: for each value, the record that last carried it. Values
/// are read out of those few records when someone asks, not out of every reading.
#[derive(Debug)]
struct DeviceState {
    adapter: &'static str,
    status: DeviceStatus,
    units: serde_json::Map<String, serde_json::Value>,
    latest: BTreeMap<String, Arc<Record>>,
    last: Option<Arc<Record>>,
}

impl DeviceState {
    /// The device as `filter` shows it.
    fn view(&self, filter: &Filter) -> DeviceView {
        let (status, error) = status_name(&self.status);
        let mut values = BTreeMap::new();
        for (name, record) in self.latest.iter().filter(|(name, _)| filter.value(name)) {
            let value = record
                .values
                .iter()
                .find(|(n, _)| &**n == name)
                .and_then(|(_, v)| serde_json::to_value(v).ok())
                .unwrap_or_default();
            let latest = Latest {
                value,
                ts: rfc3339_millis(record.ts_ms),
                seq: record.seq,
            };
            values.insert(name.clone(), latest);
        }
        let last_seen = self
            .last
            .as_ref()
            .map(|record| rfc3339_millis(record.ts_ms));
        DeviceView {
            adapter: self.adapter,
            status,
            error,
            last_seen,
            units: self.units.clone(),
            values,
        }
    }
}

/// Which devices and values a client wants; empty lists mean all. Globs use `*` and `?`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Device name patterns.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Value name patterns.
    #[serde(default)]
    pub values: Vec<String>,
}

/// What a WebSocket client may send: `{"subscribe": {"devices": [...], "values": [...]}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    subscribe: Filter,
}

impl Filter {
    /// The filter a client's text message asks for, or why the message is not one.
    pub fn from_client_message(text: &str) -> Result<Filter, serde_json::Error> {
        serde_json::from_str::<ClientMessage>(text).map(|m| m.subscribe)
    }

    fn matches(patterns: &[String], name: &str) -> bool {
        patterns.is_empty() || patterns.iter().any(|p| WildMatch::new(p).matches(name))
    }

    /// Whether the client wants messages about `device`.
    pub fn device(&self, device: &str) -> bool {
        Self::matches(&self.devices, device)
    }

    /// Whether the client wants the value `name`.
    pub fn value(&self, name: &str) -> bool {
        Self::matches(&self.values, name)
    }

    /// Whether the client takes every value of the devices it follows.
    pub fn all_values(&self) -> bool {
        self.values.is_empty()
    }
}

/// Where a joining client starts.
pub enum Start {
    /// The messages it missed since the `seq` it named.
    Replay(Vec<Arc<Message>>),
    /// A fresh snapshot (text) as of feed seq `.1`.
    Snapshot(Bytes, u64),
}

struct State {
    last: u64,
    ring: VecDeque<Arc<Message>>,
    capacity: usize,
    devices: BTreeMap<Arc<str>, DeviceState>,
    lost: u64,
}

/// The shared side of the hub: clients join here; the API reads the latest values.
#[derive(Clone)]
pub struct Hub {
    state: Arc<Mutex<State>>,
    tx: broadcast::Sender<Arc<Message>>,
}

fn status_name(status: &DeviceStatus) -> (&'static str, Option<String>) {
    match status {
        DeviceStatus::Online => ("online", None),
        DeviceStatus::Offline => ("offline", None),
        DeviceStatus::Finished => ("finished", None),
        DeviceStatus::Error(message) => ("error", Some(message.clone())),
    }
}

impl Hub {
    /// A hub for `devices` that keeps `replay` messages for reconnecting clients.
    pub fn new(devices: &[DeviceMeta], replay: usize) -> Self {
        let devices = devices
            .iter()
            .map(|d| {
                let device = DeviceState {
                    adapter: d.adapter,
                    status: DeviceStatus::Offline,
                    units: d.units.clone(),
                    latest: BTreeMap::new(),
                    last: None,
                };
                (Arc::from(d.name.as_str()), device)
            })
            .collect();
        let state = State {
            last: 0,
            ring: VecDeque::with_capacity(replay.min(4096)),
            capacity: replay,
            devices,
            lost: 0,
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            tx: broadcast::channel(CLIENT_QUEUE).0,
        }
    }

    /// Takes each device's status as it is now, for devices that changed before the hub
    /// subscribed to the live bus (later events override it).
    pub fn seed_status<'a>(&self, statuses: impl IntoIterator<Item = (&'a str, DeviceStatus)>) {
        let mut state = self.lock();
        for (device, status) in statuses {
            if let Some(view) = state.devices.get_mut(device) {
                view.status = status;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Feeds the hub from the live bus until `cancel` fires.
    pub async fn run(self, mut live: broadcast::Receiver<LiveEvent>, cancel: CancellationToken) {
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return,
                event = live.recv() => event,
            };
            match event {
                Ok(event) => {
                    // Whatever else is queued goes in under the same lock.
                    let mut state = self.lock();
                    self.accept(&mut state, event);
                    for _ in 0..BATCH {
                        match live.try_recv() {
                            Ok(event) => self.accept(&mut state, event),
                            Err(_) => break,
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.lock().lost += n;
                    warn!(
                        missed = n,
                        "Feed fell behind the live bus; clients miss these readings"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Turns one live event into a feed message.
    fn accept(&self, state: &mut State, event: LiveEvent) {
        let seq = state.last + 1;
        let message = match event {
            LiveEvent::Reading(record) => {
                if let Some(device) = state.devices.get_mut(&record.device) {
                    for (name, _) in &record.values {
                        match device.latest.get_mut(&**name) {
                            Some(latest) => *latest = record.clone(),
                            None => {
                                device.latest.insert(name.to_string(), record.clone());
                            }
                        }
                    }
                    device.last = Some(record.clone());
                }
                Message {
                    seq,
                    device: record.device.clone(),
                    record: Some(record),
                    text: OnceLock::new(),
                    cbor: OnceLock::new(),
                }
            }
            LiveEvent::Status { device, status } => {
                let (name, error) = status_name(&status);
                if let Some(view) = state.devices.get_mut(&device) {
                    view.status = status;
                }
                let text = serde_json::json!({
                    "type": "status", "feed_seq": seq, "device": &*device, "status": name, "error": error,
                });
                Message {
                    seq,
                    device,
                    record: None,
                    text: OnceLock::from(Bytes::from(text.to_string())),
                    cbor: OnceLock::new(),
                }
            }
        };
        let message = Arc::new(message);
        state.last = seq;
        if state.ring.len() == state.capacity {
            state.ring.pop_front();
        }
        state.ring.push_back(message.clone());
        // Under the lock, so that a joining client's snapshot and subscription line up.
        let _ = self.tx.send(message);
    }

    /// Subscribes a client: it gets what it missed after `since` if the ring still holds it,
    /// else a snapshot; then every message from the receiver.
    pub fn join(
        &self,
        since: Option<u64>,
        filter: &Filter,
    ) -> (Start, broadcast::Receiver<Arc<Message>>) {
        let state = self.lock();
        let rx = self.tx.subscribe();
        let oldest = state.ring.front().map_or(state.last + 1, |m| m.seq);
        let start = match since {
            Some(since) if since <= state.last && since + 1 >= oldest => Start::Replay(
                state
                    .ring
                    .iter()
                    .filter(|m| m.seq > since)
                    .cloned()
                    .collect(),
            ),
            _ => Start::Snapshot(snapshot_text(&state, filter), state.last),
        };
        (start, rx)
    }

    /// A snapshot for `filter` now, and the feed seq it is as of.
    pub fn snapshot(&self, filter: &Filter) -> (Bytes, u64) {
        let state = self.lock();
        (snapshot_text(&state, filter), state.last)
    }

    /// What the feed knows of every device.
    pub fn devices(&self) -> BTreeMap<Arc<str>, DeviceView> {
        let all = Filter::default();
        self.lock()
            .devices
            .iter()
            .map(|(name, device)| (name.clone(), device.view(&all)))
            .collect()
    }

    /// Live events the hub itself missed (it fell behind the live bus).
    pub fn lost(&self) -> u64 {
        self.lock().lost
    }

    /// Connected clients (subscribers of the hub).
    pub fn clients(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// How a client takes its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON in text frames.
    #[default]
    Json,
    /// The same messages as CBOR in binary frames.
    Cbor,
}

impl Format {
    /// `json` (a message as the hub makes it) in this format.
    pub fn encode(self, json: Bytes) -> Bytes {
        match self {
            Format::Json => json,
            Format::Cbor => super::cbor::from_json(&json),
        }
    }
}

impl Message {
    /// The message for a client with `filter` in `format`, or `None` when it wants none of
    /// it. What every client gets alike is encoded once.
    pub fn encoded_for(&self, filter: &Filter, format: Format) -> Option<Bytes> {
        if !filter.device(&self.device) {
            return None;
        }
        match &self.record {
            Some(record) if !filter.all_values() => {
                filtered_reading(self.seq, record, filter).map(|text| format.encode(text))
            }
            _ => Some(match format {
                Format::Json => self.text().clone(),
                Format::Cbor => self
                    .cbor
                    .get_or_init(|| format.encode(self.text().clone()))
                    .clone(),
            }),
        }
    }

    /// The text for a client that takes everything.
    fn text(&self) -> &Bytes {
        self.text.get_or_init(|| match &self.record {
            Some(record) => reading_text(self.seq, record),
            None => Bytes::new(),
        })
    }
}

/// The feed's fields that go in front of a reading's payload.
fn reading_head(seq: u64, device: &str) -> String {
    let device = serde_json::to_string(device).unwrap_or_default();
    format!(r#"{{"type":"reading","feed_seq":{seq},"device":{device},"#)
}

/// A reading message: the `json` encoding's object with the feed's fields in front.
fn reading_text(seq: u64, record: &Record) -> Bytes {
    let body = json::reading(record, false);
    let body = String::from_utf8_lossy(body.get(1..).unwrap_or_default());
    Bytes::from(reading_head(seq, &record.device) + &body)
}

/// A reading message with only the values `filter` wants; `None` if it wants none.
fn filtered_reading(seq: u64, record: &Record, filter: &Filter) -> Option<Bytes> {
    let values: Vec<_> = record
        .values
        .iter()
        .filter(|(name, _)| filter.value(name))
        .cloned()
        .collect();
    if values.is_empty() {
        return None;
    }
    let filtered = Record {
        values,
        ..Record::clone(record)
    };
    Some(reading_text(seq, &filtered))
}

fn snapshot_text(state: &State, filter: &Filter) -> Bytes {
    let devices: BTreeMap<&str, DeviceView> = state
        .devices
        .iter()
        .filter(|(name, _)| filter.device(name))
        .map(|(name, device)| (&**name, device.view(filter)))
        .collect();
    let text = serde_json::json!({
        "type": "snapshot",
        "feed_seq": state.last,
        "ts": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "devices": devices,
    });
    Bytes::from(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_adapters::Value;

    fn record(seq: i64, device: &str, values: &str) -> LiveEvent {
        let values: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(values).unwrap();
        LiveEvent::Reading(Arc::new(Record {
            priority: Default::default(),
            unsynced: false,
            seq,
            device: Arc::from(device),
            ts_ms: 1_795_600_800_000,
            values: values
                .into_iter()
                .map(|(n, v)| (Arc::from(n.as_str()), Value::from_json(v).unwrap()))
                .collect(),
        }))
    }

    impl Hub {
        fn take(&self, event: LiveEvent) {
            let mut state = self.lock();
            self.accept(&mut state, event);
        }
    }

    fn hub(replay: usize) -> Hub {
        let meta = |name| DeviceMeta::new(name, "sim", None, &[]);
        Hub::new(&[meta("pump"), meta("tank")], replay)
    }

    fn json(text: &Bytes) -> serde_json::Value {
        serde_json::from_slice(text).unwrap()
    }

    #[test]
    fn readings_are_spliced_numbered_and_folded_into_the_snapshot() {
        let hub = hub(10);
        hub.take(record(7, "pump", r#"{"rpm":1200,"on":true}"#));
        hub.take(record(8, "pump", r#"{"on":false}"#));
        hub.take(LiveEvent::Status {
            device: Arc::from("tank"),
            status: DeviceStatus::Error("no port".into()),
        });
        let (Start::Snapshot(text, seq), _) = hub.join(None, &Filter::default()) else {
            panic!("a new client starts from a snapshot");
        };
        assert_eq!(seq, 3);
        let snapshot = json(&text);
        let pump = &snapshot["devices"]["pump"]["values"];
        assert_eq!(
            (&pump["rpm"]["value"], &pump["rpm"]["seq"]),
            (&1200.into(), &7.into())
        );
        assert_eq!(
            (&pump["on"]["value"], &pump["on"]["seq"]),
            (&false.into(), &8.into())
        );
        assert_eq!(snapshot["devices"]["tank"]["status"], "error");
        assert_eq!(snapshot["devices"]["tank"]["error"], "no port");

        let state = hub.lock();
        let reading = json(state.ring[0].text());
        assert_eq!(
            reading,
            serde_json::json!({"type": "reading", "feed_seq": 1, "device": "pump", "seq": 7,
                "ts": "2026-11-25T10:00:00.000Z", "values": {"rpm": 1200, "on": true}})
        );
        let filter = |devices: &[&str], values: &[&str]| Filter {
            devices: devices.iter().map(|d| d.to_string()).collect(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let encoded = |filter: &Filter, format| state.ring[0].encoded_for(filter, format);
        let filtered = encoded(&filter(&[], &["r*"]), Format::Json).unwrap();
        assert_eq!(json(&filtered)["values"], serde_json::json!({"rpm": 1200}));
        assert_eq!(json(&filtered)["feed_seq"], 1);
        assert!(encoded(&filter(&[], &["temp*"]), Format::Json).is_none());
        assert!(encoded(&filter(&["tank"], &[]), Format::Json).is_none());
        // The binary form is the same message, for every client and filtered alike.
        let everything = encoded(&Filter::default(), Format::Cbor).unwrap();
        assert_eq!(
            everything,
            super::super::cbor::from_json(state.ring[0].text())
        );
        let filtered_cbor = encoded(&filter(&[], &["r*"]), Format::Cbor).unwrap();
        assert_eq!(filtered_cbor, super::super::cbor::from_json(&filtered));
    }

    #[test]
    fn a_reconnecting_client_gets_what_it_missed_or_a_snapshot() {
        let hub = hub(3);
        for seq in 1..=5 {
            hub.take(record(seq, "pump", "{\"x\":1}"));
        }
        let replay = |since| match hub.join(Some(since), &Filter::default()).0 {
            Start::Replay(messages) => Some(messages.iter().map(|m| m.seq).collect::<Vec<_>>()),
            Start::Snapshot(..) => None,
        };
        assert_eq!(replay(3), Some(vec![4, 5]));
        assert_eq!(replay(2), Some(vec![3, 4, 5]));
        assert_eq!(replay(5), Some(vec![]));
        assert_eq!(replay(1), None, "message 2 is gone from the ring");
        assert_eq!(replay(9), None, "a seq from before a restart");
    }

    #[test]
    fn filters_pick_devices_and_values_by_glob() {
        let filter = Filter {
            devices: vec!["pump*".into(), "tank-?".into()],
            values: vec![],
        };
        assert!(filter.device("pump-north") && filter.device("tank-1"));
        assert!(!filter.device("tank-12") && !filter.device("meter"));
        assert!(filter.value("anything") && filter.all_values());
    }
}
