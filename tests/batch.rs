//! The batch encoding end to end: the real `cairn` binary, a real mosquitto, an independent
//! subscriber, and every payload decoded twice, by the independent Python decoder written from
//! docs/wire-format.md and by `cairn decode`, which must agree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::proxy::Proxy;
use support::{
    Broker, Cairn, FAST_RECONNECT, PATIENCE, Subscriber, count_seqs, decode_both, free_port,
    site_config,
};

const ZSTD_GATEWAY: &str = "  encoding: cbor\n  compression: zstd\n  batch: {max_readings: 100, linger: 200ms, group: gateway}\n";

/// Waits until every seq in `1..=last` is among what `sub` received, decoded by both decoders;
/// returns the decoded readings and the number of duplicates.
fn expect_all(sub: &Subscriber, last: i64) -> (Vec<serde_json::Value>, usize) {
    let (readings, duplicates) = sub.expect_every_reading(last);
    assert!(
        readings.iter().all(|r| r["seq"].as_i64() <= Some(last)),
        "no seq beyond {last}"
    );
    (readings, duplicates)
}

#[test]
fn batches_lose_nothing_through_broker_restarts_and_kills() {
    let mut broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    // Five devices at 60 readings/s each, 1,200 each per run.
    let mut cairn = Cairn::start(&site_config(
        broker.port,
        &(FAST_RECONNECT.to_string() + ZSTD_GATEWAY),
        true,
        "rate: 60",
        1200,
    ));
    let batches = |r: &support::Received| {
        r.messages
            .iter()
            .filter(|(t, _)| t == "cairn/test/batch")
            .count()
    };
    for round in 1..=2 {
        assert!(sub.wait_until(PATIENCE, |r| batches(r) >= round * 10));
        broker.stop();
        let before = cairn.stats()["backlog"];
        cairn.wait_stats("a backlog while the broker is away", |s| {
            s["backlog"] > before + 100
        });
        broker.restart();
    }
    assert!(sub.wait_until(PATIENCE, |r| batches(r) >= 30));
    // Killed with readings unsent (the broker away), so that the next run has history to send:
    // with a fast link the outbox is often empty at any given moment.
    broker.stop();
    let before = cairn.stats()["backlog"];
    cairn.wait_stats("a backlog for the next run", |s| {
        s["backlog"] > before + 100
    });
    cairn.kill9();
    broker.restart();
    cairn.restart();
    // The last run goes to its end: each device produces its 1,200 and finishes.
    let feed = cairn.feed();
    support::wait_devices_finished(feed, 5);
    cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
    assert!(cairn.stop(), "clean exit");
    let last = cairn.stats()["next seq"] - 1;
    assert!(last > 6000, "the killed run produced too: {last}");
    let (readings, duplicates) = expect_all(&sub, last);
    println!(
        "cbor+zstd through 2 broker restarts and a kill -9: {last} seqs in {} batches, {duplicates} duplicates",
        sub.with(batches)
    );
    // The values are what the sim makes, rounded as configured: one decimal for temperatures.
    let weather = readings.iter().find(|r| r["device"] == "weather").unwrap();
    let t = weather["values"]["temperature"].as_f64().unwrap();
    assert_eq!((t * 10.0).round() / 10.0, t, "{t} has one decimal");
    // What the killed run left in the outbox is history to the next run, flagged so.
    let historical = readings.iter().filter(|r| r["historical"] == true).count();
    assert!(
        historical > 0 && historical < readings.len(),
        "{historical} historical"
    );
}

