//! Binary frames: a sync header, a fixed or length-field size, a checksum, and fields at
//! declared byte positions. Garbage between frames is skipped by searching for the next header.

use serde::Deserialize;

use crate::reading::Value;

/// Checksum algorithms found in serial sensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumKind {
    /// Sum of the bytes, modulo 256 (1 byte).
    Sum8,
    /// Sum of the bytes, modulo 65536 (2 bytes; Plantower PMS sensors).
    Sum16,
    /// XOR of the bytes (1 byte).
    Xor8,
    /// CRC-8, polynomial 0x07, initial 0 (1 byte).
    Crc8,
    /// CRC-16/MODBUS, polynomial 0xA001 reflected, initial 0xFFFF (2 bytes, low byte first).
    Crc16Modbus,
}

impl ChecksumKind {
    /// The checksum's size in the frame.
    pub fn size(self) -> usize {
        match self {
            ChecksumKind::Sum8 | ChecksumKind::Xor8 | ChecksumKind::Crc8 => 1,
            ChecksumKind::Sum16 | ChecksumKind::Crc16Modbus => 2,
        }
    }

    /// The checksum of `data`.
    pub fn compute(self, data: &[u8]) -> u32 {
        match self {
            ChecksumKind::Sum8 => data.iter().fold(0u8, |a, b| a.wrapping_add(*b)).into(),
            ChecksumKind::Sum16 => data
                .iter()
                .fold(0u16, |a, b| a.wrapping_add((*b).into()))
                .into(),
            ChecksumKind::Xor8 => data.iter().fold(0u8, |a, b| a ^ b).into(),
            ChecksumKind::Crc8 => data
                .iter()
                .fold(0u8, |crc, b| {
                    (0..8).fold(crc ^ b, |c, _| {
                        if c & 0x80 != 0 {
                            (c << 1) ^ 0x07
                        } else {
                            c << 1
                        }
                    })
                })
                .into(),
            ChecksumKind::Crc16Modbus => data
                .iter()
                .fold(0xFFFFu16, |crc, b| {
                    (0..8).fold(crc ^ u16::from(*b), |c, _| {
                        if c & 1 != 0 {
                            (c >> 1) ^ 0xA001
                        } else {
                            c >> 1
                        }
                    })
                })
                .into(),
        }
    }

    /// The checksum as stored in `frame` at `at`: big-endian, except CRC-16/MODBUS (low byte
    /// first, as on the wire).
    fn stored(self, frame: &[u8], at: usize) -> Option<u32> {
        let bytes = frame.get(at..at + self.size())?;
        Some(match self {
            ChecksumKind::Crc16Modbus => u32::from(u16::from_le_bytes([bytes[0], bytes[1]])),
            ChecksumKind::Sum16 => u32::from(u16::from_be_bytes([bytes[0], bytes[1]])),
            _ => u32::from(bytes[0]),
        })
    }
}

/// Byte order of a multi-byte field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Endian {
    /// Most significant byte first (default; most sensors).
    #[default]
    Big,
    /// Least significant byte first.
    Little,
}

/// The type of a field in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Unsigned byte.
    U8,
    /// Signed byte.
    I8,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit.
    U32,
    /// Signed 32-bit.
    I32,
    /// IEEE 754 single precision.
    F32,
}

impl FieldType {
    /// Bytes the field takes.
    pub fn size(self) -> usize {
        match self {
            FieldType::U8 | FieldType::I8 => 1,
            FieldType::U16 | FieldType::I16 => 2,
            FieldType::U32 | FieldType::I32 | FieldType::F32 => 4,
        }
    }

