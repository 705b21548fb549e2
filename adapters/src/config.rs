//! The one place that names every adapter: the device's `type` picks a settings struct, and the
//! settings build the adapter.

use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess};
use serde::{Deserialize, Deserializer};

use crate::adapter::{Adapter, Shared};
use crate::lora::LoraConfig;
use crate::modbus::ModbusConfig;
use crate::sim::SimConfig;
use crate::uart::UartConfig;

/// The adapter types a device may name in `type:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// Simulated signals, for demos, tests and benchmarks.
    Sim,
    /// Serial sensors writing text lines or binary frames.
    Uart,
    /// Modbus devices polled from a register map.
    Modbus,
    /// LoRa radios: packet forwarders, LoRaWAN end devices, serial modules.
    Lora,
}

impl AdapterKind {
    /// Every adapter type.
    pub const ALL: [AdapterKind; 4] = [
        AdapterKind::Sim,
        AdapterKind::Uart,
        AdapterKind::Modbus,
        AdapterKind::Lora,
    ];

    /// The JSON Schema of this adapter's settings (an object; the device's common keys are
    /// added by the caller).
    pub fn settings_schema(self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        use schemars::JsonSchema;
        match self {
            AdapterKind::Sim => SimConfig::json_schema(generator),
            AdapterKind::Uart => UartConfig::json_schema(generator),
            AdapterKind::Modbus => ModbusConfig::json_schema(generator),
            AdapterKind::Lora => LoraConfig::json_schema(generator),
        }
    }

    /// The name used in YAML and in the device's metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::Sim => "sim",
            AdapterKind::Uart => "uart",
            AdapterKind::Modbus => "modbus",
            AdapterKind::Lora => "lora",
        }
    }
}

impl fmt::Display for AdapterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device's adapter settings, one variant per adapter type.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterConfig {
    /// `type: sim`
    Sim(SimConfig),
    /// `type: uart`
    Uart(Box<UartConfig>),
    /// `type: modbus`
    Modbus(Box<ModbusConfig>),
    /// `type: lora`
    Lora(Box<LoraConfig>),
}

/// What commands a device takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commands {
    /// The points a command may name.
    pub points: Vec<String>,
    /// `None`: the device is reached at once, so a command needs it online and waits
    /// seconds at most. `Some`: the device listens only now and then (a LoRaWAN class A
    /// device, after each uplink), so a command waits for it this long, even while it is
    /// offline.
    pub queued_for: Option<Duration>,
}

/// A value a device produces, as announced in its metadata, with how it is reported.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    /// The value's name in readings.
    pub name: String,
    /// Its unit, when the config gives one.
    pub unit: Option<String>,
    /// Whether MQTT may write it (`.../<value>/set`).
    pub writable: bool,
    /// Decimal places it is rounded to, when the config or its scaling bounds them.
    pub decimals: Option<u8>,
    /// Report by exception, when configured.
    pub report: Option<crate::report::ReportConfig>,
    /// How urgently it travels.
    pub priority: crate::report::Priority,
    /// What kind of value it is, where the config says (Home Assistant discovery picks the
    /// entity from it).
    pub kind: ValueKind,
}

/// What kind of value a device produces, as far as its config tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueKind {
    /// A measurement that goes up and down.
    Number,
    /// A count that only grows (pulses, energy), except when the device resets it.
    Counter,
    /// On or off.
    Bool,
    /// Free text, such as a mode or a status word.
    Text,
    /// Whatever the device sends (text lines and codecs decide per message).
    #[default]
    Unknown,
}

impl AdapterConfig {
    /// Deserializes the settings of an adapter of `kind` from the rest of a device's mapping.
    ///
    /// Reading the settings straight from the parser (rather than buffering the whole mapping
    /// the way `#[serde(tag = "type")]` does) keeps exact line and column numbers in errors.
    pub fn deserialize_kind<'de, D: Deserializer<'de>>(
        kind: AdapterKind,
        settings: D,
    ) -> Result<Self, D::Error> {
        Ok(match kind {
            AdapterKind::Sim => AdapterConfig::Sim(SimConfig::deserialize(settings)?),
            AdapterKind::Uart => AdapterConfig::Uart(Box::new(UartConfig::deserialize(settings)?)),
            AdapterKind::Modbus => {
                AdapterConfig::Modbus(Box::new(ModbusConfig::deserialize(settings)?))
            }
            AdapterKind::Lora => AdapterConfig::Lora(Box::new(LoraConfig::deserialize(settings)?)),
        })
    }

    /// The adapter type.
    pub fn kind(&self) -> AdapterKind {
        match self {
            AdapterConfig::Sim(_) => AdapterKind::Sim,
            AdapterConfig::Uart(_) => AdapterKind::Uart,
            AdapterConfig::Modbus(_) => AdapterKind::Modbus,
            AdapterConfig::Lora(_) => AdapterKind::Lora,
        }
    }

