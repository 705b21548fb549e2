//! Cairn's own link to the broker: a half-open link noticed whatever the keepalive, pings only
//! when idle, and bytes counted at the socket exactly as the proxy saw them cross.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::feed::api;
use support::{Broker, Cairn, PATIENCE, Subscriber, free_port};

fn counter(port: u16, mqtt: &str, rate: u32, limit: u64) -> String {
    format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\n\
         mqtt:\n  host: 127.0.0.1\n  port: {port}\n  reconnect_min: 100ms\n  reconnect_max: 1s\n{mqtt}\
         devices:\n  - name: counter\n    type: sim\n    rate: {rate}\n    limit: {limit}\n    values: [{{name: n, counter: {{}}}}]\n"
    )
}

/// Polls `/api/status` until `done` holds for its uplink; returns when.
fn wait_uplink(cairn: &Cairn, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> Instant {
    let feed = cairn.feed();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = api(feed, "/api/status");
        if done(&status["uplink"]) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{what} never: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_half_open_link_is_noticed_within_dead_after_whatever_the_keepalive() {
    let (_broker, sub, proxy) = support::behind_proxy();
    // A keepalive of 10 minutes, which would take 10 to 20 minutes to notice a dead link.
    let cairn = Cairn::start(&counter(
        proxy.port,
        "  keepalive: 10m\n  dead_after: 6s\n",
        50,
        1500,
    ));
    assert!(sub.wait_until(PATIENCE, |r| r.data().count() >= 100));
    let t0 = Instant::now();
    proxy.set_blackhole(true);
    // Stalled (a third of dead_after) as soon as answers are overdue, then dropped as dead.
    let stalled = wait_uplink(&cairn, "stalled", |u| u["stalled"] == true);
    let dead = wait_uplink(&cairn, "down", |u| u["connected"] == false);
    let (stalled, dead) = ((stalled - t0).as_secs_f64(), (dead - t0).as_secs_f64());
    assert!(stalled < 5.0, "stalled shown after {stalled:.1} s");
    assert!(dead < 6.0 + 3.0, "dead after {dead:.1} s");
    assert!(
        cairn.log().contains("the link is dead: no answer for 6s"),
        "{}",
        cairn.log()
    );
    proxy.set_blackhole(false);
    let report = sub.expect_all_seqs(1500);
    println!(
        "half-open link: stalled shown after {stalled:.1} s, dropped after {dead:.1} s; {report:?}"
    );
}

#[test]
fn pings_go_only_when_the_link_is_idle_and_the_keepalive_reaches_the_broker() {
    let port = free_port();
    let broker = Broker::start_with(port, "log_type all\n");
    let sub = Subscriber::start(&broker, "cairn/test/#");
    // 15 s of readings with a 5 s keepalive, then silence.
    let cairn = Cairn::start(&counter(port, "  keepalive: 5s\n", 10, 150));
    let report = sub.expect_all_seqs(150);
    assert_eq!(report.beyond, 0);
    cairn.wait_log("Device finished");
    // Idle for more than two keepalives.
    std::thread::sleep(Duration::from_secs(12));
    let log = broker.log();
    let at = |line: &str| -> u64 { line.split(':').next().unwrap().trim().parse().unwrap() };
    let publishes: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("Received PUBLISH from cairn-test"))
        .map(at)
        .collect();
    let pings: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("Received PINGREQ from cairn-test"))
        .map(at)
        .collect();
    let (first, last) = (publishes[0], *publishes.last().unwrap());
    assert!(last - first >= 10, "readings flowed for {} s", last - first);
    let while_busy = pings.iter().filter(|t| **t > first && **t < last).count();
    assert_eq!(while_busy, 0, "no ping while readings flow: {pings:?}");
    assert!(
        pings.iter().any(|t| *t > last),
        "a ping once idle: {pings:?}"
    );
    assert!(
        log.contains("as cairn-test (p2, c1, k5)"),
        "the broker was told the keepalive:\n{log}"
    );
}

