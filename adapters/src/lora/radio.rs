//! What a radio tells about each frame (RSSI, SNR, frequency, data rate, gateway), as values
//! added to the frame's reading.

use std::sync::Arc;

use crate::reading::Value;

/// What a radio says about one frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Radio {
    pub(super) rssi: Option<f64>,
    pub(super) snr: Option<f64>,
    pub(super) frequency: Option<f64>,
    pub(super) data_rate: Option<String>,
    pub(super) gateway: Option<u64>,
}

/// The radio values and their units, in reading order.
pub(super) const RADIO_VALUES: [(&str, Option<&str>); 5] = [
    ("rssi", Some("dBm")),
    ("snr", Some("dB")),
    ("frequency", Some("MHz")),
    ("data_rate", None),
    ("gateway", None),
];

impl Radio {
    /// Whether a downlink through this reception's gateway is likelier to reach the device
    /// than through `other`'s: a higher SNR, then a higher RSSI. What is not known ranks
    /// lowest.
    pub(super) fn better_than(&self, other: &Radio) -> bool {
        let rank = |r: &Radio| {
            (
                r.snr.unwrap_or(f64::NEG_INFINITY),
                r.rssi.unwrap_or(f64::NEG_INFINITY),
            )
        };
        rank(self).partial_cmp(&rank(other)) == Some(std::cmp::Ordering::Greater)
    }

    /// The radio values, appended to a reading's values.
    pub(super) fn push_values(&self, values: &mut Vec<(Arc<str>, Value)>) {
        let [rssi, snr, frequency, data_rate, gateway] = RADIO_VALUES.map(|(name, _)| name);
        let mut push = |name: &str, value: Option<Value>| {
            if let Some(value) = value {
                values.push((Arc::from(name), value));
            }
        };
        push(rssi, self.rssi.map(Value::Float));
        push(snr, self.snr.map(Value::Float));
        push(frequency, self.frequency.map(Value::Float));
        push(data_rate, self.data_rate.clone().map(Value::Text));
        push(gateway, self.gateway.map(|g| Value::Text(eui(g))));
    }
}

/// An EUI as 16 uppercase hex digits.
pub(super) fn eui(eui: u64) -> String {
    format!("{eui:016X}")
}
