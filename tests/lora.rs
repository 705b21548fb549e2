//! The lora adapter end to end, checked at a real mosquitto subscriber: the test plays a
//! packet forwarder replaying public traffic (PROTOCOL.TXT's examples, lora-packet's LoRaWAN
//! vectors), frames built by an independent encoder, Cayenne LPP cross-checked against
//! pycayennelpp, bad datagrams of every kind, and serial modules over socat ptys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use support::feed::api;
use support::lora::{LoraModule, PacketForwarder, build_frames, push_data, rxpk, unhex};
use support::serial::SerialPair;
use support::{Broker, Cairn, PATIENCE, Subscriber};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/lora");
const LISTENING: &str = "Listening for LoRa packet forwarders device=gw listen=";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

fn vectors() -> Value {
    serde_json::from_str(&fixture("lorawan_vectors.json")).unwrap()
}

fn config(broker: u16, devices: &str) -> String {
    format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\n\
         mqtt: {{host: 127.0.0.1, port: {broker}, reconnect_min: 100ms, reconnect_max: 1s}}\n\
         devices:\n{devices}"
    )
}

/// The packet-forwarder device `gw` on a free loopback port, with extra `forwarder:` settings.
fn forwarder(extra: &str) -> String {
    format!("  - name: gw\n    type: lora\n    forwarder: {{listen: '127.0.0.1:0'{extra}}}\n")
}

/// An end device behind `gw` with the public vectors' keys.
fn node(name: &str, dev_addr: &str, payload: &str) -> String {
    let v = vectors();
    format!(
        "  - name: {name}\n    type: lora\n    lorawan: {{via: gw, dev_addr: '{dev_addr}', nwk_s_key: {}, app_s_key: {}}}\n    payload: {payload}\n",
        v["nwk_s_key"].as_str().unwrap(),
        v["app_s_key"].as_str().unwrap()
    )
}

/// Starts cairn and a packet forwarder talking to its endpoint.
fn start(broker: &Broker, devices: &str) -> (Cairn, PacketForwarder) {
    let cairn = Cairn::start(&config(broker.port, devices));
    let server: SocketAddr = cairn.logged_addr(LISTENING);
    (cairn, PacketForwarder::new(server))
}

/// The error counters of `device` once `done` holds for them (polled from `/api/devices`).
fn wait_errors(cairn: &Cairn, device: &str, done: impl Fn(&Value) -> bool) -> Value {
    let feed = cairn.feed();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let devices = api(feed, "/api/devices");
        let errors = devices
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == device)
            .unwrap()["errors"]
            .clone();
        if done(&errors) {
            return errors;
        }
        assert!(Instant::now() < deadline, "{device}: {errors}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn public_forwarder_traffic_and_lorawan_vectors_reach_the_broker() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let devices =
        forwarder(", unknown_devices: publish") + &node("mote", "49BE7DF1", "{codec: raw}");
    let (cairn, mut gateway) = start(&broker, &devices);
    gateway.pull();

    // PROTOCOL.TXT's rxpk example: none of its three packets is a usable uplink; each is
    // counted by its reason, and the datagram is still acknowledged.
    gateway.push(&fixture("protocol_txt_rxpk.json"));
    let errors = wait_errors(&cairn, "gw", |e| {
        e["bad_base64"] == 1 && e["not_uplink"] == 1
    });
    assert_eq!(
        errors["unknown_device"], 1,
        "the FSK test packet parses as a frame of nobody: {errors}"
    );
    // Its stat example becomes a reading of the forwarder device.
    gateway.push(&fixture("protocol_txt_stat.json"));
    let stats = &sub.wait_values("gw", 2)[1];
    assert_eq!(stats["rx_packets"], 2);
    assert_eq!(stats["ack_ratio"], 100.0);
    assert_eq!(stats["latitude"], 46.24);
    assert_eq!(stats["altitude"], 145.0);
    assert_eq!(stats["gateway"], "AA555A0000000001");

    // lora-packet's vectors: MIC checked, counter tracked, payload decrypted.
    let v = vectors();
    let frames: Vec<Value> = v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| rxpk(&unhex(f["phy"].as_str().unwrap()), -57, 9.5))
        .collect();
    gateway.push(&push_data(&frames));
    let got = sub.wait_values("mote", 3);
    for (reading, frame) in got.iter().zip(v["frames"].as_array().unwrap()) {
        assert_eq!(reading["fcnt"], frame["fcnt"]);
        let plaintext = frame["plaintext"].as_str().unwrap();
        if plaintext.is_empty() {
            assert!(reading.get("payload").is_none(), "{reading}");
        } else {
            let hex: String = plaintext.bytes().map(|b| format!("{b:02x}")).collect();
            assert_eq!(reading["payload"], hex);
            assert_eq!(reading["fport"], 1);
        }
        assert_eq!(reading["rssi"], -57.0);
        assert_eq!(reading["snr"], 9.5);
        assert_eq!(reading["frequency"], 868.1);
        assert_eq!(reading["data_rate"], "SF7BW125");
        assert_eq!(reading["gateway"], "AA555A0000000001");
    }

    // Heard again (a second gateway, or the same frames replayed): refused and counted.
    let bad_mic = rxpk(&unhex(v["bad_mic"]["phy"].as_str().unwrap()), -57, 9.5);
    gateway.push(&push_data(&[frames[2].clone(), frames[0].clone(), bad_mic]));
    let errors = wait_errors(&cairn, "mote", |e| {
        e["duplicate"] == 1 && e["replay"] == 1 && e["bad_mic"] == 1
    });
    assert_eq!(errors.as_object().unwrap().len(), 3, "{errors}");

    // A frame from a DevAddr nobody claims is published raw by the forwarder device.
    let stranger = unhex("400403020120030001A4A93023B19A5C5F0828");
    gateway.push(&push_data(&[rxpk(&stranger, -90, -3.0)]));
    let unknown = &sub.wait_values("gw", 3)[2];
    assert_eq!(unknown["dev_addr"], "01020304");
    assert_eq!(unknown["fcnt"], 3);
    assert_eq!(unknown["fport"], 1);
    assert_eq!(unknown["payload"], "a4a93023b19a", "still encrypted");
    assert_eq!(
        sub.values_of("mote").len(),
        3,
        "nothing replayed was published"
    );
}

