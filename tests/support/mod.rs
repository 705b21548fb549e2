//! Real peers for the end-to-end tests: a fresh broker per test on an ephemeral port (mosquitto,
//! or RabbitMQ or NATS for interop: `broker.rs`), an independent `mosquitto_sub` subscriber,
//! and the `cairn` binary itself.
#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

pub mod broker;
pub mod capture;
pub mod feed;
pub mod lora;
pub mod modbus;
pub mod proxy;
pub mod serial;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use broker::Broker;

/// The Python of the test peers' venv (`scripts/test` makes it).
pub const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");

/// Generous: these are upper bounds for a slow, loaded CI machine, not expectations.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16, up: bool) {
    wait_for_port_within(port, up, Duration::from_secs(20));
}

pub fn wait_for_port_within(port: u16, up: bool, patience: Duration) {
    let deadline = Instant::now() + patience;
    while TcpStream::connect(("127.0.0.1", port)).is_ok() != up {
        assert!(
            Instant::now() < deadline,
            "port {port} did not become {}",
            if up { "open" } else { "closed" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the Python peer `tests/peers/<script>` with `args` and parses the one JSON line it
/// prints; its stderr is the failure message.
pub fn peer_json(script: &str, args: &[&str]) -> serde_json::Value {
    peer_json_in(PYTHON, script, args)
}

/// [`peer_json`] for a peer run by `interpreter` (`node` for the JavaScript peers, whose
/// packages `scripts/test` installs with `npm ci` in `tests/peers`).
pub fn peer_json_in(interpreter: &str, script: &str, args: &[&str]) -> serde_json::Value {
    let path = format!("{}/tests/peers/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new(interpreter)
        .arg(path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{interpreter}: {e} (scripts/test installs the peers)"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Every message the subscriber received, by topic, in order.
#[derive(Debug, Default)]
pub struct Received {
    /// Topic and payload as text (lossy for binary payloads).
    pub messages: Vec<(String, String)>,
    /// The same payloads' bytes, message for message.
    pub raw: Vec<Vec<u8>>,
    /// When each message arrived.
    pub at: Vec<Instant>,
    /// The `json` data messages, parsed once when they arrived: (index in `messages`, JSON).
    parsed: Vec<(usize, serde_json::Value)>,
    /// How many times each seq arrived in a `json` data message.
    counts: BTreeMap<i64, usize>,
}

impl Received {
    /// How many times the test gateway's status said `online` (once per connection).
    pub fn onlines(&self) -> usize {
        self.messages
            .iter()
            .filter(|(t, p)| t == "cairn/test/status" && p == "online")
            .count()
    }

    /// Records a message; `json` data messages are parsed here, once, so that waiting on
    /// what arrived costs nothing per message already seen.
    fn push(&mut self, topic: String, bytes: Vec<u8>) {
        let index = self.messages.len();
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && let Some(seq) = value.get("seq").and_then(serde_json::Value::as_i64)
        {
            *self.counts.entry(seq).or_insert(0) += 1;
            self.parsed.push((index, value));
        }
        self.messages
            .push((topic, String::from_utf8_lossy(&bytes).into()));
        self.raw.push(bytes);
        self.at.push(Instant::now());
    }

    /// Every reading received, decoded in this process, with when its message arrived.
    pub fn timed_readings(&self) -> Vec<(Instant, serde_json::Value)> {
        let mut out = Vec::new();
        for (((topic, _), bytes), at) in self.messages.iter().zip(&self.raw).zip(&self.at) {
            if !cairn::decode::carries_readings(topic) || topic.starts_with("probe/") {
                continue;
            }
            let mut lines = Vec::new();
            if cairn::decode::print(Some(topic), bytes, &mut lines).is_ok() {
                for line in String::from_utf8(lines).unwrap().lines() {
                    out.push((*at, serde_json::from_str(line).unwrap()));
                }
            }
        }
        out
    }

    /// Data messages' payloads as JSON.
    pub fn data(&self) -> impl Iterator<Item = (&str, &serde_json::Value)> {
        self.parsed
            .iter()
            .map(|(i, value)| (self.messages[*i].0.as_str(), value))
    }

    /// How many times each seq arrived.
    pub fn seq_counts(&self) -> &BTreeMap<i64, usize> {
        &self.counts
    }

    /// `topic hex-payload` lines, as `mosquitto_sub -F '%t %x'` prints them: what both
    /// reference decoders read.
    pub fn hex_lines(&self) -> String {
        self.hex_lines_from(0)
    }

    /// [`Received::hex_lines`] of the messages from the `start`th on.
    pub fn hex_lines_from(&self, start: usize) -> String {
        self.messages
            .iter()
            .zip(&self.raw)
            .skip(start)
            .filter(|((topic, _), _)| !topic.starts_with("probe/"))
            .map(|((topic, _), bytes)| {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("{topic} {hex}\n")
            })
            .collect()
    }

    pub fn last_on(&self, topic: &str) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|(t, _)| t == topic)
            .map(|(_, p)| p.as_str())
    }
}

/// An independent subscriber: `mosquitto_sub` with a persistent QoS 1 session. mosquitto_sub
/// exits when its broker goes away, so it is started again (same client id, same session)
/// whenever it exits, until the test drops it.
pub struct Subscriber {
    child: Arc<Mutex<Option<Child>>>,
    received: Arc<(Mutex<Received>, Condvar)>,
}

fn spawn_sub(port: u16, id: &str, topic: &str) -> Child {
    Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-c",
            "-i",
            id,
            // Hex payloads, so that binary batches and multi-line text survive the pipe.
            "-F",
            "%t %x",
        ])
        .args(["-t", topic, "-t", "probe/#"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub is installed (scripts/test installs it)")
}

impl Subscriber {
    /// Subscribes to `topic` on `broker` and returns once the subscription is live.
    pub fn start(broker: &Broker, topic: &str) -> Self {
        let id = format!("test-sub-{}", free_port());
        let port = broker.port;
        let child = Arc::new(Mutex::new(Some(spawn_sub(port, &id, topic))));
        let received = Arc::new((Mutex::new(Received::default()), Condvar::new()));
        let (shared, current, topic) = (received.clone(), child.clone(), topic.to_string());
        std::thread::spawn(move || {
            loop {
                let Some(stdout) = current
                    .lock()
                    .unwrap()
                    .as_mut()
                    .and_then(|c| c.stdout.take())
                else {
                    return;
                };
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let (topic, hex) = line.split_once(' ').unwrap_or((&line, ""));
                    let bytes = cairn_adapters::codec::unhex(hex).unwrap();
                    let (lock, cvar) = &*shared;
                    lock.lock().unwrap().push(topic.to_string(), bytes);
                    cvar.notify_all();
                }
                let mut slot = current.lock().unwrap();
                let Some(mut old) = slot.take() else { return };
                let _ = old.wait();
                std::thread::sleep(Duration::from_millis(100));
                *slot = Some(spawn_sub(port, &id, &topic));
            }
        });
        let subscriber = Self { child, received };
        // The subscription is live once a probe published after it comes back.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-t",
                    "probe/up",
                    "-m",
                    "x",
                ])
                .status()
                .unwrap();
            if subscriber.wait_until(Duration::from_millis(200), |r| {
                r.messages.iter().any(|(t, _)| t == "probe/up")
            }) {
                break;
            }
            assert!(Instant::now() < deadline, "subscriber never saw its probe");
        }
        subscriber
    }

    /// Waits until at least `n` data messages arrived.
    pub fn wait_data(&self, n: usize) {
        assert!(
            self.wait_until(PATIENCE, |r| r.data().count() >= n),
            "fewer than {n} messages arrived"
        );
    }

    /// Waits (without polling) until `done` holds for what was received; false on timeout.
    pub fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&Received) -> bool) -> bool {
        let (lock, cvar) = &*self.received;
        let guard = lock.lock().unwrap();
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |r| !done(r))
            .unwrap();
        done(&guard)
    }

    /// Waits until the seqs that arrived satisfy `done`, decoding each message once as it
    /// comes: decoding everything on every arrival is quadratic, and 2,000 JSON messages
    /// then took a debug build most of `PATIENCE` on a loaded machine.
    pub fn wait_seqs(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&BTreeSet<i64>) -> bool,
    ) -> bool {
        let (mut seen, mut decoded) = (BTreeSet::new(), 0);
        self.wait_until(timeout, |r| {
            for reading in decode_cairn_only(&r.hex_lines_from(decoded)) {
                seen.extend(reading["seq"].as_i64());
            }
            decoded = r.messages.len();
            done(&seen)
        })
    }

    /// Waits until every seq in `1..=last` arrived; panics with the missing ones otherwise.
    /// Waits until every `seq` from 1 to `last` arrived, in whatever encoding, then decodes
    /// everything with both decoders; panics naming what never arrived. Returns the readings
    /// and how many of them were duplicates.
    pub fn expect_every_reading(&self, last: i64) -> (Vec<serde_json::Value>, usize) {
        let complete = self.wait_seqs(PATIENCE, |seen| (1..=last).all(|seq| seen.contains(&seq)));
        let readings = decode_both(&self.with(|r| r.hex_lines()));
        let counts = count_seqs(&readings);
        let missing: Vec<i64> = (1..=last).filter(|s| !counts.contains_key(s)).collect();
        assert!(
            complete && missing.is_empty(),
            "{} of {last} seqs never arrived, first: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        let duplicates = counts.values().map(|n| n - 1).sum();
        (readings, duplicates)
    }

    pub fn expect_all_seqs(&self, last: i64) -> SeqReport {
        let complete = self.wait_until(PATIENCE, |r| {
            // Counting distinct seqs in range is enough, and cheap on every message.
            let counts = r.seq_counts();
            counts.len() >= last as usize && counts.range(1..=last).count() == last as usize
        });
        let counts = self.with(|r| r.seq_counts().clone());
        let missing: Vec<i64> = (1..=last).filter(|seq| !counts.contains_key(seq)).collect();
        assert!(
            complete && missing.is_empty(),
            "{} of {last} seqs never arrived, first: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        let duplicates = counts.values().map(|n| n - 1).sum();
        SeqReport {
            distinct: counts.len(),
            duplicates,
            beyond: counts.keys().filter(|s| **s > last).count(),
        }
    }

    /// The `values` of every data message from `device` of gateway `test`, in order.
    pub fn values_of(&self, device: &str) -> Vec<serde_json::Value> {
        let topic = format!("cairn/test/{device}");
        self.with(|r| {
            r.data()
                .filter(|(t, _)| *t == topic)
                .map(|(_, v)| v["values"].clone())
                .collect()
        })
    }

    /// [`Subscriber::values_of`] once there are at least `n`.
    pub fn wait_values(&self, device: &str, n: usize) -> Vec<serde_json::Value> {
        let topic = format!("cairn/test/{device}");
        assert!(
            self.wait_until(PATIENCE, |r| r.data().filter(|(t, _)| *t == topic).count()
                >= n),
            "{n} readings of {device} never arrived: {:?}",
            self.values_of(device)
        );
        self.values_of(device)
    }

    pub fn with<T>(&self, f: impl FnOnce(&Received) -> T) -> T {
        f(&self.received.0.lock().unwrap())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The readings in `hex_lines`, decoded by the independent Python decoder and by
/// `cairn decode`; panics unless both decode every payload to the same readings.
pub fn decode_both(hex_lines: &str) -> Vec<serde_json::Value> {
    let run = |program: &str, args: &[&str]| {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = hex_lines.to_string();
        let writer = std::thread::spawn(move || {
            std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let python = run(
        PYTHON,
        &[&format!(
            "{}/tests/peers/cairn_decode.py",
            env!("CARGO_MANIFEST_DIR")
        )],
    );
    let cairn = run(cairn_bin(), &["decode", "--hex-lines"]);
    assert_eq!(
        python.len(),
        cairn.len(),
        "both decoders find as many readings"
    );
    for (p, c) in python.iter().zip(&cairn) {
        assert_eq!(p, c, "the Python decoder and cairn decode disagree");
    }
    cairn
}

/// The readings in `hex_lines`, decoded in this process with Cairn's own decoder: cheap
/// enough to run on every message a test waits for. Payloads that do not decode are skipped
/// here; [`decode_both`] is the judge.
pub fn decode_cairn_only(hex_lines: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let failed = cairn::decode::print_hex_lines(hex_lines.as_bytes(), &mut out);
    assert_eq!(failed, 0, "every payload decodes");
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// How many times each seq appears among decoded readings.
pub fn count_seqs(readings: &[serde_json::Value]) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for reading in readings {
        *counts.entry(reading["seq"].as_i64().unwrap()).or_insert(0) += 1;
    }
    counts
}

/// What arrived, counted by seq.
#[derive(Debug)]
pub struct SeqReport {
    pub distinct: usize,
    pub duplicates: usize,
    pub beyond: usize,
}

/// The `cairn` binary under test, with its config and data in a folder of its own.
pub struct Cairn {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// Runs started so far, each of which appended to the log.
    runs: usize,
    /// Extra environment of every run.
    env: Vec<(String, String)>,
    /// The descriptor limit (soft and hard) of every run, if not inherited.
    pub fd_limit: Option<u64>,
}

pub fn cairn_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

impl Cairn {
    /// Writes `config` (where `{data}` stands for the data folder) and runs `cairn run`. A
    /// config without a `feed:` section gets one on a free loopback port ([`Cairn::feed`]).
    pub fn start(config: &str) -> Self {
        Self::start_with_env(config, &[])
    }

    /// [`Cairn::start`] without the start, for a test that prepares the data folder first;
    /// [`Cairn::restart`] then starts it. A config without a `buffer:` section commits every
    /// 5 ms, so that a test not about the outbox sees its readings upstream at once (the
    /// default interval is the card's, seconds long).
    pub fn prepare(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config.replace("{data}", &dir.path().join("data").display().to_string());
        if !config.lines().any(|l| l.starts_with("feed:")) {
            config.push_str("\nfeed: {listen: '127.0.0.1:0'}\n");
        }
        if !config.lines().any(|l| l.starts_with("buffer:")) {
            config.push_str("\nbuffer: {commit_interval: 5ms}\n");
        }
        std::fs::write(dir.path().join("cairn.yaml"), config).unwrap();
        Self {
            dir,
            child: None,
            runs: 0,
            env: Vec::new(),
            fd_limit: None,
        }
    }

    /// [`Cairn::start`] with extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Self {
        let mut cairn = Self::prepare(config);
        cairn.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cairn.restart();
        cairn
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("cairn.yaml")
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "cairn already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("cairn.log"))
            .unwrap();
        // A descriptor limit is set by the shell the binary is then exec'd from (the same
        // process: its pid is the child's).
        let mut command = match self.fd_limit {
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.args([
                    "-c",
                    &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
                    cairn_bin(),
                ]);
                sh
            }
            None => Command::new(cairn_bin()),
        };
        command
            .args(["run", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().unwrap();
        self.child = Some(child);
        self.runs += 1;
    }

    /// SIGKILL: no flush, no goodbye, like a power cut for everything not yet fsynced.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("cairn running");
        signal(&child, "KILL");
        child.wait().unwrap();
    }

    /// SIGHUP: reload the config.
    pub fn hangup(&self) {
        signal(self.child.as_ref().expect("cairn running"), "HUP");
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let mut child = self.child.take().expect("cairn running");
        signal(&child, "TERM");
        child.wait().unwrap().success()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cairn.log")).unwrap_or_default()
    }

    /// The address the feed listens on, once it does (from the log of the current run).
    pub fn feed(&self) -> std::net::SocketAddr {
        self.logged_addr("Dashboard and feed listening listen=")
    }

    /// The address logged right after `line`, once it is (from the log of the current run).
    pub fn logged_addr(&self, line: &str) -> std::net::SocketAddr {
        self.wait_log_count(line, self.runs);
        let log = self.log();
        let at = log.rfind(line).unwrap() + line.len();
        log[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Waits until cairn's log contains `text` at least `n` times.
    pub fn wait_log_count(&self, text: &str, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.log().matches(text).count() < n {
            assert!(
                Instant::now() < deadline,
                "`{text}` not logged {n} times:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until cairn's log contains `text`.
    pub fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "`{text}` never logged:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `cairn stats` parsed into `key -> number`.
    pub fn stats(&self) -> BTreeMap<String, i64> {
        let out = run_cairn(&["stats", "--config", self.config_path().to_str().unwrap()]);
        assert!(
            out.status.success(),
            "cairn stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let (key, rest) = line.split_once(": ")?;
                let number = rest.split_whitespace().next()?.parse().ok()?;
                Some((key.to_string(), number))
            })
            .collect()
    }

    /// Waits until `cairn stats` satisfies `done`; the outbox is the event source here.
    pub fn wait_stats(
        &self,
        what: &str,
        mut done: impl FnMut(&BTreeMap<String, i64>) -> bool,
    ) -> BTreeMap<String, i64> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            // (None before the outbox exists in the data folder.)
            let stats = Path::new(&self.dir.path().join("data/outbox.db"))
                .exists()
                .then(|| self.stats());
            if let Some(stats) = stats.as_ref().filter(|s| done(s)) {
                return stats.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {stats:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cairn {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of cairn's log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run_cairn(args: &[&str]) -> Output {
    Command::new(cairn_bin()).args(args).output().unwrap()
}

/// Waits until the feed reports `n` devices and all of them `finished` (finite sims).
pub fn wait_devices_finished(feed: std::net::SocketAddr, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let devices = feed::api(feed, "/api/devices");
        let finished = devices.as_array().map_or(0, |d| {
            d.iter().filter(|d| d["status"] == "finished").count()
        });
        if finished == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "devices never finished: {devices}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A test config: one simulated counter device at `rate` readings/s, `limit` readings in all.
pub fn sim_config(broker_port: u16, rate: u32, limit: u64, extra_buffer: &str) -> String {
    format!(
        "gateway:\n  id: test\n  data_dir: {{data}}\n\
         mqtt:\n  host: 127.0.0.1\n  port: {broker_port}\n  keepalive: 5s\n  reconnect_min: 100ms\n  reconnect_max: 1s\n\
         buffer:\n  commit_interval: 5ms\n{extra_buffer}\
         devices:\n  - name: counter\n    type: sim\n    rate: {rate}\n    limit: {limit}\n    values:\n      - name: n\n        counter: {{}}\n"
    )
}

/// Lines of an `mqtt:` section for tests that stop and start brokers: a broker that comes back
/// is found within a second.
pub const FAST_RECONNECT: &str = "  keepalive: 5s\n  reconnect_min: 100ms\n  reconnect_max: 1s\n";

/// The typical site of the link issues: five devices with two to six values each (temperatures,
/// a pump, a pulse counter, a text mode, a power meter), each paced by `pace` (`rate: 400` or
/// `interval: 1s`) up to `limit` readings, seeded. With `decimals`, values are rounded to what
/// such sensors resolve; without, floats keep the noise's full precision. `mqtt` is extra
/// lines of the mqtt section.
pub fn site_config(broker_port: u16, mqtt: &str, decimals: bool, pace: &str, limit: u64) -> String {
    let d = |places: u8| {
        if decimals {
            format!(", decimals: {places}")
        } else {
            String::new()
        }
    };
    let device = |name: &str, seed: u64, values: &[String]| {
        let values: String = values.iter().map(|v| format!("      - {v}\n")).collect();
        format!(
            "  - name: {name}\n    type: sim\n    {pace}\n    limit: {limit}\n    seed: {seed}\n    values:\n{values}"
        )
    };
    let devices = [
        device(
            "weather",
            1,
            &[
                format!(
                    "{{name: temperature, unit: °C, sine: {{mean: 14, amplitude: 6, period: 10m, noise: 0.2}}{}}}",
                    d(1)
                ),
                format!(
                    "{{name: humidity, unit: '%', sine: {{mean: 60, amplitude: 15, period: 20m, noise: 0.5}}{}}}",
                    d(0)
                ),
                format!(
                    "{{name: pressure, unit: hPa, random_walk: {{start: 1013, step: 0.3, min: 980, max: 1040}}{}}}",
                    d(1)
                ),
            ],
        ),
        device(
            "pumps",
            2,
            &[
                "{name: running, toggle: {period: 2m}}".to_string(),
                format!(
                    "{{name: level, unit: m, random_walk: {{start: 2.5, step: 0.01, min: 0, max: 5}}{}}}",
                    d(2)
                ),
                "{name: pulses, counter: {start: 100000, step: 1}}".to_string(),
            ],
        ),
        device(
            "meter",
            3,
            &[
                format!(
                    "{{name: power, unit: W, random_walk: {{start: 1500, step: 20, min: 0, max: 5000}}{}}}",
                    d(0)
                ),
                format!(
                    "{{name: voltage, unit: V, sine: {{mean: 230, amplitude: 2, period: 15m, noise: 0.3}}{}}}",
                    d(1)
                ),
                format!(
                    "{{name: current, unit: A, sine: {{mean: 6.5, amplitude: 1, period: 15m, noise: 0.05}}{}}}",
                    d(2)
                ),
                "{name: energy, unit: Wh, counter: {start: 5000000, step: 3}}".to_string(),
                format!(
                    "{{name: power_factor, random_walk: {{start: 0.95, step: 0.005, min: 0.8, max: 1}}{}}}",
                    d(3)
                ),
                format!(
                    "{{name: frequency, unit: Hz, sine: {{mean: 50, amplitude: 0.05, period: 5m, noise: 0.01}}{}}}",
                    d(2)
                ),
            ],
        ),
        device(
            "tank",
            4,
            &[
                format!(
                    "{{name: level, unit: '%', sine: {{mean: 70, amplitude: 20, period: 30m, noise: 0.3}}{}}}",
                    d(1)
                ),
                "{name: mode, cycle: {states: [auto, manual, auto, service], every: 5m}}"
                    .to_string(),
            ],
        ),
        device(
            "boiler",
            5,
            &[
                format!(
                    "{{name: temperature, unit: °C, sine: {{mean: 65, amplitude: 5, period: 10m, noise: 0.3}}{}}}",
                    d(1)
                ),
                "{name: burner, toggle: {period: 3m}}".to_string(),
            ],
        ),
    ];
    format!(
        "gateway:\n  id: test\n  data_dir: {{data}}\n\
         mqtt:\n  host: 127.0.0.1\n  port: {broker_port}\n{mqtt}\
         buffer:\n  commit_interval: 5ms\n\
         devices:\n{}",
        devices.concat()
    )
}

/// libfaketime's multi-threaded library, where Debian's `faketime` package puts it.
pub fn faketime_lib() -> Option<String> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(Result::ok)
        .map(|dir| dir.path().join("faketime/libfaketimeMT.so.1"))
        .find(|lib| lib.exists())
        .map(|lib| lib.display().to_string())
}

/// The wall clock now, in milliseconds since the Unix epoch.
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A fresh broker, a subscriber to the test gateway's topics, and the fault-injecting proxy
/// in front of the broker (Cairn connects to `proxy.port`).
pub fn behind_proxy() -> (Broker, Subscriber, proxy::Proxy) {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let proxy = proxy::Proxy::start(broker.port);
    (broker, sub, proxy)
}
