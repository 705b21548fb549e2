//! Named fields decoded from a text line, a binary frame or a radio payload, and the configured
//! values taken from them. Every adapter that decodes bytes shares this one mechanism: a uart
//! frame and a LoRa payload with the same layout decode the same way.

use std::sync::Arc;

use serde::Deserialize;

use crate::config::ValueInfo;
use crate::decimal;
use crate::reading::Value;
use crate::report::{Priority, ReportConfig};
use crate::uart::{Endian, FieldType};

/// One configured value: which field it comes from, how to scale it, its unit.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueSpec {
    /// Name in readings.
    pub name: String,
    /// Unit announced in the metadata.
    pub unit: Option<String>,
    /// The field it is taken from (JSON key, key, column, group name, or a Cayenne LPP field
    /// such as `temperature_1`); default: `name`.
    pub field: Option<String>,
    /// Binary layouts: the field's byte position.
    pub at: Option<usize>,
    /// Binary layouts: the field's type.
    #[serde(rename = "type")]
    pub kind: Option<FieldType>,
    /// Binary layouts: the field's byte order (default big).
    #[serde(default)]
    pub endian: Endian,
    /// Multiplies a numeric field (default 1).
    pub scale: Option<f64>,
    /// Added after scaling (default 0).
    pub offset: Option<f64>,
    /// Round to this many decimal places, what the sensor resolves (every encoding carries
    /// the rounded value). An integer field with `scale` or `offset` gets the places they give
    /// it by default.
    pub decimals: Option<u8>,
    /// Report by exception: a deadband, `min_interval`, `max_interval` (default: every
    /// reading).
    pub report: Option<ReportConfig>,
    /// `alarm`: goes before everything else, and retention drops it last (default `normal`).
    #[serde(default)]
    pub priority: Priority,
}

impl ValueSpec {
    /// A value taken as it is from the field of the same name.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            unit: None,
            field: None,
            at: None,
            kind: None,
            endian: Endian::Big,
            scale: None,
            offset: None,
            decimals: None,
            report: None,
            priority: Priority::Normal,
        }
    }

    /// The field this value is taken from.
    pub fn field(&self) -> &str {
        self.field.as_deref().unwrap_or(&self.name)
    }

    /// `value` scaled and offset, exactly in decimal; integers become floats only when scaled.
    fn scaled(&self, value: Value) -> Value {
        decimal::scale(value, self.scale, self.offset)
    }

    /// What the value announces: its name, unit and precision. A value of a binary integer
    /// field with `scale` or `offset` has the places they give it, unless `decimals` says
    /// otherwise (a text field may hold a float, whose places the scale does not bound).
    pub fn info(&self, unit: Option<String>) -> ValueInfo {
        let scaled = self.scale.is_some() || self.offset.is_some();
        let integer = self.kind.is_some_and(|k| k != FieldType::F32);
        ValueInfo {
            name: self.name.clone(),
            unit,
            writable: false,
            decimals: self.decimals.or_else(|| {
                (scaled && integer).then(|| decimal::scaled_places(self.scale, self.offset))
            }),
            report: self.report.clone(),
            priority: self.priority,
            // A binary field is a number; a text field may hold anything.
            kind: if self.kind.is_some() {
                crate::config::ValueKind::Number
            } else {
                crate::config::ValueKind::Unknown
            },
        }
    }
}

/// The names of `specs`, built once so that each reading only clones pointers.
pub fn names(specs: &[ValueSpec]) -> Vec<Arc<str>> {
    specs.iter().map(|s| Arc::from(s.name.as_str())).collect()
}

/// The configured values, in config order, each from its field (`field` looks a field up by
/// name) and scaled; fields missing from the input are skipped.
pub fn take(
    specs: &[ValueSpec],
    names: &[Arc<str>],
    mut field: impl FnMut(&str) -> Option<Value>,
) -> Vec<(Arc<str>, Value)> {
    specs
        .iter()
        .zip(names)
        .filter_map(|(spec, name)| Some((name.clone(), spec.scaled(field(spec.field())?))))
        .collect()
}

/// A binary layout's fields: each spec's `type` read at `at`. Fields past the end of `bytes`
/// are missing.
pub fn layout<'s>(specs: &'s [ValueSpec], bytes: &[u8]) -> Vec<(&'s str, Value)> {
    specs
        .iter()
        .filter_map(|s| Some((s.field(), s.kind?.decode(bytes, s.at?, s.endian)?)))
        .collect()
}

/// The size a binary layout needs: the end of its furthest field.
pub fn layout_len(specs: &[ValueSpec]) -> usize {
    specs
        .iter()
        .filter_map(|s| Some(s.at? + s.kind?.size()))
        .max()
        .unwrap_or(0)
}

/// Problems of a list of values: duplicate names, and for a binary layout (`layout`), values
/// without a position or type, or ending past `length` bytes.
pub fn problems(
    specs: &[ValueSpec],
    layout: bool,
    length: Option<usize>,
    push: &mut impl FnMut(&str, String),
) {
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.name == spec.name) {
            push(
                &format!("values[{i}].name"),
                format!("`{}` appears twice", spec.name),
            );
        }
        if let Some(report) = &spec.report {
            report.problems(&format!("values[{i}].report"), &mut |path, message| {
                push(&path, message)
            });
        }
        if !layout {
            continue;
        }
        let (Some(at), Some(kind)) = (spec.at, spec.kind) else {
            push(
                &format!("values[{i}]"),
                "a value of a binary layout needs `at` and `type`".into(),
            );
            continue;
        };
        if let Some(length) = length
            && at + kind.size() > length
        {
            push(
                &format!("values[{i}].at"),
                format!("ends past the {length}-byte frame"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_taken_by_field_and_scaled() {
        let mut level = ValueSpec::named("level");
        level.field = Some("raw".into());
        level.scale = Some(0.5);
        level.offset = Some(1.0);
        let specs = [ValueSpec::named("count"), level, ValueSpec::named("absent")];
        let names = names(&specs);
        let values = take(&specs, &names, |f| match f {
            "count" => Some(Value::Int(3)),
            "raw" => Some(Value::Int(10)),
            _ => None,
        });
        assert_eq!(
            values,
            [
                (Arc::from("count"), Value::Int(3)),
                (Arc::from("level"), Value::Float(6.0))
            ]
        );
    }

    #[test]
    fn layouts_read_fields_at_their_positions() {
        let mut a = ValueSpec::named("a");
        (a.at, a.kind) = (Some(0), Some(FieldType::I16));
        let mut b = ValueSpec::named("b");
        (b.at, b.kind, b.endian) = (Some(2), Some(FieldType::U16), Endian::Little);
        let specs = [a, b];
        assert_eq!(layout_len(&specs), 4);
        assert_eq!(
            layout(&specs, &[0xFF, 0xFE, 0x01, 0x02]),
            [("a", Value::Int(-2)), ("b", Value::Int(0x0201))]
        );
        assert_eq!(layout(&specs, &[0xFF, 0xFE, 0x01]).len(), 1, "b is cut off");
    }
}
