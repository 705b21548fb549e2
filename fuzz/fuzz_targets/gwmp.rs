//! A UDP datagram on the packet-forwarder port (Semtech GWMP): the header, the PUSH_DATA JSON,
//! each `rxpk` and `stat`, and each packet's LoRaWAN frame as far as it is read without keys,
//! as the forwarder endpoint handles them.
#![no_main]

use cairn_adapters::lora::{data_frame, gwmp, unknown_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(datagram) = gwmp::parse(data) else {
        return;
    };
    let _ = gwmp::ack(&datagram);
    let Ok(push) = serde_json::from_slice::<gwmp::PushData>(datagram.body) else {
        return;
    };
    let _ = push.stat();
    for rxpk in push.packets().flatten() {
        let _ = (rxpk.rssi(), rxpk.snr(), rxpk.datr.to_string());
        if let Ok((phy, dev_addr)) = data_frame(&rxpk) {
            let _ = unknown_frame(&phy, dev_addr);
        }
    }
});
