//! The outbox's single writer: group-commits readings, deletes acknowledged rows, applies the
//! retention limits, and tells the uplink and the live bus what was committed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_adapters::{Priority, Reading};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, QueryBuilder, SqliteConnection};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::disk::Disk;
use super::retention::{self, CHUNK};
use super::schema::{State, drop_key};
use super::{
    Done, DropReason, Pulse, Record, Stats, StoreError, Timeline, connect_options, row, row_bytes,
    wal_limit, wal_path,
};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::config::{BufferConfig, WhenFull};
use crate::live::{LiveBus, LiveEvent};
use crate::pipeline::unix_millis;

/// How often rows older than `max_age` are looked for.
const AGE_CHECK: Duration = Duration::from_secs(10);

/// The task that owns the outbox's writing connection.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    conn: SqliteConnection,
    options: SqliteConnectOptions,
    max_bytes: u64,
    max_age: Option<Duration>,
    when_full: WhenFull,
    commit_interval: Duration,
    max_batch: usize,
    state: State,
    stats: Stats,
    committed: watch::Sender<i64>,
    alarms: watch::Sender<i64>,
    timeline: Timeline,
    stats_tx: watch::Sender<Stats>,
    acks: mpsc::UnboundedReceiver<Done>,
    pulse: Pulse,
    clock: Arc<Clock>,
    /// The clock correction the provisional rows in the table already carry.
    applied: i64,
    disk: Disk,
    /// The write-ahead log, and the size past which the writer checkpoints it itself.
    wal: (PathBuf, u64),
    /// Rows the limits dropped lately, and why: one of them may have been in flight, and
    /// its acknowledgement still come.
    recent_drops: BTreeMap<i64, DropReason>,
    /// The meta table's values as this writer last wrote them.
    saved: BTreeMap<String, i64>,
    /// The outbox's page size (4 KiB in files made before it was 1 KiB).
    page_size: u64,
    /// The lock on the outbox, held while this writer lives (see `store::lock`).
    _lock: std::fs::File,
}

/// Dropped rows remembered for acknowledgements that come after the drop: more than any
/// window holds in flight.
const RECENT_DROPS: usize = 100_000;

/// How often an idle writer still shows it is alive.
const PULSE_EVERY: Duration = Duration::from_secs(1);

/// A reading the writer took: already on the live bus, under the `seq` it is committed with.
struct Accepted {
    record: Arc<Record>,
    payload: Vec<u8>,
    size: u64,
    /// The reading's `provisional` clock correction (`Reading::provisional`).
    provisional: Option<i64>,
    /// The clock correction `record.ts_ms` carries.
    correction: i64,
}

/// Row bytes that make a transaction worth committing before `commit_interval` is up: a
/// commit costs about one page of WAL whatever it holds, so past a few pages of rows waiting
/// longer saves little (see `scripts/bench_wear.py`).
const ENOUGH_BYTES: u64 = 8 * 1024;

/// Acknowledgements that make a transaction worth committing at once (a backlog draining).
const ENOUGH_ACKS: usize = 20_000;

/// What one transaction will do.
#[derive(Default)]
struct Batch {
    accepted: Vec<Accepted>,
    /// Row bytes of `accepted`.
    bytes: u64,
    /// Readings refused by `drop_newest` (`buffer_full`) and at the disk's reserve.
    refused: u64,
    no_room: u64,
    /// Whether the disk was at its reserve when the batch took its first reading.
    disk_full: Option<bool>,
    /// An alarm is waiting: commit at once.
    urgent: bool,
    /// When the first thing came that this batch will commit.
    opened: Option<Instant>,
    acks: Vec<i64>,
    given_up: Vec<(Vec<i64>, DropReason)>,
    counters: BTreeMap<String, i64>,
    check_age: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.accepted.is_empty()
            && self.refused == 0
            && self.no_room == 0
            && self.acks.is_empty()
            && self.given_up.is_empty()
            && self.counters.is_empty()
            && !self.check_age
    }

    fn take(&mut self, done: Done) {
        match done {
            Done::Delivered(seqs) => self.acks.extend(seqs),
            Done::Undeliverable(seqs, reason) => self.given_up.push((seqs, reason)),
            Done::Counters(counters) => self.counters.extend(counters),
        }
    }

    /// Whether to commit now rather than gather more: the interval is up, an alarm waits, or
    /// enough has gathered that waiting would save next to nothing.
    fn due(&self, interval: Duration, max_batch: usize) -> bool {
        self.urgent
            || self.accepted.len() >= max_batch
            || self.bytes >= ENOUGH_BYTES
            || self.acks.len() >= ENOUGH_ACKS
            || self.opened.is_some_and(|at| at.elapsed() >= interval)
    }
}

