//! The link benchmark, run by `scripts/bench` (`cargo test --release --test link_bench --
//! --ignored --nocapture`): wire bytes per reading at the byte-counting proxy, for every
//! encoding, on the five-device site mix of `support::site_config`.
//!
//! Each backlog is made once, with the sim's clock run 200 times fast by libfaketime so that
//! readings are a second apart as at a site; then copies of the same outbox drain through the
//! proxy in each encoding, at real speed, with no device running: every row of the table
//! carries exactly the same readings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::proxy::Proxy;
use support::{
    Broker, Cairn, PATIENCE, Subscriber, count_seqs, decode_cairn_only, free_port, site_config,
};

const PER_DEVICE: u64 = 2000;
const READINGS: usize = 5 * PER_DEVICE as usize;
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// An outbox of `READINGS` undelivered readings taken a second apart, in `dir`.
fn backlog(dir: &Path, decimals: bool) {
    let config = site_config(free_port(), "", decimals, "interval: 1s", PER_DEVICE);
    let mut cairn = Cairn::start_with_env(
        &config,
        &[("LD_PRELOAD", FAKETIME), ("FAKETIME", "+0 x200")],
    );
    cairn.wait_stats("the backlog", |s| s["backlog"] == READINGS as i64);
    assert!(cairn.stop());
    copy_outbox(&cairn.dir.path().join("data"), dir);
}

/// The outbox's files from `from` to `to`: committed rows may still be in the WAL.
fn copy_outbox(from: &Path, to: &Path) {
    for file in ["outbox.db", "outbox.db-wal"] {
        if from.join(file).exists() {
            std::fs::copy(from.join(file), to.join(file)).unwrap();
        }
    }
}

/// Bytes per reading at the proxy to drain the outbox in `dir` with `mqtt` settings.
fn drain(dir: &Path, mqtt: &str) -> f64 {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let proxy = Proxy::start(broker.port);
    let config = format!(
        "gateway:\n  id: test\n  data_dir: {{data}}\n\
         mqtt:\n  host: 127.0.0.1\n  port: {}\n  max_inflight: 64\n{mqtt}devices: []\n",
        proxy.port
    );
    let mut cairn = Cairn::prepare(&config);
    let data = cairn.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    copy_outbox(dir, &data);
    cairn.restart();
    assert!(sub.wait_seqs(PATIENCE, |seen| seen.len() == READINGS));
    cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
    let (up, down) = proxy.bytes();
    (up + down) as f64 / READINGS as f64
}

#[test]
#[ignore = "a benchmark: scripts/bench runs it"]
fn wire_bytes_per_reading() {
    assert!(
        Path::new(FAKETIME).exists(),
        "libfaketime is needed (apt install faketime; scripts/bench installs it)"
    );
    let mut cases = vec![("json (one reading per message)".to_string(), String::new())];
    for n in [10, 100, 1000] {
        for compression in ["none", "zstd", "deflate"] {
            cases.push((
                format!("cbor, {n:>4} per message, {compression}"),
                format!(
                    "  encoding: cbor\n  compression: {compression}\n  batch: {{max_readings: {n}, max_bytes: 128KiB, group: gateway}}\n"
                ),
            ));
        }
    }
    println!(
        "\nwire bytes per reading at the proxy (both directions, TCP payload; {READINGS} readings, 5 devices, 1 s apart)"
    );
    println!(
        "{:<36} {:>16} {:>16}",
        "encoding", "full precision", "with decimals"
    );
    let full = tempfile::tempdir().unwrap();
    let rounded = tempfile::tempdir().unwrap();
    backlog(full.path(), false);
    backlog(rounded.path(), true);
    for (name, mqtt) in &cases {
        let a = drain(full.path(), mqtt);
        let b = drain(rounded.path(), mqtt);
        println!("{name:<36} {a:>16.1} {b:>16.1}");
    }
}

/// A dial-up-class uplink for the drain benchmark: batches per gateway, live first.
fn drain_mqtt(window: &str) -> String {
    format!(
        "  keepalive: 60s\n  connect_timeout: 30s\n  encoding: cbor\n  compression: zstd\n  max_inflight: 8\n  max_inflight_bytes: {window}\n\
         \x20 batch: {{max_readings: 20, linger: 1s, group: gateway}}\n\
         \x20 lanes: {{live_age: 30s, backlog_rate: 100, backlog_readings: 500}}\n"
    )
}

