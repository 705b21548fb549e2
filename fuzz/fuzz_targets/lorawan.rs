//! A LoRaWAN PHYPayload from the air: the peek that routes it by DevAddr, then the MIC check,
//! frame-counter tracking and decryption of an ABP session, frame after frame, as an end
//! device handles what its forwarder heard. Each frame is a length byte and its bytes; with the
//! length's top bit set, the bytes are signed with the session's keys first (a 4-byte counter,
//! a flags byte, an FPort and the payload, built by the `lorawan` crate), so that the fuzzer
//! gets past the MIC to the counter and decryption logic.
#![no_main]

use cairn_adapters::lora::lorawan::{Session, peek};
use libfuzzer_sys::fuzz_target;
use lorawan::creator::DataPayloadCreator;
use lorawan::keys::{AppSKey, NewSKey};

// The session keys of the lora-packet test vectors (tests/fixtures/lora), so that the seeds
// carry valid MICs.
const NWK_S_KEY: [u8; 16] = [
    0x44, 0x02, 0x42, 0x41, 0xed, 0x4c, 0xe9, 0xa6, 0x8c, 0x6a, 0x8b, 0xc0, 0x55, 0x23, 0x3f, 0xd3,
];
const APP_S_KEY: [u8; 16] = [
    0xec, 0x92, 0x58, 0x02, 0xae, 0x43, 0x0c, 0xa7, 0x7f, 0xd3, 0xdd, 0x73, 0xcb, 0x2c, 0xc5, 0x88,
];

/// A frame with a valid MIC from `[fcnt: 4 LE][flags][fport][payload...]`.
fn signed(body: &[u8]) -> Option<Vec<u8>> {
    let (fcnt, rest) = body.split_first_chunk::<4>()?;
    let [flags, port, payload @ ..] = rest else {
        return None;
    };
    let mut frame = DataPayloadCreator::new();
    frame
        .set_uplink(flags & 1 == 0)
        .set_confirmed(flags & 2 != 0)
        .set_dev_addr(&[0x49, 0xBE, 0x7D, 0xF1])
        .set_fcnt(u32::from_le_bytes(*fcnt));
    if flags & 4 != 0 {
        frame.set_f_port(*port);
    }
    let built = frame.build(
        payload,
        &[],
        &NewSKey::from(NWK_S_KEY),
        &AppSKey::from(APP_S_KEY),
    );
    built.ok().map(<[u8]>::to_vec)
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, mut rest)) = data.split_first() else {
        return;
    };
    let last = (setup & 1 == 1).then_some(u32::from(setup) << 12);
    let allow_reset = setup & 2 == 2;
    let mut session = Session::new(NWK_S_KEY, APP_S_KEY, last, allow_reset);
    while let Some((&head, tail)) = rest.split_first() {
        let (body, next) = tail.split_at(usize::from(head & 0x7F).min(tail.len()));
        rest = next;
        let phy = if head & 0x80 != 0 {
            match signed(body) {
                Some(phy) => phy,
                None => continue,
            }
        } else {
            body.to_vec()
        };
        let _ = peek(&phy);
        let before = session.last_fcnt();
        if session.accept(&phy).is_ok() {
            // An accepted frame moves the counter forward, or restarts it when allowed.
            let after = session.last_fcnt();
            assert!(after.is_some());
            assert!(before.is_none() || after > before || allow_reset);
        }
    }
});
