//! LoRa radios, the two ways a Raspberry Pi meets them:
//!
//! - a **packet forwarder** (an SX1301/SX1302 concentrator HAT or a LoRaWAN gateway on the LAN)
//!   sends what it hears over the Semtech UDP protocol. One device with `forwarder:` listens;
//!   each LoRaWAN end device is a device of its own with `lorawan:` (ABP keys) and `via:` naming
//!   the forwarder device. The forwarder routes frames by DevAddr to them.
//! - a **serial LoRa module** (RN2483/RN2903, RAK3172) in point-to-point mode: `module:`.
//!
//! Either way a payload is decoded by a codec (`payload:`, or per FPort `ports:`), and radio
//! metadata (RSSI, SNR, frequency, data rate, gateway) is added to each reading.

mod airtime;
mod forwarder;
pub mod gwmp;
pub mod join;
pub mod lorawan;
mod module;
mod node;
mod radio;
pub mod region;
mod routing;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::codec::PayloadConfig;
use crate::config::ValueInfo;
use crate::state::StateStore;
use radio::RADIO_VALUES;
pub use region::Region;
pub use routing::Radios;

/// The command point of a LoRaWAN end device's downlinks: `<device>/downlink/set`.
pub const DOWNLINK_POINT: &str = "downlink";

/// The forwarder's per-packet parsing, for the fuzz targets (`fuzz/`) only.
#[cfg(fuzzing)]
#[doc(hidden)]
pub use forwarder::{data_frame, unknown_frame};

/// Settings of a LoRa device (`type: lora`): exactly one of `forwarder`, `lorawan`, `module`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// This device is a packet-forwarder endpoint (its readings: gateway statistics).
    pub forwarder: Option<ForwarderConfig>,
    /// This device is a LoRaWAN end device activated by personalisation.
    pub lorawan: Option<LorawanConfig>,
    /// This device is a serial LoRa module in point-to-point mode.
    pub module: Option<ModuleConfig>,
    /// How payloads are decoded (default `raw`).
    #[serde(default)]
    pub payload: PayloadConfig,
    /// LoRaWAN: codecs by FPort, overriding `payload`.
    #[serde(default)]
    pub ports: BTreeMap<u8, PayloadConfig>,
    /// Add RSSI, SNR, frequency, data rate and gateway to each reading (default true).
    #[serde(default = "default_true")]
    pub radio: bool,
}

/// `forwarder:` — where packet forwarders send, and whom to believe.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwarderConfig {
    /// UDP address to listen on (default `0.0.0.0:1700`, the forwarders' default).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Gateway EUIs to accept (16 hex digits); empty accepts every gateway.
    #[serde(default, deserialize_with = "hex_texts")]
    #[schemars(with = "Vec<String>")]
    pub gateways: Vec<String>,
    /// Frames from DevAddrs no device claims: `count` (default) or `publish` them raw as
    /// readings of this device.
    #[serde(default)]
    pub unknown_devices: UnknownDevices,
    /// Larger datagrams are dropped and counted (default 16384 bytes).
    #[serde(default = "default_max_datagram")]
    pub max_datagram: usize,
    /// The gateways' region: `eu868` (default) or `us915`. It gives the receive windows'
    /// channels and data rates, and the duty cycle downlinks must keep.
    #[serde(default)]
    pub region: Region,
}

/// What to do with frames from DevAddrs that no device claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnknownDevices {
    /// Count them (`unknown_device`).
    #[default]
    Count,
    /// Count them and publish DevAddr, FCnt, FPort and the encrypted payload.
    Publish,
}

