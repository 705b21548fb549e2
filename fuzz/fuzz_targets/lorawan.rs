//! A LoRaWAN PHYPayload from the air: the peek that routes it by DevAddr, then the MIC check,
//! frame-counter tracking and decryption of an ABP session, frame after frame (each frame
//! preceded by its length byte), as an end device handles what its forwarder heard.
#![no_main]

use cairn_adapters::lora::lorawan::{Session, peek};
use libfuzzer_sys::fuzz_target;

// The session keys of the lora-packet test vectors (tests/fixtures/lora), so that the seeds
// carry valid MICs and the fuzzer gets past the check.
const NWK_S_KEY: [u8; 16] = [
    0x44, 0x02, 0x42, 0x41, 0xed, 0x4c, 0xe9, 0xa6, 0x8c, 0x6a, 0x8b, 0xc0, 0x55, 0x23, 0x3f, 0xd3,
];
const APP_S_KEY: [u8; 16] = [
    0xec, 0x92, 0x58, 0x02, 0xae, 0x43, 0x0c, 0xa7, 0x7f, 0xd3, 0xdd, 0x73, 0xcb, 0x2c, 0xc5, 0x88,
];

fuzz_target!(|data: &[u8]| {
    let Some((&setup, mut rest)) = data.split_first() else {
        return;
    };
    let last = (setup & 1 == 1).then_some(u32::from(setup) << 12);
    let mut session = Session::new(NWK_S_KEY, APP_S_KEY, last, setup & 2 == 2);
    while let Some((&len, tail)) = rest.split_first() {
        let (phy, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        let _ = peek(phy);
        let before = session.last_fcnt();
        if session.accept(phy).is_ok() {
            // An accepted frame moves the counter forward, or restarts it when allowed.
            let after = session.last_fcnt();
            assert!(after.is_some());
            assert!(before.is_none() || after > before || setup & 2 == 2);
        }
    }
});