#[test]
#[ignore = "a benchmark: scripts/bench runs it"]
fn live_first_after_an_hour_long_outage() {
    // The site reads every 10 s per device: an hour is 1,800 readings.
    const PER_DEVICE_HOUR: u64 = 360;
    println!(
        "\nafter a 1-hour outage (5 devices, a reading each 10 s; decimals), 600 ms round trip:"
    );
    for (rate, window) in [(2400, "1KiB"), (9600, "4KiB")] {
        let hour = tempfile::tempdir().unwrap();
        // The hour of the outage, under a clock run 200 times fast.
        let config = site_config(free_port(), "", true, "interval: 10s", PER_DEVICE_HOUR);
        let mut cairn = Cairn::start_with_env(
            &config,
            &[("LD_PRELOAD", FAKETIME), ("FAKETIME", "+0 x200")],
        );
        cairn.wait_stats("an hour of readings", |s| s["backlog"] == 1800);
        assert!(cairn.stop());
        copy_outbox(&cairn.dir.path().join("data"), hour.path());

        // The link comes back: the site goes on reading, in real time now.
        let broker = Broker::start();
        let sub = Subscriber::start(&broker, "cairn/test/#");
        let proxy = Proxy::start(broker.port);
        proxy.set_rate(rate);
        proxy.set_round_trip(std::time::Duration::from_millis(600));
        let config = site_config(proxy.port, &drain_mqtt(window), true, "interval: 10s", 100);
        let mut cairn = Cairn::prepare(&config);
        let data = cairn.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        copy_outbox(hour.path(), &data);
        let start = std::time::Instant::now();
        cairn.restart();
        let history_done = |r: &support::Received| {
            count_seqs(
                &decode_cairn_only(&r.hex_lines())
                    .into_iter()
                    .filter(|r| r["historical"] == true)
                    .collect::<Vec<_>>(),
            )
            .range(1..=1800)
            .count()
                == 1800
        };
        assert!(sub.wait_until(std::time::Duration::from_secs(1800), history_done));
        let timed = sub.with(|r| r.timed_readings());
        let first_live = timed
            .iter()
            .find(|(_, r)| r["historical"] == false)
            .map(|(at, _)| (*at - start).as_secs_f64());
        let drained = timed
            .iter()
            .filter(|(_, r)| r["historical"] == true)
            .map(|(at, _)| (*at - start).as_secs_f64())
            .fold(0.0, f64::max);
        let live_before = timed
            .iter()
            .filter(|(at, r)| r["historical"] == false && (*at - start).as_secs_f64() < drained)
            .count();
        println!(
            "  {rate:>5} bit/s: first live reading after {:.1} s; backlog of 1,800 drained in {drained:.0} s, \
             with {live_before} live readings delivered meanwhile",
            first_live.unwrap_or(f64::NAN)
        );
    }
}

#[test]
#[ignore = "a benchmark: scripts/bench runs it"]
fn report_by_exception_on_a_meter() {
    // 20 registers polled each second for an hour, mostly steady with sensor noise.
    const SECONDS: u64 = 3600;
    println!(
        "\nreport by exception: 20 registers at 1 s for an hour (steady, noise 0.02, decimals 2):"
    );
    for (name, report) in [
        ("every reading", ""),
        (
            "deadband 0.1, heartbeat 5m",
            "    report: {deadband: 0.1, max_interval: 5m}\n",
        ),
    ] {
        let values: String = (0..20)
            .map(|i| format!("      - {{name: r{i}, sine: {{mean: {}, amplitude: 0.05, period: 1h, noise: 0.02}}, decimals: 2}}\n", 100 + i * 10))
            .collect();
        let (_broker, sub, proxy) = support::behind_proxy();
        let config = format!(
            "gateway:\n  id: test\n  data_dir: {{data}}\nmqtt:\n  host: 127.0.0.1\n  port: {}\n  keepalive: 1h\n\
             devices:\n  - name: meter\n    type: sim\n    interval: 1s\n    limit: {SECONDS}\n    seed: 9\n{report}    values:\n{values}",
            proxy.port
        );
        let cairn = Cairn::start_with_env(
            &config,
            &[("LD_PRELOAD", FAKETIME), ("FAKETIME", "+0 x100")],
        );
        support::wait_devices_finished(cairn.feed(), 1);
        cairn.wait_stats("drained", |s| s["backlog"] == 0);
        let messages = sub.with(|r| r.data().count());
        let values: usize = sub.with(|r| {
            r.data()
                .map(|(_, v)| v["values"].as_object().map_or(0, |o| o.len()))
                .sum()
        });
        let (up, down) = proxy.bytes();
        println!(
            "  {name:<28} {messages:>5} messages, {values:>6} values, {:>8} bytes on the link (json)",
            up + down
        );
    }
}

/// Six hours at `x200` with libfaketime: readings as a site makes them, and a keepalive, a
/// linger and a summary period that pass as they would.
const SIX_HOURS_FAST: &str = "+0 x200";

