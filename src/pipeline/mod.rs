//! Between adapters and the store: the bounded channels readings travel on, and the one task
//! that prepares each reading before it is committed. It rounds values to their configured
//! precision, withholds what report-by-exception says need not go ([`exception`]), marks
//! alarm readings, and refuses, counted, a reading that no MQTT message could carry, so that
//! such a reading never reaches the outbox (where it would block the uplink for good).
//! What it withholds costs neither disk nor link.

mod exception;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_adapters::{DeviceCounters, Priority, Reading, ReportConfig, Value, decimal};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use exception::Reported;

use crate::clock::Clock;
use crate::config::Config;
use crate::supervisor::DeviceHandle;
use crate::uplink::topics::Topics;

/// Readings waiting for the pipeline, and again for the store. Bounded, so a stalled disk slows
/// the adapters down instead of filling memory.
pub const CHANNEL_CAPACITY: usize = 16 * 1024;

/// Readings taken from the channel at a time.
const BATCH: usize = 256;

/// Room left in a message around one reading's own bytes, for the batch layout's keys, a
/// compression frame, and the topic and packet headers beyond the topic itself.
const MESSAGE_ROOM: usize = 160;

/// The sending and receiving sides of a reading channel.
pub fn channel() -> (mpsc::Sender<Reading>, mpsc::Receiver<Reading>) {
    mpsc::channel(CHANNEL_CAPACITY)
}

/// Milliseconds since the Unix epoch (0 for clocks set before 1970).
pub fn unix_millis(ts: SystemTime) -> i64 {
    ts.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the pipeline applies to one value.
struct ValuePolicy {
    decimals: Option<u8>,
    report: Option<ReportConfig>,
    priority: Priority,
}

/// What the pipeline applies to one device's readings, and what it remembers of them.
struct DevicePolicy {
    values: HashMap<Arc<str>, ValuePolicy>,
    /// Whether any value reports by exception (most devices: none, and nothing is looked up).
    exceptions: bool,
    /// The last report of each value that reports by exception.
    reported: HashMap<Arc<str>, Reported>,
    /// The most bytes a reading may take in its largest form (`json`).
    max_reading: usize,
    counters: Arc<DeviceCounters>,
    /// The device's own priority.
    priority: Priority,
}

/// The pipeline task's settings, built from the config.
pub struct Pipeline {
    devices: HashMap<Arc<str>, DevicePolicy>,
    clock: Arc<Clock>,
}

impl Pipeline {
    /// A pipeline for the devices of `config`, counting its refusals on `devices`' counters.
    pub fn new(config: &Config, devices: &[DeviceHandle], clock: Arc<Clock>) -> Self {
        let mut topics = Topics::new(&config.mqtt.topic_prefix, &config.gateway.id);
        let batch_topic = topics.batch().len();
        let max_message = config.mqtt.max_message.as_u64() as usize;
        let devices = config
            .devices()
            .zip(devices)
            .map(|(device, handle)| {
                let values: HashMap<Arc<str>, ValuePolicy> = device
                    .values()
                    .into_iter()
                    .map(|v| {
                        let policy = ValuePolicy {
                            decimals: v.decimals,
                            report: v.report,
                            priority: v.priority,
                        };
                        (Arc::from(v.name.as_str()), policy)
                    })
                    .collect();
                let topic = topics.data(&handle.name).len().max(batch_topic);
                let policy = DevicePolicy {
                    exceptions: values.values().any(|v| v.report.is_some()),
                    values,
                    reported: HashMap::new(),
                    max_reading: max_message.saturating_sub(topic + MESSAGE_ROOM),
                    counters: handle.counters.clone(),
                    priority: device.priority,
                };
                (handle.name.clone(), policy)
            })
            .collect();
        Self { devices, clock }
    }

    /// Prepares readings from `readings` and hands them to `store`, until every adapter has
    /// dropped its sender; then `store` closes, and the store commits what is left.
    pub async fn run(
        mut self,
        mut readings: mpsc::Receiver<Reading>,
        store: mpsc::Sender<Reading>,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        while readings.recv_many(&mut batch, BATCH).await > 0 {
            for mut reading in batch.drain(..) {
                if self.prepare(&mut reading) && store.send(reading).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Rounds `reading`, withholds values by exception and sets its priority, in place;
    /// false when it must not go on.
    fn prepare(&mut self, reading: &mut Reading) -> bool {
        if !self.clock.known() {
            reading.provisional = Some(self.clock.correction());
        }
        let Some(policy) = self.devices.get_mut(&reading.device) else {
            return true;
        };
        let now = Instant::now();
        let before = reading.values.len();
        let mut alarm = policy.priority == Priority::Alarm;
        let (values, reported) = (&policy.values, &mut policy.reported);
        reading.values.retain_mut(|(name, value)| {
            let Some(value_policy) = values.get(name) else {
                return true;
            };
            if let (Value::Float(x), Some(places)) = (&mut *value, value_policy.decimals) {
                *x = decimal::round(*x, places);
            }
            if let Some(config) = &value_policy.report {
                if !exception::should_report(config, reported.get(name), value, now) {
                    return false;
                }
                reported.insert(name.clone(), Reported::new(value.clone(), now));
            }
            alarm |= value_policy.priority == Priority::Alarm;
            true
        });
        if policy.exceptions {
            let withheld = (before - reading.values.len()) as u64;
            if withheld > 0 {
                policy
                    .counters
                    .count_suppressed(withheld, reading.values.is_empty());
            }
            if reading.values.is_empty() {
                return false;
            }
        }
        if alarm {
            reading.priority = Priority::Alarm;
        }
        if size_bound(reading) <= policy.max_reading {
            return true;
        }
        let bytes = json_size(reading);
        if bytes <= policy.max_reading {
            return true;
        }
        // The supervisor logs the device's error totals, at most once a minute.
        policy.counters.count_error("oversize_reading");
        debug!(
            device = %reading.device,
            bytes,
            limit = policy.max_reading,
            "Reading too large for mqtt.max_message; dropped and counted"
        );
        false
    }
}

/// An upper bound of a reading's `json` size, cheap enough for every reading: escaping can
/// make a character six bytes at most, a number 24.
fn size_bound(reading: &Reading) -> usize {
    48 + reading
        .values
        .iter()
        .map(|(name, value)| {
            name.len() * 6
                + 4
                + match value {
                    Value::Float(_) | Value::Int(_) => 24,
                    Value::Bool(_) => 5,
                    Value::Text(t) => t.len() * 6 + 2,
                }
        })
        .sum::<usize>()
}

/// The exact size of a reading's `json` payload (its largest encoding).
fn json_size(reading: &Reading) -> usize {
    #[derive(serde::Serialize)]
    struct Sized<'a> {
        seq: i64,
        ts: &'static str,
        values: crate::uplink::encoding::json::Values<'a>,
    }
    serde_json::to_vec(&Sized {
        seq: i64::MAX,
        ts: "2026-11-25T10:00:00.123Z",
        values: crate::uplink::encoding::json::Values(&reading.values),
    })
    .map_or(usize::MAX, |v| v.len())
}
