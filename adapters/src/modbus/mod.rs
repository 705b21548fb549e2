//! Modbus devices polled from a register map, over Modbus TCP or an RS-485 bus (RTU); the
//! devices on one serial port, or behind one TCP `host:port`, share its link ([`bus`]).
//!
//! Points are coalesced into as few requests as the protocol allows ([`plan`]), every request
//! has a timeout (tokio-modbus would wait forever), exceptions are counted by code, and after
//! `offline_after` consecutive failed polls the run ends as a transport error: the supervisor
//! marks the device offline and reconnects with backoff.
//!
//! Points marked `writable` take commands between polls: the value is encoded like the point
//! decodes, written with function 5, 6 or 16 (15 and 16 only with `write_multiple`), then read
//! back, so the answer says what the device now holds.

mod bus;
mod plan;
mod registers;
pub mod scan;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::{ExceptionCode, ProtocolError, Request as ModbusRequest, Response};

use crate::adapter::{Adapter, AdapterContext, AdapterError, DeviceStatus};
use crate::command::{Command, CommandValue};
use crate::config::{ValueInfo, ValueKind};
use crate::reading::Reading;
pub use bus::{Bus, Link, RtuConfig, SharedBuses};
pub use plan::{Request, plan};
pub use registers::{ByteOrder, Point, PointType, Table, Write};

/// The least time a TCP connect may take: a gateway's first answer may be slow.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of a Modbus device (`type: modbus`).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// Modbus TCP: where the device (or gateway) listens.
    pub tcp: Option<TcpConfig>,
    /// Modbus RTU: the RS-485 bus; devices naming the same port share it.
    pub rtu: Option<RtuConfig>,
    /// Unit id (slave address), 1 to 247 (default 1; 255 for many TCP-only devices).
    #[serde(default = "default_unit")]
    pub unit_id: u8,
    /// How often to poll the points that set no interval of their own (default 10s).
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// How long one request may take (default 1s).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Unused registers a request may read to merge two neighbouring points (default 8).
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Consecutive failed polls before the device counts as offline (default 3).
    #[serde(default = "default_offline_after")]
    pub offline_after: u32,
    /// Write with functions 15/16 even a single coil or register, for devices (many energy
    /// meters) that implement no other write functions (default false: 5/6 where they fit).
    #[serde(default)]
    pub write_multiple: bool,
    /// A device profile (`adapters/profiles/modbus/<name>.yaml`) that supplies the points.
    pub profile: Option<String>,
    /// The register map (or the profile's, when empty).
    #[serde(default)]
    pub points: Vec<Point>,
}

/// What a Modbus profile supplies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    points: Vec<Point>,
}

/// `tcp:` — a Modbus TCP endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// Host name or address.
    pub host: String,
    /// Port (default 502).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Whether devices naming the same host and port share one connection (default true), as
    /// units behind a TCP-to-RTU gateway must: such a gateway takes 1 to 4 connections. false
    /// gives this device a connection of its own, for servers that want one per unit.
    #[serde(default = "default_true")]
    pub shared: bool,
}

fn default_true() -> bool {
    true
}

