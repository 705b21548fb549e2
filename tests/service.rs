//! Cairn as a service on a running process: SIGHUP reloads the config (changed devices restart,
//! the rest keep running, a broken file is refused), SIGTERM stops cleanly, and the systemd
//! notifications (READY, WATCHDOG, RELOADING, STOPPING) reach a notify socket as systemd's own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use support::{Broker, Cairn, PATIENCE, Subscriber};

fn config(broker: u16, b_interval: &str) -> String {
    format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\n\
         mqtt: {{host: 127.0.0.1, port: {broker}, reconnect_min: 100ms, reconnect_max: 1s}}\n\
         buffer: {{commit_interval: 5ms}}\n\
         devices:\n\
         \x20 - {{name: a, type: sim, interval: 50ms, values: [{{name: n, counter: {{}}}}]}}\n\
         \x20 - {{name: b, type: sim, interval: {b_interval}, values: [{{name: n, counter: {{}}}}]}}\n"
    )
}

fn wait_more(sub: &Subscriber, device: &str, than: usize) {
    let topic = format!("cairn/test/{device}");
    assert!(
        sub.wait_until(PATIENCE, |r| r.data().filter(|(t, _)| *t == topic).count()
            > than + 3),
        "{device} stopped publishing"
    );
}

#[test]
fn sighup_restarts_changed_devices_and_keeps_the_rest() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let mut cairn = Cairn::start(&config(broker.port, "50ms"));
    wait_more(&sub, "a", 0);
    wait_more(&sub, "b", 0);

    // b's settings change; a's do not.
    let good = std::fs::read_to_string(cairn.config_path())
        .unwrap()
        .replacen(
            "name: b, type: sim, interval: 50ms",
            "name: b, type: sim, interval: 20ms",
            1,
        );
    std::fs::write(cairn.config_path(), &good).unwrap();
    cairn.hangup();
    cairn.wait_log(r#"Config reloaded restarted=["b"]"#);
    cairn.wait_log("Device settings changed; adapter restarted with them device=b");
    assert!(
        !cairn.log().contains("restarted with them device=a"),
        "a kept running"
    );
    let (a, b) = (sub.values_of("a").len(), sub.values_of("b").len());
    wait_more(&sub, "a", a);
    wait_more(&sub, "b", b);

    // A broken file is refused and the running config stays.
    std::fs::write(cairn.config_path(), "gateway: {id: [broken\n").unwrap();
    cairn.hangup();
    cairn.wait_log("Config reload refused");
    // Changes only a restart can apply are refused too.
    std::fs::write(
        cairn.config_path(),
        good.replace("commit_interval: 5ms", "commit_interval: 50ms"),
    )
    .unwrap();
    cairn.hangup();
    cairn.wait_log("changes to buffer take effect at the next restart");
    let (a, b) = (sub.values_of("a").len(), sub.values_of("b").len());
    wait_more(&sub, "a", a);
    wait_more(&sub, "b", b);

    // SIGTERM: a clean stop; what was committed in its last moment goes at the next start,
    // so every reading produced reaches the broker, reloads or not.
    assert!(cairn.stop(), "exit status 0");
    assert!(cairn.log().contains("Stopped cleanly"));
    let last = cairn.stats()["next seq"] - 1;
    cairn.restart();
    cairn.wait_log_count("Cairn running", 2);
    sub.expect_all_seqs(last);
    assert!(cairn.stop());
}

#[test]
fn systemd_hears_ready_watchdog_reloading_and_stopping() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut cairn = Cairn::start_with_env(
        &config(broker.port, "50ms"),
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "4000000"),
        ],
    );
    let next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(
        first.starts_with("READY=1\nSTATUS=running, 2 devices"),
        "{first}"
    );
    // Fed at a quarter of the timeout while the outbox writer beats.
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1\n");
    }
    cairn.hangup();
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.starts_with("READY=1")) {
        seen.push(next());
    }
    let reload = seen
        .iter()
        .find(|m| m.starts_with("RELOADING=1"))
        .expect("RELOADING=1");
    assert!(reload.contains("MONOTONIC_USEC="), "{reload}");
    let stop = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        assert!(cairn.stop());
    });
    while next() != "STOPPING=1\n" {}
    stop.join().unwrap();
}
