//! A reading's values as an outbox row holds them: a CBOR map (RFC 8949) of name to typed
//! value, so that the uplink can encode them for its link, whatever the encoding. Rows written
//! before schema 3 hold the `json` payload of the day; they start with `{` and still decode.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_adapters::Value;
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

/// A row that cannot be read back (damaged on disk).
#[derive(Debug, thiserror::Error)]
#[error("undecodable outbox row: {0}")]
pub struct RowError(String);

/// The row bytes of `values`.
pub fn encode(values: &[(Arc<str>, Value)]) -> Vec<u8> {
    // Writing to a Vec cannot fail.
    let mut e = Encoder::new(Vec::with_capacity(8 + values.len() * 16));
    let _ = e.map(values.len() as u64);
    for (name, value) in values {
        let _ = e.str(name);
        let _ = match value {
            Value::Float(f) => e.f64(*f),
            Value::Int(i) => e.i64(*i),
            Value::Bool(b) => e.bool(*b),
            Value::Text(t) => e.str(t),
        };
    }
    e.into_writer()
}

/// Value names read back, each allocated once per query rather than once per row.
#[derive(Debug, Default)]
pub struct Names(HashMap<Box<str>, Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(name) = self.0.get(name) {
            return name.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        self.0.insert(Box::from(name), shared.clone());
        shared
    }
}

/// The values of a row of either form.
pub fn decode(bytes: &[u8], names: &mut Names) -> Result<Vec<(Arc<str>, Value)>, RowError> {
    if bytes.first() == Some(&b'{') {
        return legacy(bytes, names);
    }
    let error = |e: minicbor::decode::Error| RowError(e.to_string());
    let mut d = Decoder::new(bytes);
    let n = d
        .map()
        .map_err(error)?
        .ok_or_else(|| RowError("indefinite map".into()))?;
    let mut values = Vec::new();
    for _ in 0..n {
        let name = names.get(d.str().map_err(error)?);
        let value = match d.datatype().map_err(error)? {
            Type::F16 | Type::F32 | Type::F64 => Value::Float(d.f64().map_err(error)?),
            Type::Bool => Value::Bool(d.bool().map_err(error)?),
            Type::String => Value::Text(d.str().map_err(error)?.to_string()),
            _ => Value::Int(d.i64().map_err(error)?),
        };
        values.push((name, value));
    }
    if d.position() != bytes.len() {
        return Err(RowError("bytes after the values".into()));
    }
    Ok(values)
}

/// A schema-2 row: `{"seq":..,"ts":..,"values":{..}}`, where `null` was a non-finite float.
fn legacy(bytes: &[u8], names: &mut Names) -> Result<Vec<(Arc<str>, Value)>, RowError> {
    #[derive(serde::Deserialize)]
    struct Payload {
        values: serde_json::Map<String, serde_json::Value>,
    }
    let payload: Payload = serde_json::from_slice(bytes).map_err(|e| RowError(e.to_string()))?;
    Ok(payload
        .values
        .into_iter()
        .filter_map(|(name, json)| {
            let value = match json {
                serde_json::Value::Null => Some(Value::Float(f64::NAN)),
                other => Value::from_json(other),
            };
            Some((names.get(&name), value?))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_old_rows_decode() {
        let values = vec![
            (Arc::from("t"), Value::Float(22.9)),
            (Arc::from("n"), Value::Int(-40_000_000_000)),
            (Arc::from("on"), Value::Bool(false)),
            (Arc::from("mode"), Value::Text("auto".into())),
        ];
        let mut names = Names::default();
        let row = encode(&values);
        assert!(row.len() < 40, "{} bytes", row.len());
        assert_eq!(decode(&row, &mut names).unwrap(), values);
        let old = br#"{"seq":3,"ts":"2026-11-25T10:00:00.000Z","values":{"t":22.9,"n":-40000000000,"on":false,"mode":"auto","bad":null}}"#;
        let decoded = decode(old, &mut names).unwrap();
        assert_eq!(decoded.len(), 5);
        for (name, value) in &values {
            assert!(decoded.contains(&(name.clone(), value.clone())), "{name}");
        }
        assert!(decode(&row[..row.len() - 1], &mut names).is_err());
        assert!(decode(b"{garbage", &mut names).is_err());
        assert!(decode(&[], &mut names).is_err());
    }
}
