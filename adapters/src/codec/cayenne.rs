//! Cayenne Low Power Payload: a sequence of `channel, type, data` records, each type with a
//! fixed size, sign and scale. The table holds the IPSO types of the original Cayenne LPP
//! specification and the extended types that the common encoder libraries (ElectronicCats
//! CayenneLPP, pycayennelpp) add.

use crate::reading::Value;

/// One LPP type: its id, field name, the axes it carries, their byte size, divisor, sign and
/// unit.
struct LppType {
    id: u8,
    name: &'static str,
    axes: &'static [&'static str],
    size: usize,
    divisor: u32,
    signed: bool,
    unit: Option<&'static str>,
}

const ONE: &[&str] = &[""];
const XYZ: &[&str] = &["x", "y", "z"];

#[rustfmt::skip]
const TYPES: &[LppType] = &[
    LppType { id: 0, name: "digital_input", axes: ONE, size: 1, divisor: 1, signed: false, unit: None },
    LppType { id: 1, name: "digital_output", axes: ONE, size: 1, divisor: 1, signed: false, unit: None },
    LppType { id: 2, name: "analog_input", axes: ONE, size: 2, divisor: 100, signed: true, unit: None },
    LppType { id: 3, name: "analog_output", axes: ONE, size: 2, divisor: 100, signed: true, unit: None },
    LppType { id: 100, name: "generic", axes: ONE, size: 4, divisor: 1, signed: false, unit: None },
    LppType { id: 101, name: "illuminance", axes: ONE, size: 2, divisor: 1, signed: false, unit: Some("lx") },
    LppType { id: 102, name: "presence", axes: ONE, size: 1, divisor: 1, signed: false, unit: None },
    LppType { id: 103, name: "temperature", axes: ONE, size: 2, divisor: 10, signed: true, unit: Some("°C") },
    LppType { id: 104, name: "humidity", axes: ONE, size: 1, divisor: 2, signed: false, unit: Some("%") },
    LppType { id: 113, name: "accelerometer", axes: XYZ, size: 2, divisor: 1000, signed: true, unit: Some("G") },
    LppType { id: 115, name: "barometer", axes: ONE, size: 2, divisor: 10, signed: false, unit: Some("hPa") },
    LppType { id: 116, name: "voltage", axes: ONE, size: 2, divisor: 100, signed: false, unit: Some("V") },
    LppType { id: 117, name: "current", axes: ONE, size: 2, divisor: 1000, signed: false, unit: Some("A") },
    LppType { id: 118, name: "frequency", axes: ONE, size: 4, divisor: 1, signed: false, unit: Some("Hz") },
    LppType { id: 120, name: "percentage", axes: ONE, size: 1, divisor: 1, signed: false, unit: Some("%") },
    LppType { id: 121, name: "altitude", axes: ONE, size: 2, divisor: 1, signed: true, unit: Some("m") },
    LppType { id: 122, name: "load", axes: ONE, size: 3, divisor: 1000, signed: true, unit: Some("kg") },
    LppType { id: 125, name: "concentration", axes: ONE, size: 2, divisor: 1, signed: false, unit: Some("ppm") },
    LppType { id: 128, name: "power", axes: ONE, size: 2, divisor: 1, signed: false, unit: Some("W") },
    LppType { id: 130, name: "distance", axes: ONE, size: 4, divisor: 1000, signed: false, unit: Some("m") },
    LppType { id: 131, name: "energy", axes: ONE, size: 4, divisor: 1000, signed: false, unit: Some("kWh") },
    LppType { id: 132, name: "direction", axes: ONE, size: 2, divisor: 1, signed: false, unit: Some("°") },
    LppType { id: 133, name: "unixtime", axes: ONE, size: 4, divisor: 1, signed: false, unit: Some("s") },
    LppType { id: 134, name: "gyrometer", axes: XYZ, size: 2, divisor: 100, signed: true, unit: Some("°/s") },
    LppType { id: 135, name: "colour", axes: &["r", "g", "b"], size: 1, divisor: 1, signed: false, unit: None },
    LppType { id: 136, name: "gps", axes: &["latitude", "longitude", "altitude"], size: 3, divisor: 10000, signed: true, unit: Some("°") },
    LppType { id: 142, name: "switch", axes: ONE, size: 1, divisor: 1, signed: false, unit: None },
];

/// Why a payload is not valid Cayenne LPP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LppError {
    /// A type id outside the table: the rest of the payload cannot be cut into records.
    #[error("unknown Cayenne LPP type {kind} on channel {channel}")]
    UnknownType {
        /// The channel of the record.
        channel: u8,
        /// The type id.
        kind: u8,
    },
    /// The payload ends inside a record.
    #[error("the payload ends inside the record of channel {0}")]
    Truncated(u8),
}