    /// The field at `at` in `frame`, or `None` when the frame is too short.
    pub fn decode(self, frame: &[u8], at: usize, endian: Endian) -> Option<Value> {
        let mut bytes = [0u8; 4];
        let raw = frame.get(at..at + self.size())?;
        bytes[..raw.len()].copy_from_slice(raw);
        let n = raw.len();
        if endian == Endian::Little {
            bytes[..n].reverse();
        }
        // `bytes[..n]` is now big-endian.
        let b = &bytes[..n];
        Some(match self {
            FieldType::U8 => Value::Int(b[0].into()),
            FieldType::I8 => Value::Int((b[0] as i8).into()),
            FieldType::U16 => Value::Int(u16::from_be_bytes([b[0], b[1]]).into()),
            FieldType::I16 => Value::Int(i16::from_be_bytes([b[0], b[1]]).into()),
            FieldType::U32 => Value::Int(u32::from_be_bytes([b[0], b[1], b[2], b[3]]).into()),
            FieldType::I32 => Value::Int(i32::from_be_bytes([b[0], b[1], b[2], b[3]]).into()),
            FieldType::F32 => Value::Float(f32::from_be_bytes([b[0], b[1], b[2], b[3]]).into()),
        })
    }
}

impl FieldType {
    /// The bytes of `raw` as this type, in `endian` order: integers rounded to the nearest
    /// and refused out of range.
    pub fn encode(self, raw: f64, endian: Endian) -> Result<Vec<u8>, String> {
        let (min, max): (f64, f64) = match self {
            FieldType::U8 => (0.0, u8::MAX.into()),
            FieldType::I8 => (i8::MIN.into(), i8::MAX.into()),
            FieldType::U16 => (0.0, u16::MAX.into()),
            FieldType::I16 => (i16::MIN.into(), i16::MAX.into()),
            FieldType::U32 => (0.0, u32::MAX.into()),
            FieldType::I32 => (i32::MIN.into(), i32::MAX.into()),
            FieldType::F32 => (f32::MIN.into(), f32::MAX.into()),
        };
        let value = if self == FieldType::F32 {
            raw
        } else {
            raw.round()
        };
        if !value.is_finite() || !(min..=max).contains(&value) {
            return Err(format!("{raw} is out of range for {self:?}").to_lowercase());
        }
        // In range, the low bytes of the two's complement are the value's bytes.
        let mut bytes = match self {
            FieldType::F32 => (value as f32).to_be_bytes().to_vec(),
            _ => (value as i64).to_be_bytes()[8 - self.size()..].to_vec(),
        };
        if endian == Endian::Little {
            bytes.reverse();
        }
        Ok(bytes)
    }
}

/// `frames:` — how frames are found and checked.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FramesConfig {
    /// The header every frame starts with, e.g. `[0x42, 0x4D]`.
    pub sync: Vec<u8>,
    /// Fixed frame size in bytes, header and checksum included.
    pub length: Option<usize>,
    /// Or: the frame size read from the frame itself.
    pub length_field: Option<LengthField>,
    /// Frames announcing more than this are garbage (default 256).
    #[serde(default = "default_max_frame")]
    pub max_length: usize,
    /// The checksum, if the frame has one.
    pub checksum: Option<ChecksumConfig>,
}

/// Where a frame says how long it is.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LengthField {
    /// Byte position of the length.
    pub at: usize,
    /// `u8` or `u16`.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Byte order.
    #[serde(default)]
    pub endian: Endian,
    /// Added to the value to get the whole frame's size (the bytes the length does not count).
    #[serde(default)]
    pub adjust: i64,
}

/// Where the checksum sits and what it covers.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChecksumConfig {
    /// The algorithm.
    pub kind: ChecksumKind,
    /// Byte position of the checksum; negative counts from the frame's end (default: the last
    /// bytes of the frame).
    pub at: Option<i64>,
    /// First byte covered (default 0); the checksum covers up to the byte before itself.
    #[serde(default)]
    pub from: usize,
}

fn default_max_frame() -> usize {
    256
}

/// Why bytes were thrown away while looking for frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDrop {
    /// Bytes before a sync header.
    Garbage,
    /// A frame whose length field is impossible.
    BadLength,
    /// A frame whose checksum does not match.
    Checksum,
}

impl FrameDrop {
    /// The name of the device error counter.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameDrop::Garbage => "garbage",
            FrameDrop::BadLength => "bad_length",
            FrameDrop::Checksum => "checksum",
        }
    }
}

/// Finds, checks and cuts frames out of a byte stream.
#[derive(Debug)]
pub struct FrameFramer {
    config: FramesConfig,
    buffer: Vec<u8>,
}