#[test]
fn cayenne_lpp_matches_pycayennelpp_for_every_type() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let devices = forwarder("") + &node("field", "26011BDA", "{codec: cayenne_lpp}");
    let (_cairn, mut gateway) = start(&broker, &devices);
    let v = vectors();
    // Every type of the table, each with values at the edges of its range.
    let lpp = json!([
        [
            [0, 1, [1]],
            [1, 2, [255]],
            [2, 3, [-327.68]],
            [3, 4, [327.67]],
            [100, 5, [4294967295u32]]
        ],
        [
            [101, 1, [65535]],
            [102, 2, [1]],
            [103, 3, [-3276.8]],
            [103, 4, [27.2]],
            [104, 5, [127.5]]
        ],
        [
            [113, 6, [1.234, -1.234, 0]],
            [115, 7, [1013.2]],
            [116, 8, [655.35]],
            [117, 9, [65.535]]
        ],
        [
            [118, 1, [4294967295u32]],
            [120, 2, [100]],
            [121, 3, [-32768]],
            [122, 4, [-8388.608]]
        ],
        [
            [125, 5, [65535]],
            [128, 6, [65535]],
            [130, 7, [4294967.295]],
            [131, 8, [4294967.295]]
        ],
        [
            [132, 9, [359]],
            [133, 10, [1795600800]],
            [134, 11, [-327.68, 0.01, 327.67]]
        ],
        [
            [135, 12, [255, 128, 0]],
            [136, 13, [42.3519, -87.9094, 10]],
            [136, 14, [-90, 180, -83886.08]]
        ],
        [[142, 15, [1]]],
    ]);
    let request = json!({
        "nwk": v["nwk_s_key"], "app": v["app_s_key"],
        "frames": lpp.as_array().unwrap().iter().enumerate()
            .map(|(i, records)| json!({"dev_addr": "26011BDA", "fcnt": i + 1, "fport": 2, "lpp": records}))
            .collect::<Vec<_>>(),
    });
    let frames = build_frames(request);
    let packets: Vec<Value> = frames.iter().map(|f| rxpk(&f.phy, -80, 4.0)).collect();
    gateway.push(&push_data(&packets));
    let got = sub.wait_values("field", frames.len());
    let mut checked = 0;
    for (reading, frame) in got.iter().zip(&frames) {
        for (field, expected) in frame.fields.as_ref().unwrap() {
            let (ours, theirs) = (reading[field].as_f64(), expected.as_f64());
            assert!(
                matches!((ours, theirs), (Some(a), Some(b)) if (a - b).abs() < 1e-9),
                "{field}: cairn {:?}, pycayennelpp {expected}",
                reading.get(field)
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 39, "every field of the 27 types was compared");
}

#[test]
fn frame_counters_survive_a_restart_and_roll_over() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let devices = forwarder("") + &node("tank", "26011BDA", "{codec: raw}");
    let (mut cairn, mut gateway) = start(&broker, &devices);
    let v = vectors();
    let frame = |fcnt: u32| json!({"dev_addr": "26011BDA", "fcnt": fcnt, "fport": 1, "payload": format!("{fcnt:08x}")});
    let frames = build_frames(json!({
        "nwk": v["nwk_s_key"], "app": v["app_s_key"],
        "frames": [frame(1), frame(2), frame(65_535), frame(65_536), frame(65_537)],
    }));
    let packet = |i: usize| push_data(&[rxpk(&frames[i].phy, -70, 5.0)]);
    gateway.push(&packet(0));
    gateway.push(&packet(1));
    sub.wait_values("tank", 2);

    assert!(cairn.stop());
    cairn.restart();
    let mut gateway = PacketForwarder::new(cairn.logged_addr(LISTENING));
    cairn.wait_log("Device online device=gw");
    // Frame 2 again after the restart: the stored counter refuses it.
    gateway.push(&packet(1));
    wait_errors(&cairn, "tank", |e| e["replay"] == 1);
    // 65535, then 65536 and 65537, whose 16-bit counters are 0 and 1.
    for i in 2..5 {
        gateway.push(&packet(i));
    }
    let got = sub.wait_values("tank", 5);
    let counters: Vec<i64> = got.iter().map(|r| r["fcnt"].as_i64().unwrap()).collect();
    assert_eq!(counters, [1, 2, 65_535, 65_536, 65_537]);
    assert_eq!(
        got[3]["payload"], "00010000",
        "decrypted with the 32-bit counter"
    );
}

