//! Shared Modbus links: several RTU units on one RS-485 serial port, or several units behind one
//! Modbus TCP endpoint (a TCP-to-RTU gateway such as a Moxa MGate, USR or Waveshare box, which
//! accepts only 1 to 4 connections and refuses the rest). The devices on a link share one
//! [`Bus`] behind a fair lock, so requests never overlap and each unit gets its turn; on RTU
//! the bus keeps the silence between frames that RTU requires (3.5 character times; 1.75 ms
//! above 19,200 baud). A link that cannot be opened is retried at most once per backoff step,
//! however many devices share it, so that 50 units do not storm a gateway that is down.

use std::collections::HashMap;
use std::net::SocketAddr;
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

/// What a bus runs over.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// An RS-485 serial line.
    Rtu(RtuConfig),
    /// A Modbus TCP endpoint, `host:port`.
    Tcp(String),
}

/// The first retry of a link that failed to open; it doubles up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// One shared link: the open connection (if it is open), when the last frame ended, and when
/// a link that failed to open may be tried again.
pub struct Bus {
    link: Link,
    modbus: Option<Context>,
    quiet_since: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("link", &self.link)
            .field("open", &self.modbus.is_some())
            .finish()
    }
}

impl Bus {
    /// A bus over `link`, opened on its first request.
    pub fn new(link: Link) -> Self {
        Self {
            link,
            modbus: None,
            quiet_since: None,
            failures: 0,
            retry_at: None,
        }
    }

    /// The bus's context addressed to `unit`, opening the link if needed (a TCP connect may
    /// take `connect_timeout`) and waiting out the inter-frame silence.
    pub async fn unit(
        &mut self,
        unit: u8,
        connect_timeout: Duration,
    ) -> Result<&mut Context, String> {
        if let (Some(since), Link::Rtu(config)) = (self.quiet_since, &self.link) {
            tokio::time::sleep_until(since + config.silence()).await;
        }
        if self.modbus.is_none() {
            if let Some(at) = self.retry_at.filter(|at| *at > Instant::now()) {
                let wait = at.saturating_duration_since(Instant::now());
                return Err(format!(
                    "{}: failed to open; next try in {} ms",
                    self.name(),
                    wait.as_millis()
                ));
            }
            match open(&self.link, connect_timeout).await {
                Ok(modbus) => {
                    self.modbus = Some(modbus);
                    self.failures = 0;
                    self.retry_at = None;
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    let step = FIRST_RETRY.saturating_mul(1 << (self.failures - 1).min(5));
                    self.retry_at = Some(Instant::now() + step.min(MAX_RETRY));
                    return Err(e);
                }
            }
        }
        let modbus = self
            .modbus
            .as_mut()
            .ok_or_else(|| "the link closed".to_string())?;
        modbus.set_slave(Slave(unit));
        Ok(modbus)
    }

    /// The port or endpoint, for messages.
    fn name(&self) -> String {
        match &self.link {
            Link::Rtu(config) => config.port.display().to_string(),
            Link::Tcp(endpoint) => endpoint.clone(),
        }
    }

    /// Marks the end of a request, for the next silence.
    pub fn done(&mut self) {
        self.quiet_since = Some(Instant::now());
    }

    /// Closes the link after a transport error or a lost answer (which would otherwise be
    /// read as the reply to the next request); the next request reopens it.
    pub fn broken(&mut self) {
        self.modbus = None;
    }
}

/// Opens `link`: the serial port, or a TCP connection within `connect_timeout`.
async fn open(link: &Link, connect_timeout: Duration) -> Result<Context, String> {
    match link {
        Link::Rtu(config) => {
            let port = crate::serial::open(
                &config.port,
                config.baud,
                8,
                config.parity,
                config.stop_bits,
                FlowControl::None,
            )?;
            Ok(tokio_modbus::client::rtu::attach(port))
        }
        Link::Tcp(endpoint) => {
            let addr: SocketAddr = tokio::net::lookup_host(endpoint)
                .await
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| format!("cannot resolve {endpoint}"))?;
            let connect = tokio_modbus::client::tcp::connect(addr);
            match tokio::time::timeout(connect_timeout, connect).await {
                Ok(Ok(modbus)) => Ok(modbus),
                Ok(Err(e)) => Err(format!("cannot connect to {endpoint}: {e}")),
                Err(_) => Err(format!("connecting to {endpoint} timed out")),
            }
        }
    }
}

/// The shared links of one gateway: devices on the same serial port, or the same Modbus TCP
/// `host:port`, get the same bus.
#[derive(Debug, Clone, Default)]
pub struct SharedBuses(Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Bus>>>>>);

impl SharedBuses {
    /// The bus over `link`, created if it is the first device there. An RTU bus keeps the
    /// serial settings of the first device that named its port.
    pub fn bus(&self, link: Link) -> Arc<tokio::sync::Mutex<Bus>> {
        let key = match &link {
            Link::Rtu(config) => format!("rtu:{}", config.port.display()),
            Link::Tcp(endpoint) => format!("tcp:{endpoint}"),
        };
        let mut buses = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        buses
            .entry(key)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Bus::new(link))))
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
    fn devices_on_one_port_or_endpoint_share_one_bus() {
        let buses = SharedBuses::default();
        let rtu = |port: &str| {
            buses.bus(Link::Rtu(RtuConfig {
                port: port.into(),
                baud: 9600,
                parity: Parity::None,
                stop_bits: 1,
            }))
        };
        let tcp = |endpoint: &str| buses.bus(Link::Tcp(endpoint.into()));
        let (a, b, c) = (
            rtu("/dev/ttyUSB0"),
            rtu("/dev/ttyUSB0"),
            rtu("/dev/ttyUSB1"),
        );
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        let (d, e, f) = (tcp("mgate:502"), tcp("mgate:502"), tcp("mgate:503"));
        assert!(Arc::ptr_eq(&d, &e));
        assert!(!Arc::ptr_eq(&d, &f));
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_that_fails_to_open_is_retried_once_per_backoff_step() {
        let mut bus = Bus::new(Link::Tcp("127.0.0.1:1".into()));
        let mut refused = async |unit| match bus.unit(unit, Duration::from_secs(1)).await {
            Ok(_) => panic!("nothing listens on port 1"),
            Err(e) => e,
        };
        let first = refused(1).await;
        assert!(first.contains("cannot connect"), "{first}");
        // Every unit asking meanwhile is answered at once, without a connect.
        let meanwhile = refused(2).await;
        assert!(meanwhile.contains("next try in"), "{meanwhile}");
        tokio::time::advance(FIRST_RETRY).await;
        let second = refused(3).await;
        assert!(second.contains("cannot connect"), "{second}");
        tokio::time::advance(FIRST_RETRY).await;
        let doubled = refused(3).await;
        assert!(
            doubled.contains("next try in"),
            "the second wait is 2 s: {doubled}"
        );
    }
}
