//! Turning one text line into named values: JSON objects, `key=value` pairs, CSV with named
//! columns, or a regex with named captures.

use std::collections::HashMap;

use regex::Regex;
use serde::Deserialize;

use crate::reading::Value;

/// How the lines of a text-line sensor are written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// `{"t": 21.5, "rh": 40}` (one object per line).
    Json,
    /// `t=21.5 rh=40` (pairs split by spaces, commas or semicolons).
    KeyValue,
    /// `21.5,40` with the column names in `columns`.
    Csv,
    /// A regex whose named groups are the fields.
    Regex,
}

/// A compiled line parser.
#[derive(Debug)]
pub enum LineParser {
    /// JSON objects.
    Json,
    /// `key=value` pairs.
    KeyValue,
    /// Named columns.
    Csv {
        /// Column names, in order.
        columns: Vec<String>,
        /// The separator.
        separator: char,
    },
    /// Named captures.
    Regex(Regex),
}

/// Why a line gave no values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line is not in the configured format.
    #[error("{0}")]
    Malformed(String),
}

impl LineParser {
    /// Fields of `line` by name; values are numbers, booleans or text as written.
    pub fn fields(&self, line: &str) -> Result<HashMap<String, Value>, ParseError> {
        match self {
            LineParser::Json => {
                let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
                    .map_err(|e| ParseError::Malformed(format!("not a JSON object: {e}")))?;
                Ok(object
                    .into_iter()
                    .filter_map(|(k, v)| json_value(v).map(|v| (k, v)))
                    .collect())
            }
            LineParser::KeyValue => {
                let fields: HashMap<String, Value> = line
                    .split([' ', ',', ';', '\t'])
                    .filter_map(|pair| pair.split_once(['=', ':']))
                    .map(|(k, v)| (k.trim().to_string(), text_value(v.trim())))
                    .collect();
                if fields.is_empty() {
                    return Err(ParseError::Malformed("no key=value pair".into()));
                }
                Ok(fields)
            }
            LineParser::Csv { columns, separator } => {
                let cells: Vec<&str> = line.split(*separator).map(str::trim).collect();
                if cells.len() != columns.len() {
                    return Err(ParseError::Malformed(format!(
                        "{} columns, expected {}",
                        cells.len(),
                        columns.len()
                    )));
                }
                Ok(columns
                    .iter()
                    .cloned()
                    .zip(cells.into_iter().map(text_value))
                    .collect())
            }
            LineParser::Regex(regex) => {
                let captures = regex
                    .captures(line)
                    .ok_or_else(|| ParseError::Malformed("no match".into()))?;
                Ok(regex
                    .capture_names()
                    .flatten()
                    .filter_map(|name| {
                        Some((name.to_string(), text_value(captures.name(name)?.as_str())))
                    })
                    .collect())
            }
        }
    }
}

fn json_value(v: serde_json::Value) -> Option<Value> {
    match v {
        serde_json::Value::Bool(b) => Some(Value::Bool(b)),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_f64().map(Value::Float)),
        serde_json::Value::String(s) => Some(Value::Text(s)),
        _ => None,
    }
}

/// A number if it reads as one, a boolean for true/false, text otherwise.
fn text_value(s: &str) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        Value::Int(i)
    } else if let Ok(f) = s.parse::<f64>() {
        Value::Float(f)
    } else {
        match s {
            "true" | "TRUE" | "on" | "ON" => Value::Bool(true),
            "false" | "FALSE" | "off" | "OFF" => Value::Bool(false),
            _ => Value::Text(s.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_yields_typed_fields() {
        let json = LineParser::Json
            .fields(r#"{"t": 21.5, "n": 3, "ok": true, "s": "x", "nested": {}}"#)
            .unwrap();
        assert_eq!(json["t"], Value::Float(21.5));
        assert_eq!(json["n"], Value::Int(3));
        assert_eq!(json["ok"], Value::Bool(true));
        assert_eq!(json.len(), 4, "nested objects are skipped");

        let kv = LineParser::KeyValue
            .fields("T=21.5 RH:40; pump=on")
            .unwrap();
        assert_eq!(kv["T"], Value::Float(21.5));
        assert_eq!(kv["RH"], Value::Int(40));
        assert_eq!(kv["pump"], Value::Bool(true));

        let csv = LineParser::Csv {
            columns: vec!["a".into(), "b".into()],
            separator: ',',
        };
        assert_eq!(csv.fields("1.5, -2").unwrap()["b"], Value::Int(-2));
        assert!(csv.fields("1,2,3").is_err());

        let re = LineParser::Regex(Regex::new(r"^W(?P<wind>[\d.]+) D(?P<dir>\d+)$").unwrap());
        let f = re.fields("W3.5 D270").unwrap();
        assert_eq!(f["wind"], Value::Float(3.5));
        assert_eq!(f["dir"], Value::Int(270));
        assert!(re.fields("garbage").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for line in ["{", "[1,2]", "\u{0}\u{1}", "=", ""] {
            let _ = LineParser::Json.fields(line);
            let _ = LineParser::KeyValue.fields(line);
        }
        assert!(LineParser::Json.fields("[1,2]").is_err());
        assert!(LineParser::KeyValue.fields("no pairs here").is_err());
    }
}
