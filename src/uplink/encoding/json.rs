//! The `json` encoding: one reading per message, the contract Cairn started with and keeps as
//! the default. The feed's reading messages carry the same object.

use std::sync::Arc;

use cairn_adapters::Value;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::store::Record;

/// `{"seq":1234,"ts":"2026-11-25T10:00:00.123Z","values":{"temperature":21.5}}`, then
/// `"historical":true` for a reading of the backlog, and `"unsynced":true` for one whose
/// time was taken before the gateway's clock was known good and could not be corrected.
///
/// Non-finite floats have no JSON form and are written as `null`.
pub fn reading(record: &Record, historical: bool) -> Vec<u8> {
    #[derive(Serialize)]
    struct Payload<'a> {
        seq: i64,
        ts: String,
        values: Values<'a>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        historical: bool,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        unsynced: bool,
    }
    let payload = Payload {
        seq: record.seq,
        ts: rfc3339_millis(record.ts_ms),
        values: Values(&record.values),
        historical,
        unsynced: record.unsynced,
    };
    // Serializing plain data to a Vec cannot fail: no I/O, no non-string keys.
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// Named values as a JSON object, in their order.
pub struct Values<'a>(pub &'a [(Arc<str>, Value)]);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(&**name, value)?;
        }
        map.end()
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds; times before 1970
/// are shown as 1970.
pub fn rfc3339_millis(ts_ms: i64) -> String {
    let ts = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts_ms.max(0) as u64);
    humantime::format_rfc3339_millis(ts).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_matches_the_contract() {
        let record = Record {
            seq: 1234,
            device: Arc::from("mast"),
            ts_ms: 1_795_600_800_123,
            priority: Default::default(),
            unsynced: false,
            values: vec![
                (Arc::from("temperature"), Value::Float(21.5)),
                (Arc::from("count"), Value::Int(-3)),
                (Arc::from("pump"), Value::Bool(true)),
                (Arc::from("mode"), Value::Text("auto".into())),
                (Arc::from("broken"), Value::Float(f64::NAN)),
            ],
        };
        let text = String::from_utf8(reading(&record, false)).unwrap();
        assert_eq!(
            text,
            r#"{"seq":1234,"ts":"2026-11-25T10:00:00.123Z","values":{"temperature":21.5,"count":-3,"pump":true,"mode":"auto","broken":null}}"#
        );
        let old = String::from_utf8(reading(&record, true)).unwrap();
        assert!(
            old.ends_with(r#""broken":null},"historical":true}"#),
            "{old}"
        );
    }
}