#[test]
fn bad_datagrams_are_counted_and_the_endpoint_keeps_serving() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let devices = forwarder(", gateways: ['AA555A0000000001'], max_datagram: 8192")
        + &node("mote", "49BE7DF1", "{codec: raw}");
    let (cairn, mut gateway) = start(&broker, &devices);
    let v = vectors();
    let good = unhex(v["frames"][0]["phy"].as_str().unwrap());

    gateway.send_raw(&[2, 0x12]); // truncated header
    gateway.send_raw(&[2, 0, 1, 0, 1, 2, 3]); // truncated gateway EUI
    gateway.send_raw(&[3, 0, 1, 0, 0xAA, 0x55, 0x5A, 0, 0, 0, 0, 1]); // protocol version 3
    gateway.send_raw(&[2, 0, 1, 9, 0xAA, 0x55, 0x5A, 0, 0, 0, 0, 1]); // unknown identifier
    let mut oversize = vec![2, 0, 1, 0, 0xAA, 0x55, 0x5A, 0, 0, 0, 0, 1];
    oversize.resize(20_000, b' ');
    gateway.send_raw(&oversize);
    assert!(
        gateway.push_from([1; 8], "{\"rxpk\":[]}").is_none(),
        "a stranger gateway gets no ack"
    );
    gateway.push("{\"rxpk\": [ {\"freq\": 868.1,"); // malformed JSON
    let mut invalid = rxpk(&good, -50, 1.0);
    invalid["data"] = json!("!!!not base64!!!");
    let mut bad_crc = rxpk(&good, -50, 1.0);
    bad_crc["stat"] = json!(-1);
    let mut wrong_size = rxpk(&good, -50, 1.0);
    wrong_size["size"] = json!(99);
    let join = rxpk(
        &unhex("0039363463336913AA05693574323831330489C65B1304"),
        -50,
        1.0,
    );
    let truncated = rxpk(&good[..8], -50, 1.0);
    let malformed = json!({"freq": "high", "data": 7});
    gateway.push(&push_data(&[
        invalid, bad_crc, malformed, wrong_size, join, truncated,
    ]));
    gateway.push("{\"stat\": {\"rxnb\": \"two\"}}");

    let errors = wait_errors(&cairn, "gw", |e| {
        e["bad_json"] == 1 && e["not_lorawan"] == 1 && e["unknown_join"] == 1
    });
    for (counter, n) in [
        ("oversize", 1),
        ("bad_version", 1),
        ("unknown_gateway", 1),
        ("bad_base64", 1),
        ("bad_crc", 1),
        ("bad_size", 1),
        ("bad_rxpk", 1),
        ("bad_stat", 1),
    ] {
        assert_eq!(errors[counter], n, "{counter}: {errors}");
    }
    assert!(errors["truncated"].as_u64().unwrap() >= 2, "{errors}");
    assert!(errors["bad_identifier"].as_u64().unwrap() >= 1, "{errors}");

    // Then random garbage; none of it may stop the endpoint.
    let mut garbage = fastrand::Rng::with_seed(5);
    for _ in 0..200 {
        let noise: Vec<u8> = (0..garbage.usize(..600)).map(|_| garbage.u8(..)).collect();
        gateway.send_raw(&noise);
    }
    wait_errors(&cairn, "gw", |e| e["bad_version"].as_u64() > Some(100));

    // Still serving: the next good frame is acknowledged, decrypted and published.
    gateway.push(&push_data(&[rxpk(&good, -50, 1.0)]));
    let got = sub.wait_values("mote", 1);
    assert_eq!(got[0]["payload"], "74657374");
    assert!(cairn.log().contains("Device online device=gw"));
    assert!(!cairn.log().contains("panicked"));
}

