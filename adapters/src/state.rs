//! Small values an adapter must keep across restarts and power cuts (a LoRaWAN frame counter).
//! Adapters see only this trait; the gateway implements it on its SQLite database.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;

use async_trait::async_trait;

/// Durable key-value state, one namespace per device.
#[async_trait]
pub trait StateStore: Send + Sync + Debug {
    /// The value saved under `key` for `device`, if any.
    async fn load(&self, device: &str, key: &str) -> Result<Option<String>, String>;
    /// Saves `value` under `key` for `device`; returns once it is durable.
    async fn save(&self, device: &str, key: &str, value: &str) -> Result<(), String>;
}

/// State kept in memory only: for tests, and for tools that run adapters without a gateway.
#[derive(Debug, Default)]
pub struct MemoryState(Mutex<HashMap<(String, String), String>>);

#[async_trait]
impl StateStore for MemoryState {
    async fn load(&self, device: &str, key: &str) -> Result<Option<String>, String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.get(&(device.to_string(), key.to_string())).cloned())
    }

    async fn save(&self, device: &str, key: &str, value: &str) -> Result<(), String> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert((device.to_string(), key.to_string()), value.to_string());
        Ok(())
    }
}