impl FrameFramer {
    /// A framer for `config` (validated).
    pub fn new(config: FramesConfig) -> Self {
        Self {
            config,
            buffer: Vec::new(),
        }
    }

    /// The smallest prefix that tells a frame's size.
    fn header_len(&self) -> usize {
        let sync = self.config.sync.len();
        match &self.config.length_field {
            Some(field) => sync.max(field.at + field.kind.size()),
            None => sync,
        }
    }

    /// The size of the frame at the start of the buffer, once enough of it is there.
    fn frame_len(&self) -> Option<Result<usize, FrameDrop>> {
        if let Some(length) = self.config.length {
            return Some(Ok(length));
        }
        let field = self.config.length_field.as_ref()?;
        let Value::Int(n) = field.kind.decode(&self.buffer, field.at, field.endian)? else {
            return None;
        };
        let total = n + field.adjust;
        let valid = total >= self.header_len() as i64 && total <= self.config.max_length as i64;
        Some(if valid {
            Ok(total as usize)
        } else {
            Err(FrameDrop::BadLength)
        })
    }

    fn checksum_ok(&self, frame: &[u8]) -> bool {
        let Some(checksum) = &self.config.checksum else {
            return true;
        };
        let size = checksum.kind.size() as i64;
        let at = match checksum.at {
            Some(at) if at < 0 => frame.len() as i64 + at,
            Some(at) => at,
            None => frame.len() as i64 - size,
        };
        if at < checksum.from as i64 || at + size > frame.len() as i64 {
            return false;
        }
        let at = at as usize;
        checksum.kind.stored(frame, at) == Some(checksum.kind.compute(&frame[checksum.from..at]))
    }

