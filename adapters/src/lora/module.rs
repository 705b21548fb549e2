//! Serial LoRa modules in point-to-point mode, driven by their text commands over the same port
//! handling as the uart adapter: a module that stops answering or a port that vanishes ends the
//! run, and the supervisor reopens it with backoff.
//!
//! - RN2483/RN2903: `radio rxstop`, `mac pause`, `radio set wdt 0`, optional `radio set freq|sf|bw`, then
//!   `radio rx 0` before each packet; a packet arrives as `radio_rx  <hex>`, and `radio get snr`
//!   reads its SNR.
//! - RAK3172 (RUI3): `AT+PRECV=0` (stop an earlier receive), `AT+NWM=0`, optional
//!   `AT+P2P=...`, then `AT+PRECV=65534` (receive until told otherwise); a packet arrives as
//!   `+EVT:RXP2P:<rssi>:<snr>:<hex>`.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_serial::SerialStream;

use super::radio::Radio;
use super::{ModuleConfig, ModuleKind};
use crate::adapter::{Adapter, AdapterContext, AdapterError, DeviceStatus};
use crate::codec::{PayloadDecoder, unhex};
use crate::reading::Reading;
use crate::serial::{self, FlowControl, Parity};
use crate::uart::LineFramer;

/// How long a module may take to answer a command (`AT+NWM` may reboot the module first).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// The longest line a module writes: a 255-byte packet in hex plus its prefix.
const MAX_LINE: usize = 600;

/// Whether a line is the answer a command expects.
type Answer = fn(&str) -> bool;

/// A running serial LoRa module.
pub(super) struct Module {
    config: ModuleConfig,
    payload: PayloadDecoder,
    radio: bool,
}

impl Module {
    pub(super) fn new(config: ModuleConfig, payload: PayloadDecoder, radio: bool) -> Self {
        Self {
            config,
            payload,
            radio,
        }
    }

    fn baud(&self) -> u32 {
        self.config.baud.unwrap_or(match self.config.kind {
            ModuleKind::Rn2483 | ModuleKind::Rn2903 => 57_600,
            ModuleKind::Rak3172 => 115_200,
        })
    }

    /// The commands that put the module in receive mode, each with whether its answer is
    /// acceptable.
    fn setup(&self) -> Vec<(String, Answer)> {
        let c = &self.config;
        let radio = c.frequency.zip(c.spreading_factor).zip(c.bandwidth);
        match c.kind {
            ModuleKind::Rn2483 | ModuleKind::Rn2903 => {
                // `radio rxstop` ends a receive left running by an earlier run, during which
                // the module answers `busy`; firmware before 1.0.5 does not know it, which is
                // fine. `mac pause` answers with the milliseconds the LoRaWAN stack will sleep.
                // `radio set wdt 0`: without it a quiet channel ends each `radio rx 0` with
                // `radio_err` after 15 s.
                let mut commands: Vec<(String, Answer)> = vec![
                    ("radio rxstop".into(), |_| true),
                    ("mac pause".into(), |a| a.parse::<u64>().is_ok()),
                    ("radio set wdt 0".into(), |a| a == "ok"),
                ];
                if let Some(((freq, sf), bw)) = radio {
                    commands.push((format!("radio set freq {freq}"), |a| a == "ok"));
                    commands.push((format!("radio set sf sf{sf}"), |a| a == "ok"));
                    commands.push((format!("radio set bw {bw}"), |a| a == "ok"));
                }
                commands
            }
            ModuleKind::Rak3172 => {
                // A module left listening by an earlier run refuses any setting with
                // AT_BUSY_ERROR until told to stop; in LoRaWAN mode it refuses the stop itself,
                // which is fine.
                let mut commands: Vec<(String, Answer)> = vec![
                    ("AT+PRECV=0".into(), |_| true),
                    ("AT+NWM=0".into(), |a| a == "OK"),
                ];
                if let Some(((freq, sf), bw)) = radio {
                    // Coding rate 4/5, preamble 8, 14 dBm: the RUI3 defaults.
                    commands.push((format!("AT+P2P={freq}:{sf}:{bw}:0:8:14"), |a| a == "OK"));
                }
                commands.push(("AT+PRECV=65534".into(), |a| a == "OK"));
                commands
            }
        }
    }

    /// The radio settings this module was given, for the readings.
    fn radio(&self) -> Radio {
        Radio {
            frequency: self.config.frequency.map(|hz| f64::from(hz) / 1e6),
            data_rate: self
                .config
                .spreading_factor
                .zip(self.config.bandwidth)
                .map(|(sf, bw)| format!("SF{sf}BW{bw}")),
            ..Radio::default()
        }
    }

