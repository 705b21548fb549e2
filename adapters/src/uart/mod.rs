//! Serial sensors on a UART or a USB-serial adapter: text lines in several formats.
//!
//! The adapter owns one port. A port that is missing or disappears (USB unplugged: reads return
//! 0 bytes or EIO) ends the run with a transport error; the supervisor reopens it with backoff
//! and the device shows offline meanwhile.

mod framing;
mod parse;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialPortBuilderExt;

use crate::adapter::{Adapter, AdapterContext, AdapterError, DeviceStatus};
use crate::config::ValueInfo;
use crate::reading::{Reading, Value};
pub use framing::{LineDrop, LineFramer};
pub use parse::{LineFormat, LineParser, ParseError};

/// Settings of a serial device (`type: uart`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UartConfig {
    /// The port; prefer the stable `/dev/serial/by-id/...` names of USB adapters.
    pub port: PathBuf,
    /// Bits per second (default 9600).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// 5 to 8 (default 8).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// `none` (default), `odd` or `even`.
    #[serde(default)]
    pub parity: Parity,
    /// 1 (default) or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// `none` (default), `software` (XON/XOFF) or `hardware` (RTS/CTS).
    #[serde(default)]
    pub flow_control: FlowControl,
    /// How the sensor writes its lines.
    pub lines: LinesConfig,
    /// For sensors that answer only when asked: what to send, and how often.
    pub poll: Option<PollConfig>,
    /// The values to take from each line.
    pub values: Vec<UartValue>,
}

/// Parity bit setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Flow control setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowControl {
    /// None.
    #[default]
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// `lines:` — text lines and their format.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinesConfig {
    /// `json`, `key_value`, `csv` or `regex`.
    pub format: LineFormat,
    /// The byte that ends a line (default `"\n"`; a `\r` before it is removed).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Longer lines are dropped and counted (default 1024 bytes).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// `csv`: the column names, in order.
    pub columns: Option<Vec<String>>,
    /// `csv`: the separator (default `,`).
    pub separator: Option<char>,
    /// `regex`: a pattern whose named groups are the fields.
    pub pattern: Option<String>,
}

/// `poll:` — a command written to the port periodically.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// How often.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// The text to send, escapes included (`"READ\r\n"`).
    pub send: String,
}

/// One value taken from a line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UartValue {
    /// Name in readings.
    pub name: String,
    /// Unit announced in the metadata.
    pub unit: Option<String>,
    /// The field in the line (JSON key, key, column or group name); default: `name`.
    pub field: Option<String>,
    /// Multiplies a numeric field (default 1).
    pub scale: Option<f64>,
    /// Added after scaling (default 0).
    pub offset: Option<f64>,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_delimiter() -> String {
    "\n".into()
}
fn default_max_length() -> usize {
    1024
}

impl UartValue {
    fn field(&self) -> &str {
        self.field.as_deref().unwrap_or(&self.name)
    }
}

