//! How readings become MQTT payloads: `json` (one reading per message, the default contract)
//! or `cbor` (a columnar batch, optionally compressed). `docs/wire-format.md` specifies both;
//! [`decode`] reads either back, for `cairn decode` and the tests.

pub mod cbor;
pub mod compress;
pub mod json;

use std::sync::Arc;

use cairn_adapters::Value;

use crate::config::{Compression, Encoding};
use crate::store::Record;
pub use cbor::Decoded;

/// The version of the batch layout, the high nibble of its first byte.
pub const BATCH_VERSION: u8 = 1;

/// The most a compressed batch may expand to when decoded: far above any batch Cairn makes,
/// far below what would hurt a Pi.
pub const DECODE_LIMIT: usize = 64 * 1024 * 1024;

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Nothing to decode.
    #[error("empty payload")]
    Empty,
    /// The first byte names no format this version knows.
    #[error("unknown format byte 0x{0:02x}")]
    UnknownFormat(u8),
    /// The compressed body is damaged.
    #[error("cannot decompress: {0}")]
    Decompress(String),
    /// The body expands beyond the decoder's limit.
    #[error("decompresses to more than {0} bytes")]
    TooLarge(usize),
    /// The CBOR is not well-formed, or not of the expected types.
    #[error("malformed CBOR: {0}")]
    Cbor(#[from] minicbor::decode::Error),
    /// The JSON is not a reading.
    #[error("malformed JSON reading: {0}")]
    Json(String),
    /// Well-formed, but not a batch as the specification describes it.
    #[error("invalid batch: {0}")]
    Invalid(String),
}

/// The first byte of a batch payload: the layout version, then the compression. It can never
/// be `{`, which starts every `json` payload.
fn format_byte(compression: Compression) -> u8 {
    BATCH_VERSION << 4 | compression_code(compression)
}

fn compression_code(compression: Compression) -> u8 {
    match compression {
        Compression::None => 0,
        Compression::Zstd => 1,
        Compression::Deflate => 2,
    }
}

/// Turns batches of records into payloads, as the config says.
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    encoding: Encoding,
    compression: Compression,
}

impl Encoder {
    /// An encoder for `encoding`, compressing batches with `compression`.
    pub fn new(encoding: Encoding, compression: Compression) -> Self {
        Self {
            encoding,
            compression,
        }
    }

    /// Whether one message carries one reading only (`json`).
    pub fn single(&self) -> bool {
        self.encoding == Encoding::Json
    }

    /// The payload for `records`; `json` takes exactly one.
    pub fn encode(&self, records: &[Record], historical: bool) -> Vec<u8> {
        match (self.encoding, records) {
            (Encoding::Json, [record]) => json::reading(record, historical),
            _ => {
                let body = cbor::encode(records, historical);
                let mut payload = vec![format_byte(self.compression)];
                payload.extend(compress::compress(self.compression, body));
                payload
            }
        }
    }
}

/// The readings in `payload`, of either encoding. A `json` payload does not name its device:
/// it is `device` (the topic's last level).
pub fn decode(payload: &[u8], device: &str) -> Result<Vec<Decoded>, DecodeError> {
    let (&first, rest) = payload.split_first().ok_or(DecodeError::Empty)?;
    if first == b'{' {
        return json_reading(payload, device).map(|r| vec![r]);
    }
    if first >> 4 != BATCH_VERSION {
        return Err(DecodeError::UnknownFormat(first));
    }
    let compression = [Compression::None, Compression::Zstd, Compression::Deflate]
        .into_iter()
        .find(|c| compression_code(*c) == first & 0x0F)
        .ok_or(DecodeError::UnknownFormat(first))?;
    let body = compress::decompress(compression, rest, DECODE_LIMIT)?;
    cbor::decode(&body)
}

/// A `json` reading: `{"seq", "ts", "values"}`, `null` standing for a non-finite float.
fn json_reading(payload: &[u8], device: &str) -> Result<Decoded, DecodeError> {
    #[derive(serde::Deserialize)]
    struct Reading {
        seq: i64,
        ts: String,
        values: serde_json::Map<String, serde_json::Value>,
        #[serde(default)]
        historical: bool,
        #[serde(default)]
        unsynced: bool,
    }
    let reading: Reading =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    let ts =
        humantime::parse_rfc3339(&reading.ts).map_err(|e| DecodeError::Json(format!("ts: {e}")))?;
    let values = reading
        .values
        .into_iter()
        .map(|(name, json)| {
            let value = match json {
                serde_json::Value::Null => Some(Value::Float(f64::NAN)),
                other => Value::from_json(other),
            };
            value
                .map(|v| (Arc::from(name.as_str()), v))
                .ok_or_else(|| DecodeError::Json(format!("`{name}` is not a scalar")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Decoded {
        device: Arc::from(device),
        seq: reading.seq,
        ts_ms: crate::pipeline::unix_millis(ts),
        values,
        historical: reading.historical,
        unsynced: reading.unsynced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_encodings_decode_and_formats_are_told_apart() {
        let record = Record {
            priority: Default::default(),
            unsynced: false,
            seq: 7,
            device: Arc::from("tank"),
            ts_ms: 1_795_600_800_123,
            values: vec![(Arc::from("level"), Value::Float(2.41))],
        };
        for (encoding, compression) in [
            (Encoding::Json, Compression::None),
            (Encoding::Cbor, Compression::None),
            (Encoding::Cbor, Compression::Zstd),
            (Encoding::Cbor, Compression::Deflate),
        ] {
            let payload =
                Encoder::new(encoding, compression).encode(std::slice::from_ref(&record), false);
            assert_eq!(payload[0] == b'{', encoding == Encoding::Json);
            let decoded = decode(&payload, "tank").unwrap();
            assert_eq!(decoded.len(), 1);
            assert_eq!(
                (&*decoded[0].device, decoded[0].seq, decoded[0].ts_ms),
                ("tank", 7, record.ts_ms)
            );
            assert_eq!(decoded[0].values, record.values);
        }
        assert!(matches!(
            decode(&[0x13, 1], "x"),
            Err(DecodeError::UnknownFormat(0x13))
        ));
        assert!(matches!(
            decode(&[0x20], "x"),
            Err(DecodeError::UnknownFormat(0x20))
        ));
        assert!(matches!(decode(&[], "x"), Err(DecodeError::Empty)));
    }

    #[test]
    fn the_specification_example_is_what_cairn_writes() {
        let spec = include_str!("../../../docs/wire-format.md");
        let hex = spec
            .split("In bytes (hex), with the first byte `10`:\n\n```\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap();
        let expected = cairn_adapters::codec::unhex(hex.replace('\n', " ").trim()).unwrap();
        let reading = |seq, ts_ms, t, pump| Record {
            priority: Default::default(),
            unsynced: false,
            seq,
            device: Arc::from("mast"),
            ts_ms,
            values: vec![
                (Arc::from("temperature"), Value::Float(t)),
                (Arc::from("pump"), Value::Bool(pump)),
            ],
        };
        let records = [
            reading(41, 1_795_600_800_000, 21.5, true),
            reading(42, 1_795_600_801_000, 21.6, false),
        ];
        let payload = Encoder::new(Encoding::Cbor, Compression::None).encode(&records, false);
        let hex: String = payload.iter().map(|b| format!("{b:02x} ")).collect();
        assert_eq!(payload, expected, "cairn writes: {hex}");
    }
}
