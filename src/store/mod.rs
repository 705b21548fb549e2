//! The outbox: every reading is committed to SQLite before anything else sees it, and stays
//! there until the uplink reports the broker's acknowledgement.
//!
//! One [`Writer`] task owns the only writing connection (no lock contention, group commit);
//! [`StoreReader`] reads through a separate read-only pool (WAL lets both run at once);
//! [`Acker`] is the uplink's way to say "delete these". The store knows nothing of MQTT.

mod disk;
mod retention;
pub mod row;
mod schema;
mod state;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use cairn_adapters::{Priority, Value};

use crate::clock::Clock;
use crate::config::{BufferConfig, Synchronous};
pub use state::DeviceState;
pub use writer::Writer;

/// A committed reading as the outbox holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Gateway-wide sequence number; grows across restarts and never repeats.
    pub seq: i64,
    /// The device that produced it.
    pub device: Arc<str>,
    /// When it was read, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Its values, typed, in the adapter's order.
    pub values: Vec<(Arc<str>, Value)>,
    /// How urgently it travels.
    pub priority: Priority,
    /// Its timestamp was taken before the gateway's clock was known good and is not
    /// corrected (yet, or ever: it was taken in an earlier boot); flagged upstream.
    pub unsynced: bool,
}

/// Why readings left the outbox without being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// `max_bytes` reached under `drop_oldest`: the oldest went.
    MaxBytes,
    /// `max_bytes` reached under `drop_newest`: new readings were refused.
    BufferFull,
    /// Older than `max_age`.
    MaxAge,
    /// Too large for any message `mqtt.max_message` allows (written before the limit was
    /// lowered, say).
    Oversize,
    /// Damaged on disk: its values cannot be read back.
    Undecodable,
    /// Refused because the disk's free space fell to `buffer.reserve`.
    DiskFull,
}

impl DropReason {
    /// All reasons, in reporting order.
    pub const ALL: [DropReason; 6] = [
        DropReason::MaxBytes,
        DropReason::BufferFull,
        DropReason::MaxAge,
        DropReason::Oversize,
        DropReason::Undecodable,
        DropReason::DiskFull,
    ];

    /// The name used in logs, metrics and the meta table.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::MaxBytes => "max_bytes",
            DropReason::BufferFull => "buffer_full",
            DropReason::MaxAge => "max_age",
            DropReason::Oversize => "oversize",
            DropReason::Undecodable => "undecodable",
            DropReason::DiskFull => "disk_full",
        }
    }
}

/// The outbox at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Readings committed and not yet acknowledged.
    pub backlog: u64,
    /// Their size as counted against `max_bytes`.
    pub bytes: u64,
    /// The next sequence number to be given out.
    pub next_seq: i64,
    /// Readings committed since the gateway started.
    pub accepted: u64,
    /// Readings acknowledged by the broker and deleted since the gateway started.
    pub delivered: u64,
    /// Readings dropped by policy, by reason, over the outbox's whole life.
    pub dropped: BTreeMap<DropReason, u64>,
}

impl From<&schema::State> for Stats {
    /// The counters of an outbox as it was found on disk (nothing accepted or delivered yet).
    fn from(state: &schema::State) -> Self {
        Stats {
            backlog: state.rows,
            bytes: state.bytes,
            next_seq: state.next_seq,
            dropped: state.dropped.clone(),
            ..Stats::default()
        }
    }
}

/// What can go wrong with the outbox.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (disk full, I/O error, corrupt file...).
    #[error("outbox database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: sqlx::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another Cairn process has this outbox open: two writers would give out the same seqs.
    #[error(
        "{path} is locked: another Cairn is running with this data folder (the service, or a `cairn run` by hand); stop it first"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

/// Locks the outbox at `path` for this process, through `<outbox>.lock`, which the returned
/// file holds until it is dropped. A second Cairn on the same data folder is refused here,
/// before it opens the database: its seqs would collide with the first one's.
fn lock(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| StoreError::Directory {
            path: lock_path.clone(),
            source,
        })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| StoreError::Locked { path: lock_path })?;
    Ok(file)
}

/// Read access to the outbox: what is unsent, and how much.
#[derive(Debug, Clone)]
pub struct StoreReader {
    pool: SqlitePool,
    committed: watch::Receiver<i64>,
    alarms: watch::Receiver<i64>,
    timeline: Timeline,
    stats: watch::Receiver<Stats>,
    pulse: Pulse,
}

