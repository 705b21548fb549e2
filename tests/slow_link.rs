//! Satellite-like links through the fault-injecting proxy: a 600 ms round trip, then a silent
//! outage that only the keepalive can detect. Nothing may be lost either way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::proxy::Proxy;
use support::{Broker, Cairn, PATIENCE, Subscriber, sim_config};

#[test]
fn a_600ms_round_trip_and_a_silent_outage_lose_nothing() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let proxy = Proxy::start(broker.port);
    proxy.set_round_trip(Duration::from_millis(600));
    let config = sim_config(proxy.port, 50, 1500, "")
        .replace("keepalive: 5s", "keepalive: 5s\n  connect_timeout: 10s");
    let cairn = Cairn::start(&config);
    assert!(
        sub.wait_until(PATIENCE, |r| r.data().count() >= 300),
        "data flows over a 600 ms round trip"
    );

    // The link goes silent: no reset, no FIN, just nothing. Only the keepalive can tell; the
    // readings meanwhile pile up in the outbox.
    proxy.set_blackhole(true);
    cairn.wait_log("MQTT connection lost");
    proxy.set_blackhole(false);

    let report = sub.expect_all_seqs(1500);
    println!("600 ms RTT + blackhole: {report:?}");
    cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
}
