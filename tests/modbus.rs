//! The modbus adapter against a pymodbus TCP server whose register values the test knows, end
//! to end to a real mosquitto subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::modbus::ModbusServer;
use support::proxy::Proxy;
use support::{Broker, Cairn, PATIENCE, Subscriber};

fn config(broker: u16, devices: &str) -> String {
    format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\n\
         mqtt: {{host: 127.0.0.1, port: {broker}, reconnect_min: 100ms, reconnect_max: 1s}}\n\
         devices:\n{devices}"
    )
}

#[test]
fn every_type_and_byte_order_arrives_with_its_exact_value() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let server = ModbusServer::start();
    let device = format!(
        "  - name: meter\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {}}}\n    interval: 200ms\n    points:\n\
         \x20     - {{name: f_abcd, table: holding, address: 0, type: f32, order: abcd, unit: V}}\n\
         \x20     - {{name: f_cdab, table: holding, address: 2, type: f32, order: cdab}}\n\
         \x20     - {{name: f_badc, table: holding, address: 4, type: f32, order: badc}}\n\
         \x20     - {{name: f_dcba, table: holding, address: 6, type: f32, order: dcba}}\n\
         \x20     - {{name: i16, table: holding, address: 8, type: i16}}\n\
         \x20     - {{name: u32, table: holding, address: 9, type: u32}}\n\
         \x20     - {{name: scaled, table: holding, address: 11, scale: 0.1, unit: °C}}\n\
         \x20     - {{name: model, table: holding, address: 12, type: string, length: 3}}\n\
         \x20     - {{name: alarm, table: holding, address: 15, type: bool, bit: 3}}\n\
         \x20     - {{name: i64, table: holding, address: 20, type: i64}}\n\
         \x20     - {{name: frequency, table: input, address: 0, type: f32}}\n\
         \x20     - {{name: pump, table: coil, address: 0}}\n\
         \x20     - {{name: valve, table: coil, address: 1}}\n",
        server.port
    );
    let _cairn = Cairn::start(&config(broker.port, &device));
    assert!(sub.wait_until(PATIENCE, |r| r.data().count() >= 2));
    let expected = serde_json::json!({
        "f_abcd": 230.1, "f_cdab": 230.1, "f_badc": 230.1, "f_dcba": 230.1,
        "i16": -2, "u32": 65538, "scaled": 21.5, "model": "SDM120", "alarm": true, "i64": -10,
        "frequency": 50.0, "pump": true, "valve": false,
    });
    for values in sub.values_of("meter") {
        assert_eq!(values, expected);
    }
}

#[test]
fn a_silent_unit_and_exceptions_do_not_disturb_a_healthy_device() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let server = ModbusServer::start();
    // A unit that never answers: the connection is accepted, then nothing comes back.
    let silent = Proxy::start(server.port);
    silent.set_blackhole(true);
    let devices = format!(
        "  - name: healthy\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {port}}}\n    interval: 200ms\n\
         \x20   points: [{{name: v, table: holding, address: 8, type: i16}}]\n\
         \x20 - name: silent\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {silent}}}\n\
         \x20   interval: 200ms\n    timeout: 200ms\n    offline_after: 2\n\
         \x20   points: [{{name: v, table: holding, address: 8}}]\n\
         \x20 - name: wrong\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {port}}}\n    interval: 200ms\n\
         \x20   points: [{{name: v, table: holding, address: 900}}]\n",
        port = server.port,
        silent = silent.port
    );
    let cairn = Cairn::start(&config(broker.port, &devices));
    // The silent unit times out, goes offline and is retried; the others carry on meanwhile.
    cairn.wait_log("polls in a row failed");
    let before = sub.values_of("healthy").len();
    cairn.wait_log("exception_illegal_address");
    assert!(sub.wait_until(PATIENCE, |r| {
        r.data().filter(|(t, _)| *t == "cairn/test/healthy").count() >= before + 5
    }));
    assert!(sub.values_of("healthy").iter().all(|v| v["v"] == -2));
    assert!(sub.values_of("silent").is_empty() && sub.values_of("wrong").is_empty());
    let log = cairn.log();
    assert!(
        log.contains(r#"device=silent errors={"timeout": "#),
        "timeouts are counted:\n{log}"
    );
    // A unit id the server does not know gets exceptions, counted by code.
    assert!(
        log.contains(r#"device=wrong errors={"exception_illegal_address": "#),
        "{log}"
    );
}

#[test]
fn a_restarted_server_is_polled_again() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let mut server = ModbusServer::start();
    let device = format!(
        "  - name: plc\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {}}}\n    interval: 200ms\n\
         \x20   points: [{{name: v, table: holding, address: 8, type: i16}}]\n",
        server.port
    );
    let cairn = Cairn::start(&config(broker.port, &device));
    assert!(sub.wait_until(PATIENCE, |r| r.data().count() >= 2));
    server.stop();
    cairn.wait_log("Device offline");
    let before = sub.values_of("plc").len();
    server.restart();
    assert!(
        sub.wait_until(PATIENCE, |r| r.data().count() > before + 2),
        "{}",
        cairn.log()
    );
}