impl UartConfig {
    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut push = |path: &str, message: String| problems.push((path.to_string(), message));
        if self.port.as_os_str().is_empty() {
            push("port", "needs a device path such as /dev/ttyUSB0".into());
        }
        if self.baud == 0 {
            push("baud", "must be above zero".into());
        }
        if !(5..=8).contains(&self.data_bits) {
            push(
                "data_bits",
                format!("{} is not 5, 6, 7 or 8", self.data_bits),
            );
        }
        if !(1..=2).contains(&self.stop_bits) {
            push("stop_bits", format!("{} is not 1 or 2", self.stop_bits));
        }
        if self.lines.delimiter.len() != 1 {
            push(
                "lines.delimiter",
                "must be one byte, such as \"\\n\" or \"\\r\"".into(),
            );
        }
        if self.lines.max_length == 0 {
            push("lines.max_length", "must be above zero".into());
        }
        let known: Option<Vec<String>> = match self.lines.format {
            LineFormat::Csv => match &self.lines.columns {
                Some(columns) if !columns.is_empty() => Some(columns.clone()),
                _ => {
                    push("lines.columns", "`csv` needs the column names".into());
                    None
                }
            },
            LineFormat::Regex => match self.lines.pattern.as_deref().map(regex::Regex::new) {
                Some(Ok(regex)) => {
                    Some(regex.capture_names().flatten().map(String::from).collect())
                }
                Some(Err(e)) => {
                    push("lines.pattern", format!("not a valid regex: {e}"));
                    None
                }
                None => {
                    push(
                        "lines.pattern",
                        "`regex` needs a pattern with named groups".into(),
                    );
                    None
                }
            },
            LineFormat::Json | LineFormat::KeyValue => None,
        };
        if let Some(poll) = &self.poll
            && poll.every.is_zero()
        {
            push("poll.every", "must be longer than zero".into());
        }
        if self.values.is_empty() {
            push(
                "values",
                "name at least one value to take from the lines".into(),
            );
        }
        for (i, value) in self.values.iter().enumerate() {
            if self.values[..i].iter().any(|v| v.name == value.name) {
                push(
                    &format!("values[{i}].name"),
                    format!("`{}` appears twice", value.name),
                );
            }
            if let Some(known) = &known
                && !known.iter().any(|k| k == value.field())
            {
                push(
                    &format!("values[{i}].field"),
                    format!(
                        "`{}` is not one of the fields: {}",
                        value.field(),
                        known.join(", ")
                    ),
                );
            }
        }
        problems
    }

    pub(crate) fn values(&self) -> Vec<ValueInfo> {
        self.values
            .iter()
            .map(|v| ValueInfo {
                name: v.name.clone(),
                unit: v.unit.clone(),
            })
            .collect()
    }

    pub(crate) fn build(&self) -> UartAdapter {
        UartAdapter {
            config: self.clone(),
            names: self
                .values
                .iter()
                .map(|v| Arc::from(v.name.as_str()))
                .collect(),
        }
    }

    fn parser(&self) -> Result<LineParser, AdapterError> {
        Ok(match self.lines.format {
            LineFormat::Json => LineParser::Json,
            LineFormat::KeyValue => LineParser::KeyValue,
            LineFormat::Csv => LineParser::Csv {
                columns: self.lines.columns.clone().unwrap_or_default(),
                separator: self.lines.separator.unwrap_or(','),
            },
            LineFormat::Regex => {
                let pattern = self.lines.pattern.as_deref().unwrap_or_default();
                LineParser::Regex(
                    regex::Regex::new(pattern).map_err(|e| AdapterError::Config(e.to_string()))?,
                )
            }
        })
    }

    fn open(&self) -> Result<tokio_serial::SerialStream, AdapterError> {
        use tokio_serial::{DataBits, StopBits};
        let data_bits = match self.data_bits {
            5 => DataBits::Five,
            6 => DataBits::Six,
            7 => DataBits::Seven,
            _ => DataBits::Eight,
        };
        let path = self.port.to_string_lossy();
        tokio_serial::new(path.as_ref(), self.baud)
            .data_bits(data_bits)
            .parity(match self.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Odd => tokio_serial::Parity::Odd,
                Parity::Even => tokio_serial::Parity::Even,
            })
            .stop_bits(if self.stop_bits == 2 {
                StopBits::Two
            } else {
                StopBits::One
            })
            .flow_control(match self.flow_control {
                FlowControl::None => tokio_serial::FlowControl::None,
                FlowControl::Software => tokio_serial::FlowControl::Software,
                FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
            })
            .open_native_async()
            .map_err(|e| AdapterError::Transport(format!("cannot open {path}: {e}")))
    }
}

/// A running serial device.
#[derive(Debug)]
pub struct UartAdapter {
    config: UartConfig,
    names: Vec<Arc<str>>,
}

impl UartAdapter {
    /// The reading for one parsed line, or `None` when it holds none of the configured values.
    fn reading(&self, device: &Arc<str>, fields: &mut HashMap<String, Value>) -> Option<Reading> {
        let values: Vec<(Arc<str>, Value)> = self
            .config
            .values
            .iter()
            .zip(&self.names)
            .filter_map(|(spec, name)| {
                let value = fields.remove(spec.field())?;
                let (scale, offset) = (spec.scale.unwrap_or(1.0), spec.offset.unwrap_or(0.0));
                let value = match value {
                    Value::Int(i) if spec.scale.is_some() || spec.offset.is_some() => {
                        Value::Float(i as f64 * scale + offset)
                    }
                    Value::Float(f) => Value::Float(f * scale + offset),
                    other => other,
                };
                Some((name.clone(), value))
            })
            .collect();
        (!values.is_empty()).then(|| Reading::now(device.clone(), values))
    }
}

