//! Lanes and report by exception, end to end on a slow link: the real binary, a real
//! mosquitto behind the fault-injecting proxy (rate cap, round trip, blackhole), and every
//! payload decoded by both decoders.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use support::proxy::Proxy;
use support::{Broker, Cairn, PATIENCE, Subscriber, free_port, site_config};

/// A dial-up-class link: cbor batches, a short live age, a small in-flight window.
const SLOW_LINK: &str = concat!(
    "  keepalive: 10s\n  connect_timeout: 15s\n  reconnect_min: 200ms\n  reconnect_max: 2s\n",
    "  encoding: cbor\n  compression: zstd\n  max_inflight: 8\n  max_inflight_bytes: 1KiB\n",
    "  batch: {max_readings: 20, linger: 1s, group: gateway}\n",
    "  lanes: {live_age: 10s, backlog_rate: 100, backlog_readings: 200}\n",
);

/// An alarm device whose one value changes every 10 s (a square wave) and is reported only
/// when it does.
const ALARM: &str = "  - name: alarm\n    type: sim\n    rate: 2\n    limit: 260\n    values:\n      - {name: high_level, square: {low: 0, high: 1, period: 20s}, report: {}, priority: alarm}\n";

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// When `ts` (RFC 3339 from a reading) was, as a SystemTime.
fn taken(reading: &serde_json::Value) -> SystemTime {
    humantime::parse_rfc3339(reading["ts"].as_str().unwrap()).unwrap()
}

#[test]
fn after_an_outage_live_readings_come_first_and_the_backlog_follows_in_full() {
    let (_broker, sub, proxy) = support::behind_proxy();
    proxy.set_rate(2400);
    proxy.set_round_trip(Duration::from_millis(600));
    let config = site_config(proxy.port, SLOW_LINK, false, "rate: 1", 130) + ALARM;
    let mut cairn = Cairn::start(&config);
    // Flowing, then a silent outage of a minute while the site keeps reading.
    assert!(sub.wait_until(PATIENCE, |r| r.raw.len() > 10));
    proxy.set_blackhole(true);
    std::thread::sleep(Duration::from_secs(60));
    let (t0, t0_wall) = (Instant::now(), SystemTime::now());
    proxy.set_blackhole(false);

    let feed = cairn.feed();
    support::wait_devices_finished(feed, 6);
    cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
    assert!(cairn.stop());
    let last = cairn.stats()["next seq"] - 1;
    let (_, duplicates) = sub.expect_every_reading(last);

    let timed: Vec<(Instant, serde_json::Value)> = sub
        .with(|r| r.timed_readings())
        .into_iter()
        .filter(|(at, _)| *at >= t0)
        .collect();
    let last_history = timed
        .iter()
        .filter(|(_, r)| r["historical"] == true)
        .map(|(at, _)| *at)
        .max()
        .expect("history arrived after the outage");
    // Every device's first live reading, well before the backlog is done.
    let mut first_live: BTreeMap<String, Instant> = BTreeMap::new();
    for (at, r) in &timed {
        if r["historical"] == false {
            first_live
                .entry(r["device"].as_str().unwrap().to_string())
                .or_insert(*at);
        }
    }
    for device in ["weather", "pumps", "meter", "tank", "boiler"] {
        let at = first_live
            .get(device)
            .unwrap_or_else(|| panic!("no live reading of {device}"));
        let wait = seconds(*at - t0);
        assert!(
            wait <= 10.0,
            "{device}: first live reading after {wait:.1} s"
        );
        assert!(
            *at < last_history,
            "{device} came while the backlog was still draining"
        );
    }
    // An alarm raised during the drain overtakes the queued backlog.
    let (alarm_at, alarm) = timed
        .iter()
        .find(|(at, r)| r["device"] == "alarm" && taken(r) > t0_wall && *at < last_history)
        .expect("an alarm during the drain");
    let raised = taken(alarm).duration_since(t0_wall).unwrap();
    let latency = seconds(*alarm_at - t0) - seconds(raised);
    assert!(latency < 5.0, "the alarm took {latency:.1} s");
    let overtaken = timed
        .iter()
        .filter(|(at, r)| {
            *at > *alarm_at && r["historical"] == true && r["seq"].as_i64() < alarm["seq"].as_i64()
        })
        .count();
    assert!(overtaken > 0, "queued history arrived after the alarm");
    println!(
        "2400 bit/s, 600 ms: first live readings after {:.1}-{:.1} s, an alarm after {latency:.1} s, \
         backlog drained in {:.0} s; {last} seqs, 0 lost, {duplicates} duplicates",
        first_live
            .values()
            .map(|at| seconds(*at - t0))
            .fold(f64::MAX, f64::min),
        first_live
            .values()
            .map(|at| seconds(*at - t0))
            .fold(0.0, f64::max),
        seconds(last_history - t0),
    );
}

