//! RS-485 buses: several Modbus RTU units on one serial port. The devices on a bus share one
//! [`RtuBus`] behind a lock, so requests never overlap, and the bus keeps the silence between
//! frames that RTU requires (3.5 character times; 1.75 ms above 19,200 baud).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tokio_modbus::Slave;
use tokio_modbus::client::Context;
use tokio_modbus::slave::SlaveContext;

use crate::serial::{FlowControl, Parity};

/// `rtu:` — the serial line of an RS-485 bus.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RtuConfig {
    /// The port of the RS-485 adapter or HAT.
    pub port: PathBuf,
    /// Bits per second (default 9600).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `none` (default), `odd` or `even`.
    #[serde(default)]
    pub parity: Parity,
    /// 1 (default) or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
}

fn default_baud() -> u32 {
    9600
}

fn default_stop_bits() -> u8 {
    1
}

impl RtuConfig {
    /// The silence between two frames: 3.5 characters of 11 bits, at least 1.75 ms.
    pub fn silence(&self) -> Duration {
        let character = 11.0 / f64::from(self.baud.max(1));
        Duration::from_secs_f64(character * 3.5).max(Duration::from_micros(1750))
    }
}

/// One RS-485 bus: the open port (if it is open) and when the last frame ended.
pub struct RtuBus {
    config: RtuConfig,
    modbus: Option<Context>,
    quiet_since: Option<Instant>,
}

impl std::fmt::Debug for RtuBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtuBus")
            .field("port", &self.config.port)
            .field("open", &self.modbus.is_some())
            .finish()
    }
}

impl RtuBus {
    /// The bus's context addressed to `unit`, opening the port if needed and waiting out the
    /// inter-frame silence.
    pub async fn unit(&mut self, unit: u8) -> Result<&mut Context, String> {
        if let Some(since) = self.quiet_since {
            tokio::time::sleep_until(since + self.config.silence()).await;
        }
        let config = &self.config;
        let modbus = match &mut self.modbus {
            Some(modbus) => modbus,
            empty => {
                let port = crate::serial::open(
                    &config.port,
                    config.baud,
                    8,
                    config.parity,
                    config.stop_bits,
                    FlowControl::None,
                )?;
                empty.insert(tokio_modbus::client::rtu::attach(port))
            }
        };
        modbus.set_slave(Slave(unit));
        Ok(modbus)
    }

    /// Marks the end of a request, for the next silence.
    pub fn done(&mut self) {
        self.quiet_since = Some(Instant::now());
    }

    /// Closes the port after a transport error; the next request reopens it.
    pub fn broken(&mut self) {
        self.modbus = None;
    }
}

/// The RS-485 buses of one gateway, by port: devices on the same port get the same bus.
#[derive(Debug, Clone, Default)]
pub struct SharedBuses(Arc<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<RtuBus>>>>>);

impl SharedBuses {
    /// The bus on `config.port`, created with these settings if it is the first device there.
    pub fn bus(&self, config: &RtuConfig) -> Arc<tokio::sync::Mutex<RtuBus>> {
        let mut buses = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        buses
            .entry(config.port.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(RtuBus {
                    config: config.clone(),
                    modbus: None,
                    quiet_since: None,
                }))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_three_and_a_half_characters_but_at_least_1_75_ms() {
        let at = |baud| {
            RtuConfig {
                port: "/dev/ttyUSB0".into(),
                baud,
                parity: Parity::None,
                stop_bits: 1,
            }
            .silence()
        };
        assert_eq!(at(9600).as_micros(), 4010);
        assert_eq!(at(115_200), Duration::from_micros(1750));
    }

    #[test]
    fn devices_on_one_port_share_one_bus() {
        let buses = SharedBuses::default();
        let config = |port: &str| RtuConfig {
            port: port.into(),
            baud: 9600,
            parity: Parity::None,
            stop_bits: 1,
        };
        let a = buses.bus(&config("/dev/ttyUSB0"));
        let b = buses.bus(&config("/dev/ttyUSB0"));
        let c = buses.bus(&config("/dev/ttyUSB1"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