#[test]
fn an_outbox_written_at_schema_2_is_delivered_after_the_upgrade() {
    // Written by the previous release (schema 2) with its JSON rows: 500 readings of two
    // sim devices, never delivered (tests/fixtures/outbox/README.md says how it was made).
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/outbox/schema2.db"
    );
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/outbox/schema2.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let expected = expected.as_array().unwrap();
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let config = format!(
        "gateway:\n  id: test\n  data_dir: {{data}}\n\
         mqtt:\n  host: 127.0.0.1\n  port: {}\n{ZSTD_GATEWAY}\
         devices:\n  - name: fresh\n    type: sim\n    rate: 100\n    limit: 50\n    values:\n      - {{name: n, counter: {{}}}}\n",
        broker.port
    );
    let mut cairn = Cairn::prepare(&config);
    std::fs::create_dir_all(cairn.dir.path().join("data")).unwrap();
    std::fs::copy(fixture, cairn.dir.path().join("data/outbox.db")).unwrap();
    cairn.restart();
    let last = expected.len() as i64 + 50;
    let (readings, _) = expect_all(&sub, last);
    for old in expected {
        let seq = old["seq"].as_i64().unwrap();
        let arrived = readings.iter().find(|r| r["seq"] == seq).unwrap();
        assert_eq!(arrived["values"], old["values"], "seq {seq}");
        assert_eq!(arrived["ts"], old["ts"], "seq {seq}");
        assert_eq!(arrived["device"], old["device"], "seq {seq}");
    }
    cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
}

#[test]
fn json_stays_the_contract_and_costs_more_than_batches_at_the_proxy() {
    // The same backlog of 2,000 readings, built while the broker is away, drained through the
    // byte-counting proxy in each encoding.
    let mut per_reading = Vec::new();
    for (name, mqtt, decimals) in [
        ("json", "", false),
        (
            "cbor+zstd, 100/message",
            "  encoding: cbor\n  compression: zstd\n  batch: {max_readings: 100, group: gateway}\n",
            false,
        ),
        (
            "cbor+zstd, 100/message, decimals",
            "  encoding: cbor\n  compression: zstd\n  batch: {max_readings: 100, group: gateway}\n",
            true,
        ),
    ] {
        let port = free_port();
        let mut broker = Broker::start_on(port);
        let sub = Subscriber::start(&broker, "cairn/test/#");
        broker.stop();
        let proxy = Proxy::start(port);
        let cairn = Cairn::start(&site_config(
            proxy.port,
            &(FAST_RECONNECT.to_string() + mqtt),
            decimals,
            "rate: 400",
            400,
        ));
        cairn.wait_stats("2,000 readings buffered", |s| s["backlog"] == 2000);
        broker.restart();
        let readings = {
            assert!(sub.wait_seqs(PATIENCE, |seen| seen.len() == 2000));
            decode_both(&sub.with(|r| r.hex_lines()))
        };
        assert_eq!(count_seqs(&readings).len(), 2000);
        cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
        // Everything on the link: connect, status, metadata, the readings and their acks.
        let (up, down) = proxy.bytes();
        let bytes = (up + down) as f64 / 2000.0;
        println!("{name}: {bytes:.1} B per reading at the proxy ({up} up, {down} down)");
        if name == "json" {
            assert!(
                sub.with(|r| r.data().count()) >= 2000,
                "json payloads are the JSON contract"
            );
        }
        per_reading.push(bytes);
        drop(cairn);
    }
    assert!(per_reading[0] > 150.0, "json: {}", per_reading[0]);
    assert!(
        per_reading[1] < 25.0,
        "full-precision batches: {}",
        per_reading[1]
    );
    assert!(
        per_reading[2] < 8.0,
        "batches with decimals: {}",
        per_reading[2]
    );
}

