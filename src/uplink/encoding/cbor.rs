//! The `cbor` encoding's body: many readings in one CBOR map (RFC 8949), a block per device and
//! column by column within it, so that names and types are written once per block and
//! neighbouring values look alike. `docs/wire-format.md` is the specification; this file
//! follows it.
//!
//! ```text
//! { "b": [ { "d": device, "s": [seq, Δ, Δ...], "t": [ms, Δ, Δ...],
//!            "c": [ {"n": name, "k": "f"|"i"|"d"|"b"|"s", "e": places (for "d"), "v": [cells]} ] } ],
//!   "h": true   (only for history) }
//! ```
//! A cell is `null` where a reading lacks the value. Integer and decimal cells are deltas from
//! the previous present cell of the column; a decimal cell `m` stands for `m / 10^e`.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_adapters::Value;
use cairn_adapters::decimal::MAX_DECIMALS;
use minicbor::data::{Int, Type};
use minicbor::{Decoder, Encoder};

use super::DecodeError;
use crate::store::Record;

/// One reading as a batch carries it, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The device that produced it.
    pub device: Arc<str>,
    /// Its outbox sequence number.
    pub seq: i64,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Its values, in column order.
    pub values: Vec<(Arc<str>, Value)>,
    /// Whether it came from the backlog rather than the live lane.
    pub historical: bool,
    /// Whether its time was taken before the gateway's clock was known good.
    pub unsynced: bool,
}

/// A column's kind, as the `k` key writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Float,
    Int,
    Bool,
    Text,
}

impl Kind {
    fn of(value: &Value) -> Kind {
        match value {
            Value::Float(_) => Kind::Float,
            Value::Int(_) => Kind::Int,
            Value::Bool(_) => Kind::Bool,
            Value::Text(_) => Kind::Text,
        }
    }
}

/// One column being built: a cell per reading of its block.
struct Column<'r> {
    name: &'r str,
    kind: Kind,
    cells: Vec<Option<&'r Value>>,
}

/// The body of a batch of `records` (all of them: per device in their order, devices in the
/// order they first appear). `historical` marks a backlog batch.
pub fn encode(records: &[Record], historical: bool) -> Vec<u8> {
    let mut blocks: Vec<(&str, Vec<&Record>)> = Vec::new();
    for record in records {
        match blocks.iter_mut().find(|(d, _)| *d == &*record.device) {
            Some((_, rows)) => rows.push(record),
            None => blocks.push((&record.device, vec![record])),
        }
    }
    // Writing to a Vec cannot fail; the results are ignored for that reason.
    let mut e = Encoder::new(Vec::with_capacity(64 + records.len() * 16));
    let _ = e.map(1 + u64::from(historical));
    let _ = e.str("b").and_then(|e| e.array(blocks.len() as u64));
    for (device, rows) in &blocks {
        write_block(&mut e, device, rows);
    }
    if historical {
        let _ = e.str("h").and_then(|e| e.bool(true));
    }
    e.into_writer()
}

/// One device's readings: `{"d", "s", "t", "c"}`, and `"u"` (the positions of readings
/// whose time is unsynced) when there are any.
fn write_block(e: &mut Encoder<Vec<u8>>, device: &str, rows: &[&Record]) {
    let mut columns: Vec<Column> = Vec::new();
    let mut by_key: HashMap<(&str, Kind), usize> = HashMap::new();
    for (row, record) in rows.iter().enumerate() {
        for (name, value) in &record.values {
            let kind = Kind::of(value);
            let i = *by_key.entry((name, kind)).or_insert_with(|| {
                columns.push(Column {
                    name,
                    kind,
                    cells: vec![None; rows.len()],
                });
                columns.len() - 1
            });
            // A name given twice in one reading keeps its first value, as a JSON object would
            // have to choose one too.
            columns[i].cells[row].get_or_insert(value);
        }
    }
    let unsynced: Vec<u64> = (0..rows.len() as u64)
        .filter(|&i| rows[i as usize].unsynced)
        .collect();
    let _ = e.map(4 + u64::from(!unsynced.is_empty()));
    let _ = e.str("d").and_then(|e| e.str(device));
    delta_array(e, "s", rows.iter().map(|r| r.seq));
    delta_array(e, "t", rows.iter().map(|r| r.ts_ms));
    let _ = e.str("c").and_then(|e| e.array(columns.len() as u64));
    for column in &columns {
        write_column(e, column);
    }
    if !unsynced.is_empty() {
        let _ = e.str("u").and_then(|e| e.array(unsynced.len() as u64));
        for i in unsynced {
            let _ = e.u64(i);
        }
    }
}

/// `key: [first, second - first, ...]`.
fn delta_array(e: &mut Encoder<Vec<u8>>, key: &str, values: impl ExactSizeIterator<Item = i64>) {
    let _ = e.str(key).and_then(|e| e.array(values.len() as u64));
    let mut previous: Option<i64> = None;
    for value in values {
        let _ = e.int(delta(previous, value));
        previous = Some(value);
    }
}

