//! The dashboard in a real headless Chromium: live values appear in the page and change, and
//! a screenshot is saved under `target/screenshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::SystemTime;

use support::{Broker, Cairn};

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