impl Writer {
    pub(super) fn new(
        path: PathBuf,
        (conn, page_size): (SqliteConnection, u64),
        config: &BufferConfig,
        state: State,
        (committed, alarms, timeline): (watch::Sender<i64>, watch::Sender<i64>, Timeline),
        (stats_tx, acks): (watch::Sender<Stats>, mpsc::UnboundedReceiver<Done>),
        (clock, lock): (Arc<Clock>, std::fs::File),
    ) -> Self {
        let stats = stats_tx.borrow().clone();
        let wal = wal_limit(&path, config);
        Self {
            disk: Disk::new(&path, config.reserve.as_u64()),
            wal: (wal_path(&path), wal),
            options: connect_options(&path, config),
            path,
            conn,
            // The WAL's share of `max_bytes` is kept for it.
            max_bytes: config.max_bytes.as_u64().saturating_sub(wal),
            max_age: config.max_age,
            when_full: config.when_full,
            commit_interval: config.commit_interval,
            max_batch: config.max_batch,
            state,
            stats,
            committed,
            alarms,
            timeline,
            stats_tx,
            acks,
            pulse: Pulse::new(),
            applied: clock.correction(),
            recent_drops: BTreeMap::new(),
            saved: BTreeMap::new(),
            page_size,
            _lock: lock,
            clock,
        }
    }

    /// The writer's pulse, for [`super::StoreReader::writer_pulse`].
    pub(super) fn pulse(&self) -> Pulse {
        self.pulse.clone()
    }

    /// Commits readings and acknowledgements until the reading channel is closed *and* every
    /// [`super::Acker`] is gone, so that shutdown still records the uplink's last acks.
    ///
    /// A reading goes on the live bus when it arrives; the transaction that makes it durable
    /// follows within `commit_interval`, sooner when enough has gathered or an alarm came. A
    /// commit costs about a page of WAL whatever it holds, so at site rates this is what
    /// spares the card; acknowledgements wait for the same transaction.
    pub async fn run(
        mut self,
        mut readings: mpsc::Receiver<Reading>,
        live: LiveBus,
    ) -> Result<(), StoreError> {
        let mut readings_open = true;
        let mut acks_open = true;
        let mut age_tick = tokio::time::interval(AGE_CHECK);
        age_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pulse_tick = tokio::time::interval(PULSE_EVERY);
        let mut batch = Batch::default();
        self.disk.hold().await;
        while readings_open || acks_open {
            self.pulse.beat();
            let deadline = batch.opened.map(|at| at + self.commit_interval);
            tokio::select! {
                reading = readings.recv(), if readings_open => match reading {
                    Some(reading) => self.accept(&mut batch, reading, &live).await,
                    None => readings_open = false,
                },
                done = self.acks.recv(), if acks_open => match done {
                    Some(done) => batch.take(done),
                    None => acks_open = false,
                },
                _ = age_tick.tick(), if self.max_age.is_some() => batch.check_age = true,
                _ = pulse_tick.tick() => {
                    self.disk.hold().await;
                    self.checkpoint_if_large().await;
                }
                () = sleep_until_some(deadline) => {}
            }
            while readings_open && batch.accepted.len() < self.max_batch {
                match readings.try_recv() {
                    Ok(reading) => self.accept(&mut batch, reading, &live).await,
                    Err(mpsc::error::TryRecvError::Disconnected) => readings_open = false,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                }
            }
            while let Ok(done) = self.acks.try_recv() {
                batch.take(done);
            }
            if batch.is_empty() {
                continue;
            }
            batch.opened.get_or_insert_with(Instant::now);
            let closing = !readings_open || !acks_open;
            if !closing && !batch.due(self.commit_interval, self.max_batch) {
                continue;
            }
            self.commit_retrying(&mut batch).await;
            batch = Batch::default();
        }
        info!(path = %self.path.display(), backlog = self.stats.backlog, "Outbox closed");
        Ok(())
    }

