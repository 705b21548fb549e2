//! The outbox checked against a simple in-memory model: random appends, acks, limits and
//! restarts, and after every step the unsent rows must be exactly what the model says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytesize::ByteSize;
use cairn_adapters::{Reading, Value};
use tokio::sync::mpsc;

use super::*;
use crate::clock::Clock;
use crate::live::LiveBus;

fn reading(device: &str, n: i64) -> Reading {
    Reading {
        priority: Default::default(),
        device: Arc::from(device),
        ts: SystemTime::now(),
        values: vec![(Arc::from("n"), Value::Int(n))],
        provisional: None,
    }
}

/// A running outbox: the reader, the acker, the reading channel and the writer task.
struct Running {
    reader: StoreReader,
    acker: Acker,
    tx: mpsc::Sender<Reading>,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

/// The defaults, but committing at once: these tests are about what is committed, not when.
fn test_config() -> BufferConfig {
    BufferConfig {
        commit_interval: Duration::from_millis(5),
        ..BufferConfig::default()
    }
}

async fn start(path: &Path, config: &BufferConfig) -> Running {
    let now = crate::pipeline::unix_millis(SystemTime::now());
    start_with(path, config, Clock::reading(now)).await
}

async fn start_with(path: &Path, config: &BufferConfig, clock: Clock) -> Running {
    let (reader, acker, writer) = open(path, config, Arc::new(clock)).await.unwrap();
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(writer.run(rx, LiveBus::new(16)));
    Running {
        reader,
        acker,
        tx,
        task,
    }
}

impl Running {
    async fn stop(self) {
        drop(self.tx);
        drop(self.acker);
        self.task.await.unwrap().unwrap();
    }

    /// Waits until the writer committed everything up to `seq`.
    async fn committed(&self, seq: i64) {
        let mut rx = self.reader.committed();
        rx.wait_for(|c| *c >= seq).await.unwrap();
    }

    /// Waits until the backlog is `n` (acks are applied asynchronously).
    async fn backlog(&self, n: u64) {
        let mut rx = self.reader.stats.clone();
        rx.wait_for(|s| s.backlog == n).await.unwrap();
    }

    async fn all_unsent(&self) -> Vec<Record> {
        self.reader
            .unsent(Priority::Normal, 0, i64::MAX, usize::MAX >> 1)
            .await
            .unwrap()
            .records
    }
}

#[tokio::test]
async fn matches_a_model_through_acks_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let config = test_config();
    let mut rng = fastrand::Rng::with_seed(42);
    // The model: seq -> (device, n) of every unsent reading.
    let mut model: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    let mut next_seq = 1;
    let mut running = start(&path, &config).await;
    for round in 0..30 {
        let appends = rng.usize(0..300);
        for i in 0..appends {
            let device = format!("d{}", rng.usize(0..3));
            let n = (round * 1000 + i) as i64;
            running.tx.send(reading(&device, n)).await.unwrap();
            model.insert(next_seq, (device, n));
            next_seq += 1;
        }
        running.committed(next_seq - 1).await;
        // Acknowledged in messages of up to 5 rows, as batches come back from the broker.
        let acked: Vec<i64> = model.keys().copied().filter(|_| rng.bool()).collect();
        for message in acked.chunks(rng.usize(1..6)) {
            running.acker.ack(message.to_vec());
        }
        for seq in &acked {
            model.remove(seq);
        }
        // An ack of something already gone is harmless.
        running.acker.ack(vec![next_seq + 1_000_000]);
        running.backlog(model.len() as u64).await;
        let unsent = running.all_unsent().await;
        let seen: Vec<i64> = unsent.iter().map(|r| r.seq).collect();
        assert_eq!(
            seen,
            model.keys().copied().collect::<Vec<_>>(),
            "round {round}"
        );
        for record in &unsent {
            let (device, n) = &model[&record.seq];
            assert_eq!(&*record.device, device);
            assert_eq!(record.values, [(Arc::from("n"), Value::Int(*n))]);
        }
        if rng.usize(0..4) == 0 {
            running.stop().await;
            running = start(&path, &config).await;
            assert_eq!(
                running.reader.stats().next_seq,
                next_seq,
                "seq resumes after restart"
            );
            assert_eq!(running.reader.stats().backlog, model.len() as u64);
        }
    }
    // Everything acknowledged and deleted: the next run must still not reuse a number.
    running.acker.ack(model.keys().copied().collect());
    running.backlog(0).await;
    running.stop().await;
    let running = start(&path, &config).await;
    running.tx.send(reading("d0", 0)).await.unwrap();
    running.committed(next_seq).await;
    assert_eq!(running.all_unsent().await[0].seq, next_seq);
    running.stop().await;
}