#[test]
fn serial_modules_rn2483_and_rak3172_over_ptys() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let (rn_dir, rak_dir) = (dir.path().join("rn"), dir.path().join("rak"));
    std::fs::create_dir_all(&rn_dir).unwrap();
    std::fs::create_dir_all(&rak_dir).unwrap();
    let rn = SerialPair::start(&rn_dir);
    let rak = SerialPair::start(&rak_dir);
    // Temperature 27.2 °C on channel 3, then noise, a reception error, bad hex, and humidity.
    let packets = ["03670110", "NOISE", "ERR", "0367ZZ", "05682A"];
    let rn_module = LoraModule::start("rn2483", &rn.sensor, dir.path(), &packets);
    let rak_module = LoraModule::start("rak3172", &rak.sensor, dir.path(), &packets);
    let devices = format!(
        "  - name: rn\n    type: lora\n    module: {{kind: rn2483, port: {}, frequency: 868100000, spreading_factor: 9, bandwidth: 125}}\n    payload: {{codec: cayenne_lpp}}\n\
         \x20 - name: rak\n    type: lora\n    module: {{kind: rak3172, port: {}}}\n    payload: {{codec: cayenne_lpp, values: [{{name: air, field: temperature_3}}, {{name: rh, field: humidity_5}}]}}\n",
        rn.port.display(),
        rak.port.display()
    );
    let cairn = Cairn::start(&config(broker.port, &devices));

    let got = sub.wait_values("rn", 2);
    assert_eq!(got[0]["temperature_3"], 27.2);
    assert_eq!(got[0]["snr"], -7.0);
    assert_eq!(got[0]["frequency"], 868.1);
    assert_eq!(got[0]["data_rate"], "SF9BW125");
    assert_eq!(got[1]["humidity_5"], 21.0);
    let got = sub.wait_values("rak", 2);
    assert_eq!(got[0]["air"], 27.2);
    assert_eq!(got[0]["rssi"], -43.0);
    assert_eq!(got[0]["snr"], 7.0);
    assert_eq!(got[1]["rh"], 21.0);
    wait_errors(&cairn, "rak", |e| e["bad_hex"] == 1);
    wait_errors(&cairn, "rn", |e| e["bad_hex"] == 1 && e["radio_err"] == 1);

    let rn_commands = rn_module.commands();
    assert_eq!(
        rn_commands[..7],
        [
            "radio rxstop",
            "mac pause",
            "radio set wdt 0",
            "radio set freq 868100000",
            "radio set sf sf9",
            "radio set bw 125",
            "radio rx 0"
        ]
    );
    assert!(rn_commands.contains(&"radio get snr".to_string()));
    assert_eq!(
        rak_module.commands()[..3],
        ["AT+PRECV=0", "AT+NWM=0", "AT+PRECV=65534"]
    );
    assert_eq!(
        sub.values_of("rn").len(),
        2,
        "noise and errors published nothing"
    );
}

#[test]
fn an_unplugged_module_goes_offline_and_is_read_again_when_plugged_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let mut serial = SerialPair::start(dir.path());
    let module = LoraModule::start("rak3172", &serial.sensor, dir.path(), &["03670110"]);
    let devices = format!(
        "  - name: rak\n    type: lora\n    module: {{kind: rak3172, port: {}}}\n    payload: {{codec: cayenne_lpp}}\n",
        serial.port.display()
    );
    let cairn = Cairn::start(&config(broker.port, &devices));
    assert_eq!(sub.wait_values("rak", 1)[0]["temperature_3"], 27.2);

    drop(module);
    serial.unplug();
    cairn.wait_log("Device offline device=rak");

    serial.plug();
    let _module = LoraModule::start("rak3172", &serial.sensor, dir.path(), &["05682A"]);
    assert_eq!(sub.wait_values("rak", 2)[1]["humidity_5"], 21.0);
    cairn.wait_log_count("Device online device=rak", 2);
}