/// `lorawan:` — an end device, activated by personalisation (ABP: `dev_addr` and session
/// keys) or over the air (`otaa:`, where Cairn is the network server it joins).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LorawanConfig {
    /// The device (with `forwarder:`) whose gateways hear this one.
    pub via: String,
    /// Over-the-air activation: the device joins with its DevEUI, JoinEUI and AppKey.
    pub otaa: Option<OtaaConfig>,
    /// ABP: DevAddr, 8 hex digits as the network console shows it (`26011BDA`).
    #[serde(default, deserialize_with = "optional_hex_text")]
    #[schemars(with = "Option<String>")]
    pub dev_addr: Option<String>,
    /// Network session key, 32 hex digits (or `nwk_s_key_file`).
    pub nwk_s_key: Option<String>,
    /// A file holding the network session key.
    pub nwk_s_key_file: Option<PathBuf>,
    /// Application session key, 32 hex digits (or `app_s_key_file`).
    pub app_s_key: Option<String>,
    /// A file holding the application session key.
    pub app_s_key_file: Option<PathBuf>,
    /// Accept a frame counter that restarts from 0 (devices that lose it when they reboot).
    /// Weakens replay protection; default false.
    #[serde(default)]
    pub allow_fcnt_reset: bool,
    /// The frame counter the device is known to be at or past, for a device first heard
    /// here with a counter above 65,535 (a replaced gateway, a lost data folder, a device
    /// added late): frames below it are replays. Without it, the first frame's counter is
    /// searched for up to 16,777,216.
    #[serde(default)]
    pub fcnt_start: Option<u32>,
    /// Show the device offline after this long without a frame (e.g. `1h`); default never.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub silence: Option<Duration>,
    /// How long a downlink (`<device>/downlink/set`) waits for the device's next uplink
    /// before it is given up and answered as expired (default `2h`).
    #[serde(default = "default_downlink_expiry", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub downlink_expiry: Duration,
}

/// `otaa:` — what an OTAA device is provisioned with (its label or the vendor's sheet).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtaaConfig {
    /// DevEUI, 16 hex digits, MSB first (`70B3D57ED005A1B2`).
    #[serde(deserialize_with = "hex_text")]
    #[schemars(with = "String")]
    pub dev_eui: String,
    /// JoinEUI (AppEUI in LoRaWAN 1.0), 16 hex digits; many devices ship with zeros.
    #[serde(deserialize_with = "hex_text")]
    #[schemars(with = "String")]
    pub join_eui: String,
    /// AppKey, 32 hex digits (or `app_key_file`); best given as `${VAR}`.
    pub app_key: Option<String>,
    /// A file holding the AppKey.
    pub app_key_file: Option<PathBuf>,
}

/// `module:` — a serial LoRa module listening in point-to-point mode.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    /// `rn2483`, `rn2903` or `rak3172`.
    pub kind: ModuleKind,
    /// The serial port.
    pub port: PathBuf,
    /// Bits per second (default 57600 for RN2xx3, 115200 for RAK3172).
    pub baud: Option<u32>,
    /// Radio frequency in Hz; with `spreading_factor` and `bandwidth` it sets the radio,
    /// without them the module keeps its own settings.
    pub frequency: Option<u32>,
    /// 7 to 12.
    pub spreading_factor: Option<u8>,
    /// 125, 250 or 500 kHz.
    pub bandwidth: Option<u32>,
}

/// The serial LoRa modules Cairn drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    /// Microchip RN2483 (433/868 MHz).
    Rn2483,
    /// Microchip RN2903 (915 MHz); same commands as the RN2483.
    Rn2903,
    /// RAKwireless RAK3172 with RUI3 firmware.
    Rak3172,
}

/// Hex written without quotes: YAML reads `26011234` as a number, which is still hex text here.
#[derive(Deserialize)]
#[serde(untagged)]
enum HexText {
    Text(String),
    Digits(u64),
}

impl From<HexText> for String {
    fn from(hex: HexText) -> Self {
        match hex {
            HexText::Text(text) => text,
            HexText::Digits(digits) => digits.to_string(),
        }
    }
}

fn hex_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    HexText::deserialize(d).map(String::from)
}

fn optional_hex_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<HexText>::deserialize(d).map(|h| h.map(String::from))
}

fn hex_texts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<HexText>::deserialize(d).map(|v| v.into_iter().map(String::from).collect())
}

