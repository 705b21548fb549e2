//! `cairn check` on bad files: one clear screen naming file:line:column, exit 1, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::run_cairn;

/// Runs `cairn check` on `yaml` and returns (success, stderr).
fn check(yaml: &str) -> (bool, String) {
    check_with_env(yaml, &[])
}

/// `cairn check` on `yaml` with `env` set.
fn check_with_env(yaml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(support::cairn_bin())
        .args(["check", "--config", path.to_str().unwrap()])
        .envs(env.iter().copied())
        .output()
        .unwrap();
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
    // The tab's own line, not the one before it.
    refused(
        "gateway:\n\tid: tab\n",
        &["FILE:2:1", "a tab in the indentation"],
    );
    refused(
        "gateway: {id: g}\ndevices:\n  - name: a\n    type: sim\n    rate: 1\n\tvalues: []\n",
        &["FILE:6:1", "a tab in the indentation"],
    );
}

#[test]
fn a_key_indented_unlike_its_siblings_is_pointed_at() {
    // Reported before as `missing field values` on the line above.
    refused(
        "gateway: {id: g}\ndevices:\n  - name: a\n    type: sim\n    rate: 1\n   values:\n      - {name: n, counter: {}}\n",
        &["FILE:6:4", "`values` is indented unlike the other keys"],
    );
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

#[test]
fn lora_devices_are_checked_against_each_other() {
    let keys =
        "nwk_s_key: 44024241ed4ce9a68c6a8bc055233fd3, app_s_key: ec925802ae430ca77fd3dd73cb2cc588";
    refused(
        &format!(
            "gateway: {{id: g}}\ndevices:\n\
             \x20 - {{name: gw, type: lora, forwarder: {{listen: '0.0.0.0:1700'}}}}\n\
             \x20 - {{name: a, type: lora, lorawan: {{via: concentrator, dev_addr: 26011234, {keys}}}}}\n\
             \x20 - {{name: b, type: lora, lorawan: {{via: gw, dev_addr: 26011234, {keys}}}}}\n\
             \x20 - {{name: c, type: lora, lorawan: {{via: gw, dev_addr: '26011234', {keys}}}}}\n\
             \x20 - {{name: d, type: lora, lorawan: {{via: gw, dev_addr: 2601, nwk_s_key: 00, app_s_key_file: /nonexistent}}}}\n\
             \x20 - {{name: e, type: lora, forwarder: {{}}, module: {{kind: rak3172, port: /dev/ttyAMA0}}}}\n\
             \x20 - {{name: f, type: lora, module: {{kind: rn2483, port: /dev/ttyUSB0, frequency: 868100000}}, payload: {{codec: layout}}}}\n"
        ),
        &[
            "devices[1].lorawan.via: `concentrator` is not a device with `forwarder:`; there are: gw",
            "devices[3].lorawan.dev_addr: devices[2] has the same DevAddr behind `gw`",
            "devices[4].lorawan.dev_addr: a DevAddr has 4 bytes",
            "devices[5].forwarder: give exactly one of",
            "devices[6].module: give `frequency`, `spreading_factor` and `bandwidth` together",
            "devices[6].payload.values: the `layout` codec needs values",
        ],
    );
}

#[test]
fn what_no_message_could_carry_is_refused() {
    let device = |description: &str| {
        format!(
            "gateway: {{id: gw}}\ndevices:\n  - name: mast\n    description: {description}\n    type: sim\n    values: [{{name: t, counter: {{}}}}]\n"
        )
    };
    // A 300 kB description makes a metadata message larger than the 128 KiB default.
    refused(
        &device(&"x".repeat(300_000)),
        &["devices[0]", "does not fit `mqtt.max_message`"],
    );
    refused(
        "gateway: {id: gw}\nmqtt: {compression: zstd}\n",
        &["mqtt.compression", "`encoding: cbor` only"],
    );
    refused(
        "gateway: {id: gw}\nmqtt: {encoding: cbor, max_message: 512MB}\n",
        &["mqtt.max_message", "256 MiB"],
    );
    refused(
        "gateway: {id: gw}\nmqtt: {max_message: 4KiB, batch: {max_bytes: 8KiB}}\n",
        &["mqtt.batch.max_bytes"],
    );
    refused(
        "gateway: {id: gw}\ndevices:\n  - {name: batch, type: sim, values: [{name: t, counter: {}}]}\n",
        &["devices[0].name", "gateway-level topic"],
    );
    let (ok, stderr) = check(&device("a pump"));
    assert!(ok, "{stderr}");
}

#[test]
fn a_keepalive_mqtt_cannot_carry_is_refused() {
    for keepalive in ["24h", "18h12m16s", "65536s", "7500ms"] {
        refused(
            &format!("gateway: {{id: gw}}\nmqtt: {{keepalive: {keepalive}}}\n"),
            &["mqtt.keepalive"],
        );
    }
    let (ok, stderr) = check("gateway: {id: gw}\nmqtt: {keepalive: 18h12m15s}\n");
    assert!(ok, "{stderr}");
}

#[test]
fn an_empty_feed_token_never_opens_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("token");
    std::fs::write(&empty, "\n").unwrap();
    refused(
        &format!(
            "gateway: {{id: g}}\nfeed:\n  token_file: {}\n",
            empty.display()
        ),
        &["FILE:3:15", "feed.token_file", "is empty"],
    );
    // Set but empty: the value is an empty string, not a missing token.
    let (ok, stderr) = check_with_env(
        "gateway: {id: g}\nfeed:\n  token: ${CAIRN_TEST_TOKEN}\n",
        &[("CAIRN_TEST_TOKEN", "")],
    );
    assert!(
        !ok && stderr.contains("feed.token") && stderr.contains("must not be empty"),
        "{stderr}"
    );
}

#[test]
fn an_environment_value_is_the_whole_scalar_whatever_it_holds() {
    // Pasted into the text, `a #b` became `a`, and quotes or braces broke the parse; as a
    // scalar, the whole value arrives, here refused as a gateway id and quoted back whole.
    for value in ["a #b", "{x: \"y\"}", "it's: [1]"] {
        let (ok, stderr) = check_with_env(
            "gateway:\n  id: ${CAIRN_TEST_ID}\n",
            &[("CAIRN_TEST_ID", value)],
        );
        assert!(!ok, "{value} accepted");
        assert!(
            stderr.contains(&format!("`{value}` must be letters")),
            "{value}: {stderr}"
        );
    }
    let (ok, stderr) = check_with_env(
        "gateway:\n  id: ${CAIRN_TEST_ID}\nmqtt:\n  password: ${CAIRN_TEST_PW}\n",
        &[
            ("CAIRN_TEST_ID", "site-7"),
            ("CAIRN_TEST_PW", "p#ss: 'w\"rd' {x}"),
        ],
    );
    assert!(ok, "{stderr}");
}

#[test]
fn a_config_that_never_ends_is_refused_quickly() {
    let out = run_cairn(&["check", "--config", "/dev/zero"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("larger than 4 MiB"), "{stderr}");
}
