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

impl Value {
    /// The value a JSON scalar stands for; `None` for null, arrays and objects.
    pub fn from_json(json: serde_json::Value) -> Option<Value> {
        match json {
            serde_json::Value::Bool(b) => Some(Value::Bool(b)),
            serde_json::Value::Number(n) => n
                .as_i64()
                .map(Value::Int)
                .or_else(|| n.as_f64().map(Value::Float)),
            serde_json::Value::String(s) => Some(Value::Text(s)),
            _ => None,
        }
    }
}

/// As a bare JSON scalar; non-finite floats have no JSON form and become `null`.
impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Float(f) if f.is_finite() => serializer.serialize_f64(*f),
            Value::Float(_) => serializer.serialize_unit(),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Text(t) => serializer.serialize_str(t),
        }
    }
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
    /// The values, in the order the adapter produced them. Link metadata (a LoRa frame's
    /// RSSI and SNR) travels as values too, so that it is stored, published and charted like
    /// any measurement.
    pub values: Vec<(Arc<str>, Value)>,
    /// How urgently it travels; the gateway's pipeline sets it from the config.
    pub priority: crate::report::Priority,
    /// Set by the gateway's pipeline while its wall clock is not known good (a Pi without a
    /// real-time clock, before NTP): the clock's correction then, in milliseconds, so that
    /// the steps seen later can be added to `ts`.
    pub provisional: Option<i64>,
}

impl Reading {
    /// A reading of `device` taken now.
    pub fn now(device: Arc<str>, values: Vec<(Arc<str>, Value)>) -> Self {
        Self {
            device,
            ts: SystemTime::now(),
            values,
            priority: Default::default(),
            provisional: None,
        }
    }
}
