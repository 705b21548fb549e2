//! A register map: where each point lives in the device and how its registers become a value.

use serde::Deserialize;

use crate::decimal;
use crate::reading::Value;
use crate::report::{Priority, ReportConfig};

/// The four Modbus data tables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Read-write 16-bit registers (function 3).
    Holding,
    /// Read-only 16-bit registers (function 4).
    Input,
    /// Read-write bits (function 1).
    Coil,
    /// Read-only bits (function 2).
    DiscreteInput,
}

impl Table {
    /// Whether the table holds bits rather than registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// Most items one request may read (the protocol's limits).
    pub fn max_per_request(self) -> u16 {
        if self.is_bits() { 2000 } else { 125 }
    }
}

/// How a point's registers become a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PointType {
    /// One register, unsigned.
    U16,
    /// One register, signed.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, signed.
    I32,
    /// Four registers, unsigned.
    U64,
    /// Four registers, signed.
    I64,
    /// Two registers, IEEE 754 single.
    F32,
    /// Four registers, IEEE 754 double.
    F64,
    /// A coil or discrete input, or one bit of a register (with `bit`).
    Bool,
    /// `length` registers of ASCII, two characters each, NULs and trailing spaces removed.
    String,
}

/// The order of bytes in a multi-register value, named by where bytes A (most significant) to
/// D land on the wire: `abcd` is big-endian throughout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ByteOrder {
    /// Big-endian words, big-endian bytes (the Modbus default).
    #[default]
    Abcd,
    /// Words swapped (low word first), bytes big-endian in each.
    Cdab,
    /// Words in order, bytes swapped in each.
    Badc,
    /// Everything reversed (little-endian).
    Dcba,
}

/// One named value in the device.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Point {
    /// Name in readings.
    pub name: String,
    /// Which table.
    pub table: Table,
    /// Address of the first register or bit (0-based, as on the wire).
    pub address: u16,
    /// How to decode (default `u16` for registers, `bool` for bits).
    #[serde(rename = "type")]
    pub kind: Option<PointType>,
    /// Byte and word order of multi-register values.
    #[serde(default)]
    pub order: ByteOrder,
    /// For `bool` in a register: which bit, 0 = least significant.
    pub bit: Option<u8>,
    /// For `string`: how many registers.
    pub length: Option<u16>,
    /// Multiplies numbers (default 1).
    pub scale: Option<f64>,
    /// Added after scaling (default 0).
    pub offset: Option<f64>,
    /// Unit announced in the metadata.
    pub unit: Option<String>,
    /// Poll this point at its own interval instead of the device's.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Option<std::time::Duration>,
    /// Whether MQTT may write the point (a coil or holding registers; default false).
    #[serde(default)]
    pub writable: bool,
    /// Round to this many decimal places. An integer register with `scale` or `offset` has
    /// the places they give it by default (`scale: 0.1` gives 1).
    pub decimals: Option<u8>,
    /// Report by exception: a deadband, `min_interval`, `max_interval` (default: every
    /// reading).
    pub report: Option<ReportConfig>,
    /// `alarm`: goes before everything else, and retention drops it last (default `normal`).
    #[serde(default)]
    pub priority: Priority,
}

/// What a write puts into the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// One coil.
    Coil(bool),
    /// Holding registers from the point's address on.
    Registers(Vec<u16>),
}

impl Point {
    /// The decoding type, with the defaults applied.
    pub fn kind(&self) -> PointType {
        self.kind.unwrap_or(if self.table.is_bits() {
            PointType::Bool
        } else {
            PointType::U16
        })
    }

    /// How many registers (or bits) the point spans.
    pub fn count(&self) -> u16 {
        if self.table.is_bits() {
            return 1;
        }
        match self.kind() {
            PointType::U16 | PointType::I16 | PointType::Bool => 1,
            PointType::U32 | PointType::I32 | PointType::F32 => 2,
            PointType::U64 | PointType::I64 | PointType::F64 => 4,
            PointType::String => self.length.unwrap_or(1),
        }
    }