async fn fill(config: BufferConfig, readings: i64) -> (Stats, Vec<Record>) {
    let dir = tempfile::tempdir().unwrap();
    let running = start(&dir.path().join("o.db"), &config).await;
    for n in 0..readings {
        running.tx.send(reading("dev", n)).await.unwrap();
    }
    let mut stats = running.reader.stats.clone();
    stats
        .wait_for(|s| s.accepted as i64 + s.dropped[&DropReason::BufferFull] as i64 == readings)
        .await
        .unwrap();
    let unsent = running.all_unsent().await;
    let stats = running.reader.stats();
    running.stop().await;
    (stats, unsent)
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_within_max_bytes() {
    let config = BufferConfig {
        max_bytes: ByteSize::kib(64),
        ..test_config()
    };
    let (stats, unsent) = fill(config, 5000).await;
    let dropped = stats.dropped[&DropReason::MaxBytes];
    assert!(dropped > 0);
    assert!(stats.bytes <= 64 * 1024, "{}", stats.bytes);
    assert_eq!(unsent.len() as u64 + dropped, 5000);
    assert_eq!(unsent.last().map(|r| r.seq), Some(5000), "the newest stays");
    assert_eq!(unsent[0].seq as u64, dropped + 1, "exactly the oldest went");
}

#[tokio::test]
async fn a_row_dropped_in_flight_then_acknowledged_counts_as_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let config = BufferConfig {
        max_bytes: ByteSize::kib(64),
        ..test_config()
    };
    let running = start(&dir.path().join("o.db"), &config).await;
    for n in 0..5000 {
        running.tx.send(reading("dev", n)).await.unwrap();
    }
    running.committed(5000).await;
    let dropped = running.reader.stats().dropped[&DropReason::MaxBytes];
    assert!(dropped > 2);
    // Seqs 1 and 2 went to the limit while the broker had them; now it acknowledges them.
    running.acker.ack(vec![1, 2]);
    let mut stats = running.reader.stats.clone();
    let stats = stats.wait_for(|s| s.delivered == 2).await.unwrap().clone();
    assert_eq!(stats.dropped[&DropReason::MaxBytes], dropped - 2);
    // A second ack of the same rows changes nothing.
    running.acker.ack(vec![1, 2]);
    running.acker.ack(vec![5000]);
    let mut stats = running.reader.stats.clone();
    let stats = stats.wait_for(|s| s.delivered == 3).await.unwrap().clone();
    assert_eq!(stats.dropped[&DropReason::MaxBytes], dropped - 2);
    running.stop().await;
}

#[tokio::test]
async fn drop_newest_keeps_the_oldest_within_max_bytes() {
    let config = BufferConfig {
        max_bytes: ByteSize::kib(64),
        when_full: crate::config::WhenFull::DropNewest,
        ..test_config()
    };
    let (stats, unsent) = fill(config, 5000).await;
    let refused = stats.dropped[&DropReason::BufferFull];
    assert!(refused > 0);
    assert!(stats.bytes <= 64 * 1024);
    assert_eq!(unsent.len() as u64 + refused, 5000);
    assert_eq!(unsent[0].seq, 1, "the oldest stays");
    assert_eq!(stats.dropped[&DropReason::MaxBytes], 0);
}

#[tokio::test]
async fn max_age_drops_old_readings_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = BufferConfig {
        max_age: Some(Duration::from_secs(3600)),
        ..test_config()
    };
    let running = start(&dir.path().join("o.db"), &config).await;
    let mut old = reading("dev", 1);
    old.ts = SystemTime::now() - Duration::from_secs(7200);
    running.tx.send(old).await.unwrap();
    running.tx.send(reading("dev", 2)).await.unwrap();
    // The age check runs on the writer's first tick and every 10 s after.
    let mut stats = running.reader.stats.clone();
    stats
        .wait_for(|s| s.dropped[&DropReason::MaxAge] == 1 && s.backlog == 1)
        .await
        .unwrap();
    assert_eq!(running.all_unsent().await[0].seq, 2);
    running.stop().await;
    let (stats, _, _) = inspect(&dir.path().join("o.db")).await.unwrap();
    assert_eq!(stats.dropped[&DropReason::MaxAge], 1, "drop counts persist");
}

