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

    /// `<prefix>/<gateway>/<device>/meta`: retained device metadata.
    pub fn meta(&self, device: &str) -> String {
        format!("{}/{device}/meta", self.base)
    }

    /// `<prefix>/<gateway>/status`: retained `online`, or `offline` (also the last will).
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
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
        }
    }

    /// The retained payload.
    pub fn payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