fn default_true() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1700))
}
fn default_max_datagram() -> usize {
    16 * 1024
}
fn default_downlink_expiry() -> Duration {
    Duration::from_secs(2 * 3600)
}

/// A DevAddr, its network session key and its application session key.
type AbpSession = (u32, [u8; 16], [u8; 16]);

/// How a LoRaWAN device is activated, with its keys read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Activation {
    /// By personalisation: a fixed DevAddr and session.
    Abp(AbpSession),
    /// Over the air.
    Otaa {
        /// DevEUI, MSB first.
        dev_eui: u64,
        /// JoinEUI, MSB first.
        join_eui: u64,
        /// The root key.
        app_key: [u8; 16],
    },
}

impl LorawanConfig {
    /// The activation and its keys, read from the config or their files; or the field at
    /// fault and why.
    fn activation(&self) -> Result<Activation, (String, String)> {
        let Some(otaa) = &self.otaa else {
            return self.session().map(Activation::Abp);
        };
        let abp = self.dev_addr.is_some()
            || [&self.nwk_s_key, &self.app_s_key]
                .iter()
                .any(|k| k.is_some())
            || [&self.nwk_s_key_file, &self.app_s_key_file]
                .iter()
                .any(|k| k.is_some());
        if abp {
            return Err((
                "lorawan.otaa".into(),
                "an OTAA device gets its DevAddr and session keys when it joins: remove `dev_addr` and the session keys".into(),
            ));
        }
        let eui = |name: &str, text: &str| {
            parse_eui(text).ok_or_else(|| {
                (
                    format!("lorawan.otaa.{name}"),
                    format!("`{text}` is not an EUI of 16 hex digits"),
                )
            })
        };
        Ok(Activation::Otaa {
            dev_eui: eui("dev_eui", &otaa.dev_eui)?,
            join_eui: eui("join_eui", &otaa.join_eui)?,
            app_key: read_key("otaa.app_key", &otaa.app_key, &otaa.app_key_file)?,
        })
    }

    /// The DevAddr, and both session keys, of an ABP device.
    fn session(&self) -> Result<AbpSession, (String, String)> {
        let dev_addr = lorawan::parse_dev_addr(self.dev_addr.as_deref().unwrap_or_default())
            .map_err(|e| {
                (
                    "lorawan.dev_addr".to_string(),
                    if self.dev_addr.is_none() {
                        "give `dev_addr` and the session keys (ABP), or `otaa:`".into()
                    } else {
                        e
                    },
                )
            })?;
        Ok((
            dev_addr,
            read_key("nwk_s_key", &self.nwk_s_key, &self.nwk_s_key_file)?,
            read_key("app_s_key", &self.app_s_key, &self.app_s_key_file)?,
        ))
    }
}