/// `value` minus `previous` (or `value` itself first), which always fits a CBOR integer.
fn delta(previous: Option<i64>, value: i64) -> Int {
    let d = i128::from(value) - i128::from(previous.unwrap_or(0));
    // |d| < 2^64, within CBOR's integer range, so the conversion cannot fail.
    Int::try_from(d).unwrap_or_else(|_| Int::from(0u8))
}

fn write_column(e: &mut Encoder<Vec<u8>>, column: &Column) {
    let places = (column.kind == Kind::Float)
        .then(|| decimal_places(&column.cells))
        .flatten();
    let kind = match (column.kind, places) {
        (Kind::Float, Some(_)) => "d",
        (Kind::Float, None) => "f",
        (Kind::Int, _) => "i",
        (Kind::Bool, _) => "b",
        (Kind::Text, _) => "s",
    };
    let _ = e.map(3 + u64::from(places.is_some()));
    let _ = e.str("n").and_then(|e| e.str(column.name));
    let _ = e.str("k").and_then(|e| e.str(kind));
    if let Some(places) = places {
        let _ = e.str("e").and_then(|e| e.u8(places));
    }
    let _ = e.str("v").and_then(|e| e.array(column.cells.len() as u64));
    let power = 10f64.powi(i32::from(places.unwrap_or(0)));
    let mut previous: Option<i64> = None;
    for cell in &column.cells {
        let _ = match (cell, places) {
            (None, _) => e.null(),
            (Some(Value::Float(x)), Some(_)) => {
                let mantissa = (x * power).round() as i64;
                let d = delta(previous, mantissa);
                previous = Some(mantissa);
                e.int(d)
            }
            (Some(Value::Int(i)), _) => {
                let d = delta(previous, *i);
                previous = Some(*i);
                e.int(d)
            }
            (Some(Value::Float(x)), None) => shortest_float(e, *x),
            (Some(Value::Bool(b)), _) => e.bool(*b),
            (Some(Value::Text(t)), _) => e.str(t),
        };
    }
}

/// The fewest decimal places that give back every float of the column exactly, if some do:
/// the column then travels as small integers. Noise-level precision finds none and stays float.
fn decimal_places(cells: &[Option<&Value>]) -> Option<u8> {
    let floats: Vec<f64> = cells
        .iter()
        .filter_map(|c| match c {
            Some(Value::Float(x)) => Some(*x),
            _ => None,
        })
        .collect();
    if floats.iter().any(|x| !x.is_finite()) {
        return None;
    }
    (0..=MAX_DECIMALS).find(|&places| {
        let power = 10f64.powi(i32::from(places));
        // Compared as a decoder computes it, bit for bit: -0.0 has no integer form (found by
        // fuzzing: it came back as 0.0), so a column holding it stays float.
        floats.iter().all(|x| {
            let m = (x * power).round();
            m.abs() < 9_007_199_254_740_992.0
                && ((m as i64) as f64 / power).to_bits() == x.to_bits()
        })
    })
}

/// A float in the shortest of half, single or double precision that holds it exactly.
pub(crate) fn shortest_float(
    e: &mut Encoder<Vec<u8>>,
    x: f64,
) -> Result<&mut Encoder<Vec<u8>>, minicbor::encode::Error<std::convert::Infallible>> {
    let single = x as f32;
    if x.is_nan() || f64::from(half::f16::from_f64(x).to_f32()) == x {
        e.f16(single)
    } else if f64::from(single) == x {
        e.f32(single)
    } else {
        e.f64(x)
    }
}

/// Reads a batch body back into readings, checking every length. Unknown keys are skipped,
/// so later versions may add some.
pub fn decode(body: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
    let mut d = Decoder::new(body);
    let keys = definite(d.map())?;
    let mut blocks: Option<Vec<Block>> = None;
    let mut historical = false;
    for _ in 0..keys {
        match d.str()? {
            "b" => {
                let n = definite(d.array())?;
                let mut read = Vec::new();
                for _ in 0..n {
                    read.push(read_block(&mut d)?);
                }
                blocks = Some(read);
            }
            "h" => historical = d.bool()?,
            _ => d.skip()?,
        }
    }
    if d.position() != body.len() {
        return Err(DecodeError::Invalid("bytes after the batch".into()));
    }
    let blocks = blocks.ok_or_else(|| DecodeError::Invalid("no `b`".into()))?;
    let mut readings = Vec::new();
    for block in blocks {
        let mut cells: Vec<std::vec::IntoIter<Option<Value>>> = Vec::new();
        let mut names = Vec::new();
        for (name, column) in block.columns {
            names.push(name);
            cells.push(column.into_iter());
        }
        for (i, (seq, ts_ms)) in block.seqs.into_iter().zip(block.times).enumerate() {
            let values = names
                .iter()
                .zip(cells.iter_mut())
                .filter_map(|(name, column)| Some((name.clone(), column.next().flatten()?)))
                .collect();
            readings.push(Decoded {
                device: block.device.clone(),
                seq,
                ts_ms,
                values,
                historical,
                unsynced: block.unsynced.contains(&(i as u64)),
            });
        }
    }
    Ok(readings)
}