/// TCP payload and IP bytes through the proxy while a fake-fast `config` runs until `done`.
fn measured(config: &str, done: impl Fn(&Cairn, &Subscriber) -> bool) -> (u64, u64, u64) {
    let (_broker, sub, proxy) = support::behind_proxy();
    let capture = support::capture::Capture::start(proxy.port).expect("tcpdump runs here");
    let config = config.replace("{port}", &proxy.port.to_string());
    let cairn = Cairn::start_with_env(
        &config,
        &[("LD_PRELOAD", FAKETIME), ("FAKETIME", SIX_HOURS_FAST)],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    while !done(&cairn, &sub) {
        assert!(std::time::Instant::now() < deadline, "{}", cairn.log());
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let (up, down) = proxy.bytes();
    let seen = capture.stop();
    (up + down, seen.ip_bytes, proxy.connections())
}

#[test]
#[ignore = "a benchmark: scripts/bench runs it"]
fn presets_a_month_and_an_idle_day() {
    assert!(Path::new(FAKETIME).exists(), "libfaketime is needed");
    println!(
        "\nlink presets on the five-device site (TCP payload at the proxy; IP bytes captured with tcpdump):"
    );
    for preset in ["satellite", "dialup"] {
        // A month at one reading a minute per device: six hours measured, times 120.
        let mqtt = format!("  link: {preset}\n");
        let site =
            site_config(0, &mqtt, true, "interval: 60s", 360).replace("port: 0", "port: {port}");
        let readings = 5 * 360;
        let (tcp, ip, connects) = measured(&site, |cairn, sub| {
            sub.with(|r| count_seqs(&decode_cairn_only(&r.hex_lines())).len()) >= readings
                && cairn.stats()["backlog"] == 0
        });
        println!(
            "  {preset:<9} a month at 1 reading/min: {:.2} MB TCP, {:.2} MB IP ({readings} readings in 6 h over {connects} connection(s), {:.1} IP bytes per reading)",
            tcp as f64 * 120.0 / 1e6,
            ip as f64 * 120.0 / 1e6,
            ip as f64 / readings as f64
        );
        // Idle: no readings for six hours, times four.
        let idle = format!(
            "gateway:\n  id: test\n  data_dir: {{data}}\nmqtt:\n  host: 127.0.0.1\n  port: {{port}}\n{mqtt}devices: []\n"
        );
        let started = std::time::Instant::now();
        let (tcp, ip, _) = measured(&idle, |_, _| {
            started.elapsed() >= std::time::Duration::from_secs(6 * 3600 / 200)
        });
        println!(
            "  {preset:<9} idle: {:.1} kB TCP, {:.1} kB IP a day",
            tcp as f64 * 4.0 / 1e3,
            ip as f64 * 4.0 / 1e3
        );
    }
}

#[test]
#[ignore = "a benchmark: scripts/bench runs it"]
fn presets_reconnect_bytes() {
    // Reconnects of the site, plain and over TLS: the second connection's bytes.
    for tls in [false, true] {
        let tls_broker = tls.then(|| support::tls::TlsBroker::start(""));
        let plain;
        let (broker, target, url) = match &tls_broker {
            Some(t) => (
                &t.broker,
                t.tls_port,
                format!(
                    "mqtts://localhost:{{port}}\n  tls: {{ca_file: {}}}",
                    t.file("ca.crt")
                ),
            ),
            None => {
                plain = Broker::start();
                (&plain, plain.port, "mqtt://127.0.0.1:{port}".to_string())
            }
        };
        let sub = Subscriber::start(broker, "cairn/test/#");
        let proxy = Proxy::start(target);
        let devices = site_config(0, "", true, "interval: 1h", 1);
        let devices = &devices[devices.find("devices:").unwrap()..];
        let config = format!(
            "gateway:\n  id: test\n  data_dir: {{data}}\nmqtt:\n  url: {}\n  link: satellite\n  batch: {{linger: 1s}}\n{devices}",
            url.replace("{port}", &proxy.port.to_string())
        );
        let cairn = Cairn::start(&config);
        let onlines = |n: usize| sub.wait_until(PATIENCE, |r| r.onlines() >= n);
        assert!(onlines(1));
        // The first connection is done when its readings, and so the metas before them, are
        // acknowledged (they linger a second here, not the preset's 20 minutes).
        support::wait_devices_finished(cairn.feed(), 5);
        cairn.wait_stats("drained", |s| s["backlog"] == 0);
        let first = proxy.per_connection()[0];
        proxy.cut();
        assert!(onlines(2));
        let connections = proxy.per_connection();
        assert_eq!(connections.len(), 2);
        let second = connections[1];
        println!(
            "  reconnect{}: {} B (first connect: {} B), TCP payload both ways",
            if tls { " over TLS 1.3" } else { ", plain" },
            second.0 + second.1,
            first.0 + first.1
        );
    }
}
