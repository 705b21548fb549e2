//! A text message from a WebSocket client of the live feed (`{"subscribe": {...}}`), and the
//! glob filter it sets, matched against device and value names.
#![no_main]

use cairn::feed::hub::Filter;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 5] = ["mast", "mast-2", "temperature", "pm2_5", "ünïcode*?"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(filter) = Filter::from_client_message(text) else {
        return;
    };
    for name in NAMES {
        let _ = (filter.device(name), filter.value(name));
    }
    let _ = filter.all_values();
});
