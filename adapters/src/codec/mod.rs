//! Payload codecs: how the bytes a radio delivers become named values. `raw` keeps the bytes
//! as hex, `cayenne_lpp` decodes Cayenne Low Power Payload, `layout` reads fields at declared
//! byte positions exactly as the uart adapter reads binary frames.

pub mod cayenne;

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Deserialize;

use crate::config::ValueInfo;
use crate::fields::{self, ValueSpec};
use crate::reading::Value;

/// The field a `raw` payload is in.
const RAW_FIELD: &str = "payload";

/// How a payload is decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// The bytes as a hex string in the field `payload` (default).
    #[default]
    Raw,
    /// Cayenne Low Power Payload; fields are named `<type>_<channel>`.
    CayenneLpp,
    /// Fields at declared byte positions (`values` with `at` and `type`).
    Layout,
}

/// Why a payload was not decoded; each is counted under [`CodecError::counter`].
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Not valid Cayenne LPP.
    #[error(transparent)]
    Lpp(#[from] cayenne::LppError),
    /// Shorter than the layout.
    #[error("the payload has {got} bytes; the layout needs {need}")]
    Short {
        /// Bytes received.
        got: usize,
        /// Bytes the layout reads.
        need: usize,
    },
}

impl CodecError {
    /// The name of the device error counter.
    pub fn counter(&self) -> &'static str {
        match self {
            CodecError::Lpp(_) => "lpp_invalid",
            CodecError::Short { .. } => "payload_short",
        }
    }
}

/// `payload:` — a codec and the values to take from what it decodes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// `raw` (default), `cayenne_lpp` or `layout`.
    #[serde(default)]
    pub codec: Codec,
    /// The values to publish, renamed and scaled; none means every decoded field as it is
    /// (`layout` needs them: they are the layout).
    #[serde(default)]
    pub values: Vec<ValueSpec>,
}

impl PayloadConfig {
    /// Problems of these settings, under `path`.
    pub fn problems(&self, path: &str, push: &mut impl FnMut(&str, String)) {
        let layout = self.codec == Codec::Layout;
        if layout && self.values.is_empty() {
            push(
                &format!("{path}.values"),
                "the `layout` codec needs values with `at` and `type`".into(),
            );
        }
        fields::problems(&self.values, layout, None, &mut |field, message| {
            push(&format!("{path}.{field}"), message)
        });
    }

    /// The values announced in the metadata: those configured, with the LPP unit where the
    /// config gives none.
    pub fn values(&self) -> impl Iterator<Item = ValueInfo> + '_ {
        self.values.iter().map(|v| {
            v.info(v.unit.clone().or_else(|| match self.codec {
                Codec::CayenneLpp if v.scale.is_none() => cayenne::unit(v.field()).map(Into::into),
                _ => None,
            }))
        })
    }

    /// A decoder for these settings.
    pub fn decoder(&self) -> PayloadDecoder {
        PayloadDecoder {
            names: fields::names(&self.values),
            config: self.clone(),
        }
    }
}

/// Decodes payloads with one [`PayloadConfig`].
#[derive(Debug, Clone)]
pub struct PayloadDecoder {
    config: PayloadConfig,
    names: Vec<Arc<str>>,
}

impl PayloadDecoder {
    /// The values in `bytes`.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<(Arc<str>, Value)>, CodecError> {
        let specs = &self.config.values;
        let decoded: Vec<(String, Value)> = match self.config.codec {
            Codec::Raw => vec![(RAW_FIELD.into(), Value::Text(hex(bytes)))],
            Codec::CayenneLpp => cayenne::decode(bytes)?,
            Codec::Layout => {
                let need = fields::layout_len(specs);
                if bytes.len() < need {
                    return Err(CodecError::Short {
                        got: bytes.len(),
                        need,
                    });
                }
                fields::layout(specs, bytes)
                    .into_iter()
                    .map(|(field, value)| (field.to_string(), value))
                    .collect()
            }
        };
        if specs.is_empty() {
            return Ok(decoded
                .into_iter()
                .map(|(name, value)| (Arc::from(name), value))
                .collect());
        }
        Ok(fields::take(specs, &self.names, |field| {
            decoded
                .iter()
                .find(|(name, _)| name == field)
                .map(|(_, value)| value.clone())
        }))
    }
}

