//! A device entry: its name, description and adapter settings, picked by `type:`.

use std::fmt;

use cairn_adapters::AdapterConfig;
use cairn_adapters::config::{CommonKeys, deserialize_device};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// One device the gateway reads.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// Unique name; it is the MQTT topic level and the key in the store and the feed.
    pub name: String,
    /// Free text for people (published in the device's metadata).
    pub description: Option<String>,
    /// The adapter settings.
    pub adapter: AdapterConfig,
}

#[derive(Default)]
struct Common {
    name: Option<String>,
    description: Option<String>,
}

impl CommonKeys for Common {
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "name" => self.name = Some(map.next_value()?),
            "description" => self.description = Some(map.next_value()?),
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
                    adapter,
                })
            }
        }

        deserializer.deserialize_map(DeviceVisitor)
    }
}
