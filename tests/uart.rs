//! The uart adapter over `socat` ptys, end to end to a real mosquitto subscriber: text lines in
//! each format, garbage in between, and a device unplugged and plugged back in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::serial::SerialPair;
use support::{Broker, Cairn, PATIENCE, PYTHON, Subscriber};

fn config(broker: u16, port: &std::path::Path, lines: &str, values: &str) -> String {
    format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\n\
         mqtt: {{host: 127.0.0.1, port: {broker}, reconnect_min: 100ms, reconnect_max: 1s}}\n\
         devices:\n  - name: probe\n    type: uart\n    port: {port}\n    baud: 115200\n    lines: {lines}\n    values: {values}\n",
        port = port.display()
    )
}

/// A config with one uart device described by `profile`.
fn profile_config(broker: u16, port: &std::path::Path, profile: &str) -> String {
    format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\n\
         mqtt: {{host: 127.0.0.1, port: {broker}, reconnect_min: 100ms, reconnect_max: 1s}}\n\
         devices:\n  - name: probe\n    type: uart\n    port: {port}\n    profile: {profile}\n",
        port = port.display()
    )
}

#[test]
fn key_value_lines_survive_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let serial = SerialPair::start(dir.path());
    let cairn = Cairn::start(&config(
        broker.port,
        &serial.port,
        "{format: key_value, max_length: 256}",
        "[{name: temperature, field: T, unit: °C}, {name: humidity, field: RH, scale: 0.1}]",
    ));
    cairn.wait_log("Device online");
    serial.send(b"T=21.5 RH=405\r\n");
    serial.send(&[0xff, 0x00, 0x13, b'\n', 0xfe, 0xfd, b'\n']); // binary noise
    serial.send(&vec![b'x'; 1 << 20]); // 1 MiB without a newline
    serial.send(b"\nT=-3.25 RH=990\n");
    serial.send(b"no pairs at all\nT=7\n");
    assert!(
        sub.wait_until(PATIENCE, |r| r.data().count() >= 3),
        "{:?}",
        sub.values_of("probe")
    );
    let got = sub.values_of("probe");
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got[0],
        serde_json::json!({"temperature": 21.5, "humidity": 40.5})
    );
    assert_eq!(
        got[1],
        serde_json::json!({"temperature": -3.25, "humidity": 99.0})
    );
    assert_eq!(got[2], serde_json::json!({"temperature": 7}));
    let meta = sub
        .with(|r| r.last_on("cairn/test/probe/meta").map(String::from))
        .unwrap();
    assert!(meta.contains(r#""temperature":"°C""#), "{meta}");
    // Every kind of bad input was counted, and the counts are logged for the people on site.
    cairn.wait_log(r#""line_too_long": 1"#);
    let log = cairn.log();
    for counter in [r#""not_utf8": 2"#, r#""parse": 1"#] {
        assert!(log.contains(counter), "{counter} not counted:\n{log}");
    }
}

#[test]
fn json_csv_and_regex_lines() {
    for (lines, values, input, expected) in [
        (
            "{format: json}",
            "[{name: t}, {name: ok}]",
            "{\"t\": 1.5, \"ok\": true, \"other\": 3}\n",
            serde_json::json!({"t": 1.5, "ok": true}),
        ),
        (
            "{format: csv, columns: [id, level, state]}",
            "[{name: level, unit: m}, {name: state}]",
            "7, 2.25, FILLING\n",
            serde_json::json!({"level": 2.25, "state": "FILLING"}),
        ),
        (
            "{format: regex, pattern: '^WS(?P<speed>[0-9.]+) WD(?P<dir>[0-9]+)$'}",
            "[{name: speed, unit: m/s}, {name: dir, unit: deg}]",
            "WS3.5 WD270\n",
            serde_json::json!({"speed": 3.5, "dir": 270}),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start();
        let sub = Subscriber::start(&broker, "cairn/test/#");
        let serial = SerialPair::start(dir.path());
        let cairn = Cairn::start(&config(broker.port, &serial.port, lines, values));
        cairn.wait_log("Device online");
        serial.send(b"garbage that matches nothing\n");
        serial.send(input.as_bytes());
        assert!(
            sub.wait_until(PATIENCE, |r| r.data().count() >= 1),
            "{lines}"
        );
        assert_eq!(sub.values_of("probe"), [expected], "{lines}");
    }
}

#[test]
fn an_unplugged_device_goes_offline_and_resumes_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let mut serial = SerialPair::start(dir.path());
    let cairn = Cairn::start(&config(
        broker.port,
        &serial.port,
        "{format: key_value}",
        "[{name: n}]",
    ));
    cairn.wait_log("Device online");
    serial.send(b"n=1\n");
    assert!(sub.wait_until(PATIENCE, |r| r.data().count() >= 1));

    serial.unplug();
    cairn.wait_log("Device offline");
    serial.plug();
    // The supervisor reopens the port with backoff; the device comes back online by itself.
    let deadline = std::time::Instant::now() + PATIENCE;
    while cairn.log().matches("Device online").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", cairn.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    serial.send(b"n=2\n");
    assert!(sub.wait_until(PATIENCE, |r| r.data().count() >= 2));
    assert_eq!(
        sub.values_of("probe"),
        [serde_json::json!({"n": 1}), serde_json::json!({"n": 2})]
    );
    let log = cairn.log();
    let offline = log.find("Device offline").unwrap();
    assert!(
        log[offline..].contains("Adapter failed; restarting"),
        "{log}"
    );
}

#[test]
fn a_polled_sensor_answers_each_request() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let serial = SerialPair::start(dir.path());
    // The sensor: answers every READ with a counter, as a real polled sensor would.
    let sensor = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&serial.sensor)
        .unwrap();
    let mut answer = sensor.try_clone().unwrap();
    std::thread::spawn(move || {
        for (n, line) in BufReader::new(sensor).split(b'\n').enumerate() {
            let Ok(line) = line else { return };
            if line == b"READ\r" && answer.write_all(format!("n={n}\n").as_bytes()).is_err() {
                return;
            }
        }
    });
    let config = config(
        broker.port,
        &serial.port,
        "{format: key_value}",
        "[{name: n}]",
    )
    .replace(
        "    lines:",
        "    poll: {every: 100ms, send: \"READ\\r\\n\"}\n    lines:",
    );
    let _cairn = Cairn::start(&config);
    assert!(sub.wait_until(PATIENCE, |r| r.data().count() >= 3));
    let got = sub.values_of("probe");
    assert_eq!(
        &got[..3],
        [
            serde_json::json!({"n": 0}),
            serde_json::json!({"n": 1}),
            serde_json::json!({"n": 2})
        ]
    );
}