fn default_unit() -> u8 {
    1
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_gap() -> u16 {
    8
}
fn default_offline_after() -> u32 {
    3
}
fn default_port() -> u16 {
    502
}

impl ModbusConfig {
    /// These settings completed by their profile, if any.
    fn resolved(&self) -> Result<ModbusConfig, String> {
        let mut config = self.clone();
        if let Some(name) = &self.profile
            && config.points.is_empty()
        {
            let profile: Profile = crate::profiles::load(crate::config::AdapterKind::Modbus, name)?;
            config.points = profile.points;
        }
        Ok(config)
    }

    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        match self.resolved() {
            Ok(config) => config.own_problems(),
            Err(e) => vec![("profile".into(), e)],
        }
    }

    fn own_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        match (&self.tcp, &self.rtu) {
            (Some(tcp), None) if tcp.host.is_empty() => {
                problems.push(("tcp.host".into(), "needs a host name or address".into()));
            }
            (None, Some(rtu)) if rtu.baud == 0 || !(1..=2).contains(&rtu.stop_bits) => {
                problems.push((
                    "rtu".into(),
                    "needs a baud rate above zero and 1 or 2 stop bits".into(),
                ));
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => problems.push(("tcp".into(), "give either `tcp` or `rtu`".into())),
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            problems.push((
                "interval".into(),
                "`interval` and `timeout` must be longer than zero".into(),
            ));
        }
        if self.offline_after == 0 {
            problems.push(("offline_after".into(), "must be at least 1".into()));
        }
        if self.points.is_empty() {
            problems.push((
                "points".into(),
                "a Modbus device needs at least one point".into(),
            ));
        }
        for (i, point) in self.points.iter().enumerate() {
            if self.points[..i].iter().any(|p| p.name == point.name) {
                problems.push((
                    format!("points[{i}].name"),
                    format!("`{}` appears twice", point.name),
                ));
            }
            for (field, message) in point.problems() {
                problems.push((format!("points[{i}].{field}"), message));
            }
            if let Some(report) = &point.report {
                report.problems(&format!("points[{i}].report"), &mut |path, message| {
                    problems.push((path, message))
                });
            }
        }
        problems
    }

    pub(crate) fn values(&self) -> Vec<ValueInfo> {
        let config = self.resolved().unwrap_or_else(|_| self.clone());
        config
            .points
            .iter()
            .map(|p| ValueInfo {
                name: p.name.clone(),
                unit: p.unit.clone(),
                writable: p.writable,
                decimals: p.decimals(),
                report: p.report.clone(),
                priority: p.priority,
                kind: match p.kind() {
                    PointType::Bool => ValueKind::Bool,
                    PointType::String => ValueKind::Text,
                    _ => ValueKind::Number,
                },
            })
            .collect()
    }

    pub(crate) fn build(&self, buses: &SharedBuses) -> ModbusAdapter {
        // Validation resolved the profile already; it cannot fail differently now.
        let resolved = self.resolved().unwrap_or_else(|_| self.clone());
        let bus = match (&resolved.rtu, &resolved.tcp) {
            (Some(rtu), _) => buses.bus(Link::Rtu(rtu.clone())),
            (None, Some(tcp)) => {
                let link = Link::Tcp(format!("{}:{}", tcp.host, tcp.port));
                if tcp.shared {
                    buses.bus(link)
                } else {
                    Arc::new(tokio::sync::Mutex::new(Bus::new(link)))
                }
            }
            // Validation refuses a device with neither; such a bus never opens.
            (None, None) => Arc::new(tokio::sync::Mutex::new(Bus::new(Link::Tcp(String::new())))),
        };
        resolved.build_resolved(bus)
    }

    fn build_resolved(&self, bus: Arc<tokio::sync::Mutex<Bus>>) -> ModbusAdapter {
        // One schedule per distinct interval, each with its own coalesced requests.
        let mut by_interval: BTreeMap<Duration, Vec<usize>> = BTreeMap::new();
        for (i, point) in self.points.iter().enumerate() {
            by_interval
                .entry(point.interval.unwrap_or(self.interval))
                .or_default()
                .push(i);
        }
        let schedules = by_interval
            .into_iter()
            .map(|(every, indices)| {
                let points: Vec<&Point> = indices.iter().map(|&i| &self.points[i]).collect();
                let requests = plan(&points, self.max_gap)
                    .into_iter()
                    .map(|mut r| {
                        r.points = r.points.iter().map(|&k| indices[k]).collect();
                        r
                    })
                    .collect();
                Schedule { every, requests }
            })
            .collect();
        ModbusAdapter {
            config: self.clone(),
            names: self
                .points
                .iter()
                .map(|p| Arc::from(p.name.as_str()))
                .collect(),
            schedules,
            bus,
        }
    }
}

/// Points polled together at one interval.
#[derive(Debug)]
struct Schedule {
    every: Duration,
    requests: Vec<Request>,
}

/// A running Modbus device.
#[derive(Debug)]
pub struct ModbusAdapter {
    config: ModbusConfig,
    names: Vec<Arc<str>>,
    schedules: Vec<Schedule>,
    bus: Arc<tokio::sync::Mutex<Bus>>,
}

/// One Modbus transaction.
enum Op<'a> {
    /// Reads a coalesced request.
    Read(&'a Request),
    /// Writes at an address.
    Write(u16, &'a Write),
}

/// What became of one transaction that did not break the link.
enum Outcome {
    /// The registers (or bits as 0/1) read; nothing for a write.
    Words(Vec<u16>),
    /// Counted already.
    Failed(Failure),
}

/// Why a transaction failed while the link stayed up.
#[derive(Debug)]
enum Failure {
    Exception(ExceptionCode),
    BadResponse(String),
    /// An RTU answer that failed its CRC, which tokio-modbus gave up resynchronizing on.
    Corrupted,
    /// No answer in time; a late one may still arrive on a serial line.
    Timeout,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Exception(code) => write!(f, "exception: {code}"),
            Failure::BadResponse(e) => write!(f, "bad response: {e}"),
            Failure::Corrupted => f.write_str("corrupted answer (CRC)"),
            Failure::Timeout => f.write_str("no answer in time"),
        }
    }
}

