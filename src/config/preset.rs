//! `mqtt.link`: presets for the kind of link a site has. A preset chooses the encoding,
//! batching, lanes, window, keepalive and timeouts; any of those the file sets itself wins.
//! The README tables give each preset's measured bytes per reading and idle bytes per day.

use std::collections::BTreeSet;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::{Compression, Encoding, Grouping, MqttConfig};

/// The kind of link to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkPreset {
    /// A LAN or fast fixed line: `json`, one reading per message, everything at once.
    Lan,
    /// Cellular (LTE, 3G) billed per megabyte: batches of a gateway every 10 s.
    Cellular,
    /// Satellite (600+ ms round trips) billed per byte: large compressed batches every 20
    /// minutes (alarms at once), long keepalive, patient timeouts.
    Satellite,
    /// Dial-up or a 2,400-9,600 bit/s radio link: like satellite, with a window of a few
    /// seconds of the link.
    Dialup,
}

/// The settings a preset chooses.
struct Choice {
    encoding: Encoding,
    compression: Compression,
    max_readings: usize,
    linger: Duration,
    group: Grouping,
    live_age: Duration,
    backlog_rate: ByteSize,
    backlog_readings: usize,
    summary_every: Duration,
    max_inflight_bytes: ByteSize,
    keepalive: Duration,
    dead_after: Duration,
    connect_timeout: Duration,
    reconnect_max: Duration,
}

const fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

impl LinkPreset {
    fn choice(self) -> Choice {
        let batches = |linger, max_readings, backlog_readings| Choice {
            encoding: Encoding::Cbor,
            compression: Compression::Zstd,
            max_readings,
            linger,
            group: Grouping::Gateway,
            live_age: linger + minutes(5),
            backlog_rate: ByteSize::kib(1),
            backlog_readings,
            summary_every: minutes(360),
            max_inflight_bytes: ByteSize::kib(256),
            keepalive: minutes(20),
            dead_after: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(60),
            reconnect_max: minutes(10),
        };
        match self {
            LinkPreset::Lan => {
                let lan = MqttConfig::default();
                Choice {
                    encoding: lan.encoding,
                    compression: lan.compression,
                    max_readings: lan.batch.max_readings,
                    linger: lan.batch.linger,
                    group: lan.batch.group,
                    live_age: lan.lanes.live_age,
                    backlog_rate: lan.lanes.backlog_rate,
                    backlog_readings: lan.lanes.backlog_readings,
                    summary_every: lan.lanes.summary_every,
                    max_inflight_bytes: lan.max_inflight_bytes,
                    keepalive: lan.keepalive,
                    dead_after: lan.dead_after,
                    connect_timeout: lan.connect_timeout,
                    reconnect_max: lan.reconnect_max,
                }
            }
            LinkPreset::Cellular => Choice {
                live_age: minutes(2),
                backlog_rate: ByteSize::kib(4),
                summary_every: minutes(60),
                keepalive: minutes(5),
                connect_timeout: Duration::from_secs(30),
                reconnect_max: minutes(5),
                ..batches(Duration::from_secs(10), 200, 2000)
            },
            // Twenty minutes of a site's readings share a message: fewer, larger messages
            // amortise names and headers (see the README's preset table for the bytes).
            LinkPreset::Satellite => batches(minutes(20), 1000, 5000),
            LinkPreset::Dialup => Choice {
                backlog_rate: ByteSize::b(100),
                max_inflight_bytes: ByteSize::kib(4),
                connect_timeout: Duration::from_secs(90),
                ..batches(minutes(20), 1000, 1000)
            },
        }
    }

    /// Sets in `mqtt` every setting the preset chooses that the file does not set itself
    /// (`present` holds the paths the file sets, such as `mqtt.batch.linger`).
    pub fn apply(self, mqtt: &mut MqttConfig, present: &BTreeSet<String>) {
        let choice = self.choice();
        macro_rules! choose {
            ($($path:literal => $field:expr, $value:expr;)*) => {
                $(if !present.contains($path) {
                    $field = $value;
                })*
            };
        }
        choose! {
            "mqtt.encoding" => mqtt.encoding, choice.encoding;
            "mqtt.compression" => mqtt.compression, choice.compression;
            "mqtt.batch.max_readings" => mqtt.batch.max_readings, choice.max_readings;
            "mqtt.batch.linger" => mqtt.batch.linger, choice.linger;
            "mqtt.batch.group" => mqtt.batch.group, choice.group;
            "mqtt.lanes.live_age" => mqtt.lanes.live_age, choice.live_age;
            "mqtt.lanes.backlog_rate" => mqtt.lanes.backlog_rate, choice.backlog_rate;
            "mqtt.lanes.backlog_readings" => mqtt.lanes.backlog_readings, choice.backlog_readings;
            "mqtt.lanes.summary_every" => mqtt.lanes.summary_every, choice.summary_every;
            "mqtt.max_inflight_bytes" => mqtt.max_inflight_bytes, choice.max_inflight_bytes;
            "mqtt.keepalive" => mqtt.keepalive, choice.keepalive;
            "mqtt.dead_after" => mqtt.dead_after, choice.dead_after;
            "mqtt.connect_timeout" => mqtt.connect_timeout, choice.connect_timeout;
            "mqtt.reconnect_max" => mqtt.reconnect_max, choice.reconnect_max;
        }
    }
}

/// The dotted paths of every key the config text sets under `mqtt`, `mqtt.batch` and
/// `mqtt.lanes` (a text that does not parse sets none: its error is reported elsewhere).
pub fn present(text: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let Ok(value) = serde_saphyr::from_str::<serde_json::Value>(text) else {
        return paths;
    };
    let mut walk = |prefix: &str, value: &serde_json::Value| {
        for key in value.as_object().into_iter().flat_map(|o| o.keys()) {
            paths.insert(format!("{prefix}.{key}"));
        }
    };
    let mqtt = &value["mqtt"];
    walk("mqtt", mqtt);
    walk("mqtt.batch", &mqtt["batch"]);
    walk("mqtt.lanes", &mqtt["lanes"]);
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preset_fills_in_what_the_file_leaves_out() {
        let text = "mqtt:\n  link: satellite\n  keepalive: 5m\n  batch: {linger: 1m}\n";
        let present = present(text);
        assert!(present.contains("mqtt.batch.linger") && present.contains("mqtt.keepalive"));
        let mut mqtt = MqttConfig {
            keepalive: minutes(5),
            batch: super::super::BatchConfig {
                linger: minutes(1),
                ..Default::default()
            },
            ..MqttConfig::default()
        };
        LinkPreset::Satellite.apply(&mut mqtt, &present);
        assert_eq!(mqtt.encoding, Encoding::Cbor, "from the preset");
        assert_eq!(mqtt.batch.max_readings, 1000, "from the preset");
        assert_eq!(mqtt.keepalive, minutes(5), "the file wins");
        assert_eq!(mqtt.batch.linger, minutes(1), "the file wins");
        let mut lan = MqttConfig::default();
        LinkPreset::Lan.apply(&mut lan, &BTreeSet::new());
        assert_eq!(lan, MqttConfig::default(), "lan is the defaults");
    }
}
