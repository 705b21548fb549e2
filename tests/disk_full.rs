//! A full disk: the outbox reports it, holds what it has, and delivers every committed reading
//! once a broker appears. Needs root to mount a small tmpfs; skipped with a message otherwise.
//!
//! When the outbox itself fills the disk, SQLite can then neither grow the WAL for deletes nor
//! checkpoint it, so the outbox stays full until space is freed by someone else: `max_bytes`
//! must leave headroom below the free space (see the README).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::{Broker, Cairn, Subscriber, free_port, sim_config};

/// A 1 MiB tmpfs, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_reported_and_loses_nothing_committed() {
    let port = free_port();
    let mut broker = Broker::start_on(port);
    let sub = Subscriber::start(&broker, "cairn/test/#");
    broker.stop();
    let cairn_dir = tempfile::tempdir().unwrap();
    let Some(_disk) = SmallDisk::mount(&cairn_dir.path().join("disk")) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let config = sim_config(port, 2000, 1_000_000, "").replace(
        "{data}",
        &cairn_dir.path().join("disk").display().to_string(),
    );
    let mut cairn = Cairn::start(&config);
    cairn.wait_log("Outbox write failed");
    assert!(
        cairn.log().contains("full"),
        "the error says the disk is full:\n{}",
        cairn.log()
    );
    let committed = cairn.stats()["next seq"] - 1;
    assert!(committed > 1000, "{committed}");
    broker.restart();
    let report = sub.expect_all_seqs(committed);
    println!("disk full at seq {committed}: {report:?}");
    assert!(!cairn.log().contains("panicked"));
    // Shutdown still ends, within its timeout, though the last batch cannot be written.
    assert!(cairn.stop(), "clean exit");
    assert!(
        cairn.log().contains("Shutdown took too long"),
        "{}",
        cairn.log()
    );
}
