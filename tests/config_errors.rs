//! `cairn check` on bad files: one clear screen naming file:line:column, exit 1, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::run_cairn;

/// Runs `cairn check` on `yaml` and returns (success, stderr).
fn check(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = run_cairn(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "FILE");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.lines().count() < 40,
        "more than one screen:\n{stderr}"
    );
    (out.status.success(), stderr)
}

fn refused(yaml: &str, expected: &[&str]) {
    let (ok, stderr) = check(yaml);
    assert!(!ok, "accepted:\n{yaml}");
    for text in expected {
        assert!(stderr.contains(text), "`{text}` not in:\n{stderr}");
    }
}

#[test]
fn the_shipped_configs_are_valid() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        let out = run_cairn(&["check", "--config", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn broken_yaml() {
    refused("gateway:\n  id: [unclosed\n", &["FILE:2:"]);
    refused("gateway:\n\tid: tab\n", &["FILE:"]);
}

#[test]
fn unknown_field() {
    refused(
        "gateway:\n  id: g\n  colour: blue\n",
        &["FILE:3:3", "unknown field `colour`"],
    );
    refused(
        "gateway: {id: g}\ndevices:\n  - name: d\n    type: sim\n    values: []\n    sampling: 3\n",
        &["FILE:6:5", "unknown field `sampling`"],
    );
}

#[test]
fn wrong_type() {
    refused(
        "gateway: {id: g}\nmqtt:\n  port: eighty\n",
        &["FILE:3:9", "mqtt.port"],
    );
    refused(
        "gateway: {id: g}\nmqtt:\n  keepalive: soon\n",
        &["FILE:3:", "mqtt.keepalive"],
    );
}

#[test]
fn missing_required_field() {
    refused("mqtt:\n  host: x\n", &["missing field `gateway`"]);
    refused(
        "gateway: {id: g}\ndevices:\n  - type: sim\n    values: []\n",
        &["FILE:", "devices[0]", "missing field `name`"],
    );
}

#[test]
fn unreadable_secret_file() {
    refused(
        "gateway: {id: g}\nmqtt:\n  username: u\n  password_file: /nonexistent/cairn-secret\n",
        &[
            "FILE:4:18",
            "mqtt.password_file",
            "/nonexistent/cairn-secret",
        ],
    );
}

#[test]
fn unset_environment_variable() {
    refused(
        "gateway: {id: g}\nmqtt:\n  password: ${CAIRN_TEST_SURELY_UNSET}\n",
        &["FILE:3:13", "CAIRN_TEST_SURELY_UNSET"],
    );
}

#[test]
fn several_problems_are_all_listed() {
    let (ok, stderr) = check(
        "gateway: {id: 'not ok'}\nmqtt: {qos: 2}\ndevices:\n  - name: a\n    type: sim\n    values: []\n",
    );
    assert!(!ok);
    for text in ["gateway.id", "mqtt.qos", "devices[0].values", "3 problems"] {
        assert!(stderr.contains(text), "`{text}` not in:\n{stderr}");
    }
}

#[test]
fn a_missing_file_is_an_error_not_a_panic() {
    let out = run_cairn(&["check", "--config", "/nonexistent/cairn.yaml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}
