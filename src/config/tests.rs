use super::*;

fn load(text: &str) -> Result<Config, Box<Report>> {
    Config::from_text("test.yaml", text, |name| {
        (name == "SECRET").then(|| "s3cret".into())
    })
}

fn first_problem(text: &str) -> Problem {
    let report = load(text).expect_err("config should be refused");
    report.problems[0].clone()
}

const MINIMAL: &str = "gateway:\n  id: site-1\n";

#[test]
fn minimal_config_gets_defaults() {
    let config = load(MINIMAL).unwrap();
    assert_eq!(
        config.mqtt.endpoint(),
        Endpoint {
            host: "localhost".into(),
            port: 1883,
            tls: false
        }
    );
    assert_eq!(config.mqtt.qos, 1);
    assert!(!config.mqtt.enabled, "no `mqtt:` section, no uplink");
    assert_eq!(config.buffer.when_full, WhenFull::DropOldest);
    assert_eq!(config.buffer.synchronous, Synchronous::Full);
    assert!(config.devices.is_empty());
}

#[test]
fn an_mqtt_section_turns_the_uplink_on_unless_it_says_otherwise() {
    assert!(load("gateway: {id: g}\nmqtt: {}\n").unwrap().mqtt.enabled);
    assert!(
        load("gateway: {id: g}\nmqtt: {host: b}\n")
            .unwrap()
            .mqtt
            .enabled
    );
    let off = load("gateway: {id: g}\nmqtt: {host: b, enabled: false}\n").unwrap();
    assert!(!off.mqtt.enabled);
}

#[test]
fn url_sets_host_port_and_tls() {
    let config = load("gateway: {id: g}\nmqtt:\n  url: mqtts://broker.example:8884\n").unwrap();
    assert_eq!(
        config.mqtt.endpoint(),
        Endpoint {
            host: "broker.example".into(),
            port: 8884,
            tls: true
        }
    );
}

#[test]
fn env_values_and_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pass");
    std::fs::write(&secret, "from-file\n").unwrap();
    let text = format!(
        "gateway: {{id: g}}\nmqtt:\n  username: ${{SECRET}}\n  password_file: {}\n",
        secret.display()
    );
    let config = load(&text).unwrap();
    assert_eq!(config.mqtt.username.as_deref(), Some("s3cret"));
    assert_eq!(config.mqtt.password.as_deref(), Some("from-file"));
}

#[test]
fn unknown_field_names_its_place() {
    let p = first_problem("gateway:\n  id: g\n  colour: blue\n");
    assert_eq!(p.line_column(), Some((3, 3)));
    assert!(p.message.contains("unknown field `colour`"), "{p:?}");
}

#[test]
fn wrong_type_deep_in_a_device_names_path_and_place() {
    let text = "gateway: {id: g}\ndevices:\n  - name: a\n    type: sim\n    values:\n      - name: t\n        sine: {mean: warm}\n";
    let p = first_problem(text);
    assert_eq!(p.path, "devices[0].values[0].sine.mean");
    assert_eq!(p.line_column().map(|(l, _)| l), Some(7));
}

#[test]
fn unknown_adapter_setting_is_placed_exactly() {
    let text =
        "gateway: {id: g}\ndevices:\n  - name: a\n    type: sim\n    colour: red\n    values: []\n";
    let p = first_problem(text);
    assert_eq!(p.line_column(), Some((5, 5)));
    assert!(p.message.contains("unknown field `colour`"), "{p:?}");
}

#[test]
fn unknown_adapter_type_is_placed_exactly() {
    let p = first_problem("gateway: {id: g}\ndevices:\n  - name: a\n    type: zigbee\n");
    assert_eq!(p.path, "devices[0].type");
    assert_eq!(p.line_column(), Some((4, 11)));
}

#[test]
fn missing_required_field() {
    let p = first_problem("mqtt: {}\n");
    assert!(p.message.contains("missing field `gateway`"), "{p:?}");
}

#[test]
fn broken_yaml_is_a_problem_not_a_panic() {
    let p = first_problem("gateway:\n  id: [g\n");
    assert!(p.line_column().is_some(), "{p:?}");
}

#[test]
fn semantic_problems_are_all_reported() {
    let text = "gateway: {id: 'bad id'}\nmqtt: {qos: 2, max_inflight: 0}\ndevices:\n  - name: a\n    type: sim\n    values: []\n  - name: a\n    type: sim\n    values: [{name: x, counter: {}}]\n";
    let report = load(text).expect_err("refused");
    let paths: Vec<&str> = report.problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "gateway.id",
        "mqtt.qos",
        "mqtt.max_inflight",
        "devices[0].values",
        "devices[1].name",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    let rendered = report.to_string();
    assert!(
        rendered.contains("test.yaml:7:5: devices[1].name"),
        "{rendered}"
    );
}

#[test]
fn unreadable_password_file_is_placed() {
    let p = first_problem("gateway: {id: g}\nmqtt:\n  password_file: /nonexistent/pass\n");
    assert_eq!(p.path, "mqtt.password_file");
    assert_eq!(p.line_column(), Some((3, 18)));
}

#[test]
fn devices_that_cannot_share_a_serial_port_are_refused() {
    let modbus = |unit: u8, baud: u32| {
        format!(
            "  - name: m{unit}\n    type: modbus\n    rtu: {{port: /dev/ttyUSB0, baud: {baud}}}\n    unit_id: {unit}\n    points: [{{name: v, table: holding, address: 0}}]\n"
        )
    };
    let uart = "  - name: gps\n    type: uart\n    port: /dev/ttyUSB0\n    profile: gps\n";
    let ok = format!(
        "gateway: {{id: g}}\ndevices:\n{}{}",
        modbus(1, 9600),
        modbus(2, 9600)
    );
    assert!(load(&ok).is_ok(), "two units on one bus share it");
    let text = format!(
        "gateway: {{id: g}}\ndevices:\n{}{}{}",
        modbus(1, 9600),
        modbus(2, 19200),
        uart
    );
    let report = load(&text).expect_err("refused");
    let paths: Vec<&str> = report.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["devices[1].rtu.port", "devices[2].port"]);
    assert!(
        report.problems[0].message.contains("devices[0]"),
        "{}",
        report.problems[0].message
    );
}
