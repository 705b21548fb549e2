//! Bytes from a serial port, cut into lines and parsed by the text line formats, as a `uart`
//! device with `lines:` does. Lines never exceed their limit nor hold their delimiter.
#![no_main]

use cairn_adapters::uart::{LineFramer, LineParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [setup, chunk, stream @ ..] = data else {
        return;
    };
    let delimiter = if setup & 1 == 0 { b'\n' } else { b'\r' };
    let max_length = 1 + usize::from(setup >> 1) * 8;
    let parsers = [
        LineParser::Json,
        LineParser::KeyValue,
        LineParser::Csv {
            columns: vec!["a".into(), "b".into(), "c".into()],
            separator: ',',
        },
        LineParser::Csv {
            columns: vec!["t".into()],
            separator: ';',
        },
    ];
    let mut framer = LineFramer::new(delimiter, max_length);
    // A serial read returns whatever arrived: lines come split anywhere.
    for piece in stream.chunks(1 + usize::from(*chunk)) {
        framer.push(
            piece,
            |line| {
                assert!(line.len() <= max_length);
                assert!(!line.as_bytes().contains(&delimiter));
                for parser in &parsers {
                    let _ = parser.fields(line);
                }
            },
            |_| {},
        );
    }
});
