//! Between adapters and the store: the bounded channel readings travel on, and the one
//! encoding of a reading that the outbox stores and the uplink publishes unchanged.

use std::time::{SystemTime, UNIX_EPOCH};

use cairn_adapters::{Reading, Value};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use tokio::sync::mpsc;

/// Readings waiting for the store. Bounded, so a stalled disk slows the adapters down instead
/// of filling memory.
pub const CHANNEL_CAPACITY: usize = 16 * 1024;

/// The adapters' side and the store's side of the reading channel.
pub fn channel() -> (mpsc::Sender<Reading>, mpsc::Receiver<Reading>) {
    mpsc::channel(CHANNEL_CAPACITY)
}

/// Milliseconds since the Unix epoch (0 for clocks set before 1970).
pub fn unix_millis(ts: SystemTime) -> i64 {
    ts.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The MQTT payload of one reading:
/// `{"seq":1234,"ts":"2026-11-25T10:00:00.123Z","values":{"temperature":21.5}}`.
///
/// Non-finite floats have no JSON form and are written as `null`.
pub fn encode(seq: i64, reading: &Reading) -> Vec<u8> {
    #[derive(Serialize)]
    struct Payload<'a> {
        seq: i64,
        ts: String,
        values: Values<'a>,
    }
    struct Values<'a>(&'a [(std::sync::Arc<str>, Value)]);
    impl Serialize for Values<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(self.0.len()))?;
            for (name, value) in self.0 {
                map.serialize_entry(&**name, value)?;
            }
            map.end()
        }
    }
    let payload = Payload {
        seq,
        ts: humantime::format_rfc3339_millis(reading.ts).to_string(),
        values: Values(&reading.values),
    };
    // Serializing plain data to a Vec cannot fail: no I/O, no non-string keys.
    serde_json::to_vec(&payload).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn payload_matches_the_contract() {
        let reading = Reading {
            device: Arc::from("mast"),
            ts: UNIX_EPOCH + Duration::from_millis(1_795_600_800_123),
            values: vec![
                (Arc::from("temperature"), Value::Float(21.5)),
                (Arc::from("count"), Value::Int(-3)),
                (Arc::from("pump"), Value::Bool(true)),
                (Arc::from("mode"), Value::Text("auto".into())),
                (Arc::from("broken"), Value::Float(f64::NAN)),
            ],
        };
        let text = String::from_utf8(encode(1234, &reading)).unwrap();
        assert_eq!(
            text,
            r#"{"seq":1234,"ts":"2026-11-25T10:00:00.123Z","values":{"temperature":21.5,"count":-3,"pump":true,"mode":"auto","broken":null}}"#
        );
    }
}
