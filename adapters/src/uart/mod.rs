//! Serial sensors on a UART or a USB-serial adapter: text lines in several formats, or binary
//! frames with a header and a checksum.
//!
//! The adapter owns one port. A port that is missing or disappears (USB unplugged: reads return
//! 0 bytes or EIO) ends the run with a transport error; the supervisor reopens it with backoff
//! and the device shows offline meanwhile.

mod frames;
mod lines;
mod parse;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::adapter::{Adapter, AdapterContext, AdapterError, DeviceStatus};
use crate::config::ValueInfo;
use crate::fields::{self, ValueSpec};
use crate::reading::{Reading, Value};
pub use crate::serial::{FlowControl, Parity};
pub use frames::{
    ChecksumConfig, ChecksumKind, Endian, FieldType, FrameDrop, FrameFramer, FramesConfig,
    LengthField,
};
pub use lines::{LineDrop, LineFramer};
pub use parse::{LineFormat, LineParser, ParseError};

/// Settings of a serial device (`type: uart`).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UartConfig {
    /// The port; prefer the stable `/dev/serial/by-id/...` names of USB adapters.
    pub port: PathBuf,
    /// A device profile (`adapters/profiles/uart/<name>.yaml`) that supplies the baud rate, framing
    /// and values; settings given here win.
    pub profile: Option<String>,
    /// Bits per second (default 9600, or the profile's).
    pub baud: Option<u32>,
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
    /// Text lines and their format (or `frames`).
    pub lines: Option<LinesConfig>,
    /// Binary frames (or `lines`).
    pub frames: Option<FramesConfig>,
    /// For sensors that answer only when asked: what to send, and how often.
    pub poll: Option<PollConfig>,
    /// The values to take from each line or frame.
    #[serde(default)]
    pub values: Vec<ValueSpec>,
}

/// What a device profile may supply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    baud: Option<u32>,
    lines: Option<LinesConfig>,
    frames: Option<FramesConfig>,
    values: Vec<ValueSpec>,
}

/// `lines:` — text lines and their format.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// How often.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub every: Duration,
    /// Text to send, escapes included (`"READ\r\n"`).
    pub send: Option<String>,
    /// Or bytes to send, in hex (`"42 4D E2 00 00 01 71"`), for binary protocols.
    pub send_hex: Option<String>,
}

impl PollConfig {
    /// The bytes to write, or why there are none.
    pub fn request(&self) -> Result<Vec<u8>, String> {
        match (&self.send, &self.send_hex) {
            (Some(text), None) => Ok(text.as_bytes().to_vec()),
            (None, Some(hex)) => match crate::codec::unhex(hex)? {
                bytes if bytes.is_empty() => Err("needs pairs of hex digits".into()),
                bytes => Ok(bytes),
            },
            _ => Err("give either `send` (text) or `send_hex` (bytes)".into()),
        }
    }
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

impl LinesConfig {
    /// Problems of the line settings; returns the field names a line can have, when known.
    fn problems(&self, push: &mut impl FnMut(&str, String)) -> Option<Vec<String>> {
        if self.delimiter.len() != 1 {
            push(
                "lines.delimiter",
                "must be one byte, such as \"\\n\" or \"\\r\"".into(),
            );
        }
        if self.max_length == 0 {
            push("lines.max_length", "must be above zero".into());
        }
        match self.format {
            LineFormat::Csv => match &self.columns {
                Some(columns) if !columns.is_empty() => Some(columns.clone()),
                _ => {
                    push("lines.columns", "`csv` needs the column names".into());
                    None
                }
            },
            LineFormat::Regex => match self.pattern.as_deref().map(regex::Regex::new) {
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
            LineFormat::Nmea => Some(parse::NMEA_FIELDS.iter().map(|f| f.to_string()).collect()),
            LineFormat::Json | LineFormat::KeyValue => None,
        }
    }

    fn parser(&self) -> Result<LineParser, AdapterError> {
        Ok(match self.format {
            LineFormat::Json => LineParser::Json,
            LineFormat::KeyValue => LineParser::KeyValue,
            LineFormat::Nmea => LineParser::Nmea,
            LineFormat::Csv => LineParser::Csv {
                columns: self.columns.clone().unwrap_or_default(),
                separator: self.separator.unwrap_or(','),
            },
            LineFormat::Regex => {
                let pattern = self.pattern.as_deref().unwrap_or_default();
                LineParser::Regex(
                    regex::Regex::new(pattern).map_err(|e| AdapterError::Config(e.to_string()))?,
                )
            }
        })
    }
}

impl FramesConfig {
    /// Problems of these settings, as `(field, message)`; a framer needs settings without any.
    pub fn problems(&self, push: &mut impl FnMut(&str, String)) {
        if self.sync.is_empty() {
            push(
                "frames.sync",
                "needs the header bytes every frame starts with".into(),
            );
        }
        match (self.length, &self.length_field) {
            (Some(length), None) => {
                if length < self.sync.len() || length > self.max_length {
                    push(
                        "frames.length",
                        format!(
                            "must be between the header's size and max_length ({})",
                            self.max_length
                        ),
                    );
                }
            }
            (None, Some(field)) => {
                if !matches!(field.kind, FieldType::U8 | FieldType::U16) {
                    push("frames.length_field.type", "must be u8 or u16".into());
                }
            }
            _ => push(
                "frames.length",
                "give either `length` or `length_field`".into(),
            ),
        }
    }
}

impl UartConfig {
    /// These settings completed by their profile, if any.
    pub(crate) fn resolved(&self) -> Result<UartConfig, String> {
        let mut config = self.clone();
        if let Some(name) = &self.profile {
            let profile: Profile = crate::profiles::load(crate::config::AdapterKind::Uart, name)?;
            config.baud = config.baud.or(profile.baud);
            if config.lines.is_none() && config.frames.is_none() {
                config.lines = profile.lines;
                config.frames = profile.frames;
            }
            if config.values.is_empty() {
                config.values = profile.values;
            }
        }
        Ok(config)
    }