    /// Problems with this point, as `(field, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let kind = self.kind();
        if self.table.is_bits() && kind != PointType::Bool {
            problems.push(("type", "coils and discrete inputs are `bool`".to_string()));
        }
        if self.bit.is_some() && (self.table.is_bits() || kind != PointType::Bool) {
            problems.push((
                "bit",
                "only for `type: bool` in a holding or input register".into(),
            ));
        }
        if self.bit.is_some_and(|b| b > 15) {
            problems.push(("bit", "must be 0 to 15".into()));
        }
        if !self.table.is_bits() && kind == PointType::Bool && self.bit.is_none() {
            problems.push(("bit", "a `bool` in a register needs `bit`".into()));
        }
        match (kind, self.length) {
            (PointType::String, None | Some(0)) => {
                problems.push(("length", "a string needs `length` in registers".into()))
            }
            (PointType::String, Some(n)) if n > 125 => {
                problems.push(("length", "at most 125 registers".into()))
            }
            (PointType::String, _) | (_, None) => {}
            (_, Some(_)) => problems.push(("length", "only for `type: string`".into())),
        }
        if u32::from(self.address) + u32::from(self.count()) > 65536 {
            problems.push(("address", "the point runs past register 65535".into()));
        }
        if self.interval.is_some_and(|i| i.is_zero()) {
            problems.push(("interval", "must be longer than zero".into()));
        }
        if self.writable && !matches!(self.table, Table::Coil | Table::Holding) {
            problems.push((
                "writable",
                "only coils and holding registers can be written".into(),
            ));
        }
        if self.writable && self.bit.is_some() {
            // Writing one bit means read-modify-write, which races with the device itself.
            problems.push((
                "writable",
                "a bit of a register cannot be written alone".into(),
            ));
        }
        if self.writable && self.scale == Some(0.0) {
            problems.push((
                "scale",
                "a writable point needs a scale other than 0".into(),
            ));
        }
        problems
    }

    /// What writing `value` (in the units the point reads in) puts into the device: scale and
    /// offset undone, integers rounded and range-checked, bytes in the point's order.
    pub fn encode(&self, value: &Value) -> Result<Write, String> {
        let kind = self.kind();
        if self.table == Table::Coil {
            return match value {
                Value::Bool(on) => Ok(Write::Coil(*on)),
                Value::Int(i @ (0 | 1)) => Ok(Write::Coil(*i == 1)),
                _ => Err("expects true or false".into()),
            };
        }
        let bytes = match kind {
            PointType::U16
            | PointType::I16
            | PointType::U32
            | PointType::I32
            | PointType::U64
            | PointType::I64 => self.integer_bytes(kind, value)?,
            PointType::F32 => {
                let raw = self.unscaled(value)?;
                if raw.abs() > f64::from(f32::MAX) {
                    return Err(format!("{raw} is out of range for f32"));
                }
                (raw as f32).to_be_bytes().to_vec()
            }
            PointType::F64 => self.unscaled(value)?.to_be_bytes().to_vec(),
            PointType::String => {
                let Value::Text(text) = value else {
                    return Err("expects a string".into());
                };
                let room = usize::from(self.count()) * 2;
                if !text.is_ascii() || text.len() > room {
                    return Err(format!("expects at most {room} ASCII characters"));
                }
                let mut bytes = text.as_bytes().to_vec();
                bytes.resize(room, 0);
                bytes
            }
            PointType::Bool => return Err("a bit of a register cannot be written".into()),
        };
        Ok(Write::Registers(wire_words(&bytes, self.order)))
    }

    /// A number with scale and offset undone.
    fn unscaled(&self, value: &Value) -> Result<f64, String> {
        let number = match value {
            Value::Int(i) => *i as f64,
            Value::Float(f) => *f,
            _ => return Err("expects a number".into()),
        };
        let raw = (number - self.offset.unwrap_or(0.0)) / self.scale.unwrap_or(1.0);
        if raw.is_finite() {
            Ok(raw)
        } else {
            Err(format!("{number} cannot be written"))
        }
    }

    /// The big-endian bytes of an integer point: exact when nothing is scaled, else rounded,
    /// and refused when out of the type's range. In range, the low bytes of the two's
    /// complement are the value's bytes, signed or not.
    fn integer_bytes(&self, kind: PointType, value: &Value) -> Result<Vec<u8>, String> {
        let (name, min, max, width): (&str, i128, i128, usize) = match kind {
            PointType::U16 => ("u16", 0, u16::MAX.into(), 2),
            PointType::I16 => ("i16", i16::MIN.into(), i16::MAX.into(), 2),
            PointType::U32 => ("u32", 0, u32::MAX.into(), 4),
            PointType::I32 => ("i32", i32::MIN.into(), i32::MAX.into(), 4),
            PointType::U64 => ("u64", 0, u64::MAX.into(), 8),
            _ => ("i64", i64::MIN.into(), i64::MAX.into(), 8),
        };
        let raw = self.integer(value)?;
        if !(min..=max).contains(&raw) {
            return Err(format!("{raw} is out of range for {name}"));
        }
        Ok(raw.to_be_bytes()[16 - width..].to_vec())
    }

    /// The raw integer for `value`: exact when nothing is scaled, else rounded.
    fn integer(&self, value: &Value) -> Result<i128, String> {
        match value {
            Value::Int(i) if self.scale.is_none() && self.offset.is_none() => Ok(i128::from(*i)),
            _ => Ok(self.unscaled(value)?.round() as i128),
        }
    }

    /// Decodes the point from its registers (exactly `count()` of them).
    pub fn decode_registers(&self, words: &[u16]) -> Option<Value> {
        if words.len() != usize::from(self.count()) {
            return None;
        }
        let bytes = ordered_bytes(words, self.order);
        let kind = self.kind();
        let raw = match kind {
            PointType::U16 => Value::Int(u16::from_be_bytes(array(&bytes)?).into()),
            PointType::I16 => Value::Int(i16::from_be_bytes(array(&bytes)?).into()),
            PointType::U32 => Value::Int(u32::from_be_bytes(array(&bytes)?).into()),
            PointType::I32 => Value::Int(i32::from_be_bytes(array(&bytes)?).into()),
            PointType::U64 => {
                let v = u64::from_be_bytes(array(&bytes)?);
                i64::try_from(v)
                    .map(Value::Int)
                    .unwrap_or(Value::Float(v as f64))
            }
            PointType::I64 => Value::Int(i64::from_be_bytes(array(&bytes)?)),
            PointType::F32 => Value::Float(short_f32(f32::from_be_bytes(array(&bytes)?))),
            PointType::F64 => Value::Float(f64::from_be_bytes(array(&bytes)?)),
            PointType::Bool => {
                return Some(Value::Bool(words[0] >> self.bit.unwrap_or(0) & 1 == 1));
            }
            PointType::String => {
                let text: String = bytes
                    .iter()
                    .filter(|b| **b != 0)
                    .map(|b| char::from(*b))
                    .collect();
                return Some(Value::Text(text.trim_end().to_string()));
            }
        };
        Some(self.scaled(raw))
    }

    /// Applies `scale` and `offset`, exactly in decimal; a scaled integer becomes a float.
    fn scaled(&self, value: Value) -> Value {
        decimal::scale(value, self.scale, self.offset)
    }

    /// The places the point's values are rounded to: `decimals`, or for a scaled integer
    /// register the places its scale and offset give it.
    pub fn decimals(&self) -> Option<u8> {
        let scaled = self.scale.is_some() || self.offset.is_some();
        let integer = matches!(
            self.kind(),
            PointType::U16
                | PointType::I16
                | PointType::U32
                | PointType::I32
                | PointType::U64
                | PointType::I64
        );
        self.decimals.or_else(|| {
            (scaled && integer).then(|| decimal::scaled_places(self.scale, self.offset))
        })
    }
}

