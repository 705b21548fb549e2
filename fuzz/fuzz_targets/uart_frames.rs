//! Binary frames from a serial sensor: framing settings taken from the input's first bytes (only
//! settings that `cairn check` accepts), then the stream cut into frames and every field type
//! read at every position. A frame starts with its header and never exceeds `max_length`.
#![no_main]

use cairn_adapters::uart::{Endian, FieldType, FrameFramer, FramesConfig};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

const CHECKSUMS: [Option<&str>; 6] = [
    None,
    Some("sum8"),
    Some("sum16"),
    Some("xor8"),
    Some("crc8"),
    Some("crc16_modbus"),
];
const TYPES: [FieldType; 7] = [
    FieldType::U8,
    FieldType::I8,
    FieldType::U16,
    FieldType::I16,
    FieldType::U32,
    FieldType::I32,
    FieldType::F32,
];

fn config(head: &[u8; 8]) -> Option<FramesConfig> {
    let sync: Vec<u8> = if head[0] & 1 == 0 {
        vec![0x42, 0x4D]
    } else {
        vec![head[1]]
    };
    let max_length = 8 + usize::from(head[2]);
    let mut config = json!({ "sync": sync, "max_length": max_length });
    match (head[0] >> 1) & 3 {
        0 => config["length"] = json!(usize::from(head[3]) % (max_length + 1)),
        mode => {
            config["length_field"] = json!({
                "at": head[3] % 6,
                "type": if mode == 1 { "u8" } else { "u16" },
                "endian": if mode == 3 { "little" } else { "big" },
                "adjust": head[4] as i8,
            });
        }
    }
    if let Some(kind) = CHECKSUMS[usize::from(head[5]) % CHECKSUMS.len()] {
        let at = (head[6] & 0x80 != 0).then(|| -i64::from(head[6] & 7));
        config["checksum"] = json!({ "kind": kind, "at": at, "from": head[7] % 4 });
    }
    let config: FramesConfig = serde_json::from_value(config).ok()?;
    let mut valid = true;
    config.problems(&mut |_, _| valid = false);
    valid.then_some(config)
}

fuzz_target!(|data: &[u8]| {
    let Some((head, stream)) = data.split_first_chunk::<8>() else {
        return;
    };
    let Some(config) = config(head) else {
        return;
    };
    let (sync, max_length) = (config.sync.clone(), config.max_length);
    let mut framer = FrameFramer::new(config);
    for piece in stream.chunks(1 + usize::from(head[7] >> 2)) {
        framer.push(
            piece,
            |frame| {
                assert!(frame.starts_with(&sync));
                assert!(frame.len() <= max_length);
                for at in 0..frame.len() + 4 {
                    for kind in TYPES {
                        let _ = kind.decode(frame, at, Endian::Big);
                        let _ = kind.decode(frame, at, Endian::Little);
                    }
                }
            },
            |_| {},
        );
    }
});
