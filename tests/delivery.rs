//! The delivery contract, end to end: the real `cairn` binary, a real mosquitto, an
//! independent subscriber, and every sequence number counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Broker, Cairn, PATIENCE, Subscriber, free_port, sim_config};

#[test]
fn nothing_lost_while_the_broker_restarts_five_times() {
    let mut broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let mut cairn = Cairn::start(&sim_config(broker.port, 400, 20_000, ""));
    for round in 1..=5 {
        sub.wait_data(round * 2500);
        broker.stop();
        // Readings keep coming while the broker is away: the outbox must hold them.
        let backlog_before = cairn.stats()["backlog"];
        cairn.wait_stats("backlog to grow", |s| {
            s["backlog"] > backlog_before || s["next seq"] > 20_000
        });
        broker.restart();
    }
    let report = sub.expect_all_seqs(20_000);
    println!("broker restarts: {report:?}");
    assert_eq!(report.beyond, 0, "no seq beyond the 20,000 produced");
    cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
    assert!(cairn.stop(), "clean exit");
    assert!(
        sub.with(|r| r.last_on("cairn/test/status") == Some("offline")),
        "retained offline on clean stop"
    );
}

#[test]
fn nothing_committed_is_lost_when_cairn_is_killed_three_times() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    // Each run of the sim produces up to `limit`; runs that are killed produce fewer.
    let mut cairn = Cairn::start(&sim_config(broker.port, 2000, 10_000, ""));
    for round in 1..=3 {
        sub.wait_data(round * 2000);
        cairn.kill9();
        cairn.restart();
    }
    // The last run goes to its end; its final reading carries the counter value limit - 1.
    assert!(sub.wait_until(PATIENCE, |r| {
        r.data().any(|(_, v)| v["values"]["n"] == 9_999)
    }));
    cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
    assert!(cairn.stop());
    let last = cairn.stats()["next seq"] - 1;
    let report = sub.expect_all_seqs(last);
    println!("kill -9 x3: {last} seqs, {report:?}");
    assert_eq!(report.beyond, 0);
    assert!(last > 10_000, "the killed runs produced too: {last}");
    // The last will told the world each time the gateway vanished.
    let offline = sub.with(|r| {
        r.messages
            .iter()
            .filter(|(t, p)| t == "cairn/test/status" && p == "offline")
            .count()
    });
    assert!(offline >= 3, "last will seen {offline} times");
}

#[test]
fn a_backlog_built_during_an_outage_drains_when_the_broker_appears() {
    let port = free_port();
    // The broker exists first only so that the subscriber's persistent session does.
    let mut broker = Broker::start_on(port);
    let sub = Subscriber::start(&broker, "cairn/test/#");
    broker.stop();
    let cairn = Cairn::start(&sim_config(port, 500, 3000, ""));
    let stats = cairn.wait_stats("all 3000 readings buffered", |s| s["backlog"] == 3000);
    assert_eq!(stats["next seq"], 3001);
    let log = cairn.log();
    let retries = log.matches("MQTT connect failed").count();
    assert!(retries >= 1, "{log}");
    broker.restart();
    let report = sub.expect_all_seqs(3000);
    println!("outage: {retries} connect attempts logged while down, {report:?}");
    cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
}

#[test]
fn a_tiny_outbox_drops_the_oldest_and_says_how_many() {
    let port = free_port();
    let mut broker = Broker::start_on(port);
    let sub = Subscriber::start(&broker, "cairn/test/#");
    broker.stop();
    let cairn = Cairn::start(&sim_config(port, 2000, 5000, "  max_bytes: 64KiB\n"));
    let stats = cairn.wait_stats("all readings accepted or dropped", |s| {
        s["next seq"] == 5001
    });
    let dropped = stats["dropped (max_bytes)"];
    assert!(dropped > 0, "{stats:?}");
    assert_eq!(stats["backlog"] + dropped, 5000, "{stats:?}");
    // A row costs at least its 32-byte allowance plus the device name.
    assert!(stats["backlog"] * 39 <= 64 * 1024, "{stats:?}");
    assert!(
        cairn.log().contains("readings dropped"),
        "the drop is logged"
    );
    broker.restart();
    // Exactly the newest survive, and all of them arrive.
    let first_kept = dropped + 1;
    assert!(sub.wait_until(PATIENCE, |r| {
        let counts = r.seq_counts();
        (first_kept..=5000).all(|seq| counts.contains_key(&seq))
    }));
    let oldest_seen = sub.with(|r| r.seq_counts().keys().next().copied());
    assert_eq!(
        oldest_seen,
        Some(first_kept),
        "dropped readings are not published"
    );
}

#[test]
fn a_late_subscriber_gets_the_retained_status_and_metadata() {
    // Status and metadata are retained and reach a subscriber that comes later.
    let broker = Broker::start();
    let cairn = Cairn::start(&sim_config(broker.port, 10, 20, ""));
    cairn.wait_stats("all 20 delivered", |s| {
        s["next seq"] == 21 && s["backlog"] == 0
    });
    let late = Subscriber::start(&broker, "cairn/test/#");
    assert!(late.wait_until(Duration::from_secs(30), |r| {
        r.last_on("cairn/test/status") == Some("online")
            && r.last_on("cairn/test/counter/meta").is_some()
    }));
    let meta: serde_json::Value = serde_json::from_str(
        late.with(|r| r.last_on("cairn/test/counter/meta").unwrap().to_string())
            .as_str(),
    )
    .unwrap();
    assert_eq!(meta["adapter"], "sim");
    // So is the summary of the lanes, sent when the connection started.
    assert!(late.wait_until(Duration::from_secs(30), |r| {
        r.last_on("cairn/test/summary").is_some()
    }));
    let summary: serde_json::Value = serde_json::from_str(
        late.with(|r| r.last_on("cairn/test/summary").unwrap().to_string())
            .as_str(),
    )
    .unwrap();
    for lane in ["alarm", "live", "backlog"] {
        assert!(summary["lanes"][lane]["readings"].is_u64(), "{summary}");
    }
}