    /// Feeds `bytes`; calls `frame` for every good frame and `dropped` for what was skipped.
    pub fn push(
        &mut self,
        bytes: &[u8],
        mut frame: impl FnMut(&[u8]),
        mut dropped: impl FnMut(FrameDrop),
    ) {
        self.buffer.extend_from_slice(bytes);
        let sync = self.config.sync.clone();
        loop {
            // Align the buffer on the next sync header.
            let start = self
                .buffer
                .windows(sync.len())
                .position(|w| w == sync.as_slice());
            match start {
                Some(0) => {}
                Some(skip) => {
                    self.buffer.drain(..skip);
                    dropped(FrameDrop::Garbage);
                }
                None => {
                    // Keep only what could be the beginning of a header.
                    let keep = sync.len().saturating_sub(1).min(self.buffer.len());
                    let cut = self.buffer.len() - keep;
                    if cut > 0 {
                        self.buffer.drain(..cut);
                        dropped(FrameDrop::Garbage);
                    }
                    return;
                }
            }
            if self.buffer.len() < self.header_len() {
                return;
            }
            let len = match self.frame_len() {
                Some(Ok(len)) => len,
                Some(Err(drop)) => {
                    dropped(drop);
                    self.buffer.drain(..1);
                    continue;
                }
                None => return,
            };
            if self.buffer.len() < len {
                return;
            }
            if self.checksum_ok(&self.buffer[..len]) {
                frame(&self.buffer[..len]);
                self.buffer.drain(..len);
            } else {
                // Maybe a false header inside garbage: look again one byte further.
                dropped(FrameDrop::Checksum);
                self.buffer.drain(..1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Plantower PMS5003 frame: 0x42 0x4D, length 28, 13 data words, sum16 checksum.
    pub fn pms5003(pm1: u16, pm25: u16, pm10: u16) -> Vec<u8> {
        let mut frame = vec![0x42, 0x4D, 0x00, 0x1C];
        let words = [
            pm1, pm25, pm10, pm1, pm25, pm10, 100, 50, 10, 5, 1, 0, 0x9700,
        ];
        for w in words {
            frame.extend_from_slice(&w.to_be_bytes());
        }
        let sum: u16 = frame.iter().map(|b| u16::from(*b)).sum();
        frame.extend_from_slice(&sum.to_be_bytes());
        frame
    }

    fn pms_config() -> FramesConfig {
        FramesConfig {
            sync: vec![0x42, 0x4D],
            length: None,
            length_field: Some(LengthField {
                at: 2,
                kind: FieldType::U16,
                endian: Endian::Big,
                adjust: 4,
            }),
            max_length: 64,
            checksum: Some(ChecksumConfig {
                kind: ChecksumKind::Sum16,
                at: None,
                from: 0,
            }),
        }
    }

    fn run(framer: &mut FrameFramer, bytes: &[u8]) -> (Vec<Vec<u8>>, Vec<FrameDrop>) {
        let (mut frames, mut drops) = (Vec::new(), Vec::new());
        framer.push(bytes, |f| frames.push(f.to_vec()), |d| drops.push(d));
        (frames, drops)
    }

    #[test]
    fn known_checksums() {
        // CRC-16/MODBUS of "123456789" is 0x4B37; CRC-8 (poly 7) is 0xF4.
        assert_eq!(ChecksumKind::Crc16Modbus.compute(b"123456789"), 0x4B37);
        assert_eq!(ChecksumKind::Crc8.compute(b"123456789"), 0xF4);
        assert_eq!(ChecksumKind::Sum8.compute(&[0xFF, 0x02]), 0x01);
        assert_eq!(ChecksumKind::Xor8.compute(&[0x0F, 0xF0, 0x01]), 0xFE);
        // A Modbus request with its CRC appended, low byte first.
        let request = [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD];
        assert_eq!(
            ChecksumKind::Crc16Modbus.stored(&request, 6),
            Some(ChecksumKind::Crc16Modbus.compute(&request[..6]))
        );
    }

    #[test]
    fn fields_in_both_byte_orders() {
        let frame = [0x12, 0x34, 0xFF, 0xFE, 0x41, 0x20, 0x00, 0x00];
        assert_eq!(
            FieldType::U16.decode(&frame, 0, Endian::Big),
            Some(Value::Int(0x1234))
        );
        assert_eq!(
            FieldType::U16.decode(&frame, 0, Endian::Little),
            Some(Value::Int(0x3412))
        );
        assert_eq!(
            FieldType::I16.decode(&frame, 2, Endian::Big),
            Some(Value::Int(-2))
        );
        assert_eq!(
            FieldType::I8.decode(&frame, 2, Endian::Big),
            Some(Value::Int(-1))
        );
        assert_eq!(
            FieldType::F32.decode(&frame, 4, Endian::Big),
            Some(Value::Float(10.0))
        );
        assert_eq!(
            FieldType::U32.decode(&frame, 6, Endian::Big),
            None,
            "past the end"
        );
    }

    #[test]
    fn frames_are_found_through_garbage_truncation_and_bad_checksums() {
        let mut framer = FrameFramer::new(pms_config());
        let good = pms5003(5, 12, 20);
        let mut bad = pms5003(1, 2, 3);
        bad[10] ^= 0xFF;
        let mut stream = vec![0x00, 0x42, 0x99, 0x13];
        stream.extend_from_slice(&good[..10]); // truncated frame, then a fresh one
        stream.extend_from_slice(&bad);
        stream.extend_from_slice(&[0x42, 0x4D, 0xFF, 0xFF]); // impossible length
        stream.extend_from_slice(&good);
        let mut frames = Vec::new();
        let mut drops = Vec::new();
        // Fed a byte at a time, as a slow UART would.
        for b in &stream {
            let (f, d) = run(&mut framer, &[*b]);
            frames.extend(f);
            drops.extend(d);
        }
        assert_eq!(frames, std::slice::from_ref(&good));
        assert!(
            drops.contains(&FrameDrop::Checksum) && drops.contains(&FrameDrop::BadLength),
            "{drops:?}"
        );
        // Random garbage never panics and never grows the buffer without bound.
        let mut rng = fastrand::Rng::with_seed(1);
        let noise: Vec<u8> = (0..100_000).map(|_| rng.u8(..)).collect();
        let _ = run(&mut framer, &noise);
        assert!(framer.buffer.len() <= 64);
        assert_eq!(
            run(&mut framer, &good).0.len(),
            1,
            "still in step after the noise"
        );
    }
}