    async fn emit(
        &self,
        ctx: &AdapterContext,
        hex: &str,
        mut radio: Radio,
    ) -> Result<(), AdapterError> {
        let Ok(bytes) = unhex(hex) else {
            ctx.counters().count_error("bad_hex");
            return Ok(());
        };
        let mut values = match self.payload.decode(&bytes) {
            Ok(values) => values,
            Err(e) => {
                ctx.counters().count_error(e.counter());
                return Ok(());
            }
        };
        if self.radio {
            let configured = self.radio();
            radio.frequency = configured.frequency;
            radio.data_rate = configured.data_rate;
            radio.push_values(&mut values);
        }
        if values.is_empty() {
            ctx.counters().count_error("no_values");
            return Ok(());
        }
        ctx.emit(Reading::now(ctx.device().clone(), values)).await
    }
}

/// The module's lines, and commands written to it.
struct Port {
    reader: ReadHalf<SerialStream>,
    writer: WriteHalf<SerialStream>,
    framer: LineFramer,
    lines: VecDeque<String>,
    buf: Vec<u8>,
}

impl Port {
    /// The next line; cancel-safe (partial lines stay in the framer).
    async fn line(&mut self) -> Result<String, AdapterError> {
        loop {
            if let Some(line) = self.lines.pop_front() {
                return Ok(line);
            }
            let n = self
                .reader
                .read(&mut self.buf)
                .await
                .map_err(|e| AdapterError::Transport(format!("read failed: {e}")))?;
            if n == 0 {
                return Err(AdapterError::Transport(
                    "the port closed (unplugged?)".into(),
                ));
            }
            let lines = &mut self.lines;
            self.framer.push(
                &self.buf[..n],
                |line| lines.push_back(line.trim().to_string()),
                |_| {},
            );
        }
    }

    async fn send(&mut self, command: &str) -> Result<(), AdapterError> {
        self.writer
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .map_err(|e| AdapterError::Transport(format!("write failed: {e}")))
    }

    /// Sends `command` and waits for an answer that `ok` accepts, skipping other lines (a
    /// boot banner, an event); an error answer or silence ends the run.
    async fn command(
        &mut self,
        command: &str,
        ok: fn(&str) -> bool,
    ) -> Result<String, AdapterError> {
        self.send(command).await?;
        let answer = async {
            loop {
                let line = self.line().await?;
                if ok(&line) {
                    return Ok(line);
                }
                if line.starts_with("AT_")
                    || line.starts_with("invalid")
                    || line == "busy"
                    || line == "err"
                {
                    return Err(AdapterError::Transport(format!(
                        "`{command}` was refused: {line}"
                    )));
                }
                tracing::debug!(command, line = %line, "Line skipped while waiting for an answer");
            }
        };
        tokio::time::timeout(ANSWER_WITHIN, answer)
            .await
            .map_err(|_| {
                AdapterError::Transport(format!(
                    "no answer to `{command}` within {ANSWER_WITHIN:?}"
                ))
            })?
    }
}

#[async_trait]
impl Adapter for Module {
    async fn run(&mut self, ctx: &AdapterContext) -> Result<(), AdapterError> {
        let stream = serial::open(
            &self.config.port,
            self.baud(),
            8,
            Parity::None,
            1,
            FlowControl::None,
        )
        .map_err(AdapterError::Transport)?;
        let (reader, writer) = tokio::io::split(stream);
        let mut port = Port {
            reader,
            writer,
            framer: LineFramer::new(b'\n', MAX_LINE),
            lines: VecDeque::new(),
            buf: vec![0; 1024],
        };
        for (command, ok) in self.setup() {
            tokio::select! {
                () = ctx.cancelled().cancelled() => return Ok(()),
                answer = port.command(&command, ok) => { answer?; ctx.counters().count_request(); }
            }
        }
        ctx.set_status(DeviceStatus::Online);
        let rn = matches!(self.config.kind, ModuleKind::Rn2483 | ModuleKind::Rn2903);
        loop {
            if rn {
                port.command("radio rx 0", |a| a == "ok").await?;
                ctx.counters().count_request();
            }
            let line = tokio::select! {
                () = ctx.cancelled().cancelled() => return Ok(()),
                line = port.line() => line?,
            };
            if let Some(hex) = line.strip_prefix("radio_rx") {
                let snr = port
                    .command("radio get snr", |a| a.parse::<i8>().is_ok())
                    .await?;
                let radio = Radio {
                    snr: snr.parse::<f64>().ok(),
                    ..Radio::default()
                };
                self.emit(ctx, hex.trim(), radio).await?;
            } else if let Some(event) = line.strip_prefix("+EVT:RXP2P:") {
                let mut parts = event.splitn(3, ':');
                let (rssi, snr, hex) = (parts.next(), parts.next(), parts.next());
                let radio = Radio {
                    rssi: rssi.and_then(|r| r.trim().parse().ok()),
                    snr: snr.and_then(|s| s.trim().parse().ok()),
                    ..Radio::default()
                };
                match hex {
                    Some(hex) => self.emit(ctx, hex.trim(), radio).await?,
                    None => ctx.counters().count_error("bad_event"),
                }
            } else if line == "radio_err" {
                // A reception error (bad CRC, or the receive window timed out): listen again.
                ctx.counters().count_error("radio_err");
            } else {
                tracing::debug!(device = %ctx.device(), line = %line, "Line from the module ignored");
            }
        }
    }
}
