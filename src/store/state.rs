//! The adapters' durable state (a LoRaWAN frame counter) in the outbox database, so that one
//! file holds everything a gateway must not forget. Saves are rare and tiny; they take their
//! own connection and wait their turn behind the writer's group commits.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use cairn_adapters::StateStore;
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

use super::{StoreError, connect_options};
use crate::config::BufferConfig;

/// [`StateStore`] on the `device_state` table.
#[derive(Debug, Clone)]
pub struct DeviceState {
    pool: SqlitePool,
}

impl DeviceState {
    /// Opens the state of the outbox at `path`, which [`super::open`] created and migrated.
    pub async fn open(path: &Path, config: &BufferConfig) -> Result<Self, StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect_options(path, config))
            .await
            .map_err(|source| StoreError::Database {
                path: PathBuf::from(path),
                source,
            })?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl StateStore for DeviceState {
    async fn load(&self, device: &str, key: &str) -> Result<Option<String>, String> {
        sqlx::query_scalar("SELECT value FROM device_state WHERE device = ? AND key = ?")
            .bind(device)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| e.to_string())
    }

    async fn save(&self, device: &str, key: &str, value: &str) -> Result<(), String> {
        sqlx::query("INSERT OR REPLACE INTO device_state (device, key, value) VALUES (?, ?, ?)")
            .bind(device)
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