/// The name of the error counter for an exception response.
fn exception_counter(code: ExceptionCode) -> &'static str {
    match code {
        ExceptionCode::IllegalFunction => "exception_illegal_function",
        ExceptionCode::IllegalDataAddress => "exception_illegal_address",
        ExceptionCode::IllegalDataValue => "exception_illegal_value",
        ExceptionCode::ServerDeviceFailure => "exception_device_failure",
        ExceptionCode::ServerDeviceBusy => "exception_busy",
        _ => "exception_other",
    }
}

impl ModbusAdapter {
    /// Runs one transaction on `modbus`; `Err` is a broken connection.
    async fn call(
        &self,
        modbus: &mut Context,
        ctx: &AdapterContext,
        op: &Op<'_>,
    ) -> Result<Outcome, AdapterError> {
        let multiple = self.config.write_multiple;
        let call = async {
            match *op {
                Op::Read(request) => read(modbus, request).await,
                Op::Write(address, write) => self::write(modbus, address, write, multiple).await,
            }
        };
        ctx.counters().count_request();
        let failure = match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(Ok(words))) => return Ok(Outcome::Words(words)),
            // Noise on an RS-485 line is a bad answer, not a lost link: the bus is reopened
            // (dropping what is left of the frame) and the device keeps its schedule.
            Ok(Err(tokio_modbus::Error::Transport(e)))
                if self.config.rtu.is_some() && e.kind() == std::io::ErrorKind::InvalidData =>
            {
                ctx.counters().count_error("crc");
                Failure::Corrupted
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                return Err(AdapterError::Transport(format!("connection lost: {e}")));
            }
            Ok(Ok(Err(code))) => {
                ctx.counters().count_error(exception_counter(code));
                Failure::Exception(code)
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                ctx.counters().count_error("framing");
                Failure::BadResponse(e.to_string())
            }
            Err(_) => {
                ctx.counters().count_error("timeout");
                Failure::Timeout
            }
        };
        tracing::debug!(device = %ctx.device(), failure = %failure, "Request failed");
        Ok(Outcome::Failed(failure))
    }

    /// Runs one transaction on this device's link (its RS-485 bus or its Modbus TCP
    /// connection, shared or not) while holding it.
    async fn request(&self, ctx: &AdapterContext, op: &Op<'_>) -> Result<Outcome, AdapterError> {
        let mut bus = self.bus.lock().await;
        let modbus = bus
            .unit(
                self.config.unit_id,
                self.config.timeout.max(CONNECT_TIMEOUT),
            )
            .await
            .map_err(AdapterError::Transport)?;
        let outcome = self.call(modbus, ctx, op).await;
        bus.done();
        // A late answer would be read as the reply to the next request (on TCP too, where
        // tokio-modbus refuses it by transaction id but does not skip it): start afresh.
        if matches!(
            outcome,
            Err(_) | Ok(Outcome::Failed(Failure::Timeout | Failure::Corrupted))
        ) {
            bus.broken();
        }
        outcome
    }

    /// Carries out a command: writes the point, then reads it back. `Err` is a broken link
    /// (the command is answered first).
    async fn write(&self, ctx: &AdapterContext, command: Command) -> Result<(), AdapterError> {
        let found = self.config.points.iter().find(|p| p.name == command.point);
        let point = match found {
            Some(point) if point.writable => point,
            _ => {
                let refusal = format!("`{}` is not a writable point", command.point);
                command.reply(Err(refusal));
                return Ok(());
            }
        };
        if command.expired() {
            command.reply(Err("expired before the device could be reached".into()));
            return Ok(());
        }
        let CommandValue::Value(value) = &command.value else {
            let refusal = format!("`{}` takes one value, not fields", command.point);
            command.reply(Err(refusal));
            return Ok(());
        };
        let data = match point.encode(value) {
            Ok(data) => data,
            Err(e) => {
                command.reply(Err(e));
                return Ok(());
            }
        };
        let outcome = self.request(ctx, &Op::Write(point.address, &data)).await;
        match outcome {
            Ok(Outcome::Words(_)) => {}
            Ok(Outcome::Failed(failure)) => {
                command.reply(Err(failure.to_string()));
                return Ok(());
            }
            Err(e) => {
                command.reply(Err(e.to_string()));
                return Err(e);
            }
        }
        tracing::info!(device = %ctx.device(), point = %point.name, value = ?command.value, "Point written");
        let request = Request {
            table: point.table,
            start: point.address,
            count: point.count(),
            points: Vec::new(),
        };
        // The write happened; a failed read-back only leaves the new value unknown.
        let read_back = match self.request(ctx, &Op::Read(&request)).await {
            Ok(Outcome::Words(words)) => point.decode_registers(&words),
            Ok(Outcome::Failed(_)) => None,
            Err(e) => {
                command.reply(Ok(None));
                return Err(e);
            }
        };
        command.reply(Ok(read_back));
        Ok(())
    }

    /// Polls one schedule; returns the reading (if any value came back) and whether every
    /// request failed.
    async fn poll(
        &self,
        ctx: &AdapterContext,
        schedule: &Schedule,
    ) -> Result<(Option<Reading>, bool), AdapterError> {
        let mut values = Vec::new();
        let mut failed = 0;
        for request in &schedule.requests {
            let outcome = self.request(ctx, &Op::Read(request)).await?;
            let Outcome::Words(words) = outcome else {
                failed += 1;
                continue;
            };
            for (i, value) in request.decode(&self.config.points, &words) {
                match value {
                    Some(value) => values.push((self.names[i].clone(), value)),
                    None => ctx.counters().count_error("short_response"),
                }
            }
        }
        let reading = (!values.is_empty()).then(|| Reading::now(ctx.device().clone(), values));
        Ok((reading, failed == schedule.requests.len()))
    }
}

