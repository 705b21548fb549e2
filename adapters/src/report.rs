//! How a value is reported upstream: its priority, and report-by-exception (a deadband, a
//! shortest and a longest interval between reports). Adapters only carry these settings from
//! the config; the gateway's pipeline applies them before the outbox.

use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// How urgently a value travels.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// With the rest: live first, then the backlog.
    #[default]
    Normal,
    /// Before everything else, and the last thing retention drops.
    Alarm,
}

/// `report:` — report by exception: a reading's value goes upstream only when it moved, or
/// when it has not been reported for `max_interval`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// How far a number must move from the last value reported: `0.5` (in the value's unit)
    /// or `2%` (of the last value reported). Without it, any change is reported. Booleans and
    /// text are always reported on change.
    pub deadband: Option<Deadband>,
    /// Report at most this often, changes included.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub min_interval: Option<Duration>,
    /// A heartbeat: report at least this often, changed or not, so that a stuck sensor still
    /// shows up.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub max_interval: Option<Duration>,
}

/// A deadband: absolute, or a percentage of the last value reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    /// In the value's own unit.
    Absolute(f64),
    /// Percent of the last value reported.
    Percent(f64),
}

/// As the YAML writes it: a number, or a string such as `2%`.
impl schemars::JsonSchema for Deadband {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Deadband".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A number in the value's unit, or a percentage of the last value reported such as \"2%\".",
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": "^\\s*[0-9.]+\\s*%?\\s*$"}
            ]
        })
    }
}

impl<'de> Deserialize<'de> for Deadband {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let invalid = |text: &str| {
            de::Error::custom(format!(
                "`{text}` is not a deadband: write a number (`0.5`) or a percentage (`2%`)"
            ))
        };
        let deadband = match Raw::deserialize(d)? {
            Raw::Number(n) => Deadband::Absolute(n),
            Raw::Text(text) => match text.trim().strip_suffix('%') {
                Some(percent) => {
                    Deadband::Percent(percent.trim().parse().map_err(|_| invalid(&text))?)
                }
                None => Deadband::Absolute(text.trim().parse().map_err(|_| invalid(&text))?),
            },
        };
        match deadband {
            Deadband::Absolute(n) | Deadband::Percent(n) if n.is_finite() && n >= 0.0 => {
                Ok(deadband)
            }
            _ => Err(de::Error::custom(
                "a deadband must be a finite number, at least 0",
            )),
        }
    }
}

impl ReportConfig {
    /// Problems the types do not rule out, at `path`.
    pub fn problems(&self, path: &str, push: &mut impl FnMut(String, String)) {
        if let (Some(min), Some(max)) = (self.min_interval, self.max_interval)
            && min > max
        {
            push(
                format!("{path}.min_interval"),
                "must not be longer than max_interval".into(),
            );
        }
        if self.max_interval.is_some_and(|d| d.is_zero()) {
            push(
                format!("{path}.max_interval"),
                "must be longer than zero".into(),
            );
        }
    }
}