#[tokio::test]
async fn readings_of_an_unknown_clock_are_flagged_after_a_reboot_and_never_aged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let config = BufferConfig {
        max_age: Some(Duration::from_secs(3600)),
        ..test_config()
    };
    // Taken in 1970, before the clock was set: provisional.
    let running = start_with(&path, &config, Clock::reading(5_000)).await;
    let mut early = reading("dev", 1);
    early.ts = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
    early.provisional = Some(0);
    running.tx.send(early).await.unwrap();
    running.committed(1).await;
    assert!(running.all_unsent().await[0].unsynced);
    running.stop().await;
    // Another boot: the clock it was taken with is gone, so it can never be corrected.
    let mut conn = SqliteConnection::connect_with(&connect_options(&path, &config))
        .await
        .unwrap();
    super::schema::mark_boot(&mut conn, -1, 0).await.unwrap();
    conn.close().await.unwrap();
    // A known clock now, and a reading two hours old as a control: only it goes.
    let running = start(&path, &config).await;
    let mut old = reading("dev", 2);
    old.ts = SystemTime::now() - Duration::from_secs(7200);
    running.tx.send(old).await.unwrap();
    let mut stats = running.reader.stats.clone();
    stats
        .wait_for(|s| s.dropped[&DropReason::MaxAge] == 1)
        .await
        .unwrap();
    let unsent = running.all_unsent().await;
    assert_eq!(unsent.len(), 1);
    assert_eq!(
        (unsent[0].seq, unsent[0].ts_ms, unsent[0].unsynced),
        (1, 5_000, true)
    );
    running.stop().await;
}

#[tokio::test]
async fn device_state_survives_a_restart_beside_the_outbox() {
    use cairn_adapters::StateStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let config = test_config();
    let store = start(&path, &config).await;
    let state = DeviceState::open(&path, &config).await.unwrap();
    assert_eq!(state.load("node", "fcnt").await.unwrap(), None);
    state.save("node", "fcnt", "41").await.unwrap();
    state.save("node", "fcnt", "42").await.unwrap();
    state.save("other", "fcnt", "7").await.unwrap();
    drop(state);
    store.stop().await;

    let store = start(&path, &config).await;
    let state = DeviceState::open(&path, &config).await.unwrap();
    assert_eq!(
        state.load("node", "fcnt").await.unwrap().as_deref(),
        Some("42")
    );
    assert_eq!(
        state.load("other", "fcnt").await.unwrap().as_deref(),
        Some("7")
    );
    store.stop().await;
}

#[tokio::test]
async fn rows_given_up_are_deleted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let running = start(&path, &test_config()).await;
    for n in 0..3 {
        running.tx.send(reading("dev", n)).await.unwrap();
    }
    running.committed(3).await;
    running.acker.give_up(vec![1, 2], DropReason::Oversize);
    running.backlog(1).await;
    assert_eq!(running.reader.stats().dropped[&DropReason::Oversize], 2);
    running.stop().await;
}

#[tokio::test]
async fn an_outbox_of_schema_2_keeps_its_rows_and_a_newer_one_is_refused() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    // The tables and a row exactly as schema 2 wrote them: the JSON payload of the day.
    let mut conn = SqliteConnection::connect_with(&connect_options(&path, &test_config()))
        .await
        .unwrap();
    sqlx::raw_sql(
        r#"CREATE TABLE outbox (seq INTEGER PRIMARY KEY, device TEXT NOT NULL, ts_ms INTEGER NOT NULL, payload BLOB NOT NULL);
           CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
           CREATE TABLE device_state (device TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (device, key)) WITHOUT ROWID;
           INSERT INTO outbox VALUES (7, 'mast', 1795600800123, CAST('{"seq":7,"ts":"2026-11-25T10:00:00.123Z","values":{"t":21.5}}' AS BLOB));
           INSERT INTO meta VALUES ('next_seq', 8);
           PRAGMA user_version = 2;"#,
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let running = start(&path, &test_config()).await;
    running.tx.send(reading("mast", 1)).await.unwrap();
    running.committed(8).await;
    let unsent = running.all_unsent().await;
    assert_eq!(unsent.len(), 2);
    assert_eq!(unsent[0].values, [(Arc::from("t"), Value::Float(21.5))]);
    assert_eq!(unsent[1].values, [(Arc::from("n"), Value::Int(1))]);
    running.stop().await;

    let mut conn = SqliteConnection::connect_with(&connect_options(&path, &test_config()))
        .await
        .unwrap();
    sqlx::raw_sql("PRAGMA user_version = 99;")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let error = open(&path, &test_config(), Arc::new(Clock::reading(0)))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("newer than this Cairn"),
        "{error}"
    );
}

