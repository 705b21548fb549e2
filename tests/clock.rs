//! A Pi without a real-time clock, played by libfaketime (Debian `faketime`): Cairn starts in
//! 1970 with the broker out of reach, the clock jumps forward to today as NTP would set it,
//! then back by an hour. No reading is deleted as too old, the readings taken in 1970 arrive
//! with today's times, and every `seq` arrives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime};

use support::{Broker, Cairn, Subscriber};

fn unix_ms(ts: &str) -> i64 {
    let t = humantime::parse_rfc3339(ts).unwrap();
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn readings_taken_before_the_clock_was_set_keep_their_place_and_get_true_times() {
    let lib = support::faketime_lib().expect("libfaketime is installed (scripts/test does it)");
    let mut broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    broker.stop();
    let broker_port = broker.port;
    let dir = tempfile::tempdir().unwrap();
    let faked = dir.path().join("faketime");
    std::fs::write(&faked, "@1970-01-01 00:00:00\n").unwrap();
    // An age limit the 1970 readings are 56 years past.
    let config = format!(
        "gateway:\n  id: test\n  data_dir: {{data}}\n\
         mqtt:\n  host: 127.0.0.1\n  port: {broker_port}\n{}\
         buffer:\n  max_age: 2h\n  commit_interval: 5ms\n\
         devices:\n  - name: counter\n    type: sim\n    rate: 20\n    values:\n      - {{name: n, counter: {{}}}}\n",
        support::FAST_RECONNECT
    );
    let faked_path = faked.display().to_string();
    let cairn = Cairn::start_with_env(
        &config,
        &[
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME_TIMESTAMP_FILE", faked_path.as_str()),
            ("FAKETIME_NO_CACHE", "1"),
            // Tokio's timers and CLOCK_BOOTTIME stay real, as on a Pi.
            ("DONT_FAKE_MONOTONIC", "1"),
            ("RUST_LOG", "info,cairn::store::writer=debug"),
        ],
    );
    cairn.wait_stats("readings taken in 1970", |s| s["next seq"] > 60);

    // NTP sets the clock.
    let before_jump = support::unix_ms_now();
    std::fs::write(&faked, "+0\n").unwrap();
    cairn.wait_log("The wall clock is known good");
    cairn.wait_log("Readings taken before the clock was known good now carry corrected times");
    // Two age checks after the jump (they run every 10 s).
    let checks = cairn.log().matches("Age limit checked").count();
    cairn.wait_log_count("Age limit checked", checks + 2);
    assert_eq!(cairn.stats()["dropped (max_age)"], 0, "{}", cairn.log());

    // Then back by an hour: logged, nothing moved, nothing aged.
    std::fs::write(&faked, "-1h\n").unwrap();
    cairn.wait_log("The wall clock stepped; readings keep the times they were given");
    let stepped_back = cairn.stats()["next seq"];
    cairn.wait_stats("readings after the step back", |s| {
        s["next seq"] > stepped_back + 40
    });

    // The broker comes: every reading arrives.
    broker.restart();
    let last = cairn.stats()["next seq"] - 1;
    let (readings, duplicates) = sub.expect_every_reading(last);
    println!("{last} readings: 0 lost, {duplicates} duplicates");
    assert_eq!(cairn.stats()["dropped (max_age)"], 0);
    let clock = &support::feed::api(cairn.feed(), "/api/status")["clock"];
    assert_eq!(clock["known"], true, "{clock}");
    assert_eq!(
        clock["steps"], 2,
        "the jump forward and the step back: {clock}"
    );

    // The readings of 1970 carry times of today, before the jump, in order; none is flagged.
    let mut previous = 0;
    let mut corrected = 0;
    for reading in readings.iter().filter(|r| r["seq"].as_i64().unwrap() <= 60) {
        let ts = unix_ms(reading["ts"].as_str().unwrap());
        assert!(
            ts > before_jump - 3_600_000 && ts <= before_jump + 5_000,
            "{reading}"
        );
        assert!(ts >= previous, "in order: {reading}");
        assert_eq!(reading["unsynced"], false, "{reading}");
        previous = ts;
        corrected += 1;
    }
    assert!(corrected >= 60);
    let first = &readings[0];
    println!(
        "first reading, taken in 1970, arrived as {} (the jump came at {})",
        first["ts"],
        humantime::format_rfc3339_millis(
            SystemTime::UNIX_EPOCH + Duration::from_millis(before_jump as u64)
        )
    );
}

#[test]
fn a_step_made_while_cairn_was_stopped_is_added_too() {
    let lib = support::faketime_lib().expect("libfaketime is installed (scripts/test does it)");
    let mut broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let faked = dir.path().join("faketime");
    std::fs::write(&faked, "@1970-01-01 00:00:00\n").unwrap();
    let config = format!(
        "gateway:\n  id: test\n  data_dir: {{data}}\n\
         mqtt:\n  host: 127.0.0.1\n  port: {}\n{}\
         buffer:\n  max_age: 2h\n\
         devices:\n  - name: counter\n    type: sim\n    rate: 20\n    limit: 40\n    values:\n      - {{name: n, counter: {{}}}}\n",
        broker.port,
        support::FAST_RECONNECT
    );
    let faked_path = faked.display().to_string();
    let env = [
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME_TIMESTAMP_FILE", faked_path.as_str()),
        ("FAKETIME_NO_CACHE", "1"),
        ("DONT_FAKE_MONOTONIC", "1"),
    ];
    let mut cairn = Cairn::start_with_env(&config, &env);
    support::wait_devices_finished(cairn.feed(), 1);
    assert!(cairn.stop());
    // NTP set the clock while Cairn was stopped; it starts with a clock it believes.
    let set_at = support::unix_ms_now();
    std::fs::write(&faked, "+0\n").unwrap();
    cairn.restart();
    broker.restart();
    // (The sim takes 40 more after the restart, with today's clock.)
    let (readings, _) = sub.expect_every_reading(40);
    for reading in readings.iter().filter(|r| r["seq"].as_i64().unwrap() <= 40) {
        let ts = unix_ms(reading["ts"].as_str().unwrap());
        assert!(
            ts > set_at - 600_000 && ts <= set_at,
            "taken in 1970, stamped today: {reading}"
        );
        assert_eq!(reading["unsynced"], false);
    }
    assert_eq!(cairn.stats()["dropped (max_age)"], 0);
}