#[test]
fn units_sharing_an_rs485_bus_are_polled_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let bus = support::serial::SerialPair::start(dir.path());
    let _server = ModbusServer::start_rtu(&bus.sensor);
    let rtu = format!("rtu: {{port: {}, baud: 19200}}", bus.port.display());
    let devices = format!(
        "  - name: unit1\n    type: modbus\n    {rtu}\n    unit_id: 1\n    interval: 300ms\n\
         \x20   points: [{{name: v, table: holding, address: 8, type: i16}}, {{name: f, table: holding, address: 0, type: f32}}]\n\
         \x20 - name: unit2\n    type: modbus\n    {rtu}\n    unit_id: 2\n    interval: 300ms\n\
         \x20   points: [{{name: v, table: holding, address: 8, type: i16}}]\n\
         \x20 - name: absent\n    type: modbus\n    {rtu}\n    unit_id: 9\n    interval: 300ms\n    timeout: 200ms\n\
         \x20   points: [{{name: v, table: holding, address: 8}}]\n"
    );
    let cairn = Cairn::start(&config(broker.port, &devices));
    // Both units answer on the shared port while requests to the absent one fail between them.
    assert!(
        sub.wait_until(PATIENCE, |r| {
            let count = |t: &str| r.data().filter(|(topic, _)| *topic == t).count();
            count("cairn/test/unit1") >= 5 && count("cairn/test/unit2") >= 5
        }),
        "{}",
        cairn.log()
    );
    assert!(
        sub.values_of("unit1")
            .iter()
            .all(|v| *v == serde_json::json!({"v": -2, "f": 230.1}))
    );
    assert!(
        sub.values_of("unit2")
            .iter()
            .all(|v| *v == serde_json::json!({"v": 7}))
    );
    assert!(sub.values_of("absent").is_empty());
    cairn.wait_log("device=absent errors=");
}