/// The OTAA device of the join test, as its label would give it.
const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
const JOIN_EUI: &str = "70B3D57ED0000001";
const DEV_EUI: &str = "0102030405060708";

#[test]
fn an_otaa_device_joins_offline_and_its_uplinks_decode() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/sensor");
    let devices = forwarder("")
        + &format!(
            "  - name: sensor\n    type: lora\n    lorawan: {{via: gw, otaa: {{dev_eui: '{DEV_EUI}', join_eui: '{JOIN_EUI}', app_key: {APP_KEY}}}}}\n    payload: {{codec: cayenne_lpp}}\n"
        );
    let (mut cairn, mut fw) = start(&broker, &devices);
    fw.pull(); // the gateway opens its downlink path, as forwarders do every few seconds

    // lora-packet builds the join request; Cairn answers in RX1 through the gateway.
    let request = support::lora::lora_packet(&["join", APP_KEY, JOIN_EUI, DEV_EUI, "1234"]);
    let request = unhex(request["phy"].as_str().unwrap());
    let heard = rxpk(&request, -40, 9.0);
    fw.push(&push_data(std::slice::from_ref(&heard)));
    let txpk = fw.take_downlink(support::lora::GATEWAY, "a join accept");
    let tmst = heard["tmst"].as_u64().unwrap();
    assert_eq!(
        txpk["tmst"].as_u64(),
        Some(tmst + 5_000_000),
        "JOIN_ACCEPT_DELAY1 after the request: {txpk}"
    );
    assert_eq!(txpk["imme"], false);
    assert_eq!(
        txpk["freq"], heard["freq"],
        "EU868 RX1: the request's channel"
    );
    assert_eq!(txpk["datr"], heard["datr"], "and its data rate");
    assert_eq!(txpk["ipol"], true, "downlinks invert polarity");
    assert_eq!(txpk["size"], 17);
    let phy = base64::engine::general_purpose::STANDARD
        .decode(txpk["data"].as_str().unwrap())
        .unwrap();
    let phy_hex: String = phy.iter().map(|b| format!("{b:02x}")).collect();

    // The device opens the accept and derives its keys, independently of Cairn.
    let accept = support::lora::lora_packet(&["accept", APP_KEY, "1234", &phy_hex]);
    assert_eq!(accept["mtype"], "Join Accept", "{accept}");
    assert_eq!(accept["mic_ok"], true, "{accept}");
    assert_eq!(accept["net_id"], "000000");
    assert_eq!(accept["rx_delay"], 1);
    let dev_addr = accept["dev_addr"].as_str().unwrap().to_string();
    let (nwk, app) = (
        accept["nwk_s_key"].as_str().unwrap().to_string(),
        accept["app_s_key"].as_str().unwrap().to_string(),
    );
    let uplink = |fcnt: &str, payload: &str| {
        let up = support::lora::lora_packet(&["uplink", &nwk, &app, &dev_addr, fcnt, "1", payload]);
        unhex(up["phy"].as_str().unwrap())
    };
    // Temperature 25.5 °C, then 26.0 °C, on Cayenne channel 1.
    fw.push(&push_data(&[rxpk(&uplink("0", "016700FF"), -41, 8.5)]));
    sub.wait_data(1);

    // A replayed join request gets no answer, and is counted.
    fw.push(&push_data(&[heard]));
    assert!(
        fw.pull_resp(Duration::from_secs(5)).is_none(),
        "a replay is not answered"
    );
    wait_errors(&cairn, "sensor", |e| e["join_replay"] == 1);

    // A restart keeps the session: the next uplink decodes without a new join.
    cairn.stop();
    cairn.restart();
    let mut fw = PacketForwarder::new(cairn.logged_addr(LISTENING));
    fw.pull();
    fw.push(&push_data(&[rxpk(&uplink("1", "01670104"), -41, 8.5)]));
    sub.wait_data(2);
    let values = sub.values_of("sensor");
    let temperatures: Vec<&Value> = values
        .iter()
        .filter_map(|v| {
            v.as_object()?
                .iter()
                .find(|(k, _)| k.starts_with("temperature"))
                .map(|(_, t)| t)
        })
        .collect();
    assert_eq!(temperatures, [&json!(25.5), &json!(26.0)], "{values:?}");
}

/// A second gateway of the site, for frames heard twice.
const GATEWAY_2: [u8; 8] = [0xAA, 0x55, 0x5A, 0x00, 0x00, 0x00, 0x00, 0x02];