/// One device's block, decoded and checked.
struct Block {
    device: Arc<str>,
    seqs: Vec<i64>,
    times: Vec<i64>,
    columns: Vec<(Arc<str>, Vec<Option<Value>>)>,
    unsynced: Vec<u64>,
}

fn read_block(d: &mut Decoder) -> Result<Block, DecodeError> {
    let keys = definite(d.map())?;
    let (mut device, mut seqs, mut times, mut columns) = (None, None, None, None);
    let mut unsynced = Vec::new();
    for _ in 0..keys {
        match d.str()? {
            "d" => device = Some(Arc::<str>::from(d.str()?)),
            "s" => seqs = Some(undelta(d)?),
            "t" => times = Some(undelta(d)?),
            "c" => {
                let n = definite(d.array())?;
                let mut read = Vec::new();
                for _ in 0..n {
                    read.push(read_column(d)?);
                }
                columns = Some(read);
            }
            "u" => {
                let n = definite(d.array())?;
                for _ in 0..n {
                    unsynced.push(d.u64()?);
                }
            }
            _ => d.skip()?,
        }
    }
    let missing = |key: &str| DecodeError::Invalid(format!("a block without `{key}`"));
    let block = Block {
        device: device.ok_or_else(|| missing("d"))?,
        seqs: seqs.ok_or_else(|| missing("s"))?,
        times: times.ok_or_else(|| missing("t"))?,
        columns: columns.ok_or_else(|| missing("c"))?,
        unsynced,
    };
    let n = block.seqs.len();
    if block.unsynced.iter().any(|&i| i >= n as u64) {
        return Err(DecodeError::Invalid(
            "`u` names a reading the block does not have".into(),
        ));
    }
    if block.times.len() != n || block.columns.iter().any(|(_, cells)| cells.len() != n) {
        return Err(DecodeError::Invalid(
            "`t` or a column does not have one entry per reading".into(),
        ));
    }
    Ok(block)
}

/// A definite length; the encoding never writes indefinite ones.
fn definite(len: Result<Option<u64>, minicbor::decode::Error>) -> Result<u64, DecodeError> {
    len?.ok_or_else(|| DecodeError::Invalid("indefinite lengths are not used".into()))
}

/// An integer array of first value and deltas, summed back up.
fn undelta(d: &mut Decoder) -> Result<Vec<i64>, DecodeError> {
    let n = definite(d.array())?;
    let mut values = Vec::new();
    let mut previous = 0i128;
    for _ in 0..n {
        previous += i128::from(d.int()?);
        values.push(i64::try_from(previous).map_err(|_| overflow())?);
    }
    Ok(values)
}

fn overflow() -> DecodeError {
    DecodeError::Invalid("an integer beyond 64 bits".into())
}

fn read_column(d: &mut Decoder) -> Result<(Arc<str>, Vec<Option<Value>>), DecodeError> {
    let keys = definite(d.map())?;
    let (mut name, mut kind, mut places, mut cells) = (None, None, 0u8, None);
    for _ in 0..keys {
        match d.str()? {
            "n" => name = Some(Arc::<str>::from(d.str()?)),
            "k" => kind = Some(d.str()?),
            "e" => places = d.u8()?,
            "v" => {
                // The cells are read once the kind and places are known, in whatever order the
                // keys came.
                let start = d.position();
                d.skip()?;
                cells = Some(start..d.position());
            }
            _ => d.skip()?,
        }
    }
    if places > MAX_DECIMALS + 6 {
        return Err(DecodeError::Invalid(format!("{places} decimal places")));
    }
    let (Some(name), Some(kind), Some(cells)) = (name, kind, cells) else {
        return Err(DecodeError::Invalid(
            "a column needs `n`, `k` and `v`".into(),
        ));
    };
    let mut cell_decoder = Decoder::new(&d.input()[cells]);
    Ok((name, read_cells(&mut cell_decoder, kind, places)?))
}