/// When the writer last went round its loop (it does at least once a second, idle or not). A
/// writer stuck on a hung disk or in a deadlock stops beating; the service watchdog watches it.
#[derive(Debug, Clone)]
pub(crate) struct Pulse(Arc<std::sync::Mutex<tokio::time::Instant>>);

impl Pulse {
    fn new() -> Self {
        Self(Arc::new(std::sync::Mutex::new(tokio::time::Instant::now())))
    }

    fn beat(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
    }

    fn age(&self) -> Duration {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }
}

/// What the uplink tells the writer about rows it is done with.
#[derive(Debug)]
pub(crate) enum Done {
    /// The broker acknowledged them.
    Delivered(Vec<i64>),
    /// They can never be delivered, for this reason.
    Undeliverable(Vec<i64>, DropReason),
    /// Counters of the uplink's to keep across restarts (the link meter's).
    Counters(Vec<(String, i64)>),
}

/// When the readings of this run were committed, so that the uplink can tell the newest (its
/// live lane) from the backlog by a clock that cannot jump. One entry per 100 ms at most, over
/// the last hour.
#[derive(Debug, Clone)]
pub(crate) struct Timeline(Arc<std::sync::Mutex<TimelineInner>>);

#[derive(Debug)]
struct TimelineInner {
    /// The last seq committed before the oldest entry (or before this run).
    floor: i64,
    commits: std::collections::VecDeque<(Instant, i64)>,
}

/// How far back the timeline reaches, and how finely.
const TIMELINE_SPAN: Duration = Duration::from_secs(3600);
const TIMELINE_STEP: Duration = Duration::from_millis(100);

