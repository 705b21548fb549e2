//! An application payload in Cayenne LPP, and the `layout` codec with fields at fixed
//! positions, as LoRa devices decode what they received.
#![no_main]

use cairn_adapters::codec::{PayloadConfig, cayenne};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let _ = cayenne::decode(data);
    let layout: PayloadConfig = serde_json::from_value(json!({
        "codec": "layout",
        "values": [
            {"name": "t", "at": 0, "type": "i16", "scale": 0.1},
            {"name": "h", "at": 2, "type": "u8"},
            {"name": "v", "at": 3, "type": "f32", "endian": "little"},
        ],
    }))
    .expect("a valid layout");
    let lpp: PayloadConfig =
        serde_json::from_value(json!({"codec": "cayenne_lpp"})).expect("a valid codec");
    let _ = layout.decoder().decode(data);
    let _ = lpp.decoder().decode(data);
});
