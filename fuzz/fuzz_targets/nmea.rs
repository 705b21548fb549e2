//! NMEA 0183 sentences from a GNSS receiver, as a `uart` device with `format: nmea` parses them.
#![no_main]

use cairn_adapters::uart::LineParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = LineParser::Nmea.fields(line);
    }
});
