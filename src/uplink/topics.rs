//! The MQTT contract's topics and retained payloads (see the README's "MQTT contract").

use std::collections::HashMap;
use std::sync::Arc;

use cairn_adapters::ValueInfo;
use serde::Serialize;

/// Topic names for one gateway, with the per-device data topics built once.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
    data: HashMap<Arc<str>, String>,
}

impl Topics {
    /// Topics under `<prefix>/<gateway>`.
    pub fn new(prefix: &str, gateway: &str) -> Self {
        Self {
            base: format!("{prefix}/{gateway}"),
            data: HashMap::new(),
        }
    }

    /// `<prefix>/<gateway>/<device>`: the device's readings.
    pub fn data(&mut self, device: &Arc<str>) -> &str {
        let base = &self.base;
        self.data
            .entry(device.clone())
            .or_insert_with(|| format!("{base}/{device}"))
    }

    /// `<prefix>/<gateway>/batch`: `cbor` batches of every device (`group: gateway`).
    pub fn batch(&self) -> String {
        format!("{}/batch", self.base)
    }

    /// `<prefix>/<gateway>/summary`: the retained summary of the lanes.
    pub fn summary(&self) -> String {
        format!("{}/summary", self.base)
    }

    /// `<prefix>/<gateway>/<device>/meta`: retained device metadata.
    pub fn meta(&self, device: &str) -> String {
        format!("{}/{device}/meta", self.base)
    }

    /// `<prefix>/<gateway>/status`: retained `online`, or `offline` (also the last will).
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    /// `<prefix>/<gateway>/+/+/set`: the filter for every write command.
    pub fn set_filter(&self) -> String {
        format!("{}/+/+/set", self.base)
    }

    /// The device and value a `.../<device>/<value>/set` topic names.
    pub fn parse_set<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let levels = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let (device, rest) = levels.split_once('/')?;
        let (value, set) = rest.split_once('/')?;
        (set == "set").then_some((device, value))
    }

    /// `<prefix>/<gateway>/<device>/<value>/set`: where a command for the value goes.
    pub fn set(&self, device: &str, value: &str) -> String {
        format!("{}/{device}/{value}/set", self.base)
    }

    /// `<prefix>/<gateway>/<device>/<value>/result`: the answer to a command.
    pub fn result(&self, device: &str, value: &str) -> String {
        format!("{}/{device}/{value}/result", self.base)
    }
}

/// What a device announces about itself on its retained meta topic.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceMeta {
    /// Device name (not in the payload: it is in the topic).
    #[serde(skip)]
    pub name: String,
    /// Adapter type.
    pub adapter: &'static str,
    /// Free text from the config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Unit of each value (`null` when the config gives none).
    pub units: serde_json::Map<String, serde_json::Value>,
    /// The values that take commands on `.../<value>/set`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub writable: Vec<String>,
    /// Every value as the config describes it (for Home Assistant discovery).
    #[serde(skip)]
    pub values: Vec<ValueInfo>,
}

impl DeviceMeta {
    /// Metadata for a device of `adapter` type producing `values`.
    pub fn new(
        name: &str,
        adapter: &'static str,
        description: Option<String>,
        values: &[ValueInfo],
    ) -> Self {
        let units = values
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    v.unit
                        .clone()
                        .map_or(serde_json::Value::Null, serde_json::Value::String),
                )
            })
            .collect();
        Self {
            name: name.to_string(),
            adapter,
            description,
            units,
            writable: values
                .iter()
                .filter(|v| v.writable)
                .map(|v| v.name.clone())
                .collect(),
            values: values.to_vec(),
        }
    }

    /// The retained payload.
    pub fn payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_topics() {
        let topics = Topics::new("cairn", "site-1");
        assert_eq!(topics.set_filter(), "cairn/site-1/+/+/set");
        assert_eq!(
            topics.parse_set("cairn/site-1/boiler/setpoint/set"),
            Some(("boiler", "setpoint"))
        );
        for other in [
            "cairn/site-1/boiler/setpoint/result",
            "cairn/site-10/boiler/setpoint/set",
            "cairn/site-1/boiler/set",
            "cairn/site-1/boiler/a/b/set",
        ] {
            assert_eq!(topics.parse_set(other), None, "{other}");
        }
        assert_eq!(
            topics.result("boiler", "setpoint"),
            "cairn/site-1/boiler/setpoint/result"
        );
    }
}
