//! Opening serial ports, shared by every adapter that talks over a UART or RS-485.

use std::path::Path;

use serde::Deserialize;

/// Parity bit setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
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

/// Opens `path` with the given line settings (`data_bits` 5 to 8, `stop_bits` 1 or 2).
pub fn open(
    path: &Path,
    baud: u32,
    data_bits: u8,
    parity: Parity,
    stop_bits: u8,
    flow_control: FlowControl,
) -> Result<tokio_serial::SerialStream, String> {
    use tokio_serial::{DataBits, SerialPortBuilderExt, StopBits};
    let data_bits = match data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let name = path.to_string_lossy();
    tokio_serial::new(name.as_ref(), baud)
        .data_bits(data_bits)
        .parity(match parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        })
        .stop_bits(if stop_bits == 2 {
            StopBits::Two
        } else {
            StopBits::One
        })
        .flow_control(match flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        })
        .open_native_async()
        .map_err(|e| format!("cannot open {name}: {e}"))
}
