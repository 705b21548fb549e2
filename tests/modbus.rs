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

/// The `values` of every data message from `device`, in order.
fn readings(sub: &Subscriber, device: &str) -> Vec<serde_json::Value> {
    let topic = format!("cairn/test/{device}");
    sub.with(|r| {
        r.data()
            .filter(|(t, _)| *t == topic)
            .map(|(_, v)| v["values"].clone())
            .collect()
    })
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
    for values in readings(&sub, "meter") {
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
    let before = readings(&sub, "healthy").len();
    cairn.wait_log("exception_illegal_address");
    assert!(sub.wait_until(PATIENCE, |r| {
        r.data().filter(|(t, _)| *t == "cairn/test/healthy").count() >= before + 5
    }));
    assert!(readings(&sub, "healthy").iter().all(|v| v["v"] == -2));
    assert!(readings(&sub, "silent").is_empty() && readings(&sub, "wrong").is_empty());
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
    let before = readings(&sub, "plc").len();
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
        readings(&sub, "unit1")
            .iter()
            .all(|v| *v == serde_json::json!({"v": -2, "f": 230.1}))
    );
    assert!(
        readings(&sub, "unit2")
            .iter()
            .all(|v| *v == serde_json::json!({"v": 7}))
    );
    assert!(readings(&sub, "absent").is_empty());
    cairn.wait_log("device=absent errors=");
}