impl PayloadDecoder {
    /// The payload that decodes to `values` (by published name), for a downlink: only a
    /// `layout` can be written this way, each value with its scale and offset undone.
    pub fn encode(
        &self,
        values: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<u8>, String> {
        if self.config.codec != Codec::Layout {
            return Err("`values` needs a port whose codec is `layout`; give `hex`".into());
        }
        let specs = &self.config.values;
        if let Some(unknown) = values.keys().find(|k| !specs.iter().any(|s| &s.name == *k)) {
            return Err(format!("the layout has no value `{unknown}`"));
        }
        let mut bytes = vec![0u8; fields::layout_len(specs)];
        for spec in specs {
            let (Some(at), Some(kind)) = (spec.at, spec.kind) else {
                continue;
            };
            let number = values
                .get(&spec.name)
                .ok_or_else(|| format!("`{}` is missing: a layout is written whole", spec.name))?
                .as_f64()
                .ok_or_else(|| format!("`{}` must be a number", spec.name))?;
            let raw = (number - spec.offset.unwrap_or(0.0)) / spec.scale.unwrap_or(1.0);
            let field = kind
                .encode(raw, spec.endian)
                .map_err(|e| format!("`{}`: {e}", spec.name))?;
            bytes[at..at + field.len()].copy_from_slice(&field);
        }
        Ok(bytes)
    }
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Hex digits to bytes; spaces, colons and dashes between them are ignored.
pub fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b" \t:-".contains(b)).collect();
    if digits.len() % 2 != 0 {
        return Err("needs pairs of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("`{}` is not hex", String::from_utf8_lossy(pair)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uart::FieldType;

    #[test]
    fn raw_lpp_and_layout() {
        let raw = PayloadConfig::default().decoder();
        assert_eq!(
            raw.decode(b"test").unwrap(),
            [(Arc::from("payload"), Value::Text("74657374".into()))]
        );
        let mut soil = ValueSpec::named("soil");
        soil.field = Some("temperature_3".into());
        let lpp = PayloadConfig {
            codec: Codec::CayenneLpp,
            values: vec![soil],
        };
        assert_eq!(
            lpp.decoder()
                .decode(&[3, 0x67, 0x01, 0x10, 5, 0x67, 0, 0xFF])
                .unwrap(),
            [(Arc::from("soil"), Value::Float(27.2))]
        );
        assert_eq!(lpp.values().next().unwrap().unit.as_deref(), Some("°C"));
        let mut level = ValueSpec::named("level");
        (level.at, level.kind, level.scale) = (Some(1), Some(FieldType::U16), Some(0.1));
        let layout = PayloadConfig {
            codec: Codec::Layout,
            values: vec![level],
        }
        .decoder();
        assert_eq!(
            layout.decode(&[9, 0x01, 0x00]).unwrap(),
            [(Arc::from("level"), Value::Float(25.6))]
        );
        let short = layout.decode(&[9, 1]).unwrap_err();
        assert_eq!(short.counter(), "payload_short");
    }

    #[test]
    fn a_layout_encodes_what_it_decodes() {
        let mut interval = ValueSpec::named("interval");
        (interval.at, interval.kind) = (Some(0), Some(FieldType::U16));
        let mut setpoint = ValueSpec::named("setpoint");
        (setpoint.at, setpoint.kind, setpoint.endian) =
            (Some(2), Some(FieldType::I16), crate::uart::Endian::Little);
        (setpoint.scale, setpoint.offset) = (Some(0.1), Some(-40.0));
        let layout = PayloadConfig {
            codec: Codec::Layout,
            values: vec![interval, setpoint],
        }
        .decoder();
        let fields = |json: serde_json::Value| json.as_object().unwrap().clone();
        let bytes = layout
            .encode(&fields(
                serde_json::json!({"interval": 600, "setpoint": 21.5}),
            ))
            .unwrap();
        assert_eq!(bytes, [0x02, 0x58, 0x67, 0x02]);
        assert_eq!(
            layout.decode(&bytes).unwrap(),
            [
                (Arc::from("interval"), Value::Int(600)),
                (Arc::from("setpoint"), Value::Float(21.5))
            ]
        );
        let refused = |json| layout.encode(&fields(json)).unwrap_err();
        assert!(
            refused(serde_json::json!({"interval": 70000, "setpoint": 0})).contains("out of range")
        );
        assert!(refused(serde_json::json!({"interval": 1})).contains("`setpoint` is missing"));
        assert!(
            refused(serde_json::json!({"interval": 1, "setpoint": 0, "x": 1}))
                .contains("no value `x`")
        );
        assert!(
            PayloadConfig::default()
                .decoder()
                .encode(&fields(serde_json::json!({})))
                .is_err()
        );
    }

    #[test]
    fn layout_without_values_is_refused() {
        let mut problems = Vec::new();
        PayloadConfig {
            codec: Codec::Layout,
            values: vec![ValueSpec::named("x")],
        }
        .problems("payload", &mut |p, _| problems.push(p.to_string()));
        PayloadConfig {
            codec: Codec::Layout,
            values: vec![],
        }
        .problems("ports.2", &mut |p, _| problems.push(p.to_string()));
        assert_eq!(problems, ["payload.values[0]", "ports.2.values"]);
    }
}