#[test]
fn link_bytes_are_counted_at_the_socket_and_survive_a_restart() {
    let (_broker, sub, proxy) = support::behind_proxy();
    let mut cairn = Cairn::start(&counter(proxy.port, "", 100, 300));
    sub.expect_all_seqs(300);
    cairn.wait_stats("drained", |s| s["backlog"] == 0);
    assert!(cairn.stop());
    // Everything crossed: what Cairn counted at its socket is what the proxy carried.
    let (up, down) = proxy.bytes();
    let stats = cairn.stats();
    assert_eq!(
        (
            stats["link up"] as u64,
            stats["link down"] as u64,
            stats["link connects"]
        ),
        (up, down, 1),
        "{stats:?}"
    );
    assert_eq!(stats["link today"] as u64, up + down);
    cairn.restart();
    let metrics = |cairn: &Cairn| support::feed::http_get(cairn.feed(), "/metrics", None).1;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = metrics(&cairn);
        if text.contains("cairn_uplink_connects_total 2") {
            let up_total: f64 = text
                .lines()
                .find(|l| l.starts_with("cairn_uplink_bytes_total{direction=\"up\"}"))
                .and_then(|l| l.split_whitespace().last())
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                up_total as u64 > up,
                "counts go on from the last run: {up_total} vs {up}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_reconnect_sends_only_what_changed() {
    let (_broker, sub, proxy) = support::behind_proxy();
    let config = support::site_config(
        proxy.port,
        "  lanes: {summary_every: 0s}\n",
        true,
        "interval: 1h",
        1,
    );
    let mut cairn = Cairn::start(&config);
    let metas = |r: &support::Received| {
        r.messages
            .iter()
            .filter(|(t, _)| t.ends_with("/meta"))
            .count()
    };
    assert!(sub.wait_until(PATIENCE, |r| metas(r) == 5));
    support::wait_devices_finished(cairn.feed(), 5);
    cairn.wait_stats("drained", |s| s["backlog"] == 0);
    let first = proxy.per_connection()[0];
    // The link drops; the metadata the broker holds is still the same.
    proxy.cut();
    assert!(sub.wait_until(PATIENCE, |r| r.onlines() == 2));
    let reconnect = *proxy.per_connection().last().unwrap();
    // And after a restart too. Its devices read again (their `limit` is per run), so only
    // the metadata is compared: its bytes would race with the new readings.
    assert!(cairn.stop());
    cairn.restart();
    assert!(sub.wait_until(PATIENCE, |r| r.onlines() == 3));
    println!("5-device site: first connect {first:?} bytes (up, down), a reconnect {reconnect:?}");
    assert_eq!(sub.with(metas), 5, "no meta went again");
    assert!(
        reconnect.0 * 3 < first.0,
        "the reconnect costs a fraction: {first:?} then {reconnect:?}"
    );
}

#[test]
fn a_tiny_budget_pauses_the_backlog_then_thins_live_then_sends_only_alarms() {
    let port = free_port();
    let mut broker = Broker::start_on(port);
    let sub = Subscriber::start(&broker, "cairn/test/#");
    broker.stop();
    let alarm = "  - name: alarm\n    type: sim\n    rate: 5\n    values:\n      - {name: high_level, square: {low: 0, high: 1, period: 4s}, report: {}, priority: alarm}\n";
    let mqtt = format!(
        "{}  budget: {{day: 40KiB, thin_to: 3s}}\n  lanes: {{summary_every: 0s}}\n",
        support::FAST_RECONNECT
    );
    let cairn =
        Cairn::start(&(support::site_config(port, &mqtt, false, "rate: 5", 100_000) + alarm));
    // A backlog first, then the link, and a budget that runs out within seconds.
    cairn.wait_stats("a backlog", |s| s["backlog"] >= 150);
    broker.restart();
    let feed = cairn.feed();
    let deadline = Instant::now() + PATIENCE;
    let used_up = loop {
        let status = api(feed, "/api/status");
        if status["budget"]["step"] == "alarms_only" {
            break std::time::SystemTime::now();
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Alarms still go; nothing else taken after the budget ran out does.
    let later = |r: &serde_json::Value| {
        humantime::parse_rfc3339(r["ts"].as_str().unwrap()).unwrap()
            > used_up + Duration::from_secs(1)
    };
    assert!(sub.wait_until(PATIENCE, |r| {
        r.timed_readings()
            .iter()
            .any(|(_, x)| x["device"] == "alarm" && later(x))
    }));
    std::thread::sleep(Duration::from_secs(2));
    let readings = sub.with(|r| r.timed_readings());
    let late: Vec<&serde_json::Value> = readings
        .iter()
        .map(|(_, r)| r)
        .filter(|r| later(r))
        .collect();
    assert!(late.iter().all(|r| r["device"] == "alarm"), "{late:?}");
    // The documented order, each step logged once and counted.
    let log = cairn.log();
    let at = |text: &str| {
        assert_eq!(log.matches(text).count(), 1, "`{text}` once:\n{log}");
        log.find(text).unwrap()
    };
    let (paused, thinned, alarms) = (
        at("80% used; the backlog waits"),
        at("90% used; live readings thinned"),
        at("used up; only alarms go"),
    );
    assert!(paused < thinned && thinned < alarms);
    let status = api(feed, "/api/status");
    for step in ["backlog_paused", "live_thinned", "alarms_only"] {
        assert_eq!(status["budget"]["reached"][step], 1, "{status}");
    }
    // Nothing was dropped: what did not go waits in the outbox.
    assert!(status["backlog"]["readings"].as_u64().unwrap() > 0);
    assert!(
        status["dropped"]
            .as_object()
            .unwrap()
            .values()
            .all(|n| n == 0),
        "{status}"
    );
    let used = status["budget"]["day"]["used"].as_u64().unwrap();
    println!(
        "budget of 40 KiB a day: {used} bytes used; {} readings delivered",
        readings.len()
    );
}

/// The retained-status messages received, in order.
fn statuses(sub: &Subscriber) -> Vec<String> {
    sub.with(|r| {
        r.messages
            .iter()
            .filter(|(t, _)| t == "cairn/test/status")
            .map(|(_, p)| p.clone())
            .collect()
    })
}

#[test]
fn windows_connect_on_schedule_drain_and_sleep_and_an_alarm_wakes_the_link() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let mqtt = "  connect: {every: 15s, for: 10s}\n  lanes: {summary_every: 0s}\n";
    let cairn = Cairn::start(&support::site_config(
        broker.port,
        mqtt,
        true,
        "rate: 2",
        60,
    ));
    // Three windows: online, then sleeping until the next one, each time.
    assert!(sub.wait_until(PATIENCE, |r| {
        r.messages
            .iter()
            .filter(|(t, p)| t == "cairn/test/status" && p.starts_with("sleeping until "))
            .count()
            >= 3
    }));
    let seen = statuses(&sub);
    assert!(
        !seen.iter().any(|s| s == "offline"),
        "the last will never fired: {seen:?}"
    );
    let onlines = seen.iter().filter(|s| *s == "online").count();
    assert!(onlines >= 3, "{seen:?}");
    // Between windows the gateway shows when the next one opens.
    let status = api(cairn.feed(), "/api/status");
    let readings_sent = sub.with(|r| r.data().count());
    println!(
        "windows of 15 s: {seen:?}; {readings_sent} readings so far; {}",
        status["uplink"]
    );
    // Everything arrives, window by window.
    support::wait_devices_finished(cairn.feed(), 5);
    sub.expect_all_seqs(300);
    drop(cairn);

    // Woken by alarms: windows an hour apart, and an alarm value that changes every 10 s.
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let mqtt = "  connect: {every: 1h, for: 1m}\n  lanes: {summary_every: 0s}\n";
    let alarm = "  - name: alarm\n    type: sim\n    rate: 5\n    values:\n      - {name: high_level, square: {low: 0, high: 1, period: 20s}, report: {}, priority: alarm}\n";
    let cairn =
        Cairn::start(&(support::site_config(broker.port, mqtt, true, "rate: 1", 100_000) + alarm));
    assert!(sub.wait_until(PATIENCE, |r| r.onlines() >= 2));
    let alarms: Vec<(Instant, serde_json::Value)> = sub
        .with(|r| r.timed_readings())
        .into_iter()
        .filter(|(_, r)| r["device"] == "alarm")
        .collect();
    assert!(alarms.len() >= 2, "{alarms:?}");
    assert!(
        cairn.log().contains("Alarm: connecting now"),
        "{}",
        cairn.log()
    );
    println!("alarms woke the link: {:?}", statuses(&sub));
}

#[test]
fn the_dialup_preset_drains_ten_value_readings_at_2400_bits_without_a_disconnect() {
    // 150 readings of ten full-precision values each, left by an earlier run.
    let values: String = (0..10)
        .map(|i| format!("      - {{name: v{i}, sine: {{mean: {}, amplitude: 3, period: 1m, noise: 0.1}}}}\n", i * 10))
        .collect();
    let first = format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\nmqtt: {{host: 127.0.0.1, port: {}}}\n\
         devices:\n  - name: meter\n    type: sim\n    rate: 50\n    limit: 150\n    values:\n{values}",
        free_port()
    );
    let mut cairn = Cairn::start(&first);
    cairn.wait_stats("a backlog", |s| s["backlog"] == 150);
    assert!(cairn.stop());
    let data = cairn.dir.path().join("data");

    let (_broker, sub, proxy) = support::behind_proxy();
    proxy.set_rate(2400);
    proxy.set_round_trip(Duration::from_millis(600));
    let config = format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\nmqtt: {{host: 127.0.0.1, port: {}, link: dialup}}\ndevices: []\n",
        proxy.port
    );
    let mut drain = Cairn::prepare(&config);
    std::fs::create_dir_all(drain.dir.path().join("data")).unwrap();
    for file in ["outbox.db", "outbox.db-wal"] {
        if data.join(file).exists() {
            std::fs::copy(data.join(file), drain.dir.path().join("data").join(file)).unwrap();
        }
    }
    let start = Instant::now();
    drain.restart();
    assert!(sub.wait_seqs(PATIENCE * 3, |seen| seen.len() == 150));
    let took = start.elapsed().as_secs_f64();
    let readings = support::decode_both(&sub.with(|r| r.hex_lines()));
    assert_eq!(support::count_seqs(&readings).len(), 150, "0 lost");
    let log = drain.log();
    assert!(
        !log.contains("MQTT connection lost"),
        "0 disconnects:\n{log}"
    );
    assert_eq!(proxy.connections(), 1, "one connection");
    let (up, down) = proxy.bytes();
    println!(
        "dialup preset, 2400 bit/s, 600 ms: 150 ten-value readings in {took:.0} s over one connection, {up} B up, {down} B down"
    );
}
