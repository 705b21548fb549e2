//! The unit of data that flows from an adapter to the rest of the gateway.

use std::sync::Arc;
use std::time::SystemTime;

/// One measured value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A floating-point measurement (temperature, voltage...).
    Float(f64),
    /// An integer measurement or counter.
    Int(i64),
    /// A binary state (door open, pump running...).
    Bool(bool),
    /// Free text (a status word, a firmware version...).
    Text(String),
}

/// Metadata about the link a reading arrived on, where the link has any worth keeping.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkMeta {
    /// Received signal strength in dBm (radio links).
    pub rssi: Option<f64>,
    /// Signal-to-noise ratio in dB (radio links).
    pub snr: Option<f64>,
    /// Modbus unit id the values were read from.
    pub unit_id: Option<u8>,
}

/// One device, one instant, one or more named values.
///
/// Names are `Arc<str>` because an adapter emits the same few names millions of times: it builds
/// them once from its config and clones the pointer per reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The device name from the config.
    pub device: Arc<str>,
    /// When the gateway took the reading (its own clock).
    pub ts: SystemTime,
    /// The values, in the order the adapter produced them.
    pub values: Vec<(Arc<str>, Value)>,
    /// Link metadata, when the adapter knows any.
    pub link: Option<LinkMeta>,
}

impl Reading {
    /// A reading of `device` taken now.
    pub fn now(device: Arc<str>, values: Vec<(Arc<str>, Value)>) -> Self {
        Self {
            device,
            ts: SystemTime::now(),
            values,
            link: None,
        }
    }
}
