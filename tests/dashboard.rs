//! The dashboard in a real headless Chromium: live values appear in the page and change, and
//! a screenshot is saved under `target/screenshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::SystemTime;

use support::modbus::ModbusServer;
use support::{Broker, Cairn, Subscriber};

/// The page after Chromium ran it for `budget_ms` of virtual time, with a screenshot if asked.
fn render(url: &str, budget_ms: u32, screenshot: Option<&std::path::Path>) -> String {
    let mut chromium = Command::new("chromium");
    chromium.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1100,700",
        &format!("--virtual-time-budget={budget_ms}"),
    ]);
    match screenshot {
        Some(path) => chromium.arg(format!("--screenshot={}", path.display())),
        None => chromium.arg("--dump-dom"),
    };
    let output = chromium
        .arg(url)
        .output()
        .expect("chromium is installed (scripts/test installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The text and `title` of the element showing `metric`.
fn shown(dom: &str, metric: &str) -> Option<(String, String)> {
    let marker = format!(r#"data-metric="{metric}""#);
    let element = dom
        .split("<span")
        .find(|e| e.contains("class=\"value\"") && e.contains(&marker))?;
    let title = element
        .split("title=\"read at ")
        .nth(1)?
        .split('"')
        .next()?
        .to_string();
    let text = element.split('>').nth(1)?.split('<').next()?.to_string();
    Some((text, title))
}

#[test]
fn live_values_appear_and_change_in_a_real_browser() {
    let broker = Broker::start();
    let cairn = Cairn::start(&format!(
        "gateway: {{id: test, data_dir: '{{data}}'}}\n\
         mqtt: {{host: 127.0.0.1, port: {}}}\n\
         devices:\n  - name: counter\n    description: pulse counter by the pump\n    type: sim\n    interval: 200ms\n    values:\n\
         \x20     - {{name: n, unit: pulses, counter: {{}}}}\n\
         \x20     - {{name: level, unit: m, sine: {{mean: 2, amplitude: 1, period: 10s}}}}\n",
        broker.port
    ));
    let url = format!("http://{}/", cairn.feed());
    cairn.wait_log("Device online");

    let opened = SystemTime::now();
    let first = render(&url, 3000, None);
    let (n1, read1) =
        shown(&first, "n").unwrap_or_else(|| panic!("no value in the page:\n{first}"));
    // Read after the page opened: it came over the live feed, not from the first snapshot.
    let read1 = humantime::parse_rfc3339(&read1).unwrap();
    assert!(read1 > opened, "{read1:?} is not after {opened:?}");
    assert!(first.contains("pulses"), "units are shown");
    let version = format!("v{} · up ", env!("CARGO_PKG_VERSION"));
    assert!(first.contains(&version), "the version and uptime are shown");
    assert!(
        first.contains("pulse counter by the pump · sim"),
        "the device's description is shown"
    );
    // Chromium offered permessage-deflate, and the feed it got is compressed.
    assert!(
        first.contains(r#"data-extensions="permessage-deflate; server_max_window_bits=12; client_max_window_bits=9""#),
        "the feed is compressed:\n{first}"
    );
    assert!(first.contains("live · compressed"), "and the page says so");
    // uPlot drew a chart per number, with its two axes and a legend naming the value.
    assert!(first.matches(r#"class="uplot"#).count() >= 2, "{first}");
    assert!(first.matches(r#"class="u-axis""#).count() >= 4, "{first}");
    assert!(
        first.contains(r#"<div class="u-label">level</div>"#),
        "the legend names the value:\n{first}"
    );

    let second = render(&url, 3000, None);
    let (n2, _) = shown(&second, "n").unwrap();
    assert!(
        n2.parse::<i64>().unwrap() > n1.parse::<i64>().unwrap(),
        "{n1} then {n2}"
    );

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dashboard.png");
    render(&url, 3000, Some(&path));
    assert!(
        std::fs::metadata(&path).unwrap().len() > 10_000,
        "a real screenshot"
    );
}

/// `POST /api/set` with `body` and an optional token: (status, body).
fn post_set(addr: std::net::SocketAddr, token: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "POST /api/set HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[test]
fn a_write_from_the_page_reaches_the_device_and_shows_the_value_read_back() {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let server = ModbusServer::start();
    let device = format!(
        "devices:\n  - name: boiler\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {}}}\n    interval: 200ms\n    points:\n\
         \x20     - {{name: setpoint, table: holding, address: 11, scale: 0.1, writable: true}}\n",
        server.port
    );
    let config = |feed: &str| {
        format!(
            "gateway: {{id: test, data_dir: '{{data}}'}}\n\
             mqtt: {{host: 127.0.0.1, port: {}}}\n{feed}{device}",
            broker.port
        )
    };
    let cairn = Cairn::start(&config("feed: {listen: '127.0.0.1:0', token: s3cret}\n"));
    cairn.wait_log("Device online");
    let url = format!("http://{}/", cairn.feed());
    let report = support::peer_json(
        "dashboard_write.py",
        &[&url, "s3cret", "boiler", "setpoint", "23.4"],
    );
    assert_eq!(report["confirmed"], "Set boiler · setpoint to 23.4?");
    assert_eq!(report["answer"], "set · read back 23.4");
    // The device holds it: the next readings upstream show it.
    assert!(
        sub.wait_until(support::PATIENCE, |r| r.data().any(|(t, v)| t
            == "cairn/test/boiler"
            && v["values"]["setpoint"] == 23.4)),
        "never read back"
    );
    let feed = cairn.feed();
    // Checked as MQTT checks: a value that is not writable is refused, with the reason.
    let (status, body) = post_set(
        feed,
        Some("s3cret"),
        r#"{"device": "boiler", "point": "nothing", "value": 1}"#,
    );
    assert_eq!(status, 200);
    assert!(
        body.contains(r#""ok":false"#) && body.contains("not writable"),
        "{body}"
    );
    assert_eq!(
        post_set(
            feed,
            None,
            r#"{"device": "boiler", "point": "setpoint", "value": 1}"#
        )
        .0,
        401
    );
    drop(cairn);

    // A gateway open to its LAN shows its data, but takes no writes from the page.
    let open = Cairn::start(&config(""));
    let (status, body) = post_set(
        open.feed(),
        None,
        r#"{"device": "boiler", "point": "setpoint", "value": 1}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("feed token"), "{body}");
}
