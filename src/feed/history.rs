//! Recent values on site, for charts to backfill: a SQLite file of its own (`history.db`),
//! fed from the live bus at most once per device per `every`, and trimmed to `keep`.
//!
//! It is apart from the outbox on purpose: it holds what was *read*, sent or not, and its
//! failures (a full disk, a corrupt file) cost charts, never readings. Points wait in memory
//! and are written every `flush` (10 min): one transaction then rewrites each page once,
//! where writing every second rewrote the same pages 600 times, a quarter to a half of what
//! Cairn wrote to an SD card at 1-10 readings/s (README, Benchmarks). A power cut costs the
//! charts the unwritten minutes; queries see the waiting points too. Memory: up to
//! `flush / every` points per device (600 by default).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use cairn_adapters::Value;

use crate::config::HistoryConfig;
use crate::live::LiveEvent;
use crate::store::Record;
use crate::uplink::encoding::json;

/// Most points one query returns.
pub const MAX_POINTS: u32 = 10_000;

/// The history file.
#[derive(Clone)]
pub struct History {
    pool: SqlitePool,
    config: HistoryConfig,
    /// Points kept but not yet written, oldest first.
    pending: Arc<Mutex<Vec<Arc<Record>>>>,
}

/// One point of a metric's history.
#[derive(Debug, serde::Serialize)]
pub struct Point {
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// The value.
    pub value: serde_json::Value,
}

