//! A payload on a readings topic, as `cairn decode` and a consumer read it: the format byte,
//! zstd or deflate (bounded), then the CBOR batch or a JSON reading. Whatever decodes survives a
//! round trip through the encoder unchanged.
#![no_main]

use cairn::store::Record;
use cairn::uplink::encoding::{self, Decoded, cbor};
use cairn_adapters::Priority;
use libfuzzer_sys::fuzz_target;

/// The readings in an order that does not depend on how blocks and columns were laid out
/// (which carries no meaning, docs/wire-format.md).
fn sorted(mut readings: Vec<Decoded>) -> Vec<String> {
    readings.sort_by(|a, b| (&a.device, a.seq).cmp(&(&b.device, b.seq)));
    for reading in &mut readings {
        reading.values.sort_by(|a, b| a.0.cmp(&b.0));
    }
    readings.iter().map(|r| format!("{r:?}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(readings) = encoding::decode(data, "fuzz") else {
        return;
    };
    if data.first() == Some(&b'{') || readings.is_empty() {
        return;
    }
    let historical = readings[0].historical;
    let records: Vec<Record> = readings
        .iter()
        .map(|r| Record {
            seq: r.seq,
            device: r.device.clone(),
            ts_ms: r.ts_ms,
            values: r.values.clone(),
            priority: Priority::default(),
            unsynced: r.unsynced,
        })
        .collect();
    let again = cbor::decode(&cbor::encode(&records, historical)).expect("our own batch decodes");
    assert_eq!(sorted(readings), sorted(again));
});