#[test]
fn fifty_units_behind_a_one_connection_gateway_share_it_and_every_poll_arrives() {
    const UNITS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let refusals = dir.path().join("refusals");
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let server = ModbusServer::start_with(&[
        "--units",
        &UNITS.to_string(),
        "--one-connection",
        refusals.to_str().unwrap(),
    ]);
    let tcp = format!("tcp: {{host: 127.0.0.1, port: {}}}", server.port);
    let mut devices: String = (1..=UNITS)
        .map(|u| {
            format!(
                "  - name: unit{u}\n    type: modbus\n    {tcp}\n    unit_id: {u}\n    interval: 1s\n\
                 \x20   points: [{{name: id, table: holding, address: 0}}]\n"
            )
        })
        .collect();
    // A unit the gateway does not have: its exceptions must not hold the others up.
    devices.push_str(&format!(
        "  - name: missing\n    type: modbus\n    {tcp}\n    unit_id: 99\n    interval: 1s\n\
         \x20   points: [{{name: id, table: holding, address: 0}}]\n"
    ));
    let cairn = Cairn::start(&config(broker.port, &devices));
    let counts = |r: &support::Received| -> Vec<usize> {
        (1..=UNITS)
            .map(|u| {
                let topic = format!("cairn/test/unit{u}");
                r.data().filter(|(t, _)| *t == topic).count()
            })
            .collect()
    };
    assert!(
        sub.wait_until(PATIENCE, |r| counts(r).iter().all(|n| *n >= 8)),
        "{:?}\n{}",
        sub.with(counts),
        cairn.log()
    );
    // Every unit was polled every second, none starved by the others or by the missing one.
    let seen = sub.with(counts);
    let most = *seen.iter().max().unwrap();
    assert!(seen.iter().all(|n| n + 2 >= most), "{seen:?}");
    for u in 1..=UNITS {
        let values = sub.values_of(&format!("unit{u}"));
        assert!(
            values.iter().all(|v| *v == serde_json::json!({"id": u})),
            "unit {u}: {values:?}"
        );
    }
    assert!(sub.values_of("missing").is_empty());
    assert!(
        !refusals.exists(),
        "a second connection was tried: {}",
        std::fs::read_to_string(&refusals).unwrap_or_default()
    );
}

#[test]
fn writes_over_mqtt_reach_the_device_and_are_answered() {
    let mut broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let server = ModbusServer::start();
    let devices = format!(
        "  - name: boiler\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {port}}}\n    interval: 200ms\n    points:\n\
         \x20     - {{name: setpoint, table: holding, address: 11, scale: 0.1, writable: true}}\n\
         \x20     - {{name: limit, table: holding, address: 2, type: f32, order: cdab, writable: true}}\n\
         \x20     - {{name: pump, table: coil, address: 0, writable: true}}\n\
         \x20     - {{name: model, table: holding, address: 12, type: string, length: 3}}\n\
         \x20 - name: meter\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {port}}}\n    unit_id: 2\n\
         \x20   interval: 200ms\n    write_multiple: true\n    points:\n\
         \x20     - {{name: v, table: holding, address: 8, writable: true}}\n\
         \x20     - {{name: relay, table: coil, address: 2, writable: true}}\n",
        port = server.port
    );
    let cairn = Cairn::start(&config(broker.port, &devices));
    assert!(sub.wait_until(PATIENCE, |r| {
        r.data().any(|(t, _)| t == "cairn/test/boiler")
            && r.data().any(|(t, _)| t == "cairn/test/meter")
    }));
    let meta: serde_json::Value = serde_json::from_str(
        sub.with(|r| r.last_on("cairn/test/boiler/meta").unwrap().to_string())
            .as_str(),
    )
    .unwrap();
    assert_eq!(
        meta["writable"],
        serde_json::json!(["setpoint", "limit", "pump"])
    );

    // Each write is answered with the value read back from the device; the id is echoed.
    let cases = [
        (
            "boiler/setpoint",
            r#"{"value": 23.4, "id": "r1"}"#,
            serde_json::json!({"ok": true, "value": 23.4, "id": "r1"}),
        ),
        (
            "boiler/limit",
            "250.5",
            serde_json::json!({"ok": true, "value": 250.5}),
        ),
        (
            "boiler/pump",
            "false",
            serde_json::json!({"ok": true, "value": false}),
        ),
        (
            "meter/v",
            "-3",
            serde_json::json!({"ok": false, "error": "-3 is out of range for u16"}),
        ),
        (
            "meter/v",
            "4242",
            serde_json::json!({"ok": true, "value": 4242}),
        ),
        (
            "meter/relay",
            "true",
            serde_json::json!({"ok": true, "value": true}),
        ),
        (
            "boiler/model",
            "\"X\"",
            serde_json::json!({"ok": false, "error": "`model` is not writable (a point needs `writable: true`)"}),
        ),
    ];
    for (point, payload, expected) in cases {
        let answer = command(&broker, &sub, &cairn, point, payload, false);
        assert_eq!(answer, expected, "{point} <- {payload}");
    }

    // The polls that follow read what was written.
    let polled = sub.values_of("boiler").len();
    assert!(sub.wait_until(PATIENCE, |r| {
        r.data().filter(|(t, _)| *t == "cairn/test/boiler").count() > polled
    }));
    let last = sub.values_of("boiler").pop().unwrap();
    assert_eq!(
        (&last["setpoint"], &last["limit"], &last["pump"]),
        (&23.4.into(), &250.5.into(), &false.into())
    );

    // A retained command is carried out once, when it arrives; it is not replayed when the
    // uplink reconnects and the broker hands it out again.
    let once = command(&broker, &sub, &cairn, "meter/v", "1", true);
    assert_eq!(once["value"], 1);
    let later = command(&broker, &sub, &cairn, "meter/v", "5", false);
    assert_eq!(later["value"], 5);
    broker.stop();
    broker.restart();
    cairn.wait_log("Command ignored: commands are at most 4 KiB and never retained");
    let polled = sub.values_of("meter").len();
    assert!(sub.wait_until(PATIENCE, |r| {
        r.data().filter(|(t, _)| *t == "cairn/test/meter").count() > polled
    }));
    assert_eq!(sub.values_of("meter").pop().unwrap()["v"], 5);
}