#[async_trait]
impl Adapter for UartAdapter {
    async fn run(&mut self, ctx: &AdapterContext) -> Result<(), AdapterError> {
        let parser = self.config.parser()?;
        let port = self.config.open()?;
        ctx.set_status(DeviceStatus::Online);
        let (mut reader, mut writer) = tokio::io::split(port);
        let delimiter = self.config.lines.delimiter.bytes().next().unwrap_or(b'\n');
        let mut framer = LineFramer::new(delimiter, self.config.lines.max_length);
        let mut poll = self
            .config
            .poll
            .as_ref()
            .map(|p| tokio::time::interval(p.every));
        let mut buf = vec![0u8; 4096];
        let mut lines = Vec::new();
        loop {
            tokio::select! {
                () = ctx.cancelled().cancelled() => return Ok(()),
                read = reader.read(&mut buf) => match read {
                    Ok(0) => return Err(AdapterError::Transport("the port closed (unplugged?)".into())),
                    Ok(n) => framer.push(&buf[..n], |l| lines.push(l.to_string()), |d| ctx.counters().count_error(d.as_str())),
                    Err(e) => return Err(AdapterError::Transport(format!("read failed: {e}"))),
                },
                _ = async { poll.as_mut()?.tick().await; Some(()) }, if poll.is_some() => {
                    let send = self.config.poll.as_ref().map(|p| p.send.as_bytes()).unwrap_or_default();
                    writer.write_all(send).await.map_err(|e| AdapterError::Transport(format!("write failed: {e}")))?;
                }
            }
            for line in lines.drain(..) {
                let reading = match parser.fields(&line) {
                    Ok(mut fields) => self.reading(ctx.device(), &mut fields),
                    Err(e) => {
                        tracing::debug!(device = %ctx.device(), error = %e, line = %line, "Line not parsed");
                        ctx.counters().count_error("parse");
                        continue;
                    }
                };
                match reading {
                    Some(reading) => ctx.emit(reading).await?,
                    None => ctx.counters().count_error("no_values"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(lines: LinesConfig, fields: &[&str]) -> UartConfig {
        UartConfig {
            port: "/dev/ttyUSB0".into(),
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
            lines,
            poll: None,
            values: fields
                .iter()
                .map(|f| UartValue {
                    name: f.to_string(),
                    unit: None,
                    field: None,
                    scale: None,
                    offset: None,
                })
                .collect(),
        }
    }

    fn lines(format: LineFormat) -> LinesConfig {
        LinesConfig {
            format,
            delimiter: "\n".into(),
            max_length: 1024,
            columns: None,
            separator: None,
            pattern: None,
        }
    }

    fn paths(c: &UartConfig) -> Vec<String> {
        c.problems().into_iter().map(|(path, _)| path).collect()
    }

    #[test]
    fn format_settings_and_fields_are_checked() {
        assert_eq!(
            paths(&config(lines(LineFormat::Csv), &["a"])),
            ["lines.columns"]
        );
        let mut csv = lines(LineFormat::Csv);
        csv.columns = Some(vec!["a".into(), "b".into()]);
        assert_eq!(paths(&config(csv, &["a", "c"])), ["values[1].field"]);
        let mut re = lines(LineFormat::Regex);
        re.pattern = Some("(?P<x>[0-9]+".into());
        assert_eq!(paths(&config(re, &["x"])), ["lines.pattern"]);
        let mut bad = config(lines(LineFormat::Json), &["a", "a"]);
        bad.data_bits = 9;
        bad.lines.delimiter = "\r\n".into();
        assert_eq!(
            paths(&bad),
            ["data_bits", "lines.delimiter", "values[1].name"]
        );
        assert!(paths(&config(lines(LineFormat::KeyValue), &["t"])).is_empty());
    }
}
