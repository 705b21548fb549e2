//! Power cuts: the outbox on a filesystem that drops everything not fsynced when the "power"
//! goes (`tests/peers/powercut_fs.py`, FUSE). Cairn is killed and the disk cut at once,
//! several times while readings flow and the broker acknowledges them. After each cut the
//! outbox must open with `integrity_check` ok, remember every seq the broker ever saw (so
//! none is given again), and have lost at most the last `commit_interval` of readings. At the
//! end every committed reading arrives, and a seq never names two different readings.
//!
//! Needs FUSE (`/dev/fuse`, `fusermount`, root); skipped with a message otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{Broker, Cairn, FAST_RECONNECT, PYTHON, Subscriber};

/// Cuts while readings flow.
const CUTS: usize = 4;
/// The commit interval under test; a cut may lose this much, plus the time a commit takes.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// The lossy filesystem, mounted over `backing`.
struct LossyMount {
    mountpoint: PathBuf,
    child: Child,
}

impl LossyMount {
    fn mount(backing: &Path, mountpoint: &Path) -> Option<Self> {
        if !Path::new("/dev/fuse").exists() {
            return None;
        }
        std::fs::create_dir_all(backing).unwrap();
        std::fs::create_dir_all(mountpoint).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/powercut_fs.py");
        let mut child = Command::new(PYTHON)
            .arg(script)
            .arg(backing)
            .arg(mountpoint)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(Self {
            mountpoint: mountpoint.to_path_buf(),
            child,
        })
    }

    /// The power goes: what was not fsynced is lost, and the mount is gone.
    fn cut(self) {
        let err = std::fs::File::create(self.mountpoint.join(".powercut")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(5), "the cut answers EIO: {err}");
    }
}

impl Drop for LossyMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount")
            .arg("-u")
            .arg("-z")
            .arg(&self.mountpoint)
            .status();
        let _ = self.child.wait();
    }
}

/// What a cut left in the outbox file.
#[derive(Debug, serde::Deserialize)]
struct Left {
    integrity: String,
    /// The next seq the outbox would give out.
    next_seq: i64,
    rows: i64,
    newest_ts_ms: Option<i64>,
}

/// Opens the outbox as SQLite would after the cut (recovering its WAL) and reads it.
fn left(db: &Path) -> Left {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import json,sqlite3,sys\n\
             db = sqlite3.connect(sys.argv[1])\n\
             integrity = db.execute('PRAGMA integrity_check').fetchone()[0]\n\
             rows, top, newest = db.execute('SELECT count(*), COALESCE(max(seq), 0), max(ts_ms) FROM outbox').fetchone()\n\
             meta = db.execute(\"SELECT value FROM meta WHERE key = 'next_seq'\").fetchone()\n\
             print(json.dumps({'integrity': integrity, 'next_seq': max(top + 1, meta[0] if meta else 1), 'rows': rows, 'newest_ts_ms': newest}))",
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_power_cut_loses_at_most_the_commit_interval_and_never_a_committed_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("disk"), dir.path().join("mnt"));
    let Some(first) = LossyMount::mount(&backing, &mnt) else {
        eprintln!("SKIPPED: FUSE is not available here (needs /dev/fuse, fusermount and root)");
        return;
    };
    let broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let config = |devices: &str| {
        format!(
            "gateway:\n  id: test\n  data_dir: {}\n\
             mqtt:\n  host: 127.0.0.1\n  port: {}\n{FAST_RECONNECT}\
             buffer:\n  commit_interval: {}ms\n  reserve: 64KiB\n\
             feed:\n  enabled: false\n\
             devices:{devices}",
            mnt.display(),
            broker.port,
            COMMIT_INTERVAL.as_millis(),
        )
    };
    let devices = "\n  - name: counter\n    type: sim\n    rate: 50\n    values:\n      - name: n\n        counter: {}\n";
    let mut cairn = Cairn::prepare(&config(devices));
    let mut mount = Some(first);
    let mut worst_loss_ms = 0;
    for cut in 1..=CUTS {
        let fs = match mount.take() {
            Some(fs) => fs,
            None => LossyMount::mount(&backing, &mnt).expect("FUSE mounted before"),
        };
        cairn.restart();
        // Cut once the broker has seen more of this run's readings.
        let seen = sub.with(|r| r.seq_counts().len());
        assert!(
            sub.wait_until(support::PATIENCE, |r| r.seq_counts().len() >= seen + 150),
            "readings stopped arriving before cut {cut}:\n{}",
            cairn.log()
        );
        // Then cut at a different point of the commit cycle each time: this is where the cut
        // falls, not a wait for anything.
        std::thread::sleep(COMMIT_INTERVAL * (cut as u32 * 3 % 4) / 3);
        let cut_ms = now_ms();
        cairn.kill9();
        fs.cut();

        let after = left(&backing.join("outbox.db"));
        assert_eq!(after.integrity, "ok", "after cut {cut}: {after:?}");
        let upstream = sub.with(|r| r.seq_counts().keys().next_back().copied().unwrap_or(0));
        assert!(
            after.next_seq > upstream,
            "after cut {cut} the outbox would give out seq {} again, which the broker has: {after:?}",
            after.next_seq
        );
        let newest = after
            .newest_ts_ms
            .unwrap_or_else(|| panic!("after cut {cut} the newest commit is gone too: {after:?}"));
        let lost_ms = cut_ms - newest;
        eprintln!(
            "cut {cut}: {} rows left, next seq {}, broker has up to {upstream}, newest reading {lost_ms} ms before the cut",
            after.rows, after.next_seq
        );
        worst_loss_ms = worst_loss_ms.max(lost_ms);
    }
    // A commit on this slow filesystem (a Python process per write) takes up to a second or two.
    assert!(
        worst_loss_ms <= (COMMIT_INTERVAL + Duration::from_secs(3)).as_millis() as i64,
        "a cut lost {worst_loss_ms} ms of readings, more than commit_interval promises"
    );

    // Back on a disk that keeps everything: the rest goes out.
    let mut drain = Cairn::prepare(
        &config(" []\n").replace(&mnt.display().to_string(), &backing.display().to_string()),
    );
    drain.restart();
    let last = left(&backing.join("outbox.db")).next_seq - 1;
    let (readings, duplicates) = sub.expect_every_reading(last);
    assert!(drain.stop());
    let mut by_seq: BTreeMap<i64, Vec<&serde_json::Value>> = BTreeMap::new();
    for reading in &readings {
        by_seq
            .entry(reading["seq"].as_i64().unwrap())
            .or_default()
            .push(reading);
    }
    for (seq, copies) in &by_seq {
        let (ts, values) = (&copies[0]["ts"], &copies[0]["values"]);
        assert!(
            copies
                .iter()
                .all(|c| &c["ts"] == ts && &c["values"] == values),
            "seq {seq} names different readings: {copies:?}"
        );
    }
    eprintln!(
        "{CUTS} power cuts: {last} seqs, every one delivered, {duplicates} duplicates, \
         none naming two readings; worst loss {worst_loss_ms} ms (commit_interval {} ms)",
        COMMIT_INTERVAL.as_millis()
    );
}