    /// Every problem with these settings that the types alone do not rule out, each as
    /// `(field path relative to the device, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        match self {
            AdapterConfig::Sim(c) => c.problems(),
            AdapterConfig::Uart(c) => c.problems(),
            AdapterConfig::Modbus(c) => c.problems(),
            AdapterConfig::Lora(c) => c.problems(),
        }
    }

    /// The serial port this device uses and its line settings, for checks across devices.
    fn serial_port(&self) -> Option<(&std::path::Path, String)> {
        match self {
            AdapterConfig::Sim(_) => None,
            AdapterConfig::Uart(c) => Some((c.port.as_path(), "a uart device".into())),
            AdapterConfig::Lora(c) => c.serial_port().map(|port| (port, "a LoRa module".into())),
            AdapterConfig::Modbus(c) => c.rtu.as_ref().map(|r| {
                (
                    r.port.as_path(),
                    format!(
                        "an RS-485 bus at {} baud, {:?} parity, {} stop bits",
                        r.baud, r.parity, r.stop_bits
                    ),
                )
            }),
        }
    }

    /// Problems between devices, given by name: two that cannot share a serial port, LoRa end
    /// devices and their forwarders. Returns the index of the device at fault, a field path
    /// and a message.
    pub fn conflicts(named: &[(&str, &AdapterConfig)]) -> Vec<(usize, String, String)> {
        let devices: Vec<&AdapterConfig> = named.iter().map(|(_, d)| *d).collect();
        let lora: Vec<(&str, Option<&LoraConfig>)> = named
            .iter()
            .map(|(name, d)| match d {
                AdapterConfig::Lora(c) => (*name, Some(&**c)),
                _ => (*name, None),
            })
            .collect();
        let mut problems = LoraConfig::conflicts(&lora);
        for (i, device) in devices.iter().enumerate() {
            let Some((port, use_i)) = device.serial_port() else {
                continue;
            };
            let earlier = devices[..i].iter().enumerate().find_map(|(j, other)| {
                let (other_port, use_j) = other.serial_port()?;
                (other_port == port && (use_i != use_j || device.kind() != AdapterKind::Modbus))
                    .then_some((j, use_j))
            });
            if let Some((j, use_j)) = earlier {
                let field = match device.kind() {
                    AdapterKind::Modbus => "rtu.port",
                    AdapterKind::Lora => "module.port",
                    _ => "port",
                };
                problems.push((
                    i,
                    field.to_string(),
                    format!("{} is already used by devices[{j}] as {use_j}; only Modbus devices with the same line settings can share a port", port.display()),
                ));
            }
        }
        problems
    }

    /// The values the device will produce, with their units.
    pub fn values(&self) -> Vec<ValueInfo> {
        match self {
            AdapterConfig::Sim(c) => c.values(),
            AdapterConfig::Uart(c) => c.values(),
            AdapterConfig::Modbus(c) => c.values(),
            AdapterConfig::Lora(c) => c.values(),
        }
    }

    /// The commands the device takes: its writable values, and for a LoRaWAN end device its
    /// downlinks.
    pub fn commands(&self) -> Commands {
        let points = self
            .values()
            .into_iter()
            .filter(|v| v.writable)
            .map(|v| v.name)
            .collect();
        let mut commands = Commands {
            points,
            queued_for: None,
        };
        if let AdapterConfig::Lora(c) = self
            && let Some(lorawan) = &c.lorawan
        {
            commands.points.push(crate::lora::DOWNLINK_POINT.into());
            commands.queued_for = Some(lorawan.downlink_expiry);
        }
        commands
    }

    /// Builds a fresh adapter; the supervisor calls this again after each failure.
    pub fn build(&self, shared: &Shared) -> Box<dyn Adapter> {
        match self {
            AdapterConfig::Sim(c) => Box::new(c.build()),
            AdapterConfig::Uart(c) => Box::new(c.build()),
            AdapterConfig::Modbus(c) => Box::new(c.build(&shared.buses)),
            AdapterConfig::Lora(c) => c.build(&shared.radios, &shared.state),
        }
    }
}

/// The keys a device mapping holds besides its adapter's settings.
pub trait CommonKeys {
    /// Takes the value of `key` if it is a common key, returning whether it was.
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
}

/// A device mapping split into common keys (taken by `common`) and adapter settings.
///
/// `type:` must come before the adapter's own settings, so that these can be read as they are
/// parsed; common keys may appear anywhere.
pub fn deserialize_device<'de, A, C>(mut map: A, common: &mut C) -> Result<AdapterConfig, A::Error>
where
    A: MapAccess<'de>,
    C: CommonKeys,
{
    while let Some(key) = map.next_key::<String>()? {
        if key == "type" {
            let kind: AdapterKind = map.next_value()?;
            let rest = de::value::MapAccessDeserializer::new(SettingsAccess { map, common });
            return AdapterConfig::deserialize_kind(kind, rest);
        }
        if !common.take(&key, &mut map)? {
            return Err(de::Error::custom(format!(
                "`type:` must come before the adapter setting `{key}`"
            )));
        }
    }
    Err(de::Error::missing_field("type"))
}

/// The rest of a device mapping after `type:`, minus the common keys.
struct SettingsAccess<'c, A, C> {
    map: A,
    common: &'c mut C,
}

impl<'de, A: MapAccess<'de>, C: CommonKeys> MapAccess<'de> for SettingsAccess<'_, A, C> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        while let Some(key) = self.map.next_key::<String>()? {
            if !self.common.take(&key, &mut self.map)? {
                return seed.deserialize(key.into_deserializer()).map(Some);
            }
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.map.next_value_seed(seed)
    }
}
