//! TLS with rustls against a mosquitto TLS listener: a CA made by `openssl` for this test only,
//! the server certificate checked against it, and a client certificate the broker requires.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::tls::TlsBroker;
use support::{Cairn, Subscriber};

#[test]
fn publishes_over_tls_with_a_client_certificate() {
    // A plain listener for the test's own subscriber, and the TLS one for Cairn.
    let tls = TlsBroker::start("require_certificate true\n");
    let (p, tls_port) = (|f: &str| tls.file(f), tls.tls_port);
    let sub = Subscriber::start(&tls.broker, "cairn/test/#");
    let config = format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\n\
         mqtt:\n  url: mqtts://localhost:{tls_port}\n  reconnect_min: 100ms\n  reconnect_max: 1s\n\
         \x20 tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n\
         devices:\n  - name: counter\n    type: sim\n    rate: 100\n    limit: 200\n    values: [{{name: n, counter: {{}}}}]\n",
        p("ca.crt"),
        p("client.crt"),
        p("client.key")
    );
    let cairn = Cairn::start(&config);
    let report = sub.expect_all_seqs(200);
    assert_eq!(report.beyond, 0);
    cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
}

#[test]
fn a_reconnect_resumes_the_tls_session() {
    let tls = TlsBroker::start("");
    let p = |f: &str| tls.file(f);
    let sub = Subscriber::start(&tls.broker, "cairn/test/#");
    let proxy = support::proxy::Proxy::start(tls.tls_port);
    // No devices: each connection carries the TLS handshake, CONNECT and the status only.
    let config = format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\n\
         mqtt:\n  url: mqtts://localhost:{}\n  reconnect_min: 100ms\n  reconnect_max: 1s\n\
         \x20 lanes: {{summary_every: 0s}}\n  tls:\n    ca_file: {}\n\
         devices: []\n",
        proxy.port,
        p("ca.crt"),
    );
    let _cairn = Cairn::start(&config);
    let onlines =
        |n: usize| sub.wait_until(std::time::Duration::from_secs(60), |r| r.onlines() >= n);
    // TLS 1.3 session tickets come right after the handshake, before CONNACK and so before
    // the status reaches the subscriber.
    assert!(onlines(1));
    proxy.cut();
    assert!(onlines(2), "reconnected");
    let connections = proxy.per_connection();
    let (first, second) = (connections[0], *connections.last().unwrap());
    println!("TLS connect: {first:?} bytes (up, down); reconnect: {second:?}");
    // A full handshake sends the server's certificate (about 1 KB here); a resumed one does not.
    assert!(
        second.1 + 500 < first.1,
        "the second connect resumed the session: {first:?} then {second:?}"
    );
}