impl Timeline {
    fn new(floor: i64) -> Self {
        Self(Arc::new(std::sync::Mutex::new(TimelineInner {
            floor,
            commits: Default::default(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TimelineInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Readings up to `seq` were committed just now.
    fn committed(&self, seq: i64) {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.commits.back_mut() {
            // Coalesced entries take the later instant: rows may seem younger, never older.
            Some(last) if now - last.0 < TIMELINE_STEP => *last = (now, seq),
            _ => inner.commits.push_back((now, seq)),
        }
        while let Some(&(at, seq)) = inner.commits.front() {
            if now - at < TIMELINE_SPAN {
                break;
            }
            inner.floor = seq;
            inner.commits.pop_front();
        }
    }

    fn committed_at(&self, at: Instant) -> i64 {
        let inner = self.lock();
        let i = inner.commits.partition_point(|(t, _)| *t <= at);
        i.checked_sub(1).map_or(inner.floor, |i| inner.commits[i].1)
    }
}

/// The uplink's handle to delete acknowledged readings.
#[derive(Debug, Clone)]
pub struct Acker(mpsc::UnboundedSender<Done>);

impl Acker {
    /// Marks `seqs` as delivered; the writer deletes them in its next transaction.
    pub fn ack(&self, seqs: Vec<i64>) {
        // The writer outlives every Acker (it stops when they are all dropped).
        let _ = self.0.send(Done::Delivered(seqs));
    }

    /// Gives up on `seqs`, which no message can carry; the writer deletes and counts them.
    pub fn give_up(&self, seqs: Vec<i64>, reason: DropReason) {
        let _ = self.0.send(Done::Undeliverable(seqs, reason));
    }

    /// Saves `counters` (keys of the outbox's meta table) in the writer's next transaction.
    pub fn save_counters(&self, counters: Vec<(String, i64)>) {
        let _ = self.0.send(Done::Counters(counters));
    }
}

/// Rows read per query when looking for work; bounds memory for large backlogs.
const ROW_OVERHEAD: u64 = 32;

/// The size a row counts for against `max_bytes`: its payload, its device name and a fixed
/// allowance for SQLite's row and index overhead.
fn row_bytes(device: &str, payload_len: usize) -> u64 {
    (device.len() + payload_len) as u64 + ROW_OVERHEAD
}

/// The write-ahead log of the outbox at `path`.
pub fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// The most the write-ahead log of the outbox at `path` may hold between checkpoints: an
/// eighth of `max_bytes` (which covers it) and of its filesystem, between 16 KiB and 4 MiB.
pub fn wal_limit(path: &Path, config: &BufferConfig) -> u64 {
    let disk = path
        .parent()
        .and_then(|dir| rustix::fs::statvfs(dir).ok())
        .map_or(u64::MAX, |s| s.f_blocks.saturating_mul(s.f_frsize));
    (config.max_bytes.as_u64().min(disk) / 8).clamp(16 * 1024, 4 * 1024 * 1024)
}

fn connect_options(path: &Path, config: &BufferConfig) -> SqliteConnectOptions {
    // SQLite's default lets the WAL grow to 1,000 pages (4 MiB) before a checkpoint and keeps
    // the file at its largest after: on a small card that alone can fill the disk.
    let wal = wal_limit(path, config);
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        // A commit rewrites at least a page of WAL: 1 KiB pages halve what a small commit
        // writes (`scripts/bench_wear.py`). It applies to new files only; older ones keep
        // 4 KiB, which WAL mode cannot change.
        .page_size(1024)
        .journal_mode(SqliteJournalMode::Wal)
        .pragma("wal_autocheckpoint", (wal / 4096 / 2).max(2).to_string())
        .pragma("journal_size_limit", wal.to_string())
        .synchronous(match config.synchronous {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(5))
}

/// Opens (creating if needed) the outbox at `path`.
pub async fn open(
    path: &Path,
    config: &BufferConfig,
    clock: Arc<Clock>,
) -> Result<(StoreReader, Acker, Writer), StoreError> {
    let db_err = |source| StoreError::Database {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let held = lock(path)?;
    let mut conn = SqliteConnection::connect_with(&connect_options(path, config))
        .await
        .map_err(db_err)?;
    let mut state = schema::migrate(&mut conn).await.map_err(db_err)?;
    state.provisional = schema::mark_boot(&mut conn, crate::clock::boot_id(), clock.offset())
        .await
        .map_err(db_err)?;
    // A clock already known good makes this boot's provisional rows final before the uplink
    // reads any of them.
    writer::correct_provisional(&mut conn, &mut state, 0, clock.known())
        .await
        .map_err(db_err)?;
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(connect_options(path, config).read_only(true))
        .await
        .map_err(db_err)?;
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut conn)
        .await
        .map_err(db_err)?;
    let stats = Stats::from(&state);
    let (committed_tx, committed) = watch::channel(state.next_seq - 1);
    let (alarms_tx, alarms) = watch::channel(0);
    let timeline = Timeline::new(state.next_seq - 1);
    let (stats_tx, stats_rx) = watch::channel(stats);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let writer = Writer::new(
        path.to_path_buf(),
        (conn, u64::try_from(page_size).unwrap_or(4096)),
        config,
        state,
        (committed_tx, alarms_tx, timeline.clone()),
        (stats_tx, ack_rx),
        (clock, held),
    );
    let pulse = writer.pulse();
    Ok((
        StoreReader {
            pool,
            committed,
            alarms,
            timeline,
            stats: stats_rx,
            pulse,
        },
        Acker(ack_tx),
        writer,
    ))
}

impl StoreReader {
    /// How long ago the writer last showed it is alive.
    pub fn writer_pulse(&self) -> Duration {
        self.pulse.age()
    }

    /// Up to `limit` unsent rows of `priority` with `after < seq <= upto`, oldest first.
    pub async fn unsent(
        &self,
        priority: Priority,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Unsent, sqlx::Error> {
        // Written out per priority so that alarms are found through their partial index.
        let sql = match priority {
            Priority::Normal => {
                "SELECT seq, device, ts_ms, payload, clock FROM outbox WHERE seq > ? AND seq <= ? AND priority = 0 ORDER BY seq LIMIT ?"
            }
            Priority::Alarm => {
                "SELECT seq, device, ts_ms, payload, clock FROM outbox WHERE seq > ? AND seq <= ? AND priority > 0 ORDER BY seq LIMIT ?"
            }
        };
        let rows = sqlx::query(sql)
            .bind(after)
            .bind(upto)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut names = row::Names::default();
        let mut devices: BTreeMap<String, Arc<str>> = BTreeMap::new();
        let mut unsent = Unsent::default();
        for r in rows {
            let seq: i64 = r.try_get(0)?;
            unsent.last = seq;
            match row::decode(r.try_get::<&[u8], _>(3)?, &mut names) {
                Ok(values) => {
                    let device: &str = r.try_get(1)?;
                    let device = match devices.get(device) {
                        Some(shared) => shared.clone(),
                        None => {
                            let shared: Arc<str> = Arc::from(device);
                            devices.insert(device.to_string(), shared.clone());
                            shared
                        }
                    };
                    unsent.records.push(Record {
                        seq,
                        device,
                        ts_ms: r.try_get(2)?,
                        values,
                        priority,
                        unsynced: r.try_get::<i64, _>(4)? != 0,
                    });
                }
                Err(e) => {
                    tracing::error!(seq, error = %e, "Outbox row cannot be read; it is dropped and counted");
                    unsent.undecodable.push(seq);
                }
            }
        }
        Ok(unsent)
    }

    /// The last `seq` committed at or before `at` (within the last hour of this run; before
    /// that, or before the run, the last `seq` the outbox held when it opened).
    pub fn committed_at(&self, at: Instant) -> i64 {
        self.timeline.committed_at(at)
    }

    /// Unsent readings of `priority` with `seq > after`: how many, their size as counted
    /// against `max_bytes`, and when the oldest was taken.
    pub async fn count_after(
        &self,
        priority: Priority,
        after: i64,
    ) -> Result<(u64, u64, Option<i64>), sqlx::Error> {
        let sql = match priority {
            Priority::Normal => {
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(device) + LENGTH(payload)), 0), MIN(ts_ms) FROM outbox WHERE seq > ? AND priority = 0"
            }
            Priority::Alarm => {
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(device) + LENGTH(payload)), 0), MIN(ts_ms) FROM outbox WHERE seq > ? AND priority > 0"
            }
        };
        let row = sqlx::query(sql).bind(after).fetch_one(&self.pool).await?;
        let rows: i64 = row.try_get(0)?;
        let content: i64 = row.try_get(1)?;
        Ok((
            rows as u64,
            content as u64 + rows as u64 * ROW_OVERHEAD,
            row.try_get(2)?,
        ))
    }

    /// When the oldest unsent reading of normal priority was taken, if there is one.
    pub async fn oldest_normal_ms(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT ts_ms FROM outbox WHERE priority = 0 ORDER BY seq LIMIT 1")
            .fetch_optional(&self.pool)
            .await
    }

    /// Counters saved with [`Acker::save_counters`] whose keys start with `prefix`.
    pub async fn counters(&self, prefix: &str) -> Result<BTreeMap<String, i64>, sqlx::Error> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, value FROM meta WHERE substr(key, 1, length(?1)) = ?1")
                .bind(prefix)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// The timestamp of the oldest unsent reading, if any.
    pub async fn oldest_unsent_ms(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT ts_ms FROM outbox ORDER BY seq LIMIT 1")
            .fetch_optional(&self.pool)
            .await
    }

    /// The last committed sequence number; changes whenever a batch commits.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }

    /// The seq of the last alarm reading committed in this run; changes with each new one.
    pub fn alarms(&self) -> watch::Receiver<i64> {
        self.alarms.clone()
    }

    /// The counters, changing with every commit.
    pub fn stats_changes(&self) -> watch::Receiver<Stats> {
        self.stats.clone()
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }
}

/// Rows read from the outbox for the uplink.
#[derive(Debug, Default)]
pub struct Unsent {
    /// The readings, oldest first.
    pub records: Vec<Record>,
    /// Rows whose values could not be read back.
    pub undecodable: Vec<i64>,
    /// The last `seq` looked at (0 when none).
    pub last: i64,
}

/// Reads the counters of an outbox file without opening it for writing (for `cairn stats`):
/// its stats, when the oldest unsent reading was taken, and the uplink's saved counters.
pub async fn inspect(
    path: &Path,
) -> Result<(Stats, Option<i64>, BTreeMap<String, i64>), StoreError> {
    let db_err = |source| StoreError::Database {
        path: path.to_path_buf(),
        source,
    };
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(db_err)?;
    let state = schema::load_state(&mut conn).await.map_err(db_err)?;
    let oldest = sqlx::query_scalar("SELECT ts_ms FROM outbox ORDER BY seq LIMIT 1")
        .fetch_optional(&mut conn)
        .await
        .map_err(db_err)?;
    let counters: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, value FROM meta WHERE substr(key, 1, 5) = 'link_'")
            .fetch_all(&mut conn)
            .await
            .map_err(db_err)?;
    let stats = Stats::from(&state);
    Ok((stats, oldest, counters.into_iter().collect()))
}

#[cfg(test)]
mod tests;