#[cfg(test)]
impl Point {
    /// A point with only its place and type set, for tests.
    pub(crate) fn plain(table: Table, address: u16, kind: PointType) -> Self {
        Point {
            name: format!("{table:?}{address}"),
            table,
            address,
            kind: Some(kind),
            order: ByteOrder::Abcd,
            bit: None,
            length: None,
            scale: None,
            offset: None,
            unit: None,
            interval: None,
            decimals: None,
            report: None,
            priority: crate::report::Priority::Normal,
            writable: false,
        }
    }
}

/// An f32 as the shortest decimal that reads back to it (230.1, not 230.10000610351562).
fn short_f32(f: f32) -> f64 {
    f.to_string().parse().unwrap_or(f64::from(f))
}

fn array<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
}

/// The registers' bytes rearranged into big-endian order.
fn ordered_bytes(words: &[u16], order: ByteOrder) -> Vec<u8> {
    reorder(words.to_vec(), order)
        .into_iter()
        .flat_map(u16::to_be_bytes)
        .collect()
}

/// Big-endian bytes as the registers that hold them in `order`.
fn wire_words(bytes: &[u8], order: ByteOrder) -> Vec<u16> {
    let words = bytes
        .chunks(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]))
        .collect();
    reorder(words, order)
}

/// Swaps words and bytes as `order` says. Each swap undoes itself, so the same function turns
/// wire order into big-endian order and back.
fn reorder(mut words: Vec<u16>, order: ByteOrder) -> Vec<u16> {
    if matches!(order, ByteOrder::Cdab | ByteOrder::Dcba) {
        words.reverse();
    }
    if matches!(order, ByteOrder::Badc | ByteOrder::Dcba) {
        for word in &mut words {
            *word = word.swap_bytes();
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(kind: PointType, order: ByteOrder) -> Point {
        Point {
            order,
            ..Point::plain(Table::Holding, 0, kind)
        }
    }

    #[test]
    fn every_order_of_a_float() {
        // 230.1f32 = 0x4366199A: bytes A=43 B=66 C=19 D=9A.
        assert_eq!(230.1f32.to_bits(), 0x4366_199A);
        let cases = [
            (ByteOrder::Abcd, [0x4366, 0x199A]),
            (ByteOrder::Cdab, [0x199A, 0x4366]),
            (ByteOrder::Badc, [0x6643, 0x9A19]),
            (ByteOrder::Dcba, [0x9A19, 0x6643]),
        ];
        for (order, words) in cases {
            assert_eq!(
                point(PointType::F32, order).decode_registers(&words),
                Some(Value::Float(230.1)),
                "{order:?}"
            );
        }
    }

    #[test]
    fn integers_strings_bits_and_scaling() {
        assert_eq!(
            point(PointType::I16, ByteOrder::Abcd).decode_registers(&[0xFFFE]),
            Some(Value::Int(-2))
        );
        assert_eq!(
            point(PointType::U32, ByteOrder::Cdab).decode_registers(&[0x0002, 0x0001]),
            Some(Value::Int(0x0001_0002))
        );
        assert_eq!(
            point(PointType::I32, ByteOrder::Abcd).decode_registers(&[0xFFFF, 0xFFFF]),
            Some(Value::Int(-1))
        );
        assert_eq!(
            point(PointType::I64, ByteOrder::Abcd)
                .decode_registers(&[0xFFFF, 0xFFFF, 0xFFFF, 0xFFF6]),
            Some(Value::Int(-10))
        );
        assert_eq!(
            point(PointType::F64, ByteOrder::Dcba).decode_registers(
                &1.5f64
                    .to_le_bytes()
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect::<Vec<_>>()
            ),
            Some(Value::Float(1.5))
        );
        let mut s = point(PointType::String, ByteOrder::Abcd);
        s.length = Some(3);
        assert_eq!(
            s.decode_registers(&[0x5344, 0x4D31, 0x3230]),
            Some(Value::Text("SDM120".into()))
        );
        let mut bit = point(PointType::Bool, ByteOrder::Abcd);
        bit.bit = Some(3);
        assert_eq!(bit.decode_registers(&[0b1000]), Some(Value::Bool(true)));
        let mut scaled = point(PointType::I16, ByteOrder::Abcd);
        scaled.scale = Some(0.1);
        assert_eq!(scaled.decode_registers(&[215]), Some(Value::Float(21.5)));
        assert_eq!(
            scaled.decode_registers(&[1, 2]),
            None,
            "wrong register count"
        );
    }

    #[test]
    fn point_problems() {
        let mut p = point(PointType::Bool, ByteOrder::Abcd);
        assert_eq!(
            p.problems().iter().map(|(f, _)| *f).collect::<Vec<_>>(),
            ["bit"]
        );
        p.bit = Some(16);
        assert_eq!(p.problems().len(), 1);
        let mut s = point(PointType::String, ByteOrder::Abcd);
        assert_eq!(s.problems()[0].0, "length");
        s.length = Some(4);
        s.address = 65534;
        assert_eq!(s.problems()[0].0, "address");
    }

    #[test]
    fn writes_read_back_as_written_in_every_type_and_order() {
        let cases = [
            (PointType::U16, Value::Int(65535)),
            (PointType::I16, Value::Int(-2)),
            (PointType::U32, Value::Int(0x0102_0304)),
            (PointType::I32, Value::Int(-100_000)),
            (PointType::U64, Value::Int(i64::MAX)),
            (PointType::I64, Value::Int(-10)),
            (PointType::F32, Value::Float(230.1)),
            (PointType::F64, Value::Float(-1.5e300)),
        ];
        for order in [
            ByteOrder::Abcd,
            ByteOrder::Cdab,
            ByteOrder::Badc,
            ByteOrder::Dcba,
        ] {
            for (kind, value) in &cases {
                let p = point(*kind, order);
                let Ok(Write::Registers(words)) = p.encode(value) else {
                    panic!("{kind:?} {order:?}: {:?}", p.encode(value));
                };
                assert_eq!(
                    p.decode_registers(&words).as_ref(),
                    Some(value),
                    "{kind:?} {order:?}"
                );
            }
        }
        // The wire layout itself, not only the round trip.
        assert_eq!(
            point(PointType::F32, ByteOrder::Cdab).encode(&Value::Float(230.1)),
            Ok(Write::Registers(vec![0x199A, 0x4366]))
        );
        let mut s = point(PointType::String, ByteOrder::Abcd);
        s.length = Some(3);
        assert_eq!(
            s.encode(&Value::Text("SDM1".into())),
            Ok(Write::Registers(vec![0x5344, 0x4D31, 0]))
        );
        assert!(s.encode(&Value::Text("too long!".into())).is_err());
    }

    #[test]
    fn writes_undo_scaling_and_refuse_what_does_not_fit() {
        let mut setpoint = point(PointType::I16, ByteOrder::Abcd);
        setpoint.scale = Some(0.1);
        setpoint.offset = Some(-40.0);
        assert_eq!(
            setpoint.encode(&Value::Float(-18.5)),
            Ok(Write::Registers(vec![215]))
        );
        assert!(
            setpoint
                .encode(&Value::Float(4000.0))
                .unwrap_err()
                .contains("out of range")
        );
        assert!(setpoint.encode(&Value::Bool(true)).is_err());
        let u16 = point(PointType::U16, ByteOrder::Abcd);
        assert!(u16.encode(&Value::Int(-1)).is_err());
        assert!(u16.encode(&Value::Int(65536)).is_err());
        assert!(
            point(PointType::F32, ByteOrder::Abcd)
                .encode(&Value::Float(1e39))
                .is_err()
        );
        let coil = Point::plain(Table::Coil, 7, PointType::Bool);
        assert_eq!(coil.encode(&Value::Bool(true)), Ok(Write::Coil(true)));
        assert_eq!(coil.encode(&Value::Int(0)), Ok(Write::Coil(false)));
        assert!(coil.encode(&Value::Float(0.5)).is_err());
    }

    #[test]
    fn only_coils_and_whole_holding_registers_are_writable() {
        let mut input = Point::plain(Table::Input, 0, PointType::U16);
        input.writable = true;
        assert_eq!(input.problems()[0].0, "writable");
        let mut bit = point(PointType::Bool, ByteOrder::Abcd);
        bit.bit = Some(2);
        bit.writable = true;
        assert_eq!(bit.problems()[0].0, "writable");
        let mut holding = point(PointType::F32, ByteOrder::Cdab);
        holding.writable = true;
        assert!(holding.problems().is_empty());
    }
}