/// A key given inline or in a file, or the field at fault and why. `name` may be nested
/// (`otaa.app_key`); the message names its last part.
fn read_key(
    name: &str,
    inline: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<[u8; 16], (String, String)> {
    let short = name.rsplit('.').next().unwrap_or(name);
    let text = match (inline, file) {
        (Some(key), None) => key.clone(),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            (
                format!("lorawan.{name}_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?,
        _ => {
            return Err((
                format!("lorawan.{name}"),
                format!("give either `{short}` or `{short}_file`"),
            ));
        }
    };
    lorawan::parse_key(text.trim()).map_err(|e| (format!("lorawan.{name}"), e))
}

impl LoraConfig {
    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut push = |path: &str, message: String| problems.push((path.to_string(), message));
        let roles = [
            self.forwarder.is_some(),
            self.lorawan.is_some(),
            self.module.is_some(),
        ];
        if roles.iter().filter(|r| **r).count() != 1 {
            push(
                "forwarder",
                "give exactly one of `forwarder` (a packet-forwarder endpoint), `lorawan` (an end device) or `module` (a serial LoRa module)".into(),
            );
        }
        if let Some(forwarder) = &self.forwarder {
            for (i, gateway) in forwarder.gateways.iter().enumerate() {
                if parse_eui(gateway).is_none() {
                    push(
                        &format!("forwarder.gateways[{i}]"),
                        format!("`{gateway}` is not an EUI of 16 hex digits"),
                    );
                }
            }
            if !(12..=65_507).contains(&forwarder.max_datagram) {
                push(
                    "forwarder.max_datagram",
                    "must be between 12 and 65507 bytes".into(),
                );
            }
            if self.payload != PayloadConfig::default() || !self.ports.is_empty() {
                push(
                    "payload",
                    "a forwarder decodes no payloads; give `payload` and `ports` to its end devices".into(),
                );
            }
        }
        if let Some(lorawan) = &self.lorawan {
            if let Err((path, message)) = lorawan.activation() {
                push(&path, message);
            }
            let expiry = lorawan.downlink_expiry;
            if expiry < Duration::from_secs(1) || expiry > Duration::from_secs(30 * 86_400) {
                push(
                    "lorawan.downlink_expiry",
                    "must be between 1s and 30d: a class A device is reached only after its next uplink".into(),
                );
            }
        }
        if let Some(module) = &self.module {
            let radio = [
                module.frequency.is_some(),
                module.spreading_factor.is_some(),
                module.bandwidth.is_some(),
            ];
            if radio.contains(&true) && radio.contains(&false) {
                push(
                    "module",
                    "give `frequency`, `spreading_factor` and `bandwidth` together, or none".into(),
                );
            }
            if module
                .spreading_factor
                .is_some_and(|sf| !(7..=12).contains(&sf))
            {
                push("module.spreading_factor", "must be 7 to 12".into());
            }
            if module
                .bandwidth
                .is_some_and(|bw| ![125, 250, 500].contains(&bw))
            {
                push("module.bandwidth", "must be 125, 250 or 500 (kHz)".into());
            }
            if !self.ports.is_empty() {
                push(
                    "ports",
                    "point-to-point frames have no FPort; use `payload`".into(),
                );
            }
        }
        self.payload.problems("payload", &mut push);
        for (port, payload) in &self.ports {
            if *port == 0 || *port > 223 {
                push(
                    &format!("ports.{port}"),
                    "application ports are 1 to 223".into(),
                );
            }
            payload.problems(&format!("ports.{port}"), &mut push);
        }
        problems
    }

    pub(crate) fn values(&self) -> Vec<ValueInfo> {
        // The forwarder's statistics, frame counters and radio metadata are numbers; what an
        // unknown device sent mixes text (its address, its payload in hex) and numbers.
        let info = |name: &str, unit: Option<&str>| ValueInfo {
            name: name.into(),
            unit: unit.map(Into::into),
            writable: false,
            decimals: None,
            report: None,
            priority: Default::default(),
            kind: crate::config::ValueKind::Number,
        };
        let mut values: Vec<ValueInfo> = Vec::new();
        if let Some(forwarder) = &self.forwarder {
            values.extend(forwarder::STAT_VALUES.iter().map(|(n, u)| info(n, *u)));
            if forwarder.unknown_devices == UnknownDevices::Publish {
                values.extend(forwarder::UNKNOWN_VALUES.iter().map(|n| ValueInfo {
                    kind: crate::config::ValueKind::Unknown,
                    ..info(n, None)
                }));
            }
        } else {
            let decoded = std::iter::once(&self.payload).chain(self.ports.values());
            for value in decoded.flat_map(PayloadConfig::values) {
                if !values.iter().any(|v| v.name == value.name) {
                    values.push(value);
                }
            }
            if self.lorawan.is_some() {
                values.extend(node::FRAME_VALUES.iter().map(|n| info(n, None)));
            }
        }
        if self.radio {
            values.extend(RADIO_VALUES.iter().map(|(n, u)| info(n, *u)));
        }
        values
    }

    pub(crate) fn build(
        &self,
        radios: &Radios,
        state: &Arc<dyn StateStore>,
    ) -> Box<dyn crate::adapter::Adapter> {
        match (&self.forwarder, &self.lorawan, &self.module) {
            (Some(forwarder), _, _) => Box::new(forwarder::Forwarder::new(
                forwarder.clone(),
                self.radio,
                radios.clone(),
            )),
            (None, Some(lorawan), _) => Box::new(node::Node::new(
                self.clone(),
                lorawan.clone(),
                radios.clone(),
                state.clone(),
            )),
            (None, None, Some(module)) => Box::new(module::Module::new(
                module.clone(),
                self.payload.decoder(),
                self.radio,
            )),
            (None, None, None) => Box::new(Unconfigured),
        }
    }

    /// The serial port of a module, for checks across devices.
    pub(crate) fn serial_port(&self) -> Option<&std::path::Path> {
        self.module.as_ref().map(|m| m.port.as_path())
    }

    /// Problems between LoRa devices: `via` naming no forwarder, two end devices with one
    /// DevAddr behind one forwarder, two forwarders on one address. Returns the index of the
    /// device at fault, a field path and a message.
    pub(crate) fn conflicts(
        devices: &[(&str, Option<&LoraConfig>)],
    ) -> Vec<(usize, String, String)> {
        let mut problems = Vec::new();
        let forwarders: Vec<(usize, &str, &ForwarderConfig)> = devices
            .iter()
            .enumerate()
            .filter_map(|(i, (name, c))| Some((i, *name, c.as_ref()?.forwarder.as_ref()?)))
            .collect();
        for (n, (i, _, forwarder)) in forwarders.iter().enumerate() {
            if let Some((j, _, _)) = forwarders[..n]
                .iter()
                .find(|(_, _, f)| f.listen == forwarder.listen)
            {
                problems.push((
                    *i,
                    "forwarder.listen".into(),
                    format!(
                        "{} is already the address of devices[{j}]",
                        forwarder.listen
                    ),
                ));
            }
        }
        let mut addresses: Vec<(usize, &str, u32)> = Vec::new();
        for (i, (_, config)) in devices.iter().enumerate() {
            let Some(lorawan) = config.and_then(|c| c.lorawan.as_ref()) else {
                continue;
            };
            if !forwarders.iter().any(|(_, name, _)| *name == lorawan.via) {
                let names: Vec<&str> = forwarders.iter().map(|(_, n, _)| *n).collect();
                problems.push((
                    i,
                    "lorawan.via".into(),
                    if names.is_empty() {
                        format!(
                            "`{}` is not a device with `forwarder:`; there is none",
                            lorawan.via
                        )
                    } else {
                        format!(
                            "`{}` is not a device with `forwarder:`; there are: {}",
                            lorawan.via,
                            names.join(", ")
                        )
                    },
                ));
            }
            let Some(Ok(dev_addr)) = lorawan.dev_addr.as_deref().map(lorawan::parse_dev_addr)
            else {
                continue;
            };
            if let Some((j, _, _)) = addresses
                .iter()
                .find(|(_, via, a)| *via == lorawan.via && *a == dev_addr)
            {
                problems.push((
                    i,
                    "lorawan.dev_addr".into(),
                    format!("devices[{j}] has the same DevAddr behind `{}`", lorawan.via),
                ));
            }
            addresses.push((i, &lorawan.via, dev_addr));
        }
        problems
    }
}

/// Parses a gateway EUI.
fn parse_eui(text: &str) -> Option<u64> {
    let digits: String = text
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | ' '))
        .collect();
    (digits.len() == 16).then(|| u64::from_str_radix(&digits, 16).ok())?
}

/// Stands for a device whose settings name no role; validation refuses it first.
struct Unconfigured;

#[async_trait::async_trait]
impl crate::adapter::Adapter for Unconfigured {
    async fn run(
        &mut self,
        _: &crate::adapter::AdapterContext,
    ) -> Result<(), crate::adapter::AdapterError> {
        Err(crate::adapter::AdapterError::Config(
            "give one of `forwarder`, `lorawan` or `module`".into(),
        ))
    }
}