    /// Takes `reading` into `batch` under the next `seq` and shows it on the live bus, or
    /// refuses and counts it (`drop_newest` at `max_bytes`, or the disk at its reserve).
    async fn accept(&mut self, batch: &mut Batch, reading: Reading, live: &LiveBus) {
        let disk_full = match batch.disk_full {
            Some(full) => full,
            None => *batch.disk_full.insert(self.disk_full().await),
        };
        if disk_full {
            batch.no_room += 1;
            return;
        }
        let payload = row::encode(&reading.values);
        let size = row_bytes(&reading.device, payload.len());
        // An alarm is never refused: older readings of normal priority make room for it.
        // Acknowledgements waiting in the batch are not counted as room yet.
        if self.when_full == WhenFull::DropNewest
            && reading.priority == Priority::Normal
            && self.state.bytes + batch.bytes + size > self.max_bytes
        {
            batch.refused += 1;
            return;
        }
        // A reading taken while the clock was not known good gets the steps seen since.
        let correction = self.clock.correction();
        let ts_ms = unix_millis(reading.ts) + reading.provisional.map_or(0, |c| correction - c);
        let record = Arc::new(Record {
            seq: self.state.next_seq + batch.accepted.len() as i64,
            device: reading.device,
            ts_ms,
            values: reading.values,
            priority: reading.priority,
            unsynced: reading.provisional.is_some() && !self.clock.known(),
        });
        batch.urgent |= record.priority == Priority::Alarm;
        batch.bytes += size;
        live.publish(LiveEvent::Reading(record.clone()));
        batch.accepted.push(Accepted {
            record,
            payload,
            size,
            provisional: reading.provisional,
            correction,
        });
    }

    /// Whether new readings must be refused for the disk's reserve. Pages freed by deletes are
    /// room too, though the file does not shrink; and the WAL's share (its limit) is kept for
    /// it, so that a checkpoint does not make room that its next growth takes back. A disk or
    /// an outbox that cannot be asked is taken as having room.
    async fn disk_full(&mut self) -> bool {
        let (wal, limit) = &self.wal;
        let Some(free) = self.disk.free() else {
            return false;
        };
        let reusable = if self.disk.near(free, *limit) {
            let pages: i64 = match sqlx::query_scalar("PRAGMA freelist_count")
                .fetch_one(&mut self.conn)
                .await
            {
                Ok(pages) => pages,
                Err(e) => {
                    debug!(error = %e, "Cannot size the free pages of the outbox");
                    return false;
                }
            };
            let wal_now = tokio::fs::metadata(wal).await.map_or(0, |m| m.len());
            u64::try_from(pages).unwrap_or(0) * self.page_size + wal_now
        } else {
            *limit
        };
        self.disk.refusing(free, reusable, *limit)
    }

    /// Checkpoints the WAL into the database and truncates it once it is past its limit, or
    /// whenever the disk is at its reserve. SQLite's automatic checkpoints were seen not to
    /// keep up here (the WAL grew past 6 MiB with the database file untouched), so the
    /// writer does not rely on them.
    async fn checkpoint_if_large(&mut self) {
        let (wal, limit) = &self.wal;
        let size = tokio::fs::metadata(wal).await.map_or(0, |m| m.len());
        if size > *limit || (size > 0 && self.disk.is_low()) {
            let done: Result<(i64, i64, i64), _> =
                sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(&mut self.conn)
                    .await;
            debug!(result = ?done, wal_bytes = size, "WAL checkpoint");
        }
    }

