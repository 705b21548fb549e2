//! The payload of an MQTT `.../set` command, then the write it becomes for each kind of
//! writable Modbus point, as the command router and the Modbus adapter handle it.
#![no_main]

use std::sync::LazyLock;

use cairn::commands::parse_payload;
use cairn_adapters::CommandValue;
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

fuzz_target!(|data: &[u8]| {
    let (value, _id) = parse_payload(data);
    let Some(CommandValue::Value(value)) = value else {
        return;
    };
    for point in POINTS.iter() {
        let _ = point.encode(&value);
    }
});