fn read_cells(d: &mut Decoder, kind: &str, places: u8) -> Result<Vec<Option<Value>>, DecodeError> {
    let n = definite(d.array())?;
    let power = 10f64.powi(i32::from(places));
    let mut cells = Vec::new();
    let mut previous = 0i128;
    for _ in 0..n {
        if d.datatype()? == Type::Null {
            d.null()?;
            cells.push(None);
            continue;
        }
        let value = match kind {
            "i" | "d" => {
                previous += i128::from(d.int()?);
                let i = i64::try_from(previous).map_err(|_| overflow())?;
                if kind == "i" {
                    Value::Int(i)
                } else {
                    Value::Float(i as f64 / power)
                }
            }
            "f" => Value::Float(d.f64()?),
            "b" => Value::Bool(d.bool()?),
            "s" => Value::Text(d.str()?.to_string()),
            other => {
                return Err(DecodeError::Invalid(format!(
                    "unknown column kind `{other}`"
                )));
            }
        };
        cells.push(Some(value));
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64, device: &str, ts_ms: i64, values: Vec<(&str, Value)>) -> Record {
        Record {
            priority: Default::default(),
            unsynced: false,
            seq,
            device: Arc::from(device),
            ts_ms,
            values: values.into_iter().map(|(n, v)| (Arc::from(n), v)).collect(),
        }
    }

    fn round_trip(records: &[Record], historical: bool) {
        let decoded = decode(&encode(records, historical)).unwrap();
        assert_eq!(decoded.len(), records.len());
        // Readings come back device by device, each device's in order.
        for r in records {
            let d = decoded.iter().find(|d| d.seq == r.seq).unwrap();
            assert_eq!(
                (&d.device, d.seq, d.ts_ms, d.historical, d.unsynced),
                (&r.device, r.seq, r.ts_ms, historical, r.unsynced)
            );
            assert_eq!(d.values.len(), r.values.len(), "{r:?}");
            for (name, value) in &r.values {
                let got = d.values.iter().find(|(n, _)| n == name).map(|(_, v)| v);
                match (value, got) {
                    (Value::Float(a), Some(Value::Float(b))) if a.is_nan() => assert!(b.is_nan()),
                    (a, Some(b)) => assert_eq!(a, b, "{name}"),
                    (_, None) => panic!("{name} missing"),
                }
            }
        }
    }

    #[test]
    fn every_kind_round_trips_exactly() {
        let records = vec![
            record(
                10,
                "mast",
                1_795_600_800_123,
                vec![
                    ("t", Value::Float(22.9)),
                    ("noise", Value::Float(8.251934566450128)),
                    ("n", Value::Int(i64::MAX)),
                    ("pump", Value::Bool(true)),
                    ("mode", Value::Text("auto".into())),
                    ("nan", Value::Float(f64::NAN)),
                    ("single", Value::Float(f64::from(1.1f32))),
                ],
            ),
            record(
                11,
                "meter",
                1_795_600_800_000,
                vec![("t", Value::Float(-0.5)), ("n", Value::Int(i64::MIN))],
            ),
            record(
                15,
                "mast",
                0,
                vec![
                    ("mode", Value::Int(3)),
                    ("inf", Value::Float(f64::INFINITY)),
                ],
            ),
            record(16, "mast", -5, vec![]),
        ];
        round_trip(&records, false);
        // Readings whose clock was never known good are flagged, one by one.
        let mut flagged = records.clone();
        flagged[2].unsynced = true;
        flagged[3].unsynced = true;
        round_trip(&flagged, false);
        round_trip(&records[..1], true);
        round_trip(&[], false);
    }

    #[test]
    fn decimals_travel_as_small_integers() {
        let records: Vec<Record> = (0..100)
            .map(|i| {
                record(
                    i,
                    "mast",
                    1_795_600_800_000 + i * 1000,
                    vec![("t", Value::Float(((215 + i % 3) as f64) / 10.0))],
                )
            })
            .collect();
        let body = encode(&records, false);
        // Per reading: a 1-byte seq delta, a 3-byte ts delta, a 1-byte value delta.
        assert!(body.len() < 100 * 5 + 60, "{} bytes", body.len());
        let column = decode(&body).unwrap();
        assert_eq!(column[1].values[0].1, Value::Float(21.6));
        round_trip(&records, false);
    }

    #[test]
    fn negative_zero_keeps_its_sign() {
        let records: Vec<Record> = [1.5, -0.0]
            .into_iter()
            .enumerate()
            .map(|(i, x)| record(i as i64 + 1, "mast", 1000, vec![("x", Value::Float(x))]))
            .collect();
        let decoded = decode(&encode(&records, false)).unwrap();
        let Value::Float(x) = decoded[1].values[0].1 else {
            panic!("a float: {decoded:?}");
        };
        assert_eq!(x.to_bits(), (-0.0f64).to_bits());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = encode(&[record(1, "a", 5, vec![("x", Value::Int(1))])], false);
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                bytes[at] = rng.u8(..);
            }
            let _ = decode(&bytes);
        }
        // A claimed length of 2^63 entries must not be allocated up front.
        assert!(decode(&[0xA1, 0x61, b's', 0x9B, 0x7F, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