    /// Commits `batch`, retrying with backoff while SQLite refuses (disk full, I/O error); while
    /// it retries, the bounded reading channel fills and slows the adapters down, and nothing
    /// already committed is touched.
    async fn commit_retrying(&mut self, batch: &mut Batch) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let outcome = self.commit(batch).await;
            // A failing disk is a state the writer handles, not a hang.
            self.pulse.beat();
            let Err(e) = outcome else { return };
            let retry_in = backoff.next_delay();
            error!(
                path = %self.path.display(),
                error = %e,
                readings = batch.accepted.len(),
                retry_in = %humantime::format_duration(retry_in),
                "Outbox write failed; holding the readings and retrying"
            );
            self.disk.release().await;
            tokio::time::sleep(retry_in).await;
            self.reopen().await;
            self.free_room(batch).await;
            // At the reserve the held readings are refused after all, so that the writer
            // goes on deleting and counting. The live bus showed them under seqs that the
            // next readings take again: never committed, those seqs never left the gateway.
            if !batch.accepted.is_empty() && self.disk_full().await {
                batch.no_room += batch.accepted.len() as u64;
                batch.accepted.clear();
                batch.bytes = 0;
            }
        }
    }

    /// Replaces the connection after a failed transaction. After SQLITE_FULL, SQLite may roll
    /// the transaction back on its own, and sqlx's count of open transactions then disagrees with
    /// SQLite's; on such a connection, later commits were seen to report success while nothing
    /// reached the file (found by `tests/disk_full.rs`). A fresh connection carries nothing over.
    async fn reopen(&mut self) {
        match SqliteConnection::connect_with(&self.options).await {
            Ok(conn) => {
                let old = std::mem::replace(&mut self.conn, conn);
                if let Err(e) = old.close().await {
                    debug!(error = %e, "Closing the failed outbox connection");
                }
            }
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "Cannot reopen the outbox yet")
            }
        }
    }

    /// On a full disk the new readings cannot go in, but deleting delivered ones still can
    /// (the WAL reuses its space after a checkpoint): commit the acknowledgements on their own,
    /// so that the outbox empties as the uplink delivers and then takes readings again.
    async fn free_room(&mut self, batch: &mut Batch) {
        while let Ok(done) = self.acks.try_recv() {
            batch.take(done);
        }
        if (batch.acks.is_empty() && batch.given_up.is_empty()) || batch.accepted.is_empty() {
            return;
        }
        let mut acks_only = Batch {
            acks: std::mem::take(&mut batch.acks),
            given_up: std::mem::take(&mut batch.given_up),
            ..Batch::default()
        };
        if self.commit(&mut acks_only).await.is_err() {
            batch.acks = acks_only.acks;
            batch.given_up = acks_only.given_up;
        }
    }

    /// One transaction: acks, age limit, then the new readings and the size limit.
    async fn commit(&mut self, batch: &mut Batch) -> Result<(), sqlx::Error> {
        let mut stats = self.stats.clone();
        let mut state = self.state.clone();
        let mut tx = self.conn.begin().await?;

        let acked = retention::delete(&mut tx, &batch.acks).await?;
        stats.delivered += acked.rows;
        state.rows -= acked.rows.min(state.rows);
        state.bytes -= acked.bytes.min(state.bytes);
        // Rows the limits dropped while they were in flight, acknowledged now: they were
        // delivered after all, and count as such rather than as drops.
        let late: Vec<(i64, DropReason)> =
            if acked.rows < batch.acks.len() as u64 && !self.recent_drops.is_empty() {
                let deleted: std::collections::HashSet<i64> = acked.seqs.iter().copied().collect();
                batch
                    .acks
                    .iter()
                    .filter(|seq| !deleted.contains(seq))
                    .filter_map(|seq| self.recent_drops.get(seq).map(|r| (*seq, *r)))
                    .collect()
            } else {
                Vec::new()
            };
        for (_, reason) in &late {
            stats.delivered += 1;
            if let Some(n) = state.dropped.get_mut(reason) {
                *n = n.saturating_sub(1);
            }
        }
        for (seqs, reason) in &batch.given_up {
            let freed = retention::delete(&mut tx, seqs).await?;
            record_drop(&mut state, &freed, *reason, &mut Vec::new());
        }
        let mut dropped_now = Vec::new();

        // Read once, so that the rows in the table and those added below agree.
        let (correction, known) = (self.clock.correction(), self.clock.known());
        correct_provisional(&mut tx, &mut state, correction - self.applied, known).await?;

        // Ages count from a clock known good, on CLOCK_BOOTTIME since (not the wall clock,
        // which may step); rows whose time was never known are not aged.
        if batch.check_age
            && let Some(max_age) = self.max_age
            && let Some(now) = self.clock.now_for_age()
        {
            let cutoff = now - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
            let freed = retention::drop_older_than(&mut tx, cutoff).await?;
            record_drop(&mut state, &freed, DropReason::MaxAge, &mut dropped_now);
        }

        let mut rows = Vec::with_capacity(batch.accepted.len());
        for accepted in &batch.accepted {
            let record = &accepted.record;
            debug_assert_eq!(record.seq, state.next_seq);
            // The clock may have stepped since the reading was taken.
            let ts_ms = record.ts_ms
                + accepted
                    .provisional
                    .map_or(0, |_| correction - accepted.correction);
            let provisional = accepted.provisional.is_some() && !known;
            state.provisional |= provisional;
            rows.push((record, ts_ms, provisional, &accepted.payload[..]));
            state.next_seq = record.seq + 1;
            state.rows += 1;
            state.bytes += accepted.size;
        }
        *state.dropped.entry(DropReason::BufferFull).or_default() += batch.refused;
        *state.dropped.entry(DropReason::DiskFull).or_default() += batch.no_room;
        for chunk in rows.chunks(CHUNK) {
            let mut insert = QueryBuilder::new(
                "INSERT INTO outbox (seq, device, ts_ms, payload, priority, clock) ",
            );
            insert.push_values(chunk, |mut row, (record, ts_ms, provisional, payload)| {
                row.push_bind(record.seq)
                    .push_bind(&*record.device)
                    .push_bind(*ts_ms)
                    .push_bind(*payload)
                    .push_bind(i64::from(record.priority == Priority::Alarm))
                    .push_bind(i64::from(*provisional));
            });
            insert
                .build()
                .persistent(chunk.len() == CHUNK)
                .execute(&mut *tx)
                .await?;
        }

        if state.bytes > self.max_bytes {
            // Alarms go last, and under `drop_newest` only readings of normal priority go (the
            // outbox is then over its limit by alarms alone).
            let priorities: &[i64] = match self.when_full {
                WhenFull::DropOldest => &[0, 1],
                WhenFull::DropNewest => &[0],
            };
            let freed =
                retention::drop_oldest(&mut tx, state.bytes - self.max_bytes, priorities).await?;
            record_drop(&mut state, &freed, DropReason::MaxBytes, &mut dropped_now);
        }

        // The meta page is written only when something in it changed: it would be a second
        // page of WAL in every commit. `next_seq` needs saving only when the newest seq given
        // out is no longer a row (deleted, or dropped), for the table's largest seq tells it.
        let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM outbox")
            .fetch_one(&mut *tx)
            .await?;
        let entries: Vec<(String, i64)> = (newest != Some(state.next_seq - 1))
            .then(|| ("next_seq".to_string(), state.next_seq))
            .into_iter()
            .chain(
                state
                    .dropped
                    .iter()
                    .map(|(reason, n)| (drop_key(*reason), *n as i64)),
            )
            .chain(batch.counters.iter().map(|(k, v)| (k.clone(), *v)))
            // What the provisional rows' times are relative to, for a step while closed.
            .chain(
                state
                    .provisional
                    .then(|| ("clock_offset".to_string(), self.clock.offset())),
            )
            .filter(|(key, value)| self.saved.get(key) != Some(value))
            .collect();
        if !entries.is_empty() {
            let mut meta = QueryBuilder::new("INSERT INTO meta (key, value) ");
            meta.push_values(&entries, |mut row, (key, value)| {
                row.push_bind(key).push_bind(*value);
            });
            meta.push(" ON CONFLICT (key) DO UPDATE SET value = excluded.value");
            meta.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.saved.extend(entries);
        self.disk.refused(batch.no_room);
        for (seq, _) in &late {
            self.recent_drops.remove(seq);
        }
        self.recent_drops.extend(dropped_now);
        while self.recent_drops.len() > RECENT_DROPS {
            self.recent_drops.pop_first();
        }

        let new_drops: BTreeMap<DropReason, u64> = state
            .dropped
            .iter()
            .filter_map(|(reason, n)| {
                let before = self.state.dropped.get(reason).copied().unwrap_or(0);
                n.checked_sub(before)
                    .filter(|d| *d > 0)
                    .map(|d| (*reason, d))
            })
            .collect();
        // Refusals at the disk's reserve are logged when they begin and end (`disk.rs`).
        for (reason, n) in new_drops
            .iter()
            .filter(|(r, _)| **r != DropReason::DiskFull)
        {
            warn!(
                reason = reason.as_str(),
                dropped = n,
                backlog = state.rows,
                "Outbox limit reached; readings dropped"
            );
        }
        if batch.check_age {
            debug!(backlog = state.rows, "Age limit checked");
        }
        stats.accepted += batch.accepted.len() as u64;
        stats.backlog = state.rows;
        stats.bytes = state.bytes;
        stats.next_seq = state.next_seq;
        stats.dropped = state.dropped.clone();
        self.state = state;
        self.applied = correction;
        self.stats = stats.clone();
        self.stats_tx.send_replace(stats);
        if let Some(alarm) = batch
            .accepted
            .iter()
            .rev()
            .find(|a| a.record.priority == Priority::Alarm)
        {
            self.alarms.send_replace(alarm.record.seq);
        }
        if !batch.accepted.is_empty() {
            self.timeline.committed(self.state.next_seq - 1);
            self.committed.send_replace(self.state.next_seq - 1);
        }
        Ok(())
    }
}