/// A frame of the vectors' device built by lora-packet: `flags` as its `uplink` takes them.
fn vector_uplink(fcnt: u32, payload: &str, flags: &str) -> Vec<u8> {
    let v = vectors();
    let args = [
        "uplink",
        v["nwk_s_key"].as_str().unwrap(),
        v["app_s_key"].as_str().unwrap(),
        v["dev_addr"].as_str().unwrap(),
        &fcnt.to_string(),
        "1",
        payload,
        flags,
    ];
    unhex(support::lora::lora_packet(&args)["phy"].as_str().unwrap())
}

/// A downlink as lora-packet opens it with the vectors' keys, expecting FCntDown `fcnt`.
fn open_downlink(txpk: &Value, fcnt: u32) -> Value {
    let v = vectors();
    let phy = base64::engine::general_purpose::STANDARD
        .decode(txpk["data"].as_str().unwrap())
        .unwrap();
    let phy: String = phy.iter().map(|b| format!("{b:02x}")).collect();
    let args = [
        "downlink",
        v["nwk_s_key"].as_str().unwrap(),
        v["app_s_key"].as_str().unwrap(),
        &phy,
        &fcnt.to_string(),
    ];
    support::lora::lora_packet(&args)
}

#[test]
fn confirmed_uplinks_are_acknowledged_and_queued_downlinks_go_out_in_the_next_window() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let dev_addr = vectors()["dev_addr"].as_str().unwrap().to_string();
    let devices = forwarder("")
        + &node(
            "valve",
            &dev_addr,
            "{codec: raw}\n    ports: {10: {codec: layout, values: [{name: interval, at: 0, type: u16}]}}",
        );
    let (cairn, mut fw) = start(&broker, &devices);
    fw.pull();

    // A confirmed uplink is acknowledged in RX1: a second after it, on its channel and rate.
    let heard = rxpk(&vector_uplink(1, "00", "confirmed"), -60, 7.0);
    fw.push(&push_data(std::slice::from_ref(&heard)));
    let txpk = fw.take_downlink(support::lora::GATEWAY, "an ACK");
    let tmst = heard["tmst"].as_u64().unwrap();
    assert_eq!(txpk["tmst"].as_u64(), Some(tmst + 1_000_000), "{txpk}");
    assert_eq!(
        (&txpk["freq"], &txpk["datr"]),
        (&heard["freq"], &heard["datr"])
    );
    assert_eq!(
        (&txpk["ipol"], &txpk["imme"]),
        (&json!(true), &json!(false))
    );
    let ack = open_downlink(&txpk, 0);
    assert_eq!(ack["mtype"], "Unconfirmed Data Down", "{ack}");
    assert_eq!(
        (&ack["dir"], &ack["dev_addr"]),
        (&json!("down"), &json!(dev_addr))
    );
    assert_eq!(
        (&ack["ack"], &ack["mic_ok"]),
        (&json!(true), &json!(true)),
        "{ack}"
    );
    assert_eq!((&ack["fcnt"], &ack["fport"]), (&json!(0), &Value::Null));

    // Two downlinks are queued over MQTT: one encoded with port 10's layout, one in hex.
    let results = "cairn/test/valve/downlink/result";
    broker.publish(
        "cairn/test/valve/downlink/set",
        r#"{"fport": 10, "values": {"interval": 600}, "id": "d1"}"#,
        false,
    );
    broker.publish(
        "cairn/test/valve/downlink/set",
        r#"{"fport": 3, "hex": "CAFE", "id": "d2"}"#,
        false,
    );
    cairn.wait_log_count("Downlink queued for the next uplink", 2);
    // A payload the layout cannot hold is refused at once.
    broker.publish(
        "cairn/test/valve/downlink/set",
        r#"{"fport": 10, "values": {"interval": 70000}, "id": "d3"}"#,
        false,
    );
    assert!(sub.wait_until(PATIENCE, |r| r.messages.iter().any(|(t, _)| t == results)));
    let answer: Value = sub.with(|r| serde_json::from_str(r.last_on(results).unwrap()).unwrap());
    assert_eq!(
        (&answer["ok"], &answer["id"]),
        (&json!(false), &json!("d3")),
        "{answer}"
    );

    // The next uplink, heard by two gateways, is answered through the one that heard it
    // best, with the first downlink and FPending for the second.
    let mut fw2 = PacketForwarder::new(cairn.logged_addr(LISTENING));
    fw2.pull_as(GATEWAY_2);
    let phy = vector_uplink(2, "01", "");
    let weak = rxpk(&phy, -110, -3.0);
    let mut strong = rxpk(&phy, -70, 8.5);
    strong["tmst"] = json!(1_000_000u32);
    fw.push(&push_data(&[weak]));
    let ack = fw2.push_from(GATEWAY_2, &push_data(std::slice::from_ref(&strong)));
    assert_eq!(ack.map(|a| a[3]), Some(1), "PUSH_ACK");
    let (token, txpk) = fw2
        .pull_resp(PATIENCE)
        .expect("the downlink, via gateway 2");
    assert_eq!(
        txpk["tmst"].as_u64(),
        Some(2_000_000),
        "gateway 2's clock: {txpk}"
    );
    let down = open_downlink(&txpk, 1);
    assert_eq!(
        (&down["fport"], &down["payload"]),
        (&json!(10), &json!("0258")),
        "{down}"
    );
    assert_eq!(
        (&down["fcnt"], &down["mic_ok"]),
        (&json!(1), &json!(true)),
        "{down}"
    );
    assert_eq!(
        (&down["ack"], &down["fpending"]),
        (&json!(false), &json!(true))
    );
    assert!(
        fw.pull_resp(Duration::from_millis(300)).is_none(),
        "not via gateway 1"
    );

    // Gateway 2 refuses RX1 (it is too late for it): the downlink goes in RX2 instead.
    fw2.tx_ack(GATEWAY_2, token, Some("TOO_LATE"));
    let txpk = fw2.take_downlink(GATEWAY_2, "RX2");
    assert_eq!(
        txpk["tmst"].as_u64(),
        Some(3_000_000),
        "RX2, a second after RX1"
    );
    assert_eq!(
        (&txpk["freq"], &txpk["datr"]),
        (&json!(869.525), &json!("SF12BW125"))
    );
    assert_eq!(open_downlink(&txpk, 1)["payload"], "0258", "the same frame");
    let answered = |id: &'static str| {
        move |r: &support::Received| {
            r.messages.iter().any(|(t, m)| {
                t == results && serde_json::from_str::<Value>(m).is_ok_and(|a| a["id"] == id)
            })
        }
    };
    assert!(sub.wait_until(PATIENCE, answered("d1")), "{}", cairn.log());
    let answer: Value = sub.with(|r| serde_json::from_str(r.last_on(results).unwrap()).unwrap());
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["value"], "sent in rx2, FCntDown 1");

    // The uplink after it takes the second downlink, now without FPending.
    fw.push(&push_data(&[rxpk(&vector_uplink(3, "02", ""), -60, 7.0)]));
    let txpk = fw.take_downlink(support::lora::GATEWAY, "the second downlink");
    let down = open_downlink(&txpk, 2);
    assert_eq!(
        (&down["fport"], &down["payload"]),
        (&json!(3), &json!("cafe")),
        "{down}"
    );
    assert_eq!(
        (&down["fpending"], &down["mic_ok"]),
        (&json!(false), &json!(true))
    );
    assert!(sub.wait_until(PATIENCE, answered("d2")));

    let errors = wait_errors(&cairn, "valve", |e| e["duplicate"] == 1);
    assert_eq!(errors.get("downlink_not_sent"), None, "{errors}");
    let errors = wait_errors(&cairn, "gw", |e| e["tx_too_late"] == 1);
    assert_eq!(errors.get("duty_cycle"), None, "{errors}");
}