#[test]
fn corrupted_rtu_answers_are_counted_and_never_read_as_values() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let line = support::serial::NoisyLine::start(dir.path());
    let _server = ModbusServer::start_rtu(&line.device);
    let devices = format!(
        "  - name: unit1\n    type: modbus\n    rtu: {{port: {}, baud: 19200}}\n    interval: 200ms\n\
         \x20   timeout: 300ms\n    offline_after: 1000\n\
         \x20   points: [{{name: v, table: holding, address: 8, type: i16}}, {{name: f, table: holding, address: 0, type: f32}}]\n",
        line.port.display()
    );
    let cairn = Cairn::start(&config(broker.port, &devices));
    assert!(sub.wait_until(PATIENCE, |r| r.data().count() >= 2));
    line.set_noisy(true);
    // tokio-modbus drops the bytes of an answer whose CRC fails, then gives up on it: counted
    // as `crc`, the bus is reopened, and the device stays on its schedule.
    cairn.wait_log(r#"device=unit1 errors={"crc": "#);
    line.set_noisy(false);
    let before = sub.values_of("unit1").len();
    assert!(
        sub.wait_until(PATIENCE, |r| r.data().count() >= before + 3),
        "{}",
        cairn.log()
    );
    assert!(
        sub.values_of("unit1")
            .iter()
            .all(|v| *v == serde_json::json!({"v": -2, "f": 230.1})),
        "no corrupted value was ever published"
    );
    assert!(!cairn.log().contains("Device offline"), "{}", cairn.log());
}

/// Publishes `payload` on `<point>/set` and returns the answer on `<point>/result`, without
/// its timestamp.
fn command(
    broker: &Broker,
    sub: &Subscriber,
    cairn: &Cairn,
    point: &str,
    payload: &str,
    retain: bool,
) -> serde_json::Value {
    let topic = format!("cairn/test/{point}/result");
    let answers = |r: &support::Received| r.messages.iter().filter(|(t, _)| *t == topic).count();
    let before = sub.with(answers);
    broker.publish(&format!("cairn/test/{point}/set"), payload, retain);
    assert!(
        sub.wait_until(PATIENCE, |r| answers(r) > before),
        "no answer to {point} <- {payload}\n{}",
        cairn.log()
    );
    let answer = sub.with(|r| r.last_on(&topic).unwrap().to_string());
    let mut answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert!(answer["ts"].is_string());
    answer.as_object_mut().unwrap().remove("ts");
    answer
}