impl History {
    /// Opens (creating if needed) the history at `path`.
    pub async fn open(path: &Path, config: &HistoryConfig) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Losing the last seconds of chart history to a power cut is fine.
            .synchronous(SqliteSynchronous::Normal)
            // Charts read a few recent points: a small page cache (256 KiB) spares the Pi's RAM.
            .pragma("cache_size", "-256")
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS history (device TEXT NOT NULL, ts_ms INTEGER NOT NULL, payload BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS history_device_ts ON history (device, ts_ms);",
        )
        .execute(&pool)
        .await?;
        Ok(Self {
            pool,
            config: config.clone(),
            pending: Arc::default(),
        })
    }

    fn pending(&self) -> MutexGuard<'_, Vec<Arc<Record>>> {
        // A panic while holding the lock leaves a plain list behind, still usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps readings from the live bus until `cancel` fires, writing them every `flush` and
    /// once more at the end.
    pub async fn run(self, mut live: broadcast::Receiver<LiveEvent>, cancel: CancellationToken) {
        let mut last_kept: HashMap<Arc<str>, i64> = HashMap::new();
        let every = self.config.every.as_millis() as i64;
        let period = self.config.flush;
        let mut flush = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                event = live.recv() => match event {
                    Ok(LiveEvent::Reading(record)) => {
                        let last = last_kept.entry(record.device.clone()).or_insert(i64::MIN);
                        if record.ts_ms.saturating_sub(*last) >= every {
                            *last = record.ts_ms;
                            self.pending().push(record);
                        }
                    }
                    Ok(LiveEvent::Status { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = flush.tick() => self.flush().await,
            }
        }
        self.flush().await;
    }

    /// Writes the waiting points and trims the old ones, in one transaction.
    async fn flush(&self) {
        let batch = self.pending().clone();
        let cutoff = crate::pipeline::unix_millis(std::time::SystemTime::now())
            - self.config.keep.as_millis() as i64;
        let result = async {
            let mut tx = self.pool.begin().await?;
            for record in &batch {
                sqlx::query("INSERT INTO history (device, ts_ms, payload) VALUES (?, ?, ?)")
                    .bind(&*record.device)
                    .bind(record.ts_ms)
                    .bind(json::reading(record, false))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM history WHERE ts_ms < ?")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            warn!(error = %e, readings = batch.len(), "Writing the history failed; charts will have a gap");
        }
        // Written or given up; points that came meanwhile wait for the next flush.
        self.pending().drain(..batch.len());
    }

    /// Up to `limit` points of `device`'s `metric` taken at or after `since_ms`, oldest first;
    /// with `step_ms`, its numbers averaged per `step_ms` (a 24 h chart needs 600 points, not
    /// 86,400), each at the time of the newest point it holds.
    pub async fn query(
        &self,
        device: &str,
        metric: &str,
        since_ms: i64,
        limit: u32,
        step_ms: Option<i64>,
    ) -> Result<Vec<Point>, sqlx::Error> {
        const POINTS: &str = "SELECT ts_ms,
             json_extract(payload, '$.values.' || json_quote(?)) AS value FROM history
             WHERE device = ? AND ts_ms >= ? AND value IS NOT NULL ORDER BY ts_ms DESC LIMIT ?";
        const AVERAGES: &str = "SELECT MAX(ts_ms), AVG(value) FROM (SELECT ts_ms,
             json_extract(payload, '$.values.' || json_quote(?)) AS value FROM history
             WHERE device = ? AND ts_ms >= ?) WHERE typeof(value) IN ('integer', 'real')
             GROUP BY ts_ms / ? ORDER BY 1 DESC LIMIT ?";
        let limit = limit.min(MAX_POINTS);
        let step = step_ms.map(|step| step.max(1));
        // The newest `limit` points, returned oldest first: a chart wants the recent end.
        let rows = match step {
            None => sqlx::query(POINTS).bind(metric).bind(device).bind(since_ms),
            Some(step) => sqlx::query(AVERAGES)
                .bind(metric)
                .bind(device)
                .bind(since_ms)
                .bind(step),
        }
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut points = rows
            .into_iter()
            .map(|row| {
                // json_extract gives SQL integers, reals or text; sqlx checks the type strictly.
                let value = row
                    .try_get::<i64, _>(1)
                    .map(serde_json::Value::from)
                    .or_else(|_| row.try_get::<f64, _>(1).map(serde_json::Value::from))
                    .or_else(|_| row.try_get::<String, _>(1).map(serde_json::Value::from))?;
                Ok(Point {
                    ts: row.try_get(0)?,
                    value,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        points.reverse();
        // The waiting points are newer than any written one.
        let pending = self.pending();
        let waiting = pending
            .iter()
            .filter(|r| &*r.device == device && r.ts_ms >= since_ms)
            .filter_map(|r| {
                let (_, value) = r.values.iter().find(|(name, _)| &**name == metric)?;
                Some(Point {
                    ts: r.ts_ms,
                    value: chart_value(value)?,
                })
            });
        match step {
            None => points.extend(waiting),
            Some(step) => points.extend(averaged(waiting, step)),
        }
        let excess = points.len().saturating_sub(limit as usize);
        points.drain(..excess);
        Ok(points)
    }
}

/// `points` (oldest first) averaged per `step` ms as the query averages the written ones:
/// numbers only, each bucket at the time of its newest point.
fn averaged(points: impl Iterator<Item = Point>, step: i64) -> Vec<Point> {
    let mut buckets: Vec<(i64, i64, f64, u32)> = Vec::new();
    for point in points {
        let Some(x) = point.value.as_f64() else {
            continue;
        };
        let bucket = point.ts / step;
        match buckets.last_mut() {
            Some((b, ts, sum, n)) if *b == bucket => {
                *ts = point.ts;
                *sum += x;
                *n += 1;
            }
            _ => buckets.push((bucket, point.ts, x, 1)),
        }
    }
    buckets
        .into_iter()
        .map(|(_, ts, sum, n)| Point {
            ts,
            value: serde_json::Value::from(sum / f64::from(n)),
        })
        .collect()
}

/// A value as the written history gives it back (SQLite's `json_extract`): booleans as 0 and
/// 1, floats without a JSON form absent.
fn chart_value(value: &Value) -> Option<serde_json::Value> {
    match value {
        Value::Float(x) => serde_json::Number::from_f64(*x).map(serde_json::Value::Number),
        Value::Int(i) => Some((*i).into()),
        Value::Bool(b) => Some(i64::from(*b).into()),
        Value::Text(t) => Some(t.clone().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(ts_ms: i64, value: f64) -> LiveEvent {
        LiveEvent::Reading(Arc::new(Record {
            priority: Default::default(),
            unsynced: false,
            seq: 1,
            device: Arc::from("tank"),
            ts_ms,
            values: vec![
                (Arc::from("level m"), Value::Float(value)),
                (Arc::from("ok"), Value::Bool(true)),
            ],
        }))
    }

    async fn written(history: &History) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM history")
            .fetch_one(&history.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn points_wait_in_memory_and_are_charted_before_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(&dir.path().join("history.db"), &HistoryConfig::default())
            .await
            .unwrap();
        let (tx, rx) = broadcast::channel(64);
        let cancel = CancellationToken::new();
        let writer = tokio::spawn(history.clone().run(rx, cancel.clone()));
        let now = crate::pipeline::unix_millis(std::time::SystemTime::now());
        for i in 0..5 {
            tx.send(reading(now + i * 1000, i as f64)).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while history
            .query("tank", "level m", now, 100, None)
            .await
            .unwrap()
            .len()
            < 5
        {
            assert!(std::time::Instant::now() < deadline, "points never charted");
            tokio::task::yield_now().await;
        }
        let ok = history.query("tank", "ok", now, 2, None).await.unwrap();
        let ok: Vec<_> = ok.iter().map(|p| (p.ts, p.value.clone())).collect();
        assert_eq!(
            ok,
            [(now + 3000, 1.into()), (now + 4000, 1.into())],
            "the newest two, as written ones read"
        );
        assert_eq!(
            written(&history).await,
            0,
            "nothing written before the flush"
        );
        cancel.cancel();
        writer.await.unwrap();
        assert_eq!(written(&history).await, 5, "written at the end");
        assert_eq!(
            history
                .query("tank", "level m", now, 100, None)
                .await
                .unwrap()
                .len(),
            5,
            "once, not twice"
        );
    }

    #[tokio::test]
    async fn keeps_one_reading_per_period_and_answers_by_metric() {
        let dir = tempfile::tempdir().unwrap();
        let config = HistoryConfig {
            keep: Duration::from_secs(3600),
            every: Duration::from_secs(1),
            flush: Duration::from_secs(600),
        };
        let history = History::open(&dir.path().join("history.db"), &config)
            .await
            .unwrap();
        let (tx, rx) = broadcast::channel(64);
        let cancel = CancellationToken::new();
        let now = crate::pipeline::unix_millis(std::time::SystemTime::now());
        for (dt, value) in [(0, 1.0), (400, 2.0), (1000, 3.0), (2500, 4.5)] {
            tx.send(reading(now + dt, value)).unwrap();
        }
        let writer = tokio::spawn(history.clone().run(rx, cancel.clone()));
        drop(tx);
        writer.await.unwrap();
        let points = history
            .query("tank", "level m", now, 100, None)
            .await
            .unwrap();
        let values: Vec<_> = points.iter().map(|p| p.value.clone()).collect();
        assert_eq!(
            values,
            [1.0, 3.0, 4.5],
            "the reading 400 ms after another is skipped"
        );
        assert_eq!(
            history
                .query("tank", "level m", now, 1, None)
                .await
                .unwrap()[0]
                .value,
            4.5
        );
        assert!(
            history
                .query("tank", "nothing", 0, 10, None)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            history
                .query("pump", "level m", 0, 10, None)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn averages_per_step_the_same_before_and_after_the_points_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(&dir.path().join("history.db"), &HistoryConfig::default())
            .await
            .unwrap();
        let (tx, rx) = broadcast::channel(64);
        let cancel = CancellationToken::new();
        let now = crate::pipeline::unix_millis(std::time::SystemTime::now()) / 2000 * 2000;
        for i in 0..6 {
            tx.send(reading(now + i * 1000, i as f64)).unwrap();
        }
        let writer = tokio::spawn(history.clone().run(rx, cancel.clone()));
        let expected = [(now + 1000, 0.5), (now + 3000, 2.5), (now + 5000, 4.5)];
        let averaged = || async {
            let points = history
                .query("tank", "level m", now, 100, Some(2000))
                .await
                .unwrap();
            points
                .iter()
                .map(|p| (p.ts, p.value.as_f64().unwrap()))
                .collect::<Vec<_>>()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while averaged().await != expected {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                averaged().await
            );
            tokio::task::yield_now().await;
        }
        cancel.cancel();
        writer.await.unwrap();
        assert_eq!(written(&history).await, 6);
        assert_eq!(averaged().await, expected, "written, averaged alike");
        assert_eq!(
            history
                .query("tank", "level m", now, 2, Some(2000))
                .await
                .unwrap()
                .len(),
            2,
            "the newest buckets"
        );
    }
}