#[test]
fn when_rx1s_sub_band_has_no_duty_cycle_left_acks_go_in_rx2() {
    let broker = Broker::start();
    let dev_addr = vectors()["dev_addr"].as_str().unwrap().to_string();
    let devices = forwarder("") + &node("valve", &dev_addr, "{codec: raw}");
    let (cairn, mut fw) = start(&broker, &devices);
    fw.pull();
    let mut freqs = Vec::new();
    for fcnt in 1..=40u32 {
        let mut heard = rxpk(&vector_uplink(fcnt, "00", "confirmed"), -118, -12.0);
        heard["datr"] = json!("SF12BW125");
        heard["tmst"] = json!(fcnt * 10_000_000);
        fw.push(&push_data(&[heard]));
        let txpk = fw.take_downlink(support::lora::GATEWAY, "an ACK");
        freqs.push(txpk["freq"].as_f64().unwrap());
    }
    // 868.1 MHz is in a 1 % sub-band: 36 s an hour. An ACK (12 bytes) at SF12 is 991 ms on
    // air, so 36 fit; the rest go in RX2, whose sub-band allows 10 %.
    let rx1 = freqs.iter().take_while(|f| **f == 868.1).count();
    assert_eq!(rx1, 36, "{freqs:?}");
    assert!(freqs[36..].iter().all(|f| *f == 869.525), "{freqs:?}");
    let errors = wait_errors(&cairn, "gw", |e| e["duty_cycle"] == 4);
    assert_eq!(errors.get("no_downlink_path"), None, "{errors}");
}

