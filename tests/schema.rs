//! `cairn schema`: a JSON Schema that an independent validator (Python `jsonschema`, Draft
//! 2020-12) accepts as a schema, that every shipped config satisfies, and that catches the
//! mistakes an editor should underline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::{PYTHON, run_cairn};

const VALIDATOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/peers/validate_config.py"
);

/// Validates `files` against the schema `cairn schema` prints; returns (valid, problems).
fn validate(dir: &std::path::Path, files: &[std::path::PathBuf]) -> (bool, String) {
    let out = run_cairn(&["schema"]);
    assert!(out.status.success());
    let schema = dir.join("cairn.schema.json");
    std::fs::write(&schema, &out.stdout).unwrap();
    let out = Command::new(PYTHON)
        .arg(VALIDATOR)
        .arg(&schema)
        .args(files)
        .output()
        .expect("the test venv exists (scripts/test creates it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Traceback"), "{stderr}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn every_shipped_config_satisfies_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let configs: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(configs.len() >= 8);
    let (valid, problems) = validate(dir.path(), &configs);
    assert!(valid, "{problems}");
}

#[test]
fn the_schema_catches_what_an_editor_should_underline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "gateway: {id: g, colour: blue}\n\
         mqtt: {port: many}\n\
         devices:\n\
         \x20 - {name: a, type: sim, interval: 1s, values: [{name: x, sine: {period: 1h}, wobble: 1}]}\n\
         \x20 - {name: b, type: lora, module: {kind: rn9999, port: /dev/ttyUSB0}}\n\
         \x20 - {name: c, type: teleporter}\n\
         \x20 - {type: uart, port: /dev/ttyS0, lines: {format: json}, values: [{name: t}]}\n",
    )
    .unwrap();
    let (valid, problems) = validate(dir.path(), &[file]);
    assert!(!valid);
    for expected in [
        "gateway: Additional properties are not allowed ('colour'",
        "mqtt.port: 'many' is not of type 'integer'",
        "devices.0: ",
        "devices.1: ",
        "devices.2: ",
        "devices.3: ",
    ] {
        assert!(
            problems.contains(expected),
            "`{expected}` not in:\n{problems}"
        );
    }
}
