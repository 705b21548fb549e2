//! Deleting rows from the outbox: acknowledged ones, and those the retention limits give up on.
//! Every function runs inside the writer's open transaction and returns what it freed.

use sqlx::SqliteConnection;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::{QueryBuilder, Sqlite};

use super::ROW_OVERHEAD;

/// Rows examined per step when trimming, so one step never holds a huge result in memory.
const STEP: i64 = 1000;

/// Bound parameters per statement, well below SQLite's limit.
pub const CHUNK: usize = 500;

/// What a delete freed: rows, their bytes as counted against `max_bytes`, and their numbers.
#[derive(Debug, Default)]
pub struct Freed {
    pub rows: u64,
    pub bytes: u64,
    pub seqs: Vec<i64>,
}

impl Freed {
    fn add(&mut self, other: Freed) {
        self.rows += other.rows;
        self.bytes += other.bytes;
        self.seqs.extend(other.seqs);
    }
}

/// Runs a `DELETE ... RETURNING seq, LENGTH(device) + LENGTH(payload)` and adds up what it
/// freed.
async fn sum_freed<'q>(
    conn: &mut SqliteConnection,
    query: Query<'q, Sqlite, SqliteArguments<'q>>,
) -> Result<Freed, sqlx::Error> {
    use sqlx::Row;
    let rows = query.fetch_all(conn).await?;
    let mut freed = Freed::default();
    for row in &rows {
        freed.seqs.push(row.try_get(0)?);
        freed.bytes += row.try_get::<i64, _>(1)? as u64 + ROW_OVERHEAD;
    }
    freed.rows = rows.len() as u64;
    Ok(freed)
}

/// Deletes the rows in `seqs` (acknowledged by the broker); unknown numbers are ignored.
pub async fn delete(conn: &mut SqliteConnection, seqs: &[i64]) -> Result<Freed, sqlx::Error> {
    let mut total = Freed::default();
    for chunk in seqs.chunks(CHUNK) {
        let mut builder = QueryBuilder::new("DELETE FROM outbox WHERE seq IN (");
        let mut list = builder.separated(", ");
        for seq in chunk {
            list.push_bind(*seq);
        }
        builder.push(") RETURNING seq, LENGTH(device) + LENGTH(payload)");
        total.add(sum_freed(conn, builder.build().persistent(chunk.len() == CHUNK)).await?);
    }
    Ok(total)
}

/// Deletes the oldest rows until at least `excess` bytes are freed: rows of the first of
/// `priorities` first, then of the next.
pub async fn drop_oldest(
    conn: &mut SqliteConnection,
    excess: u64,
    priorities: &[i64],
) -> Result<Freed, sqlx::Error> {
    let mut total = Freed::default();
    for &priority in priorities {
        let freed = drop_oldest_of(conn, excess.saturating_sub(total.bytes), priority).await?;
        total.add(freed);
    }
    Ok(total)
}

async fn drop_oldest_of(
    conn: &mut SqliteConnection,
    excess: u64,
    priority: i64,
) -> Result<Freed, sqlx::Error> {
    let mut total = Freed::default();
    while total.bytes < excess {
        // Find the cut-off first so that exactly the oldest rows go, then delete them in one go.
        let sizes: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT seq, LENGTH(device) + LENGTH(payload) FROM outbox WHERE priority = ? ORDER BY seq LIMIT ?",
        )
        .bind(priority)
        .bind(STEP)
        .fetch_all(&mut *conn)
        .await?;
        let Some(&(first, _)) = sizes.first() else {
            break;
        };
        let mut cutoff = first;
        let mut freed = total.bytes;
        for (seq, size) in sizes {
            cutoff = seq;
            freed += size as u64 + ROW_OVERHEAD;
            if freed >= excess {
                break;
            }
        }
        let query = sqlx::query(
            "DELETE FROM outbox WHERE seq <= ? AND priority = ? RETURNING seq, LENGTH(device) + LENGTH(payload)",
        )
        .bind(cutoff)
        .bind(priority);
        total.add(sum_freed(conn, query).await?);
    }
    Ok(total)
}

/// Deletes rows read before `cutoff_ms`. Rows are examined oldest first, a step at a time, so
/// the cost is proportional to what goes, not to the size of the backlog.
pub async fn drop_older_than(
    conn: &mut SqliteConnection,
    cutoff_ms: i64,
) -> Result<Freed, sqlx::Error> {
    let mut total = Freed::default();
    loop {
        let query = sqlx::query(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?) AND ts_ms < ? \
             AND clock = 0 RETURNING seq, LENGTH(device) + LENGTH(payload)",
        )
        .bind(STEP)
        .bind(cutoff_ms);
        let freed = sum_freed(conn, query).await?;
        if freed.rows == 0 {
            return Ok(total);
        }
        total.add(freed);
    }
}
