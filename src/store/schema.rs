//! The outbox's tables, their migration, and the state the writer resumes from.

use std::collections::BTreeMap;

use sqlx::{Row, SqliteConnection};

use super::{DropReason, ROW_OVERHEAD};

/// Bumped with every change to the tables; `PRAGMA user_version` holds it.
const SCHEMA_VERSION: i64 = 4;

/// What the writer needs to carry on where the last run stopped.
#[derive(Debug, Clone)]
pub struct State {
    pub next_seq: i64,
    pub rows: u64,
    pub bytes: u64,
    pub dropped: BTreeMap<DropReason, u64>,
    /// Whether rows with provisional timestamps (of this boot) are waiting for the clock.
    pub provisional: bool,
}

/// Creates or upgrades the tables, then loads the state.
pub async fn migrate(conn: &mut SqliteConnection) -> Result<State, sqlx::Error> {
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    if version > SCHEMA_VERSION {
        // A newer Cairn wrote this file; this one would misread its rows.
        return Err(sqlx::Error::Configuration(
            format!("the outbox is at schema {version}, newer than this Cairn's {SCHEMA_VERSION}: run the newer version, or move the file aside").into(),
        ));
    }
    if version < 1 {
        // `seq` is assigned by the writer, not by SQLite: an INTEGER PRIMARY KEY would hand out
        // an acknowledged-and-deleted number again after a restart.
        sqlx::raw_sql(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS outbox (
                 seq     INTEGER PRIMARY KEY,
                 device  TEXT    NOT NULL,
                 ts_ms   INTEGER NOT NULL,
                 payload BLOB    NOT NULL
             );
             CREATE TABLE IF NOT EXISTS meta (
                 key   TEXT PRIMARY KEY,
                 value INTEGER NOT NULL
             ) WITHOUT ROWID;
             PRAGMA user_version = 1;
             COMMIT;",
        )
        .execute(&mut *conn)
        .await?;
    }
    if version < 2 {
        // Version 2: what adapters keep across restarts (see `state.rs`).
        sqlx::raw_sql(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS device_state (
                 device TEXT NOT NULL,
                 key    TEXT NOT NULL,
                 value  TEXT NOT NULL,
                 PRIMARY KEY (device, key)
             ) WITHOUT ROWID;
             PRAGMA user_version = 2;
             COMMIT;",
        )
        .execute(&mut *conn)
        .await?;
    }
    if version < 3 {
        // Version 3: `payload` holds the reading's typed values (`row.rs`), not an MQTT
        // payload. Older rows keep their JSON and are read as they are: nothing is rewritten,
        // so an upgrade costs no time and no disk space, and cannot fail halfway.
        // Alarm readings (`priority` 1) go first and are dropped last; the partial index finds
        // the few of them without scanning the backlog. A column with a constant default is
        // added without rewriting a row.
        sqlx::raw_sql(
            "BEGIN;
             ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
             CREATE INDEX outbox_alarms ON outbox (seq) WHERE priority > 0;
             PRAGMA user_version = 3;
             COMMIT;",
        )
        .execute(&mut *conn)
        .await?;
    }
    if version < SCHEMA_VERSION {
        // Version 4: whether a row's timestamp is known good (`clock` 0), provisional in this
        // boot (1: the clock's later steps are added to it), or was provisional in an earlier
        // boot (2: flagged upstream, exempt from `max_age`). See `clock.rs`.
        sqlx::raw_sql(
            "BEGIN;
             ALTER TABLE outbox ADD COLUMN clock INTEGER NOT NULL DEFAULT 0;
             CREATE INDEX outbox_clock ON outbox (seq) WHERE clock = 1;
             PRAGMA user_version = 4;
             COMMIT;",
        )
        .execute(&mut *conn)
        .await?;
    }
    load_state(conn).await
}

/// Records that the outbox is open in boot `boot`, whose wall clock minus `CLOCK_BOOTTIME`
/// is `offset` (ms). Provisional rows of an earlier boot can no longer be corrected (the
/// clock they were taken with is gone): they become flagged. Those of this boot get the
/// step the clock made while the outbox was closed. Returns whether provisional rows of
/// this boot remain.
pub async fn mark_boot(
    conn: &mut SqliteConnection,
    boot: i64,
    offset: i64,
) -> Result<bool, sqlx::Error> {
    let meta = |key: &'static str| {
        sqlx::query_scalar::<_, i64>("SELECT value FROM meta WHERE key = ?").bind(key)
    };
    let last = meta("boot").fetch_optional(&mut *conn).await?;
    if last == Some(boot) {
        let saved = meta("clock_offset").fetch_optional(&mut *conn).await?;
        if let Some(step) = saved.map(|saved| offset - saved)
            && step.abs() > crate::clock::STEP
        {
            sqlx::query("UPDATE outbox SET ts_ms = ts_ms + ? WHERE clock = 1")
                .bind(step)
                .execute(&mut *conn)
                .await?;
        }
    } else {
        sqlx::query("UPDATE outbox SET clock = 2 WHERE clock = 1")
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('boot', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(boot)
        .execute(&mut *conn)
        .await?;
    }
    let provisional: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM outbox WHERE clock = 1 LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(provisional.is_some())
}

/// Reads the persisted counters and sizes the backlog.
pub async fn load_state(conn: &mut SqliteConnection) -> Result<State, sqlx::Error> {
    let meta: BTreeMap<String, i64> = sqlx::query("SELECT key, value FROM meta")
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
    let row = sqlx::query(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(device) + LENGTH(payload)), 0), COALESCE(MAX(seq), 0) FROM outbox",
    )
    .fetch_one(&mut *conn)
    .await?;
    let rows: i64 = row.try_get(0)?;
    let content: i64 = row.try_get(1)?;
    let max_seq: i64 = row.try_get(2)?;
    let next_seq = meta.get("next_seq").copied().unwrap_or(1).max(max_seq + 1);
    let dropped = DropReason::ALL
        .into_iter()
        .map(|reason| {
            (
                reason,
                meta.get(&drop_key(reason)).copied().unwrap_or(0) as u64,
            )
        })
        .collect();
    Ok(State {
        next_seq,
        rows: rows as u64,
        bytes: content as u64 + rows as u64 * ROW_OVERHEAD,
        dropped,
        provisional: false,
    })
}

/// The meta key that counts drops for `reason`.
pub fn drop_key(reason: DropReason) -> String {
    format!("dropped_{}", reason.as_str())
}
