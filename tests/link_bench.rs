//! The link benchmark, run by `scripts/bench` (`cargo test --release --test link_bench --
//! --ignored --nocapture`): wire bytes per reading at the byte-counting proxy, for every
//! encoding, on the five-device site mix of `support::site_config`.
//!
//! Each backlog is made once, with the sim's clock run 200 times fast by libfaketime so that
//! readings are a second apart as at a site; then copies of the same outbox drain through the
//! proxy in each encoding, at real speed, with no device running: every row of the table
//! carries exactly the same readings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::proxy::Proxy;
use support::{
    Broker, Cairn, PATIENCE, Subscriber, count_seqs, decode_cairn_only, free_port, site_config,
};

const PER_DEVICE: u64 = 2000;
const READINGS: usize = 5 * PER_DEVICE as usize;
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// An outbox of `READINGS` undelivered readings taken a second apart, in `dir`.
fn backlog(dir: &Path, decimals: bool) {
    let config = site_config(free_port(), "", decimals, "interval: 1s", PER_DEVICE);
    let mut cairn = Cairn::start_with_env(
        &config,
        &[("LD_PRELOAD", FAKETIME), ("FAKETIME", "+0 x200")],
    );
    cairn.wait_stats("the backlog", |s| s["backlog"] == READINGS as i64);
    assert!(cairn.stop());
    copy_outbox(&cairn.dir.path().join("data"), dir);
}

/// The outbox's files from `from` to `to`: committed rows may still be in the WAL.
fn copy_outbox(from: &Path, to: &Path) {
    for file in ["outbox.db", "outbox.db-wal"] {
        if from.join(file).exists() {
            std::fs::copy(from.join(file), to.join(file)).unwrap();
        }
    }
}

/// Bytes per reading at the proxy to drain the outbox in `dir` with `mqtt` settings.
fn drain(dir: &Path, mqtt: &str) -> f64 {
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let proxy = Proxy::start(broker.port);
    let config = format!(
        "gateway:\n  id: test\n  data_dir: {{data}}\n\
         mqtt:\n  host: 127.0.0.1\n  port: {}\n  max_inflight: 64\n{mqtt}devices: []\n",
        proxy.port
    );
    let mut cairn = Cairn::prepare(&config);
    let data = cairn.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    copy_outbox(dir, &data);
    cairn.restart();
    assert!(sub.wait_until(
        PATIENCE,
        |r| count_seqs(&decode_cairn_only(&r.hex_lines())).len() == READINGS
    ));
    cairn.wait_stats("the outbox to drain", |s| s["backlog"] == 0);
    let (up, down) = proxy.bytes();
    (up + down) as f64 / READINGS as f64
}

#[test]
#[ignore = "a benchmark: scripts/bench runs it"]
fn wire_bytes_per_reading() {
    assert!(
        Path::new(FAKETIME).exists(),
        "libfaketime is needed (apt install faketime; scripts/bench installs it)"
    );
    let mut cases = vec![("json (one reading per message)".to_string(), String::new())];
    for n in [10, 100, 1000] {
        for compression in ["none", "zstd", "deflate"] {
            cases.push((
                format!("cbor, {n:>4} per message, {compression}"),
                format!(
                    "  encoding: cbor\n  compression: {compression}\n  batch: {{max_readings: {n}, max_bytes: 128KiB, group: gateway}}\n"
                ),
            ));
        }
    }
    println!(
        "\nwire bytes per reading at the proxy (both directions, TCP payload; {READINGS} readings, 5 devices, 1 s apart)"
    );
    println!(
        "{:<36} {:>16} {:>16}",
        "encoding", "full precision", "with decimals"
    );
    let full = tempfile::tempdir().unwrap();
    let rounded = tempfile::tempdir().unwrap();
    backlog(full.path(), false);
    backlog(rounded.path(), true);
    for (name, mqtt) in &cases {
        let a = drain(full.path(), mqtt);
        let b = drain(rounded.path(), mqtt);
        println!("{name:<36} {a:>16.1} {b:>16.1}");
    }
}