/// The unit of an LPP field name such as `temperature_3` or `gps_1_altitude`, for metadata.
pub fn unit(field: &str) -> Option<&'static str> {
    let kind = TYPES.iter().find(|t| {
        field
            .strip_prefix(t.name)
            .is_some_and(|rest| rest.starts_with('_'))
    })?;
    if kind.id == 136 && field.ends_with("_altitude") {
        return Some("m");
    }
    kind.unit
}

/// The fields of an LPP payload, in payload order: `<type>_<channel>`, with `_x`/`_y`/`_z`
/// (and such) for types with several axes. Whole-number types give integers, scaled types
/// floats.
pub fn decode(mut bytes: &[u8]) -> Result<Vec<(String, Value)>, LppError> {
    let mut fields = Vec::new();
    while let [channel, kind, rest @ ..] = bytes {
        let (channel, id) = (*channel, *kind);
        let kind = TYPES
            .iter()
            .find(|t| t.id == id)
            .ok_or(LppError::UnknownType { channel, kind: id })?;
        let len = kind.size * kind.axes.len();
        let data = rest.get(..len).ok_or(LppError::Truncated(channel))?;
        for (axis, raw) in kind.axes.iter().zip(data.chunks(kind.size)) {
            let unsigned = raw.iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
            let bits = 8 * kind.size as u32;
            let n = if kind.signed && unsigned >> (bits - 1) == 1 {
                unsigned as i64 - (1i64 << bits)
            } else {
                unsigned as i64
            };
            // GPS altitude has its own scale (0.01 m) beside the coordinates' 0.0001°.
            let divisor = if kind.id == 136 && *axis == "altitude" {
                100
            } else {
                kind.divisor
            };
            let value = if divisor == 1 {
                Value::Int(n)
            } else {
                Value::Float(n as f64 / f64::from(divisor))
            };
            let name = if axis.is_empty() {
                format!("{}_{channel}", kind.name)
            } else {
                format!("{}_{channel}_{axis}", kind.name)
            };
            fields.push((name, value));
        }
        bytes = &rest[len..];
    }
    match bytes {
        [channel] => Err(LppError::Truncated(*channel)),
        _ => Ok(fields),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        crate::codec::unhex(s).unwrap()
    }

    /// The examples of the Cayenne LPP documentation (myDevices, "Cayenne Low Power Payload").
    #[test]
    fn the_specification_examples() {
        // Device with 2 temperature sensors: 27.2 °C on channel 3, 25.5 °C on channel 5.
        assert_eq!(
            decode(&hex("03670110056700FF")).unwrap(),
            [
                ("temperature_3".into(), Value::Float(27.2)),
                ("temperature_5".into(), Value::Float(25.5))
            ]
        );
        // Accelerometer on channel 6: x = 1.234 G, y = -1.234 G, z = 0 G.
        assert_eq!(
            decode(&hex("067104D2FB2E0000")).unwrap(),
            [
                ("accelerometer_6_x".into(), Value::Float(1.234)),
                ("accelerometer_6_y".into(), Value::Float(-1.234)),
                ("accelerometer_6_z".into(), Value::Float(0.0)),
            ]
        );
        // GPS on channel 1: 42.3519°, -87.9094°, 10 m.
        assert_eq!(
            decode(&hex("018806765ff2960a0003e8")).unwrap(),
            [
                ("gps_1_latitude".into(), Value::Float(42.3519)),
                ("gps_1_longitude".into(), Value::Float(-87.9094)),
                ("gps_1_altitude".into(), Value::Float(10.0)),
            ]
        );
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        assert_eq!(
            decode(&[1, 0x99, 0]).unwrap_err(),
            LppError::UnknownType {
                channel: 1,
                kind: 0x99
            }
        );
        assert_eq!(decode(&[1, 103, 0]).unwrap_err(), LppError::Truncated(1));
        assert_eq!(decode(&[7]).unwrap_err(), LppError::Truncated(7));
        assert!(decode(&[]).unwrap().is_empty());
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let noise: Vec<u8> = (0..rng.usize(..40)).map(|_| rng.u8(..)).collect();
            let _ = decode(&noise);
        }
    }

    #[test]
    fn units_follow_the_field_names() {
        assert_eq!(unit("temperature_3"), Some("°C"));
        assert_eq!(unit("gps_1_altitude"), Some("m"));
        assert_eq!(unit("gps_1_latitude"), Some("°"));
        assert_eq!(unit("digital_input_2"), None);
        assert_eq!(unit("temperature"), None);
    }
}
