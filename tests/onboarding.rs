//! From nothing to a running site: the packaged first-run config works offline, and the field
//! tools (`cairn ports`, `cairn scan modbus`, `cairn tail`) against real peers: pymodbus over
//! TCP and over a socat pty, and a text sensor on a pty.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use support::modbus::ModbusServer;
use support::serial::SerialPair;
use support::{Cairn, cairn_bin, feed, run_cairn};

/// The config the package installs as /etc/cairn/cairn.yaml, with its paths moved into the
/// test's folder.
fn packaged_config() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/cairn.yaml"))
        .unwrap()
        .replace("/var/lib/cairn", "{data}")
        .replace("0.0.0.0:8080", "127.0.0.1:0")
}

#[test]
fn the_packaged_config_runs_offline_and_says_what_to_edit() {
    let cairn = Cairn::start(&packaged_config());
    let feed = cairn.feed();
    cairn.wait_log("Cairn running");
    let log = cairn.log();
    let path = cairn.config_path().display().to_string();
    assert!(
        log.contains(&format!("config={path}")),
        "the log names the config:\n{log}"
    );
    assert!(log.contains("No devices configured"), "{log}");
    assert!(log.contains("No broker configured"), "{log}");
    let status = feed::api(feed, "/api/status");
    assert_eq!(status["uplink"]["configured"], false, "{status}");
    assert_eq!(
        status["link"]["connects"], 0,
        "never dials a broker: {status}"
    );
    let (code, page) = feed::http_get(feed, "/", None);
    assert_eq!(code, 200);
    assert!(
        page.contains("No devices are configured yet"),
        "the page says what to do"
    );
    assert!(
        !cairn.log().contains("MQTT connect"),
        "no broker was tried:\n{}",
        cairn.log()
    );
}