/// Coils and discrete inputs as 0/1 words, so one decoder serves all tables.
/// Reads `request`'s registers (or bits, as 0 and 1) with the plain `call`, checking the size
/// of the answer here: tokio-modbus's read helpers only `debug_assert` it, so a device that
/// answers with another count (found by fuzzing) would panic a debug build and hand a release
/// build values from the wrong registers. A wrong count is a protocol error (counted as
/// `framing`).
pub async fn read(modbus: &mut Context, request: &Request) -> tokio_modbus::Result<Vec<u16>> {
    let (start, count) = (request.start, request.count);
    let call = match request.table {
        Table::Holding => ModbusRequest::ReadHoldingRegisters(start, count),
        Table::Input => ModbusRequest::ReadInputRegisters(start, count),
        Table::Coil => ModbusRequest::ReadCoils(start, count),
        Table::DiscreteInput => ModbusRequest::ReadDiscreteInputs(start, count),
    };
    let response = match modbus.call(call).await? {
        Ok(response) => response,
        Err(code) => return Ok(Err(code)),
    };
    let count = usize::from(count);
    let (words, fits) = match &response {
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words) => {
            (words.clone(), words.len() == count)
        }
        // Bits come in whole bytes: up to 7 beyond the count are padding.
        Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) => (
            bits.iter().take(count).map(|bit| u16::from(*bit)).collect(),
            (count..count + 8).contains(&bits.len()),
        ),
        _ => (Vec::new(), false),
    };
    if !fits {
        return Err(mismatch(
            "the answer does not hold the values asked for",
            response,
        ));
    }
    Ok(Ok(words))
}

/// Writes `write` at `address` with the plain `call` and checks that the answer echoes it (as
/// for reads, tokio-modbus only `debug_assert`s that). The empty answer is shaped like a read's.
async fn write(
    modbus: &mut Context,
    address: u16,
    write: &Write,
    multiple: bool,
) -> tokio_modbus::Result<Vec<u16>> {
    let (call, echo) = match write {
        Write::Coil(on) if multiple => (
            ModbusRequest::WriteMultipleCoils(address, Cow::Owned(vec![*on])),
            Response::WriteMultipleCoils(address, 1),
        ),
        Write::Coil(on) => (
            ModbusRequest::WriteSingleCoil(address, *on),
            Response::WriteSingleCoil(address, *on),
        ),
        Write::Registers(words) if words.len() == 1 && !multiple => (
            ModbusRequest::WriteSingleRegister(address, words[0]),
            Response::WriteSingleRegister(address, words[0]),
        ),
        Write::Registers(words) => (
            ModbusRequest::WriteMultipleRegisters(address, Cow::Borrowed(words)),
            Response::WriteMultipleRegisters(address, words.len() as u16),
        ),
    };
    match modbus.call(call).await? {
        Ok(response) if response == echo => Ok(Ok(Vec::new())),
        Ok(response) => Err(mismatch("the answer does not echo the write", response)),
        Err(code) => Ok(Err(code)),
    }
}

fn mismatch(message: &str, response: Response) -> tokio_modbus::Error {
    tokio_modbus::Error::Protocol(ProtocolError::HeaderMismatch {
        message: message.to_string(),
        result: Ok(response),
    })
}

