//! A full disk, on a small tmpfs (needs root to mount one; skipped with a message otherwise):
//! the outbox keeps its reserve, so that deletes always run; it refuses and counts what it
//! cannot take; the WAL counts against `max_bytes`; it gives up its reserve file when
//! something else fills the disk; and it recovers, with every committed reading delivered and
//! the file intact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Broker, Cairn, PYTHON, Subscriber, free_port, sim_config};

/// A tmpfs of `size`, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_path_buf()))
    }

    fn free(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.0).unwrap();
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// SQLite's own `PRAGMA integrity_check`, through Python's sqlite3.
fn integrity(db: &Path) -> String {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])",
        ])
        .arg(db)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// How many readings numbered up to `seq` are still in the outbox, read as another process
/// would (SQLite's WAL lets it while Cairn writes).
fn undeleted(db: &Path, seq: i64) -> i64 {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import sqlite3,sys; db=sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True); \
             print(db.execute('SELECT count(*) FROM outbox WHERE seq <= ?', (int(sys.argv[2]),)).fetchone()[0])",
        ])
        .arg(db)
        .arg(seq.to_string())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(i64::MAX)
}

/// Waits until `cairn stats` satisfies `done` ([`Cairn::wait_stats`] looks for the outbox in
/// the default data folder; here it is on the small disk).
fn wait_stats(
    cairn: &Cairn,
    what: &str,
    done: impl Fn(&std::collections::BTreeMap<String, i64>) -> bool,
) {
    let deadline = std::time::Instant::now() + support::PATIENCE;
    loop {
        let stats = cairn.stats();
        if done(&stats) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}\n{}",
            cairn.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A gateway on `disk` with a sim device taking 2,000 readings a second, no chart history.
fn gateway(port: u16, disk: &Path, buffer: &str) -> Cairn {
    let config =
        sim_config(port, 2000, 1_000_000, buffer).replace("{data}", &disk.display().to_string());
    let cairn = Cairn::start(&format!(
        "{config}feed: {{listen: '127.0.0.1:0', history: {{keep: 0s}}}}\n"
    ));
    cairn.wait_log("Cairn running");
    cairn
}

#[test]
fn a_full_disk_keeps_its_reserve_refuses_and_counts_and_recovers() {
    let port = free_port();
    let mut broker = Broker::start_on(port);
    let sub = Subscriber::start(&broker, "cairn/test/#");
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "2m") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let mut cairn = gateway(port, &disk.0, "  reserve: 256KiB\n");
    cairn.wait_log("The disk is down to the outbox's reserve");
    wait_stats(&cairn, "readings refused", |s| {
        s["dropped (disk_full)"] > 1000
    });
    let committed = cairn.stats()["next seq"] - 1;
    let free = disk.free();
    println!("disk at its reserve: {committed} readings committed, {free} B free");
    assert!(free > 0, "the reserve is kept");

    // Something else fills the disk: the reserve file goes, and deletes still run.
    let filler = disk.0.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 4 << 20]);
    broker.restart();
    let report = sub.expect_all_seqs(committed);
    println!("every committed reading delivered: {report:?}");
    // Deleted, not just delivered: new readings may meanwhile fill the pages the deletes free
    // inside the outbox (they need no disk), so the backlog is no measure of it.
    let deadline = std::time::Instant::now() + support::PATIENCE;
    while undeleted(&disk.0.join("outbox.db"), committed) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "delivered rows never deleted:\n{}",
            cairn.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!(
        "deletes ran on the filled disk; the reserve file given up: {}",
        cairn
            .log()
            .contains("the outbox's reserve file is given up")
    );
    std::fs::remove_file(&filler).unwrap();

    // Delivered rows are really gone, room returns, and readings are taken again.
    cairn.wait_log("Room on the disk again");
    wait_stats(&cairn, "new readings after the recovery", |s| {
        s["next seq"] > committed + 1000
    });
    let stats = cairn.stats();
    println!(
        "refused while full: {}; free now {} B",
        stats["dropped (disk_full)"],
        disk.free()
    );
    assert!(cairn.stop(), "clean exit");
    assert!(!cairn.log().contains("panicked"));
    assert_eq!(integrity(&disk.0.join("outbox.db")), "ok");
}

#[test]
fn the_wal_counts_against_max_bytes() {
    // Before: the WAL alone filled a 2 MiB disk while max_bytes was 256 KiB.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "2m") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let cairn = gateway(port, &disk.0, "  max_bytes: 256KiB\n  reserve: 256KiB\n");
    wait_stats(&cairn, "the outbox at its limit", |s| {
        s["dropped (max_bytes)"] > 20_000
    });
    let on_disk: u64 = ["outbox.db", "outbox.db-wal"]
        .iter()
        .map(|f| std::fs::metadata(disk.0.join(f)).map_or(0, |m| m.len()))
        .sum();
    let stats = cairn.stats();
    println!(
        "max_bytes 256 KiB: the outbox and its WAL take {on_disk} B; {} dropped as max_bytes, {} refused as disk_full",
        stats["dropped (max_bytes)"], stats["dropped (disk_full)"]
    );
    assert_eq!(stats["dropped (disk_full)"], 0, "the disk never filled");
    assert!(on_disk < 640 * 1024, "{on_disk} B on disk");
}
