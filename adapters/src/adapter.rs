//! The contract between the gateway and every device adapter.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{Mutex as AsyncMutex, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::command::Command;
use crate::reading::Reading;
use crate::state::{MemoryState, StateStore};

/// Commands that may wait for a device's adapter; more are refused as busy.
const COMMAND_QUEUE: usize = 16;

/// Why an adapter stopped. The supervisor branches on it.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The link failed (port vanished, connection reset, timeout): retry with backoff.
    #[error("link failed: {0}")]
    Transport(String),
    /// The settings cannot work (no such port, contradictory options): stop this device.
    #[error("bad configuration: {0}")]
    Config(String),
    /// The pipeline is shutting down and accepts no more readings.
    #[error("the pipeline is closed")]
    Closed,
}

/// What people on site and upstream should believe about a device right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Not started yet, or between a failure and the next attempt.
    Offline,
    /// The link is up and the adapter is reading.
    Online,
    /// The adapter stopped and will not be retried until the config changes.
    Error(String),
    /// The adapter had nothing more to produce (a finite simulation).
    Finished,
}

/// Per-device counters that the adapter and the supervisor update and the gateway reports.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    readings: AtomicU64,
    requests: AtomicU64,
    restarts: AtomicU64,
    suppressed_readings: AtomicU64,
    suppressed_values: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl DeviceCounters {
    /// Readings handed to the pipeline.
    pub fn readings(&self) -> u64 {
        self.readings.load(Ordering::Relaxed)
    }

    /// Requests sent to the device (Modbus transactions, serial polls).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts one request.
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Times the supervisor restarted the adapter after a failure.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Counts one restart.
    pub fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts values that report-by-exception withheld from a reading, and whether the whole
    /// reading was withheld.
    pub fn count_suppressed(&self, values: u64, whole_reading: bool) {
        self.suppressed_values.fetch_add(values, Ordering::Relaxed);
        if whole_reading {
            self.suppressed_readings.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (readings, values) that report-by-exception withheld.
    pub fn suppressed(&self) -> (u64, u64) {
        (
            self.suppressed_readings.load(Ordering::Relaxed),
            self.suppressed_values.load(Ordering::Relaxed),
        )
    }

    /// Counts one device-level error of `kind` (bad checksum, parse failure, timeout...).
    pub fn count_error(&self, kind: &'static str) {
        self.count_errors(kind, 1);
    }

    /// Counts `n` device-level errors of `kind` at once.
    pub fn count_errors(&self, kind: &'static str, n: u64) {
        let mut errors = self
            .errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *errors.entry(kind).or_default() += n;
    }

    /// A copy of the error counts by kind.
    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Everything an adapter may touch: where readings go, where status goes, which writes are
/// asked of it, when to stop.
#[derive(Debug, Clone)]
pub struct AdapterContext {
    device: Arc<str>,
    sink: mpsc::Sender<Reading>,
    status: watch::Sender<DeviceStatus>,
    counters: Arc<DeviceCounters>,
    cancel: CancellationToken,
    commander: mpsc::Sender<Command>,
    // Shared by the clones, but only the one running adapter receives.
    commands: Arc<AsyncMutex<mpsc::Receiver<Command>>>,
}

impl AdapterContext {
    /// A context for `device` whose readings go to `sink`.
    pub fn new(
        device: Arc<str>,
        sink: mpsc::Sender<Reading>,
        status: watch::Sender<DeviceStatus>,
        counters: Arc<DeviceCounters>,
        cancel: CancellationToken,
    ) -> Self {
        let (commander, commands) = mpsc::channel(COMMAND_QUEUE);
        Self {
            device,
            sink,
            status,
            counters,
            cancel,
            commander,
            commands: Arc::new(AsyncMutex::new(commands)),
        }
    }

    /// This context with its own cancellation, to stop one adapter run (and not the gateway).
    pub fn with_cancel(&self, cancel: CancellationToken) -> Self {
        Self {
            cancel,
            ..self.clone()
        }
    }

    /// Where to send commands for this device; they wait for its current or next adapter.
    pub fn commander(&self) -> mpsc::Sender<Command> {
        self.commander.clone()
    }

    /// The next command for the device. Cancel-safe, for use in `select!`; adapters whose
    /// devices take no writes never call it.
    pub async fn next_command(&self) -> Option<Command> {
        self.commands.lock().await.recv().await
    }

    /// The device's name, to put in every reading.
    pub fn device(&self) -> &Arc<str> {
        &self.device
    }

    /// Fires when the gateway shuts down; adapters return `Ok(())` soon after.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The device's counters.
    pub fn counters(&self) -> &DeviceCounters {
        &self.counters
    }

    /// Hands a reading to the pipeline, waiting while the pipeline is full (backpressure, so a
    /// burst slows the adapter rather than growing memory).
    /// Gives up with [`AdapterError::Closed`] when shutdown starts while the pipeline is full.
    pub async fn emit(&self, reading: Reading) -> Result<(), AdapterError> {
        tokio::select! {
            biased;
            sent = self.sink.send(reading) => sent.map_err(|_| AdapterError::Closed)?,
            () = self.cancel.cancelled() => return Err(AdapterError::Closed),
        }
        self.counters.readings.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Reports a status change; repeated reports of the same status are not broadcast again.
    pub fn set_status(&self, status: DeviceStatus) {
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }
}

/// What the adapters of one gateway share: the RS-485 buses several Modbus devices hang off,
/// the routes from LoRa packet forwarders to end devices, and the durable state store.
/// The gateway makes one and hands it to every build; there is no global state.
#[derive(Debug, Clone)]
pub struct Shared {
    pub(crate) buses: crate::modbus::SharedBuses,
    pub(crate) radios: crate::lora::Radios,
    pub(crate) state: Arc<dyn StateStore>,
}

impl Shared {
    /// Shared parts whose durable state lives in `state`.
    pub fn new(state: Arc<dyn StateStore>) -> Self {
        Self {
            buses: Default::default(),
            radios: Default::default(),
            state,
        }
    }
}

/// State in memory only: for tests and tools; the gateway uses [`Shared::new`].
impl Default for Shared {
    fn default() -> Self {
        Self::new(Arc::new(MemoryState::default()))
    }
}

/// One physical or logical link that turns bytes into readings.
#[async_trait]
pub trait Adapter: Send {
    /// Reads the device until the link fails (`Err`), there is nothing more to read (`Ok`),
    /// or `ctx.cancelled()` fires (`Ok`). Marks the device online once its link is up.
    async fn run(&mut self, ctx: &AdapterContext) -> Result<(), AdapterError>;
}