/// A PMS5003 frame as the sensor sends it: header, length 28, 13 words, sum of 30 bytes.
fn pms5003_frame(pm1: u16, pm25: u16, pm10: u16) -> Vec<u8> {
    let mut frame = vec![0x42, 0x4D, 0x00, 0x1C];
    for word in [
        pm1, pm25, pm10, pm1, pm25, pm10, 1200, 350, 60, 8, 2, 1, 0x9700,
    ] {
        frame.extend_from_slice(&word.to_be_bytes());
    }
    let sum: u16 = frame.iter().map(|b| u16::from(*b)).sum();
    frame.extend_from_slice(&sum.to_be_bytes());
    frame
}

#[test]
fn pms5003_profile_decodes_frames_through_noise() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let serial = SerialPair::start(dir.path());
    let cairn = Cairn::start(&profile_config(broker.port, &serial.port, "pms5003"));
    cairn.wait_log("Device online");
    let good = pms5003_frame(3, 7, 11);
    let mut bad_sum = pms5003_frame(90, 90, 90);
    bad_sum[31] ^= 0x01;
    let mut stream = vec![0x00, 0x42, 0x13, 0x37];
    stream.extend_from_slice(&good[..17]); // truncated: the sensor was plugged in mid-frame
    stream.extend_from_slice(&bad_sum);
    stream.extend_from_slice(&good);
    let mut rng_state = 0x2545_f491_u32;
    for _ in 0..5000 {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 17;
        rng_state ^= rng_state << 5;
        stream.push(rng_state as u8);
    }
    stream.extend_from_slice(&pms5003_frame(4, 8, 12));
    serial.send(&stream);
    assert!(
        sub.wait_until(PATIENCE, |r| r.data().count() >= 2),
        "{:?}",
        sub.values_of("probe")
    );
    let got = sub.values_of("probe");
    assert_eq!(got[0]["pm2_5"], 7);
    assert_eq!(got[0]["pm10"], 11);
    assert_eq!(got[0]["particles_0_3um"], 1200);
    assert_eq!(got[1]["pm2_5"], 8);
    assert!(
        got.iter().all(|v| v["pm2_5"] != 90),
        "a frame with a bad checksum was published: {got:?}"
    );
    let meta = sub
        .with(|r| r.last_on("cairn/test/probe/meta").map(String::from))
        .unwrap();
    assert!(meta.contains(r#""pm2_5":"µg/m³""#), "{meta}");
}

#[test]
fn a_real_gps_log_decodes_as_pynmea2_reads_it() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/nmea/sample.nmea"
    );
    let reference = std::process::Command::new(PYTHON)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/nmea_reference.py"
        ))
        .arg(fixture)
        .output()
        .expect("the test venv with pynmea2 exists (scripts/test creates it)");
    assert!(
        reference.status.success(),
        "{}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let expected: Vec<serde_json::Value> = String::from_utf8_lossy(&reference.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(expected.len(), 6);

    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let serial = SerialPair::start(dir.path());
    let cairn = Cairn::start(&profile_config(broker.port, &serial.port, "gps"));
    cairn.wait_log("Device online");
    let mut log = std::fs::read(fixture).unwrap();
    // A corrupted copy of the first sentence: its checksum no longer matches.
    log.extend_from_slice(
        b"$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,9,1.03,61.7,M,55.2,M,,*76\r\n",
    );
    serial.send(&log);
    assert!(sub.wait_until(PATIENCE, |r| r.data().count() >= 6));
    let got = sub.values_of("probe");
    assert_eq!(
        got.len(),
        6,
        "GSV and the bad checksum are not published: {got:?}"
    );
    for (cairn, reference) in got.iter().zip(&expected) {
        for (name, want) in reference.as_object().unwrap() {
            let have = &cairn[name];
            let close = match (have.as_f64(), want.as_f64()) {
                (Some(a), Some(b)) => (a - b).abs() < 1e-9,
                _ => have == want,
            };
            assert!(
                close,
                "{name}: cairn {have}, pynmea2 {want}\n{cairn}\n{reference}"
            );
        }
    }
}