#[test]
fn the_packaged_configs_simulated_device_works_when_uncommented() {
    // The comment's instructions, followed literally: replace `[]` and uncomment the block.
    let config: String = packaged_config()
        .replace("devices: []", "devices:")
        .lines()
        .map(|line| match line.strip_prefix("  # ") {
            Some(rest) if rest.starts_with('-') || rest.starts_with("  ") => format!("  {rest}"),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(config.contains("  - name: example"), "{config}");
    let cairn = Cairn::start(&config);
    let feed = cairn.feed();
    let deadline = std::time::Instant::now() + support::PATIENCE;
    loop {
        let devices = feed::api(feed, "/api/devices");
        if devices[0]["status"] == "online" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{devices}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn ports_lists_and_prints_json() {
    // This machine's serial ports, whatever they are; the listing logic is unit-tested on a
    // made-up sysfs (src/tools/ports.rs).
    let text = run_cairn(&["ports"]);
    assert!(text.status.success(), "{text:?}");
    let json = run_cairn(&["ports", "--json"]);
    assert!(json.status.success());
    let ports: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let ports = ports.as_array().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    if ports.is_empty() {
        assert!(text.contains("No serial ports found"), "{text}");
    }
    for port in ports {
        assert!(text.contains(port["dev"].as_str().unwrap()), "{text}");
    }
}

/// Pastes the `devices:` part of a scan's output under a gateway section, as a user would,
/// and returns what `cairn check` says of it, which must be ok.
fn check_pasted(scan: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let devices = &scan[scan.find("devices:\n").expect("config in the output")..];
    let path = dir.path().join("pasted.yaml");
    let gateway = format!(
        "gateway: {{id: scanned, data_dir: {}}}\n",
        dir.path().display()
    );
    std::fs::write(&path, gateway + devices).unwrap();
    let check = run_cairn(&["check", "--config", path.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "the printed config is valid: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    String::from_utf8(check.stdout).unwrap()
}

#[test]
fn scan_finds_the_units_behind_a_tcp_gateway_and_suggests_a_profile() {
    let server = ModbusServer::start_with(&["--units", "5", "--silent"]);
    let endpoint = format!("127.0.0.1:{}", server.port);
    let out = run_cairn(&["scan", "modbus", "--tcp", &endpoint, "--units", "1-8"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("5 unit(s) answered"), "{text}");
    for unit in 1..=5 {
        assert!(
            text.contains(&format!("unit {unit}: holding register 0 = {unit}")),
            "each unit holds its id in register 0: {text}"
        );
    }
    assert!(!text.contains("unit 6:"), "{text}");
    // The pymodbus units have 100 registers per table: the sensor profile fits, the energy
    // meters' maps (up to register 342) do not.
    assert!(text.contains("profile xy-md02 fits"), "{text}");
    assert!(!text.contains("profile sdm120 fits"), "{text}");
    assert!(check_pasted(&text).contains("5 devices"));
}

#[test]
fn scan_finds_rtu_units_on_a_serial_line() {
    let dir = tempfile::tempdir().unwrap();
    let serial = SerialPair::start(dir.path());
    let _server = ModbusServer::start_rtu_with(&serial.sensor, &["--silent"]);
    let port = serial.port.to_str().unwrap();
    let out = run_cairn(&[
        "scan", "modbus", "--rtu", port, "--baud", "19200", "--parity", "none", "--units", "1-4",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2 unit(s) answered"), "units 1 and 2: {text}");
    assert!(
        text.contains("unit 1: holding register 0 = 17254"),
        "0x4366: {text}"
    );
    assert!(text.contains("unit 2: "), "{text}");
    assert!(
        text.contains(&format!(
            "rtu: {{ port: {port}, baud: 19200, parity: none }}"
        )),
        "{text}"
    );
    assert!(check_pasted(&text).contains("2 devices"));
}

#[test]
fn scan_says_what_to_check_when_nothing_answers() {
    let server = ModbusServer::start_with(&["--units", "2", "--silent"]);
    let endpoint = format!("127.0.0.1:{}", server.port);
    let out = run_cairn(&["scan", "modbus", "--tcp", &endpoint, "--units", "10-12"]);
    assert!(!out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("No unit answered (3 probes of units 10-12)"),
        "{text}"
    );
    // A port nobody listens on is an error, not "nothing found".
    let closed = format!("127.0.0.1:{}", support::free_port());
    let out = run_cairn(&["scan", "modbus", "--tcp", &closed, "--units", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{out:?}"
    );
}

#[test]
fn tail_prints_a_devices_readings_and_errors_without_touching_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let serial = SerialPair::start(dir.path());
    let data = dir.path().join("data");
    let config = dir.path().join("cairn.yaml");
    std::fs::write(
        &config,
        format!(
            "gateway: {{id: test, data_dir: '{}'}}\n\
             feed: {{enabled: false}}\n\
             devices:\n  - name: probe\n    type: uart\n    port: {}\n    baud: 115200\n\
             \x20   lines: {{format: key_value}}\n\
             \x20   values: [{{name: temperature, field: T}}, {{name: humidity, field: RH, scale: 0.1}}]\n",
            data.display(),
            serial.port.display()
        ),
    )
    .unwrap();
    let unknown = run_cairn(&["tail", "nope", "--config", config.to_str().unwrap()]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("no device `nope` in the config; there are: probe"),
        "{unknown:?}"
    );

    let mut tail = Command::new(cairn_bin())
        .args(["tail", "probe", "--json", "--count", "2", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut next =
        || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    while next()["status"] != "online" {}
    serial.send(b"no pairs at all\n");
    loop {
        let line = next();
        if line["errors"]["parse"] == 1 {
            break;
        }
        assert!(line.get("reading").is_none(), "{line}");
    }
    serial.send(b"T=21.5 RH=405\nT=-3.25 RH=990\n");
    let mut readings = Vec::new();
    while readings.len() < 2 {
        let line = next();
        if let Some(reading) = line.get("reading") {
            readings.push(reading["values"].clone());
        }
    }
    assert_eq!(
        readings[0],
        serde_json::json!({"temperature": 21.5, "humidity": 40.5})
    );
    assert_eq!(
        readings[1],
        serde_json::json!({"temperature": -3.25, "humidity": 99.0})
    );
    assert!(
        tail.wait().unwrap().success(),
        "stops after --count readings"
    );
    assert!(!data.exists(), "tail wrote nothing to the data folder");
}

#[test]
fn home_assistant_discovers_every_value_and_drives_the_writable_ones() {
    let broker = support::Broker::start();
    let plc = ModbusServer::start();
    let cairn = Cairn::start(&format!(
        "gateway: {{id: site, data_dir: '{{data}}'}}\n\
         mqtt: {{host: 127.0.0.1, port: {}, reconnect_min: 100ms, reconnect_max: 1s}}\n\
         homeassistant: {{discovery: true}}\n\
         devices:\n\
         \x20 - name: mast\n    type: sim\n    interval: 200ms\n    values:\n\
         \x20     - {{name: temperature, unit: °C, decimals: 1, sine: {{mean: 14, amplitude: 6, period: 10m}}}}\n\
         \x20     - {{name: energy, unit: kWh, counter: {{start: 0, step: 1}}}}\n\
         \x20     - {{name: heater, toggle: {{period: 1s}}}}\n\
         \x20     - {{name: mode, cycle: {{states: [auto, manual], every: 1s}}}}\n\
         \x20 - name: plc\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {}}}\n    interval: 200ms\n    points:\n\
         \x20     - {{name: setpoint, table: holding, address: 11, type: u16, scale: 0.1, unit: °C, writable: true}}\n\
         \x20     - {{name: pump, table: coil, address: 0, writable: true}}\n",
        broker.port, plc.port
    ));
    cairn.wait_log("MQTT connected");
    let port = broker.port.to_string();
    let seen = support::peer_json(
        "ha_subscriber.py",
        &[
            &port,
            "6",
            "--set",
            "cairn_site_plc_setpoint=23.5",
            "--switch",
            "cairn_site_plc_pump=off",
        ],
    );
    assert_eq!(seen["problems"], serde_json::json!([]), "{seen:#}");
    let entities = &seen["entities"];
    let component = |id: &str| {
        entities[id]["component"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    };
    assert_eq!(component("cairn_site_mast_temperature"), "sensor");
    assert_eq!(component("cairn_site_mast_energy"), "sensor");
    assert_eq!(component("cairn_site_mast_heater"), "binary_sensor");
    assert_eq!(component("cairn_site_mast_mode"), "sensor");
    assert_eq!(component("cairn_site_plc_setpoint"), "number");
    assert_eq!(component("cairn_site_plc_pump"), "switch");
    let temperature = &entities["cairn_site_mast_temperature"];
    assert_eq!(temperature["config"]["device_class"], "temperature");
    let t: f64 = temperature["state"].as_str().unwrap().parse().unwrap();
    assert!((7.0..=21.0).contains(&t), "a temperature of the sine: {t}");
    assert_eq!(
        entities["cairn_site_mast_energy"]["config"]["state_class"],
        "total_increasing"
    );
    assert!(
        ["auto", "manual"].contains(&entities["cairn_site_mast_mode"]["state"].as_str().unwrap())
    );
    assert!(
        ["on", "off"].contains(
            &entities["cairn_site_mast_heater"]["state"]
                .as_str()
                .unwrap()
        )
    );
    // The commands went through Cairn's .../set to the pymodbus device, and read back.
    assert_eq!(entities["cairn_site_plc_setpoint"]["state"], "23.5");
    assert_eq!(entities["cairn_site_plc_pump"]["state"], "off");
    assert!(
        entities
            .as_object()
            .unwrap()
            .values()
            .all(|e| e["available"] == true)
    );
}
