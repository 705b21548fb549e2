//! The device-facing side of Cairn: the [`Reading`] every device produces, the [`Adapter`] trait
//! every protocol implements, and one module per protocol family.
//!
//! Adapters know nothing of storage, MQTT or HTTP: they turn bytes into readings and report
//! their link's status through an [`AdapterContext`].

pub mod adapter;
pub mod codec;
pub mod command;
pub mod config;
pub mod decimal;
pub mod fields;
pub mod lora;
pub mod modbus;
pub mod profiles;
pub mod reading;
pub mod report;
pub mod serial;
pub mod sim;
pub mod state;
pub mod uart;

pub use adapter::{Adapter, AdapterContext, AdapterError, DeviceCounters, DeviceStatus, Shared};
pub use command::{Command, CommandResult, CommandValue};
pub use config::{AdapterConfig, AdapterKind, Commands, ValueInfo, ValueKind};
pub use reading::{Reading, Value};
pub use report::{Priority, ReportConfig};
pub use state::{MemoryState, StateStore};
