//! Cairn, an IoT edge gateway: devices -> SQLite outbox -> MQTT, with a live feed on site.
//!
//! The path of one reading: an adapter (in `cairn-adapters`) emits a [`Reading`] into the
//! [`pipeline`]; the [`store`] gives it a sequence number and commits it to the outbox; the
//! [`uplink`] publishes it and deletes it once the broker acknowledged it; the [`live`] bus
//! carries every committed reading to local subscribers, and the [`feed`] serves it on site
//! (dashboard, WebSocket, HTTP API). The [`gateway`] builds and wires
//! these from the [`config`], and the [`supervisor`] keeps the adapters running.

pub mod backoff;
pub mod clock;
pub mod commands;
pub mod config;
pub mod decode;
pub mod feed;
pub mod gateway;
pub mod live;
pub mod logging;
pub mod pipeline;
pub mod reload;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod supervisor;
pub mod tools;
pub mod uplink;
pub mod wear;

pub use cairn_adapters::Reading;
