//! The live feed against a running gateway fed by the sim adapter: WebSocket clients
//! (tokio-tungstenite), plain HTTP requests, and a real mosquitto for the MQTT side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;

use futures_util::StreamExt;
use support::feed::{api, connect, http_get, http_get_with, next};
use support::{Broker, Cairn, PATIENCE, PYTHON, Subscriber, free_port, rss_kib, sim_config};

/// A gateway with a `counter` device producing `limit` readings (0: no end) at `rate` per
/// second.
fn gateway(broker: u16, rate: u32, limit: u64, feed: &str) -> Cairn {
    let config = sim_config(broker, rate, limit, "");
    let config = if limit == 0 {
        config.replace("    limit: 0\n", "")
    } else {
        config
    };
    Cairn::start(&format!("{config}{feed}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_gets_a_snapshot_then_every_reading_with_the_mqtt_fields() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/counter");
    let cairn = gateway(broker.port, 20, 0, "");
    let mut ws = connect(cairn.feed(), "").await;
    let snapshot = next(&mut ws).await.unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    assert!(snapshot["devices"]["counter"].is_object(), "{snapshot}");
    let mut feed_seq = snapshot["feed_seq"].as_u64().unwrap();
    let mut readings = Vec::new();
    while readings.len() < 10 {
        let message = next(&mut ws).await.unwrap();
        feed_seq += 1;
        assert_eq!(
            message["feed_seq"], feed_seq,
            "feed messages are numbered without gaps"
        );
        if message["type"] == "reading" {
            readings.push(message);
        }
    }
    // The same fields as the MQTT payload, plus the device name.
    let last_seq = readings.last().unwrap()["seq"].as_i64().unwrap();
    assert!(sub.wait_until(PATIENCE, |r| r.data().any(|(_, v)| v["seq"] == last_seq)));
    let published: Vec<serde_json::Value> =
        sub.with(|r| r.data().map(|(_, v)| v.clone()).collect());
    for reading in &readings {
        let mqtt = published
            .iter()
            .find(|p| p["seq"] == reading["seq"])
            .unwrap();
        for field in ["seq", "ts", "values"] {
            assert_eq!(reading[field], mqtt[field], "{field}");
        }
        assert_eq!(reading["device"], "counter");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_reconnects_with_since_gets_what_it_missed() {
    let broker = Broker::start();
    let cairn = gateway(broker.port, 50, 0, "");
    let addr = cairn.feed();
    let mut ws = connect(addr, "").await;
    let mut last = next(&mut ws).await.unwrap()["feed_seq"].as_u64().unwrap();
    for _ in 0..5 {
        last = next(&mut ws).await.unwrap()["feed_seq"].as_u64().unwrap();
    }
    drop(ws);
    // Away for a while (missing messages), well within the replay ring.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut ws = connect(addr, &format!("since={last}")).await;
    let first = next(&mut ws).await.unwrap();
    assert_eq!(first["type"], "reading", "no snapshot: a replay");
    assert_eq!(first["feed_seq"], last + 1);
    let second = next(&mut ws).await.unwrap();
    assert_eq!(second["feed_seq"], last + 2);

    // A seq the ring no longer holds (or never held) gets a fresh snapshot instead.
    let mut ws = connect(addr, "since=999999999").await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_clients_all_receive_every_reading() {
    const LIMIT: i64 = 100;
    let broker = Broker::start();
    // All from one address: as many as a reverse proxy on the gateway would bring.
    let cairn = gateway(
        broker.port,
        50,
        LIMIT as u64,
        "feed: {listen: '127.0.0.1:0', max_per_client: 256}\n",
    );
    let addr = cairn.feed();
    let clients = (0..200).map(|_| {
        tokio::spawn(async move {
            // From feed seq 0: whatever is already past comes from the replay ring.
            let mut ws = connect(addr, "since=0").await;
            let mut seqs = BTreeSet::new();
            while seqs.len() < LIMIT as usize {
                let message = next(&mut ws).await.expect("the feed stays open");
                if message["type"] == "reading" {
                    assert!(seqs.insert(message["seq"].as_i64().unwrap()), "a duplicate");
                }
            }
            seqs
        })
    });
    let all: BTreeSet<i64> = (1..=LIMIT).collect();
    for client in futures_util::future::join_all(clients).await {
        assert_eq!(client.unwrap(), all);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_delays_no_one_and_is_closed() {
    const LIMIT: i64 = 20_000;
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/counter");
    // Readings of about 1 KB, so that 20 MB go by: more than any socket buffer holds.
    let padding = "x".repeat(1000);
    let config = sim_config(broker.port, 2000, LIMIT as u64, "").replace(
        "        counter: {}\n",
        &format!("        counter: {{}}\n      - name: pad\n        cycle: {{states: [{padding}], every: 1h}}\n"),
    );
    let cairn = Cairn::start(&config);
    let addr = cairn.feed();
    // The stuck client: a tiny receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut stuck, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap();
    // A healthy client sees every reading, live, while the stuck one sits there.
    let mut ws = connect(addr, "").await;
    loop {
        let message = next(&mut ws).await.unwrap();
        let seq = match message["type"].as_str() {
            Some("reading") => &message["seq"],
            // A snapshot, should this client itself fall behind on a slow machine.
            _ => &message["devices"]["counter"]["values"]["n"]["seq"],
        };
        if *seq == LIMIT {
            break;
        }
    }
    // So does the broker.
    assert_eq!(sub.expect_all_seqs(LIMIT).distinct, LIMIT as usize);
    // The stuck client is closed once a send to it has waited 10 s; only then does it read
    // again, to find its stream ended after whatever was queued for it. (The close frame with
    // the reason cannot get through a full socket; the log says why.)
    cairn.wait_log(r#"WebSocket client closed reason="client too slow"#);
    while let Some(Ok(_)) = tokio::time::timeout(PATIENCE, stuck.next()).await.unwrap() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_is_required_on_the_api_and_the_upgrade() {
    let broker = Broker::start();
    let cairn = gateway(
        broker.port,
        10,
        0,
        "feed: {listen: '127.0.0.1:0', token: 's3cret+/='}\n",
    );
    let addr = cairn.feed();
    for path in ["/api/status", "/api/devices", "/metrics", "/ws"] {
        assert_eq!(http_get(addr, path, None).0, 401, "{path}");
        assert_eq!(http_get(addr, path, Some("wrong")).0, 401, "{path}");
    }
    assert_eq!(http_get(addr, "/api/status", Some("s3cret+/=")).0, 200);
    // The scheme is case-insensitive (RFC 9110); an empty query token is no token.
    for scheme in ["bearer", "BEARER"] {
        let header = format!("authorization: {scheme} s3cret+/=\r\n");
        assert_eq!(
            http_get_with(addr, "/api/status", &header).0,
            200,
            "{scheme}"
        );
    }
    assert_eq!(http_get(addr, "/api/status?token=", None).0, 401);
    assert_eq!(http_get(addr, "/healthz", None).0, 200);
    assert_eq!(
        http_get(addr, "/", None).0,
        200,
        "the page itself asks for the token"
    );

    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=nope")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    let mut ws = connect(addr, "token=s3cret%2B%2F%3D").await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "snapshot");
}

#[test]
fn the_api_answers_while_the_broker_is_unreachable() {
    // Nothing listens on the broker's port: the uplink retries, the feed serves regardless.
    let cairn = gateway(free_port(), 20, 0, "");
    let addr = cairn.feed();
    cairn.wait_log("MQTT connect failed");
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        let status = api(addr, "/api/status");
        // The oldest unsent reading is sampled once a second.
        if status["backlog"]["readings"].as_u64().unwrap() >= 20
            && status["backlog"]["oldest_age_s"].is_number()
        {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status["gateway"], "test");
    assert_eq!(status["uplink"]["connected"], false);
    assert!(status["uplink"]["last_error"].is_string());
    assert!(status["backlog"]["oldest_age_s"].as_f64().unwrap() >= 0.0);
    // The outbox and the history wrote something by now; a rate needs a minute of samples.
    assert!(
        status["disk"]["written_bytes"].as_u64().unwrap() > 0,
        "{status}"
    );

    let devices = api(addr, "/api/devices");
    assert_eq!(devices[0]["name"], "counter");
    assert_eq!(devices[0]["adapter"], "sim");
    assert_eq!(devices[0]["status"], "online");
    assert!(devices[0]["readings"].as_u64().unwrap() >= 20);

    let latest = api(addr, "/api/latest");
    assert!(latest["counter"]["values"]["n"]["value"].as_i64().unwrap() >= 19);

    // History is written once a second; wait for a few points.
    let deadline = std::time::Instant::now() + PATIENCE;
    let points = loop {
        let history = api(addr, "/api/history?device=counter&metric=n&since=1h");
        let points = history["points"].as_array().unwrap().clone();
        if points.len() >= 2 {
            break points;
        }
        assert!(std::time::Instant::now() < deadline, "{history}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(points[0]["value"].as_i64().unwrap() < points[1]["value"].as_i64().unwrap());
    assert!(points[0]["ts"].as_i64().unwrap() + 900 <= points[1]["ts"].as_i64().unwrap());
    assert_eq!(
        http_get(
            addr,
            "/api/history?device=counter&metric=n&since=yesterday",
            None
        )
        .0,
        400
    );

    let (status, metrics) = http_get(addr, "/metrics", None);
    assert_eq!(status, 200);
    for line in [
        "# TYPE cairn_backlog_readings gauge",
        "cairn_uplink_connected 0",
        "cairn_device_online{device=\"counter\"} 1",
        "cairn_feed_clients 0",
        "# TYPE cairn_disk_written_bytes_total counter",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert_eq!(http_get(addr, "/healthz", None), (200, "ok".to_string()));
}

/// What the server answers to the offers browsers and Python `websockets` make.
const DEFLATE: &str = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=9";

#[test]
fn python_clients_read_the_same_feed_compressed_plain_and_in_cbor() {
    let broker = Broker::start();
    let cairn = gateway(broker.port, 20, 0, "");
    let url = format!("ws://{}/ws", cairn.feed());
    let report = support::peer_json("ws_client.py", &["compare", &url, "40"]);
    for (client, extensions) in [("deflate", DEFLATE), ("plain", ""), ("cbor", DEFLATE)] {
        let client = &report[client];
        assert_eq!(client["first"], "snapshot");
        assert_eq!(client["extensions"].as_str().unwrap_or(""), extensions);
        let feed_seqs: Vec<i64> = serde_json::from_value(client["feed_seqs"].clone()).unwrap();
        assert!(
            feed_seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{feed_seqs:?}"
        );
        let seqs: Vec<i64> = serde_json::from_value(client["seqs"].clone()).unwrap();
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    }
    // The three joined within moments of each other: most messages are in all three lists,
    // and each of those decoded the same from deflated JSON, plain JSON and CBOR.
    assert!(report["common"].as_u64().unwrap() >= 20, "{report}");
    assert_eq!(report["same"], true);
}

#[test]
fn bad_extension_offers_are_served_uncompressed_and_deflate_places_are_bounded() {
    let broker = Broker::start();
    let cairn = gateway(
        broker.port,
        20,
        0,
        "feed: {listen: '127.0.0.1:0', deflate_clients: 1}\n",
    );
    let addr = cairn.feed();
    for bad in [
        &b"permessage-deflate; server_max_window_bits=8"[..],
        b"permessage-deflate; server_max_window_bits=99",
        b"permessage-deflate; client_max_window_bits=abc",
        b"permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        b"permessage-deflate; bogus=1",
        b"permessage-deflate; \xff\xfe",
        b";;;,,,=",
    ] {
        let (_socket, head) = support::feed::handshake(addr, bad);
        let what = String::from_utf8_lossy(bad);
        assert!(head.starts_with("HTTP/1.1 101"), "{what}: {head}");
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("sec-websocket-extensions"),
            "{what}: {head}"
        );
    }
    // A bad offer followed by a good one: the good one is taken. It holds the one deflate
    // place, so the next client is served uncompressed.
    let (_first, head) =
        support::feed::handshake(addr, b"permessage-deflate; mystery, permessage-deflate");
    assert!(
        head.to_ascii_lowercase().contains(
            "sec-websocket-extensions: permessage-deflate; server_max_window_bits=12\r\n"
        ),
        "{head}"
    );
    let (_second, head) = support::feed::handshake(addr, b"permessage-deflate");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(!head.contains("permessage-deflate"), "{head}");
    // Nothing of this took the feed down.
    assert_eq!(http_get(addr, "/healthz", None), (200, "ok".to_string()));
}

#[test]
fn two_hundred_compressing_clients_stay_within_the_memory_bound() {
    const CLIENTS: u64 = 200;
    /// The most each compressing client may add to Cairn's memory (README, "The live feed").
    const PER_CLIENT_KIB: u64 = 256;
    let broker = Broker::start();
    let cairn = gateway(
        broker.port,
        20,
        0,
        "feed: {listen: '127.0.0.1:0', deflate_clients: 200, max_per_client: 256}\n",
    );
    let url = format!("ws://{}/ws", cairn.feed());
    let pid = cairn.pid().unwrap();
    let rss_before = rss_kib(pid);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/ws_client.py");
    let mut child = std::process::Command::new(PYTHON)
        .args([script, "many", &url, &CLIENTS.to_string(), "20", "--hold"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the test venv exists (scripts/test creates it)");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), format!("{{\"held\": {CLIENTS}}}"));
    // Every client has compressed 20 messages or more, so each context is fully allocated.
    let rss_held = rss_kib(pid);
    let status = api(cairn.feed(), "/api/status");
    drop(child.stdin.take());
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(child.wait().unwrap().success());
    let report: serde_json::Value = serde_json::from_str(&line).unwrap();
    let grown = rss_held.saturating_sub(rss_before);
    println!(
        "RSS {rss_before} KiB before, {rss_held} KiB with {CLIENTS} compressing clients: \
         {} KiB each",
        grown / CLIENTS
    );
    assert_eq!(report["gaps"], serde_json::json!([]), "contiguous feed_seq");
    assert_eq!(report["extensions"], serde_json::json!([DEFLATE]));
    assert_eq!(status["ws_clients"], CLIENTS, "{status}");
    assert!(grown <= CLIENTS * PER_CLIENT_KIB, "grew {grown} KiB");
}
