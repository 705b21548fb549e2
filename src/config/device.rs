//! A device entry: its name, description and adapter settings, picked by `type:`.

use std::fmt;

use cairn_adapters::config::{CommonKeys, deserialize_device};
use cairn_adapters::{AdapterConfig, AdapterKind, Priority, ReportConfig, ValueInfo};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// One device the gateway reads.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// Unique name; it is the MQTT topic level and the key in the store and the feed.
    pub name: String,
    /// Free text for people (published in the device's metadata).
    pub description: Option<String>,
    /// `alarm`: every reading of the device goes before everything else (default `normal`).
    pub priority: Priority,
    /// Report by exception for every value that has no `report` of its own.
    pub report: Option<ReportConfig>,
    /// The adapter settings.
    pub adapter: AdapterConfig,
}

impl DeviceConfig {
    /// The device's values with its own `priority` and `report` applied: a value's own
    /// `report` wins, and the higher priority of the value and the device counts.
    pub fn values(&self) -> Vec<ValueInfo> {
        self.adapter
            .values()
            .into_iter()
            .map(|mut value| {
                value.priority = value.priority.max(self.priority);
                if value.report.is_none() {
                    value.report = self.report.clone();
                }
                value
            })
            .collect()
    }
}

/// One schema per adapter type: the adapter's settings plus `name`, `description` and `type`,
/// which picks the branch.
impl schemars::JsonSchema for DeviceConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DeviceConfig".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let variants: Vec<serde_json::Value> = AdapterKind::ALL
            .iter()
            .map(|kind| {
                let mut schema = kind.settings_schema(generator);
                let object = schema.ensure_object();
                let properties = object
                    .entry("properties")
                    .or_insert_with(|| serde_json::json!({}));
                if let Some(properties) = properties.as_object_mut() {
                    properties.insert("name".into(), serde_json::json!({
                        "type": "string",
                        "description": "Unique name: the MQTT topic level and the key in the store and the feed."
                    }));
                    properties.insert("description".into(), serde_json::json!({
                        "type": "string",
                        "description": "Free text for people (published in the device's metadata)."
                    }));
                    properties.insert("priority".into(), generator.subschema_for::<Priority>().to_value());
                    properties.insert("report".into(), generator.subschema_for::<ReportConfig>().to_value());
                    properties.insert("type".into(), serde_json::json!({
                        "const": kind.as_str(),
                        "description": "The adapter; it must come before the adapter's own settings."
                    }));
                }
                let required = object
                    .entry("required")
                    .or_insert_with(|| serde_json::json!([]));
                if let Some(required) = required.as_array_mut() {
                    required.extend([serde_json::json!("name"), serde_json::json!("type")]);
                }
                schema.to_value()
            })
            .collect();
        schemars::json_schema!({
            "description": "A device: `name`, an optional `description`, `type` (the adapter) and that adapter's settings.",
            "type": "object",
            "oneOf": variants,
        })
    }
}

#[derive(Default)]
struct Common {
    name: Option<String>,
    description: Option<String>,
    priority: Option<Priority>,
    report: Option<ReportConfig>,
}

impl CommonKeys for Common {
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "name" => self.name = Some(map.next_value()?),
            "description" => self.description = Some(map.next_value()?),
            "priority" => self.priority = Some(map.next_value()?),
            "report" => self.report = Some(map.next_value()?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Deserialize<'de> for DeviceConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DeviceVisitor;

        impl<'de> Visitor<'de> for DeviceVisitor {
            type Value = DeviceConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a device: a mapping with `name`, `type` and the adapter's settings")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DeviceConfig, A::Error> {
                let mut common = Common::default();
                let adapter = deserialize_device(map, &mut common)?;
                let name = common
                    .name
                    .ok_or_else(|| serde::de::Error::missing_field("name"))?;
                Ok(DeviceConfig {
                    name,
                    description: common.description,
                    priority: common.priority.unwrap_or_default(),
                    report: common.report,
                    adapter,
                })
            }
        }

        deserializer.deserialize_map(DeviceVisitor)
    }
}