#[test]
fn a_flapping_link_loses_nothing_and_both_lanes_progress() {
    let port = free_port();
    let mut broker = Broker::start_on(port);
    let sub = Subscriber::start(&broker, "cairn/test/#");
    broker.stop();
    let proxy = Proxy::start(port);
    proxy.set_rate(9600);
    proxy.set_round_trip(Duration::from_millis(600));
    let cairn = Cairn::start(&site_config(proxy.port, SLOW_LINK, false, "rate: 2", 320));
    // A backlog first: the broker is away for 20 s.
    cairn.wait_stats("a backlog", |s| s["backlog"] >= 150);
    broker.restart();
    // Up 20 s, down 20 s, three times, with both lanes holding work.
    let mut windows = Vec::new();
    for _ in 0..3 {
        let up = Instant::now();
        std::thread::sleep(Duration::from_secs(20));
        windows.push((up, Instant::now()));
        proxy.set_blackhole(true);
        std::thread::sleep(Duration::from_secs(20));
        proxy.set_blackhole(false);
    }
    support::wait_devices_finished(cairn.feed(), 5);
    cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
    let last = cairn.stats()["next seq"] - 1;
    let (_, duplicates) = sub.expect_every_reading(last);
    let timed = sub.with(|r| r.timed_readings());
    for (i, (from, to)) in windows.iter().enumerate() {
        let arrived = |historical: bool| {
            timed
                .iter()
                .filter(|(at, r)| at >= from && at <= to && r["historical"] == historical)
                .count()
        };
        let (live, history) = (arrived(false), arrived(true));
        println!(
            "up window {}: {live} live and {history} historical readings",
            i + 1
        );
        assert!(
            live > 0 && history > 0,
            "window {}: live {live}, history {history}",
            i + 1
        );
    }
    println!("flapping 9600 bit/s link: {last} seqs, 0 lost, {duplicates} duplicates");
}

#[test]
fn a_deadband_sends_noise_only_at_the_heartbeat_and_a_step_at_once() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    // 20 readings a second: a level with noise well inside its deadband, and a step signal.
    let config = format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\n\
         mqtt: {{host: 127.0.0.1, port: {}}}\n\
         devices:\n  - name: meter\n    type: sim\n    rate: 20\n    limit: 240\n    report: {{deadband: 0.5, max_interval: 3s}}\n    values:\n\
         \x20     - {{name: level, sine: {{mean: 20, amplitude: 0.01, period: 1h, noise: 0.05}}}}\n\
         \x20     - {{name: load, square: {{low: 0, high: 10, period: 4s}}}}\n",
        broker.port
    );
    let cairn = Cairn::start(&config);
    support::wait_devices_finished(cairn.feed(), 1);
    cairn.wait_stats("drained", |s| s["backlog"] == 0);
    let sent = sub.values_of("meter");
    let levels = sent.iter().filter(|v| v.get("level").is_some()).count();
    let loads: Vec<f64> = sent.iter().filter_map(|v| v["load"].as_f64()).collect();
    // 12 s of readings: the level goes at its first reading and then each 3 s heartbeat.
    assert!(
        (4..=6).contains(&levels),
        "{levels} level reports: {sent:?}"
    );
    // The load steps every 2 s: each step is reported, and nothing in between.
    assert!(
        loads.windows(2).all(|w| w[0] != w[1]) || loads.len() <= 1,
        "{loads:?}"
    );
    assert!((5..=8).contains(&loads.len()), "{loads:?}");
    let devices = support::feed::api(cairn.feed(), "/api/devices");
    let suppressed = &devices[0]["suppressed"];
    assert!(
        suppressed["readings"].as_u64().unwrap() > 200,
        "{suppressed}"
    );
    let metrics = support::feed::http_get(cairn.feed(), "/metrics", None).1;
    assert!(metrics.contains("cairn_device_suppressed_total{device=\"meter\",what=\"readings\"}"));
    println!(
        "deadband: 240 readings, {} sent ({levels} with the level, {} with the load)",
        sent.len(),
        loads.len()
    );
}