    fn baud(&self) -> u32 {
        self.baud.unwrap_or(9600)
    }

    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        match self.resolved() {
            Ok(config) => config.own_problems(),
            Err(e) => vec![("profile".into(), e)],
        }
    }

    fn own_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut push = |path: &str, message: String| problems.push((path.to_string(), message));
        if self.port.as_os_str().is_empty() {
            push("port", "needs a device path such as /dev/ttyUSB0".into());
        }
        if self.baud() == 0 {
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
        let known = match (&self.lines, &self.frames) {
            (Some(lines), None) => lines.problems(&mut push),
            (None, Some(frames)) => {
                frames.problems(&mut push);
                None
            }
            _ => {
                push(
                    "lines",
                    "give either `lines` (text) or `frames` (binary)".into(),
                );
                None
            }
        };
        if let Some(poll) = &self.poll
            && poll.every.is_zero()
        {
            push("poll.every", "must be longer than zero".into());
        }
        if let Some(Err(e)) = self.poll.as_ref().map(PollConfig::request) {
            push("poll", e);
        }
        if self.values.is_empty() {
            push(
                "values",
                "name at least one value to take from the lines".into(),
            );
        }
        fields::problems(
            &self.values,
            self.frames.is_some(),
            self.frames.as_ref().and_then(|f| f.length),
            &mut push,
        );
        for (i, value) in self.values.iter().enumerate() {
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
        let config = self.resolved().unwrap_or_else(|_| self.clone());
        config
            .values
            .iter()
            .map(|v| v.info(v.unit.clone()))
            .collect()
    }

    pub(crate) fn build(&self) -> UartAdapter {
        // Validation resolved the profile already; it cannot fail differently now.
        let config = self.resolved().unwrap_or_else(|_| self.clone());
        let names = fields::names(&config.values);
        UartAdapter { config, names }
    }

    fn open(&self) -> Result<tokio_serial::SerialStream, AdapterError> {
        crate::serial::open(
            &self.port,
            self.baud(),
            self.data_bits,
            self.parity,
            self.stop_bits,
            self.flow_control,
        )
        .map_err(AdapterError::Transport)
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
        let values = fields::take(&self.config.values, &self.names, |f| fields.remove(f));
        (!values.is_empty()).then(|| Reading::now(device.clone(), values))
    }
}

/// Bytes in, fields out: text lines through a parser, or binary frames through their layout.
enum Decoder {
    Lines(LineFramer, LineParser),
    Frames(FrameFramer),
}

impl Decoder {
    fn new(config: &UartConfig) -> Result<Self, AdapterError> {
        match (&config.lines, &config.frames) {
            (Some(lines), _) => {
                let delimiter = lines.delimiter.bytes().next().unwrap_or(b'\n');
                Ok(Decoder::Lines(
                    LineFramer::new(delimiter, lines.max_length),
                    lines.parser()?,
                ))
            }
            (None, Some(frames)) => Ok(Decoder::Frames(FrameFramer::new(frames.clone()))),
            (None, None) => Err(AdapterError::Config("neither `lines` nor `frames`".into())),
        }
    }

