//! Turning one text line into named values: JSON objects, `key=value` pairs, CSV with named
//! columns, a regex with named captures, or an NMEA 0183 sentence.

use std::collections::HashMap;

use regex::Regex;
use serde::Deserialize;

use crate::reading::Value;

/// How the lines of a text-line sensor are written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
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
    /// NMEA 0183 GPS sentences (GGA, RMC, VTG, GSA), checksum verified.
    Nmea,
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
    /// NMEA 0183.
    Nmea,
}

/// Why a line gave no values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line is not in the configured format.
    #[error("{0}")]
    Malformed(String),
    /// The line's own checksum does not match it.
    #[error("checksum mismatch")]
    Checksum,
    /// A well-formed sentence of a kind this parser does not read.
    #[error("unsupported sentence {0}")]
    Unsupported(String),
}

impl ParseError {
    /// The name of the device error counter.
    pub fn counter(&self) -> &'static str {
        match self {
            ParseError::Malformed(_) => "parse",
            ParseError::Checksum => "checksum",
            ParseError::Unsupported(_) => "unknown_sentence",
        }
    }
}

/// The fields NMEA sentences yield, by sentence.
pub const NMEA_FIELDS: &[&str] = &[
    "sentence",
    "latitude",
    "longitude",
    "altitude",
    "geoid_separation",
    "fix_quality",
    "satellites",
    "hdop",
    "fix_valid",
    "speed_knots",
    "course",
    "fix_mode",
    "pdop",
    "vdop",
    "satellites_used",
];

/// f32 values from the NMEA crate, as the receiver wrote them (61.7, not 61.70000076).
fn short(f: f32) -> Value {
    Value::Float(f.to_string().parse().unwrap_or(f64::from(f)))
}

fn nmea_fields(line: &str) -> Result<HashMap<String, Value>, ParseError> {
    use nmea::sentences::FixType;
    use nmea::sentences::gsa::GsaMode2;
    use nmea::sentences::rmc::RmcStatusOfFix;
    use nmea::{Error, ParseResult};
    let parsed = nmea::parse_str(line.trim()).map_err(|e| match e {
        Error::ChecksumMismatch { .. } => ParseError::Checksum,
        Error::Unsupported(kind) => ParseError::Unsupported(format!("{kind:?}")),
        Error::DisabledSentence => {
            ParseError::Unsupported(line.get(3..6).unwrap_or("?").to_string())
        }
        other => ParseError::Malformed(format!("{other:?}")),
    })?;
    let mut fields = HashMap::new();
    let mut put = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            fields.insert(name.to_string(), value);
        }
    };
    match parsed {
        ParseResult::GGA(gga) => {
            put("sentence", Some(Value::Text("GGA".into())));
            put("latitude", gga.latitude.map(Value::Float));
            put("longitude", gga.longitude.map(Value::Float));
            put("altitude", gga.altitude.map(short));
            put("geoid_separation", gga.geoid_separation.map(short));
            put(
                "satellites",
                gga.fix_satellites.map(|n| Value::Int(n.into())),
            );
            put("hdop", gga.hdop.map(short));
            let quality = gga.fix_type.map(|t| match t {
                FixType::Invalid => 0,
                FixType::Gps => 1,
                FixType::DGps => 2,
                FixType::Pps => 3,
                FixType::Rtk => 4,
                FixType::FloatRtk => 5,
                FixType::Estimated => 6,
                FixType::Manual => 7,
                FixType::Simulation => 8,
            });
            put("fix_quality", quality.map(Value::Int));
        }
        ParseResult::RMC(rmc) => {
            put("sentence", Some(Value::Text("RMC".into())));
            put("latitude", rmc.lat.map(Value::Float));
            put("longitude", rmc.lon.map(Value::Float));
            put("speed_knots", rmc.speed_over_ground.map(short));
            put("course", rmc.true_course.map(short));
            put(
                "fix_valid",
                Some(Value::Bool(rmc.status_of_fix != RmcStatusOfFix::Invalid)),
            );
        }
        ParseResult::VTG(vtg) => {
            put("sentence", Some(Value::Text("VTG".into())));
            put("course", vtg.true_course.map(short));
            put("speed_knots", vtg.speed_over_ground.map(short));
        }
        ParseResult::GSA(gsa) => {
            put("sentence", Some(Value::Text("GSA".into())));
            let mode = match gsa.mode2 {
                GsaMode2::NoFix => 1,
                GsaMode2::Fix2D => 2,
                GsaMode2::Fix3D => 3,
            };
            put("fix_mode", Some(Value::Int(mode)));
            put("pdop", gsa.pdop.map(short));
            put("hdop", gsa.hdop.map(short));
            put("vdop", gsa.vdop.map(short));
            put(
                "satellites_used",
                Some(Value::Int(gsa.fix_sats_prn.len() as i64)),
            );
        }
        other => {
            return Err(ParseError::Unsupported(
                format!("{other:?}").chars().take(3).collect(),
            ));
        }
    }
    Ok(fields)
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
                    .filter_map(|(k, v)| Value::from_json(v).map(|v| (k, v)))
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
            LineParser::Nmea => nmea_fields(line),
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
    fn nmea_sentences_and_their_errors() {
        let gga = LineParser::Nmea
            .fields("$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76")
            .unwrap();
        assert_eq!(gga["altitude"], Value::Float(61.7));
        assert_eq!(gga["satellites"], Value::Int(8));
        assert_eq!(gga["fix_quality"], Value::Int(1));
        let Value::Float(lat) = gga["latitude"] else {
            panic!("latitude is a float")
        };
        assert!((lat - (53.0 + 21.6802 / 60.0)).abs() < 1e-9);
        let Value::Float(lon) = gga["longitude"] else {
            panic!("longitude is a float")
        };
        assert!(
            (lon + (6.0 + 30.3372 / 60.0)).abs() < 1e-9,
            "west is negative"
        );
        let gsa = LineParser::Nmea
            .fields("$GPGSA,A,3,10,07,05,02,29,04,08,13,,,,,1.72,1.03,1.38*0A")
            .unwrap();
        assert_eq!(gsa["fix_mode"], Value::Int(3));
        assert_eq!(gsa["satellites_used"], Value::Int(8));
        assert_eq!(gsa["pdop"], Value::Float(1.72));
        let bad = LineParser::Nmea
            .fields("$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*77");
        assert_eq!(bad.unwrap_err().counter(), "checksum");
        let gsv = LineParser::Nmea.fields("$GPGSV,3,3,11,29,09,301,24,16,09,020,,36,,,*76");
        assert_eq!(gsv.unwrap_err().counter(), "unknown_sentence");
        assert_eq!(
            LineParser::Nmea
                .fields("$GPGGA,garbage")
                .unwrap_err()
                .counter(),
            "parse"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for line in ["{", "[1,2]", "\u{0}\u{1}", "=", ""] {
            let _ = LineParser::Json.fields(line);
            let _ = LineParser::KeyValue.fields(line);
            let _ = LineParser::Nmea.fields(line);
        }
        assert!(LineParser::Json.fields("[1,2]").is_err());
        assert!(LineParser::KeyValue.fields("no pairs here").is_err());
    }
}