#[async_trait]
impl Adapter for ModbusAdapter {
    async fn run(&mut self, ctx: &AdapterContext) -> Result<(), AdapterError> {
        let mut due: Vec<Instant> = vec![Instant::now(); self.schedules.len()];
        let mut failures = 0;
        loop {
            let (index, when) = due
                .iter()
                .copied()
                .enumerate()
                .min_by_key(|(_, t)| *t)
                .unwrap_or((0, Instant::now()));
            tokio::select! {
                () = ctx.cancelled().cancelled() => return Ok(()),
                () = tokio::time::sleep_until(when) => {}
                Some(command) = ctx.next_command() => {
                    self.write(ctx, command).await?;
                    continue;
                }
            }
            let schedule = &self.schedules[index];
            // Keep the schedule's rhythm; after a stall, skip what was missed.
            due[index] = (when + schedule.every).max(Instant::now());
            let (reading, all_failed) = self.poll(ctx, schedule).await?;
            if all_failed {
                failures += 1;
                if failures >= self.config.offline_after {
                    return Err(AdapterError::Transport(format!(
                        "{failures} polls in a row failed"
                    )));
                }
            } else {
                failures = 0;
                ctx.set_status(DeviceStatus::Online);
            }
            if let Some(reading) = reading {
                ctx.emit(reading).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(profile: &str) -> ModbusConfig {
        ModbusConfig {
            tcp: Some(TcpConfig {
                host: "meter".into(),
                port: 502,
                shared: true,
            }),
            rtu: None,
            unit_id: 1,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            max_gap: 8,
            offline_after: 3,
            write_multiple: false,
            profile: Some(profile.into()),
            points: Vec::new(),
        }
    }

    #[test]
    fn profiles_supply_valid_register_maps() {
        for (name, points, requests) in [("sdm120", 10, 3), ("sdm630", 15, 3), ("xy-md02", 2, 1)] {
            let config = device(name);
            assert!(
                config.problems().is_empty(),
                "{name}: {:?}",
                config.problems()
            );
            assert_eq!(config.values().len(), points, "{name}");
            let adapter = config.build(&SharedBuses::default());
            assert_eq!(adapter.schedules[0].requests.len(), requests, "{name}");
        }
        let problems = device("sdm999").problems();
        assert_eq!(problems[0].0, "profile");
        assert!(
            problems[0].1.contains("sdm630"),
            "the error lists the profiles: {}",
            problems[0].1
        );
    }

    /// Answers every request on `device` with `answer`, as a device on a serial line would.
    async fn answering(answer: Vec<u8>) -> Context {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut device) = tokio::io::duplex(256);
        tokio::spawn(async move {
            let mut request = [0u8; 64];
            while device.read(&mut request).await.is_ok_and(|n| n > 0) {
                let _ = device.write_all(&answer).await;
            }
        });
        tokio_modbus::client::rtu::attach_slave(client, tokio_modbus::Slave(1))
    }

    fn rtu_frame(pdu: &[u8]) -> Vec<u8> {
        let mut frame = vec![1];
        frame.extend_from_slice(pdu);
        let crc = crate::uart::ChecksumKind::Crc16Modbus.compute(&frame) as u16;
        frame.extend_from_slice(&crc.to_le_bytes());
        frame
    }

    fn holding(count: u16) -> Request {
        Request {
            table: Table::Holding,
            start: 0,
            count,
            points: vec![],
        }
    }

    // Found by the `modbus_response` fuzz target: tokio-modbus hands back whatever count the
    // answer holds (and panics on it in a debug build).
    #[tokio::test]
    async fn an_answer_with_other_registers_than_asked_is_refused() {
        let mut modbus = answering(rtu_frame(&[3, 4, 0, 10, 0, 11])).await;
        assert_eq!(
            read(&mut modbus, &holding(2)).await.unwrap(),
            Ok(vec![10, 11])
        );
        for asked in [1, 3] {
            let answer = read(&mut modbus, &holding(asked)).await;
            assert!(
                matches!(answer, Err(tokio_modbus::Error::Protocol(_))),
                "{asked} asked: {answer:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_write_answered_with_another_echo_is_refused() {
        let mut modbus = answering(rtu_frame(&[6, 0, 7, 0, 99])).await;
        let ok = write(&mut modbus, 7, &Write::Registers(vec![99]), false).await;
        assert_eq!(ok.unwrap(), Ok(vec![]));
        let other = write(&mut modbus, 7, &Write::Registers(vec![100]), false).await;
        assert!(
            matches!(other, Err(tokio_modbus::Error::Protocol(_))),
            "{other:?}"
        );
    }
}
