//! `cairn tail DEVICE`: runs one device of the config by itself and prints each reading as it
//! is decoded, with the device's status and error counters, so an installer can check wiring.
//!
//! Nothing reaches the outbox or the broker: readings go to the terminal only, and the
//! adapter's state (LoRaWAN frame counters) is kept in memory, so the gateway's own files are
//! never written. The port must be free: the running gateway holds its serial ports and the
//! LoRa UDP port. Readings and status go to stdout; the adapter's log lines (why a port did
//! not open) to stderr.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use cairn_adapters::{DeviceStatus, MemoryState, Reading, Shared};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::live::LiveBus;
use crate::supervisor;

/// How `tail` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `12:00:01.250 temperature=21.5 humidity=40`, and status lines for people.
    Text,
    /// One JSON object per line: `{"reading":{...}}` or `{"status":...,"errors":{...}}`.
    Json,
}

/// Why `tail` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The config has no device of that name.
    #[error("no device `{name}` in the config; there are: {known}")]
    NoSuchDevice {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
}

/// Runs `device` from `config` until `cancel` fires or `count` readings were printed, writing
/// to `out`. Returns the readings printed.
pub async fn run(
    config: &Config,
    device: &str,
    count: Option<u64>,
    format: Format,
    cancel: CancellationToken,
    out: &mut (impl Write + Send),
) -> Result<u64, TailError> {
    let Some(device) = config.devices().find(|d| d.name == device) else {
        let known: Vec<&str> = config.devices().map(|d| d.name.as_str()).collect();
        return Err(TailError::NoSuchDevice {
            name: device.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    };
    let (sink, mut readings) = mpsc::channel::<Reading>(64);
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let shared = Shared::new(Arc::new(MemoryState::default()));
    let (handle, _settings) = supervisor::spawn(
        device,
        &shared,
        sink,
        LiveBus::new(16),
        stop.clone(),
        &mut tasks,
    );
    let mut status = handle.status.clone();
    let mut errors = BTreeMap::new();
    let mut printed = 0;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let say = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    say(
        out,
        status_line(format, &status.borrow_and_update(), &errors),
    );
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            reading = readings.recv() => match reading {
                Some(reading) => {
                    say(out, reading_line(format, &reading));
                    printed += 1;
                    if count.is_some_and(|n| printed >= n) {
                        break;
                    }
                }
                None => break,
            },
            Ok(()) = status.changed() => {
                // The counts shown here are not shown again by the next check.
                errors = handle.counters.errors();
                say(out, status_line(format, &status.borrow_and_update(), &errors));
            }
            _ = check.tick() => {
                let now = handle.counters.errors();
                if now != errors {
                    errors = now;
                    say(out, status_line(format, &status.borrow(), &errors));
                }
            }
        }
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(printed)
}

fn status_name(status: &DeviceStatus) -> String {
    match status {
        DeviceStatus::Offline => "offline".into(),
        DeviceStatus::Online => "online".into(),
        DeviceStatus::Error(e) => format!("error: {e}"),
        DeviceStatus::Finished => "finished".into(),
    }
}

fn status_line(
    format: Format,
    status: &DeviceStatus,
    errors: &BTreeMap<&'static str, u64>,
) -> String {
    match format {
        Format::Json => {
            serde_json::json!({ "status": status_name(status), "errors": errors }).to_string()
        }
        Format::Text => {
            let counted: Vec<String> = errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!(
                "-- {}{}",
                status_name(status),
                if counted.is_empty() {
                    String::new()
                } else {
                    format!(" · errors: {}", counted.join(", "))
                }
            )
        }
    }
}

fn reading_line(format: Format, reading: &Reading) -> String {
    let ts = humantime::format_rfc3339_millis(reading.ts).to_string();
    match format {
        Format::Json => {
            let values: serde_json::Map<String, serde_json::Value> = reading
                .values
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::to_value(v).unwrap_or_default()))
                .collect();
            serde_json::json!({ "reading": { "ts": ts, "values": values } }).to_string()
        }
        Format::Text => {
            let values: Vec<String> = reading
                .values
                .iter()
                .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).unwrap_or_default()))
                .collect();
            format!("{ts} {}", values.join(" "))
        }
    }
}