    /// Decodes `bytes`, pushing the fields of each line or frame to `out` and counting every
    /// drop in `errors`.
    fn feed(
        &mut self,
        bytes: &[u8],
        values: &[ValueSpec],
        out: &mut Vec<HashMap<String, Value>>,
        errors: &mut Vec<&'static str>,
    ) {
        match self {
            Decoder::Lines(framer, parser) => {
                let mut dropped = Vec::new();
                framer.push(
                    bytes,
                    |line| match parser.fields(line) {
                        Ok(fields) => out.push(fields),
                        Err(e) => {
                            tracing::debug!(error = %e, line = %line, "Line not parsed");
                            errors.push(e.counter());
                        }
                    },
                    |drop| dropped.push(drop.as_str()),
                );
                errors.extend(dropped);
            }
            Decoder::Frames(framer) => {
                let mut dropped = Vec::new();
                framer.push(
                    bytes,
                    |frame| {
                        out.push(
                            fields::layout(values, frame)
                                .into_iter()
                                .map(|(field, value)| (field.to_string(), value))
                                .collect(),
                        )
                    },
                    |drop| dropped.push(drop.as_str()),
                );
                errors.extend(dropped);
            }
        }
    }
}

#[async_trait]
impl Adapter for UartAdapter {
    async fn run(&mut self, ctx: &AdapterContext) -> Result<(), AdapterError> {
        let mut decoder = Decoder::new(&self.config)?;
        let port = self.config.open()?;
        ctx.set_status(DeviceStatus::Online);
        let (mut reader, mut writer) = tokio::io::split(port);
        let mut poll = self
            .config
            .poll
            .as_ref()
            .map(|p| tokio::time::interval(p.every));
        let request = match &self.config.poll {
            Some(p) => p.request().map_err(AdapterError::Config)?,
            None => Vec::new(),
        };
        let mut buf = vec![0u8; 4096];
        let (mut decoded, mut errors) = (Vec::new(), Vec::new());
        loop {
            tokio::select! {
                () = ctx.cancelled().cancelled() => return Ok(()),
                read = reader.read(&mut buf) => match read {
                    Ok(0) => return Err(AdapterError::Transport("the port closed (unplugged?)".into())),
                    Ok(n) => decoder.feed(&buf[..n], &self.config.values, &mut decoded, &mut errors),
                    Err(e) => return Err(AdapterError::Transport(format!("read failed: {e}"))),
                },
                _ = async { poll.as_mut()?.tick().await; Some(()) }, if poll.is_some() => {
                    writer.write_all(&request).await.map_err(|e| AdapterError::Transport(format!("write failed: {e}")))?;
                    ctx.counters().count_request();
                }
            }
            for kind in errors.drain(..) {
                ctx.counters().count_error(kind);
            }
            for mut fields in decoded.drain(..) {
                match self.reading(ctx.device(), &mut fields) {
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
            profile: None,
            baud: None,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
            lines: Some(lines),
            frames: None,
            poll: None,
            values: fields.iter().map(|f| ValueSpec::named(f)).collect(),
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
        if let Some(lines) = &mut bad.lines {
            lines.delimiter = "\r\n".into();
        }
        assert_eq!(
            paths(&bad),
            ["data_bits", "lines.delimiter", "values[1].name"]
        );
        assert!(paths(&config(lines(LineFormat::KeyValue), &["t"])).is_empty());
    }

    #[test]
    fn poll_requests_as_text_or_hex() {
        let poll = |send: Option<&str>, send_hex: Option<&str>| PollConfig {
            every: Duration::from_secs(1),
            send: send.map(String::from),
            send_hex: send_hex.map(String::from),
        };
        assert_eq!(poll(Some("READ\r\n"), None).request().unwrap(), b"READ\r\n");
        assert_eq!(
            poll(None, Some("42 4D e2 0000 01 71")).request().unwrap(),
            [0x42, 0x4D, 0xE2, 0, 0, 1, 0x71]
        );
        assert!(poll(None, Some("42 4")).request().is_err());
        assert!(poll(None, Some("zz")).request().is_err());
        assert!(poll(Some("a"), Some("42")).request().is_err());
        assert!(poll(None, None).request().is_err());
    }

    #[test]
    fn profiles_fill_in_what_the_device_leaves_out() {
        let mut pms = config(lines(LineFormat::Json), &[]);
        pms.lines = None;
        pms.profile = Some("pms5003".into());
        assert!(pms.problems().is_empty(), "{:?}", pms.problems());
        let resolved = pms.resolved().unwrap();
        assert_eq!(resolved.values.len(), 12);
        assert_eq!(resolved.baud(), 9600);
        assert!(resolved.frames.is_some());
        let mut gps = pms.clone();
        gps.profile = Some("gps".into());
        gps.values.clear();
        assert!(gps.problems().is_empty(), "{:?}", gps.problems());
        pms.profile = Some("pms9999".into());
        assert_eq!(paths(&pms), ["profile"]);
    }
}
