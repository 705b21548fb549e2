//! The payload of an MQTT `.../set` command, then the write it becomes for each kind of
//! writable Modbus point, as the command router and the Modbus adapter handle it; or, for a
//! payload of fields, the LoRaWAN downlink a port's layout encodes from its `values`.
#![no_main]

use std::sync::LazyLock;

use cairn::commands::parse_payload;
use cairn_adapters::CommandValue;
use cairn_adapters::codec::{PayloadConfig, PayloadDecoder};
use cairn_adapters::modbus::Point;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

static POINTS: LazyLock<Vec<Point>> = LazyLock::new(|| {
    [
        json!({"name": "coil", "table": "coil", "address": 0, "writable": true}),
        json!({"name": "u16", "table": "holding", "address": 0, "writable": true, "scale": 0.1}),
        json!({"name": "i32", "table": "holding", "address": 0, "type": "i32", "order": "cdab", "writable": true, "offset": -40}),
        json!({"name": "u64", "table": "holding", "address": 0, "type": "u64", "writable": true}),
        json!({"name": "f32", "table": "holding", "address": 0, "type": "f32", "writable": true}),
        json!({"name": "f64", "table": "holding", "address": 0, "type": "f64", "order": "dcba", "writable": true}),
        json!({"name": "bit", "table": "holding", "address": 0, "type": "bool", "bit": 15, "writable": true}),
        json!({"name": "text", "table": "holding", "address": 0, "type": "string", "length": 4, "writable": true}),
    ]
    .into_iter()
    .map(|p| serde_json::from_value(p).expect("a valid point"))
    .collect()
});

static LAYOUT: LazyLock<PayloadDecoder> = LazyLock::new(|| {
    let config: PayloadConfig = serde_json::from_value(json!({"codec": "layout", "values": [
        {"name": "interval", "at": 0, "type": "u16"},
        {"name": "setpoint", "at": 2, "type": "i16", "endian": "little", "scale": 0.1, "offset": -40},
        {"name": "gain", "at": 4, "type": "f32"},
    ]}))
    .expect("a valid layout");
    config.decoder()
});

fuzz_target!(|data: &[u8]| {
    let (value, _id) = parse_payload(data);
    match value {
        Some(CommandValue::Value(value)) => {
            for point in POINTS.iter() {
                let _ = point.encode(&value);
            }
        }
        Some(CommandValue::Fields(fields)) => {
            if let Some(serde_json::Value::Object(values)) = fields.get("values")
                && let Ok(bytes) = LAYOUT.encode(values)
            {
                // What encodes decodes.
                assert!(LAYOUT.decode(&bytes).is_ok());
            }
        }
        None => {}
    }
});