#[test]
fn us915_windows_a_repeated_confirmed_uplink_and_the_device_time() {
    let broker = Broker::start();
    let dev_addr = vectors()["dev_addr"].as_str().unwrap().to_string();
    let sub = Subscriber::start(&broker, "cairn/test/valve/downlink/result");
    let devices = forwarder(", region: us915")
        + &node("valve", &dev_addr, "{codec: raw}")
            .replace("lorawan: {", "lorawan: {downlink_expiry: 1s, ");
    let (cairn, mut fw) = start(&broker, &devices);
    fw.pull();

    // A downlink for a device that sends nothing in time is answered as expired.
    broker.publish(
        "cairn/test/valve/downlink/set",
        r#"{"fport": 1, "hex": "01", "id": "late"}"#,
        false,
    );
    let results = "cairn/test/valve/downlink/result";
    assert!(
        sub.wait_until(PATIENCE, |r| r.last_on(results).is_some()),
        "{}",
        cairn.log()
    );
    let answer: Value = sub.with(|r| serde_json::from_str(r.last_on(results).unwrap()).unwrap());
    assert_eq!(
        (&answer["ok"], &answer["id"]),
        (&json!(false), &json!("late"))
    );
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("expired") && error.contains("no uplink"),
        "{error}"
    );
    // Uplink channel 9 of sub-band 2 (904.1 MHz) at DR0 answers on downlink channel 1 at
    // DR10 (RP002 2.5.7).
    let mut heard = rxpk(&vector_uplink(1, "00", "confirmed"), -90, 2.0);
    (heard["freq"], heard["datr"]) = (json!(904.1), json!("SF10BW125"));
    fw.push(&push_data(std::slice::from_ref(&heard)));
    let (token, txpk) = fw.pull_resp(PATIENCE).expect("an ACK");
    assert_eq!(
        (&txpk["freq"], &txpk["datr"]),
        (&json!(923.9), &json!("SF10BW500")),
        "{txpk}"
    );
    assert_eq!(txpk["powe"], 20);
    // Refused in RX1, it goes in RX2: 923.3 MHz at DR8.
    fw.tx_ack(support::lora::GATEWAY, token, Some("COLLISION_PACKET"));
    let txpk = fw.take_downlink(support::lora::GATEWAY, "RX2");
    let tmst = heard["tmst"].as_u64().unwrap();
    assert_eq!(txpk["tmst"].as_u64(), Some(tmst + 2_000_000));
    assert_eq!(
        (&txpk["freq"], &txpk["datr"]),
        (&json!(923.3), &json!("SF12BW500")),
        "{txpk}"
    );
    assert_eq!(open_downlink(&txpk, 0)["ack"], true);

    // The device missed it and sends the frame again once both windows closed (2 s, as a
    // device's own timer waits): it is ACKed again, under the next FCntDown.
    std::thread::sleep(Duration::from_secs(2));
    heard["tmst"] = json!(tmst + 4_000_000);
    fw.push(&push_data(std::slice::from_ref(&heard)));
    let txpk = fw.take_downlink(support::lora::GATEWAY, "the ACK again");
    let again = open_downlink(&txpk, 1);
    assert_eq!(
        (&again["ack"], &again["fcnt"]),
        (&json!(true), &json!(1)),
        "{again}"
    );

    // A device without a clock asks for the time (DeviceTimeReq in FOpts): it gets the GPS
    // time of its uplink's reception, from the gateway's `time` (2026-11-25T10:00:00Z is GPS
    // second 1,479,636,018), in DeviceTimeAns.
    let heard = rxpk(&vector_uplink(2, "00", "time"), -90, 2.0);
    fw.push(&push_data(std::slice::from_ref(&heard)));
    let txpk = fw.take_downlink(support::lora::GATEWAY, "DeviceTimeAns");
    let answer = open_downlink(&txpk, 2);
    let seconds = 1_479_636_018u32.to_le_bytes();
    let expected: String = [0x0D]
        .iter()
        .chain(&seconds)
        .chain(&[0])
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(answer["fopts"], expected, "{answer}");
    assert_eq!(
        (&answer["ack"], &answer["mic_ok"]),
        (&json!(false), &json!(true))
    );
}