#[test]
fn a_batch_too_large_for_max_message_is_split() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    // 1,000 readings per batch allowed, but no message above 2 KiB: batches must split.
    let mqtt = "  encoding: cbor\n  max_message: 2KiB\n  batch: {max_readings: 1000, max_bytes: 2KiB, linger: 2s, group: gateway}\n";
    let cairn = Cairn::start(&site_config(
        broker.port,
        &(FAST_RECONNECT.to_string() + mqtt),
        false,
        "rate: 200",
        200,
    ));
    let (_, duplicates) = expect_all(&sub, 1000);
    assert_eq!(duplicates, 0);
    // A PUBLISH is its payload, the topic, and at most 9 bytes of headers.
    let largest = sub.with(|r| r.raw.iter().map(Vec::len).max().unwrap());
    assert!(
        largest + "cairn/test/batch".len() + 9 <= 2048,
        "largest payload {largest} B"
    );
    let stats = cairn.wait_stats("drained", |s| s["backlog"] == 0);
    assert_eq!(stats.get("dropped (oversize)"), Some(&0));
}

#[test]
fn an_oversized_reading_and_an_oversized_retained_command_stop_nothing() {
    use support::modbus::ModbusServer;
    use support::serial::SerialPair;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let serial = SerialPair::start(dir.path());
    let server = ModbusServer::start();
    // A uart device allowed lines longer than any message, and a Modbus point that takes
    // commands (so that Cairn subscribes to `.../set`).
    let config = format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\n\
         mqtt: {{host: 127.0.0.1, port: {broker}, reconnect_min: 100ms, reconnect_max: 1s, encoding: cbor, batch: {{linger: 100ms}}}}\n\
         devices:\n\
         \x20 - name: probe\n    type: uart\n    port: {port}\n    baud: 115200\n    lines: {{format: key_value, max_length: 400000}}\n    values: [{{name: note, field: N}}, {{name: t, field: T}}]\n\
         \x20 - name: boiler\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {modbus}}}\n    interval: 200ms\n    points: [{{name: setpoint, table: holding, address: 11, scale: 0.1, writable: true}}]\n",
        broker = broker.port,
        port = serial.port.display(),
        modbus = server.port,
    );
    let cairn = Cairn::start(&config);
    cairn.wait_log("Device online device=probe");
    // A 300 kB reading: larger than the 128 KiB default mqtt.max_message.
    let mut line = b"N=".to_vec();
    line.extend(std::iter::repeat_n(b'x', 300_000));
    line.extend(b"\nT=1\n");
    serial.send(&line);
    // A retained 300 kB command, as a careless publisher might leave on the broker.
    let big = dir.path().join("big.txt");
    std::fs::write(&big, "9".repeat(300_000)).unwrap();
    let status = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-r",
        ])
        .args(["-t", "cairn/test/boiler/setpoint/set", "-f"])
        .arg(&big)
        .status()
        .unwrap();
    assert!(status.success());
    serial.send(b"T=2\n");
    // The uplink goes on: later readings of both devices arrive.
    assert!(sub.wait_until(PATIENCE, |r| {
        let readings = support::decode_cairn_only(&r.hex_lines());
        readings.iter().any(|r| r["values"]["t"] == 2)
            && readings.iter().filter(|r| r["device"] == "boiler").count() >= 20
    }));
    let readings = decode_both(&sub.with(|r| r.hex_lines()));
    assert!(
        readings.iter().all(|r| r["values"].get("note").is_none()),
        "the oversized reading never left"
    );
    let devices = support::feed::api(cairn.feed(), "/api/devices");
    let probe = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "probe")
        .unwrap();
    assert_eq!(probe["errors"]["oversize_reading"], 1, "{probe}");
    // The retained command was read, ignored and counted; the connection was never cut.
    let status = support::feed::api(cairn.feed(), "/api/status");
    assert!(
        status["uplink"]["ignored_commands"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(
        cairn.log().matches("MQTT connected").count(),
        1,
        "{}",
        cairn.log()
    );
    // A write still works afterwards.
    broker.publish("cairn/test/boiler/setpoint/set", "21.5", false);
    assert!(sub.wait_until(PATIENCE, |r| {
        r.last_on("cairn/test/boiler/setpoint/result")
            .is_some_and(|p| p.contains("\"ok\":true"))
    }));
}