/// Moves the provisional rows by `step` (the clock's steps since they were last moved); once
/// the clock is `known` good, they are final.
pub(super) async fn correct_provisional(
    tx: &mut SqliteConnection,
    state: &mut State,
    step: i64,
    known: bool,
) -> Result<(), sqlx::Error> {
    if !state.provisional {
        return Ok(());
    }
    if step != 0 {
        sqlx::query("UPDATE outbox SET ts_ms = ts_ms + ? WHERE clock = 1")
            .bind(step)
            .execute(&mut *tx)
            .await?;
    }
    if known {
        let fixed = sqlx::query("UPDATE outbox SET clock = 0 WHERE clock = 1")
            .execute(&mut *tx)
            .await?;
        info!(
            readings = fixed.rows_affected(),
            "Readings taken before the clock was known good now carry corrected times"
        );
        state.provisional = false;
    }
    Ok(())
}

/// Waits for `deadline`, or forever when there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Counts what the limits freed as dropped for `reason`, and notes its rows in `noted`.
fn record_drop(
    state: &mut State,
    freed: &retention::Freed,
    reason: DropReason,
    noted: &mut Vec<(i64, DropReason)>,
) {
    state.rows -= freed.rows.min(state.rows);
    state.bytes -= freed.bytes.min(state.bytes);
    *state.dropped.entry(reason).or_default() += freed.rows;
    noted.extend(freed.seqs.iter().map(|seq| (*seq, reason)));
}
