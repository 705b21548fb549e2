//! The delivery contract against other brokers than mosquitto: RabbitMQ's MQTT plugin and NATS
//! server's MQTT, each a private instance on ephemeral ports, restarted under Cairn and with
//! Cairn killed under them, and every sequence number counted by an independent subscriber.
//! The README's "Brokers" section lists what differs between them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::broker::BrokerKind;
use support::proxy::Proxy;
use support::{Broker, Cairn, PATIENCE, Subscriber, sim_config};

const READINGS: u64 = 8_000;

/// How the uplink is taken away from Cairn, twice, while readings flow.
enum Outage {
    /// The broker is stopped, and started again after a backlog built up.
    BrokerRestart,
    /// Every connection to the broker is cut at the fault proxy, the broker staying up: for
    /// NATS 2.9, which loses QoS 1 messages it acknowledged when it restarts, with any client
    /// (README, "Brokers").
    LinkCut,
}

/// Two outages while readings flow, then two SIGKILLs of Cairn, then a clean stop: every seq
/// arrives, and the status topic says what happened each time.
fn nothing_lost_through_outages_and_kills(kind: BrokerKind, outage: Outage) {
    let mut broker = Broker::start_kind(kind);
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let proxy = Proxy::start(broker.port);
    let mut cairn = Cairn::start(&sim_config(proxy.port, 400, READINGS, ""));
    for round in 1..=2 {
        sub.wait_data(round * 1500);
        match outage {
            Outage::BrokerRestart => {
                broker.stop();
                let backlog_before = cairn.stats()["backlog"];
                cairn.wait_stats("backlog to grow", |s| {
                    s["backlog"] > backlog_before || s["next seq"] > READINGS as i64
                });
                broker.restart();
            }
            Outage::LinkCut => {
                // The next round's wait for more data shows the reconnection.
                proxy.cut();
                cairn.wait_log_count("MQTT connection lost", round);
            }
        }
    }
    for _ in 1..=2 {
        let arrived = sub.with(|r| r.data().count());
        sub.wait_data(arrived + 1500);
        cairn.kill9();
        cairn.restart();
    }
    // The last run goes to its end: its final reading carries the counter value limit - 1.
    assert!(
        sub.wait_until(PATIENCE, |r| {
            r.data()
                .any(|(_, v)| v["values"]["n"] == READINGS as i64 - 1)
        }),
        "the last run's final reading never arrived"
    );
    cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
    assert!(cairn.stop(), "clean exit");
    let last = cairn.stats()["next seq"] - 1;
    let report = sub.expect_all_seqs(last);
    println!("{kind:?}: {last} seqs through 2 outages and 2 SIGKILLs: {report:?}");
    assert_eq!(report.beyond, 0);
    let (offline, last_status) = sub.with(|r| {
        let offline = r
            .messages
            .iter()
            .filter(|(t, p)| t == "cairn/test/status" && p == "offline")
            .count();
        (offline, r.last_on("cairn/test/status").map(String::from))
    });
    assert!(
        offline >= 3,
        "the last will after each kill, and the clean stop: {offline}"
    );
    assert_eq!(last_status.as_deref(), Some("offline"));
}

#[test]
fn rabbitmq_mqtt_loses_nothing_through_restarts_and_kills() {
    nothing_lost_through_outages_and_kills(BrokerKind::RabbitMq, Outage::BrokerRestart);
}

#[test]
fn nats_mqtt_loses_nothing_through_link_cuts_and_kills() {
    nothing_lost_through_outages_and_kills(BrokerKind::Nats, Outage::LinkCut);
}
