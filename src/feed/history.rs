//! Recent values on site, for charts to backfill: a SQLite file of its own (`history.db`),
//! written from the live bus at most once per device per `every`, and trimmed to `keep`.
//!
//! It is apart from the outbox on purpose: it holds what was *read*, sent or not, and its
//! failures (a full disk, a corrupt file) cost charts, never readings.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::HistoryConfig;
use crate::live::LiveEvent;
use crate::store::Record;
use crate::uplink::encoding::json;

/// How often buffered readings are written, and how often old ones are deleted.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Most points one query returns.
pub const MAX_POINTS: u32 = 10_000;

/// The history file.
#[derive(Clone)]
pub struct History {
    pool: SqlitePool,
    config: HistoryConfig,
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
        })
    }

    /// Writes readings from the live bus until `cancel` fires.
    pub async fn run(self, mut live: broadcast::Receiver<LiveEvent>, cancel: CancellationToken) {
        let mut last_kept: HashMap<Arc<str>, i64> = HashMap::new();
        let every = self.config.every.as_millis() as i64;
        let mut batch: Vec<Arc<Record>> = Vec::new();
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut trim = tokio::time::interval(TRIM_EVERY);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                event = live.recv() => match event {
                    Ok(LiveEvent::Reading(record)) => {
                        let last = last_kept.entry(record.device.clone()).or_insert(i64::MIN);
                        if record.ts_ms.saturating_sub(*last) >= every {
                            *last = record.ts_ms;
                            batch.push(record);
                        }
                    }
                    Ok(LiveEvent::Status { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = flush.tick() => self.write(&mut batch).await,
                _ = trim.tick() => {
                    if let Err(e) = self.trim().await {
                        warn!(error = %e, "Trimming the history failed");
                    }
                }
            }
        }
        self.write(&mut batch).await;
    }

    async fn write(&self, batch: &mut Vec<Arc<Record>>) {
        if batch.is_empty() {
            return;
        }
        let result = async {
            let mut tx = self.pool.begin().await?;
            for record in batch.iter() {
                sqlx::query("INSERT INTO history (device, ts_ms, payload) VALUES (?, ?, ?)")
                    .bind(&*record.device)
                    .bind(record.ts_ms)
                    .bind(json::reading(record, false))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            warn!(error = %e, readings = batch.len(), "Writing the history failed; charts will have a gap");
        }
        batch.clear();
    }

    async fn trim(&self) -> Result<(), sqlx::Error> {
        let cutoff = crate::pipeline::unix_millis(std::time::SystemTime::now())
            - self.config.keep.as_millis() as i64;
        sqlx::query("DELETE FROM history WHERE ts_ms < ?")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Up to `limit` points of `device`'s `metric` taken at or after `since_ms`, oldest first.
    pub async fn query(
        &self,
        device: &str,
        metric: &str,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<Point>, sqlx::Error> {
        // The newest `limit` points, returned oldest first: a chart wants the recent end.
        let rows = sqlx::query(
            "SELECT ts_ms, json_extract(payload, '$.values.' || json_quote(?)) AS value FROM history
             WHERE device = ? AND ts_ms >= ? AND value IS NOT NULL ORDER BY ts_ms DESC LIMIT ?",
        )
        .bind(metric)
        .bind(device)
        .bind(since_ms)
        .bind(limit.min(MAX_POINTS))
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
        Ok(points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_adapters::Value;

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

    #[tokio::test]
    async fn keeps_one_reading_per_period_and_answers_by_metric() {
        let dir = tempfile::tempdir().unwrap();
        let config = HistoryConfig {
            keep: Duration::from_secs(3600),
            every: Duration::from_secs(1),
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
        let points = history.query("tank", "level m", now, 100).await.unwrap();
        let values: Vec<_> = points.iter().map(|p| p.value.clone()).collect();
        assert_eq!(
            values,
            [1.0, 3.0, 4.5],
            "the reading 400 ms after another is skipped"
        );
        assert_eq!(
            history.query("tank", "level m", now, 1).await.unwrap()[0].value,
            4.5
        );
        assert!(
            history
                .query("tank", "nothing", 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            history
                .query("pump", "level m", 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