#[tokio::test]
async fn retention_drops_alarms_last_and_never_refuses_one() {
    for when_full in [
        crate::config::WhenFull::DropOldest,
        crate::config::WhenFull::DropNewest,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = BufferConfig {
            max_bytes: ByteSize::kib(64),
            when_full,
            ..test_config()
        };
        let running = start(&dir.path().join("o.db"), &config).await;
        // An alarm first, then far more than fits.
        let mut alarm = reading("dev", -1);
        alarm.priority = Priority::Alarm;
        running.tx.send(alarm.clone()).await.unwrap();
        for n in 0..3000 {
            running.tx.send(reading("dev", n)).await.unwrap();
        }
        // A late alarm when the outbox is full.
        running.tx.send(alarm).await.unwrap();
        let mut stats = running.reader.stats.clone();
        stats
            .wait_for(|s| s.accepted as i64 + s.dropped[&DropReason::BufferFull] as i64 == 3002)
            .await
            .unwrap();
        let alarms = running
            .reader
            .unsent(Priority::Alarm, 0, i64::MAX, 100)
            .await
            .unwrap()
            .records;
        assert_eq!(alarms.len(), 2, "{when_full:?}: both alarms kept");
        assert!(
            running.reader.stats().dropped.values().sum::<u64>() > 0,
            "{when_full:?}"
        );
        running.stop().await;
    }
}

#[tokio::test]
async fn readings_go_live_at_once_and_commit_within_the_interval_or_at_once_for_an_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    // Longer than the test waits for anything: only an alarm, or closing, commits here.
    let config = BufferConfig {
        commit_interval: Duration::from_secs(600),
        ..BufferConfig::default()
    };
    let now = crate::pipeline::unix_millis(SystemTime::now());
    let (reader, acker, writer) = open(&path, &config, Arc::new(Clock::reading(now)))
        .await
        .unwrap();
    let live = LiveBus::new(16);
    let mut watching = live.subscribe();
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(writer.run(rx, live));
    let patience = Duration::from_secs(60);

    tx.send(reading("d0", 1)).await.unwrap();
    let shown = next_live(&mut watching, patience).await;
    assert_eq!(
        shown.seq, 1,
        "on the live bus under the seq it will be committed with"
    );
    assert_eq!(*reader.committed().borrow(), 0, "not committed yet");

    let mut alarm = reading("d0", 2);
    alarm.priority = Priority::Alarm;
    tx.send(alarm).await.unwrap();
    assert_eq!(next_live(&mut watching, patience).await.seq, 2);
    let mut committed = reader.committed();
    tokio::time::timeout(patience, committed.wait_for(|c| *c == 2))
        .await
        .expect("an alarm commits at once, with what waited before it")
        .unwrap();

    // Acknowledgements wait for the next transaction; closing commits it.
    acker.ack(vec![1, 2]);
    tx.send(reading("d0", 3)).await.unwrap();
    assert_eq!(next_live(&mut watching, patience).await.seq, 3);
    assert_eq!(
        reader.stats().backlog,
        2,
        "the deletes wait for the next commit"
    );
    drop(tx);
    drop(acker);
    task.await.unwrap().unwrap();
    let running = start(&path, &test_config()).await;
    let left: Vec<i64> = running.all_unsent().await.iter().map(|r| r.seq).collect();
    assert_eq!(left, [3]);
    running.stop().await;
}

/// The next reading on the live bus, within `patience`.
async fn next_live(
    watching: &mut tokio::sync::broadcast::Receiver<crate::live::LiveEvent>,
    patience: Duration,
) -> Arc<Record> {
    match tokio::time::timeout(patience, watching.recv()).await {
        Ok(Ok(crate::live::LiveEvent::Reading(record))) => record,
        other => panic!("no reading on the live bus: {other:?}"),
    }
}

#[tokio::test]
async fn a_second_cairn_on_the_same_outbox_is_refused_until_the_first_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let config = test_config();
    let first = start(&path, &config).await;
    let clock = Arc::new(Clock::reading(0));
    let second = open(&path, &config, clock.clone()).await;
    let Err(StoreError::Locked { path: lock }) = second else {
        panic!("a second writer was let in");
    };
    assert_eq!(lock, dir.path().join("outbox.db.lock"));
    first.stop().await;
    assert!(
        open(&path, &config, clock).await.is_ok(),
        "free once the first stopped"
    );
}
