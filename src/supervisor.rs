//! Keeps every adapter running: restarts a failed one with backoff, reports its status, and
//! isolates it, so that one failing device (or a panicking adapter) never stops another.

use std::sync::Arc;
use std::time::Duration;

use cairn_adapters::{
    AdapterConfig, AdapterContext, AdapterError, DeviceCounters, DeviceStatus, Reading,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::config::DeviceConfig;
use crate::live::{LiveBus, LiveEvent};

/// First and longest wait before restarting a failed adapter.
const RESTART_MIN: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(300);

/// An adapter that ran this long before failing is considered to have worked: the next
/// restart starts from the shortest delay again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// What the rest of the gateway can see of a supervised device.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    /// The device's name.
    pub name: Arc<str>,
    /// The adapter type.
    pub adapter: &'static str,
    /// Its current status.
    pub status: watch::Receiver<DeviceStatus>,
    /// Its counters.
    pub counters: Arc<DeviceCounters>,
}

/// Starts supervising `device` on `tasks`; readings go to `sink`.
pub fn spawn(
    device: &DeviceConfig,
    sink: mpsc::Sender<Reading>,
    live: LiveBus,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> DeviceHandle {
    let name: Arc<str> = Arc::from(device.name.as_str());
    let (status_tx, status) = watch::channel(DeviceStatus::Offline);
    let counters = Arc::new(DeviceCounters::default());
    let ctx = AdapterContext::new(name.clone(), sink, status_tx, counters.clone(), cancel);
    tasks.spawn(supervise(device.adapter.clone(), ctx, status.clone(), live));
    DeviceHandle {
        name,
        adapter: device.adapter.kind().as_str(),
        status,
        counters,
    }
}

async fn supervise(
    config: AdapterConfig,
    ctx: AdapterContext,
    mut status: watch::Receiver<DeviceStatus>,
    live: LiveBus,
) {
    let device = ctx.device().clone();
    let mut backoff = Backoff::new(RESTART_MIN, RESTART_MAX);
    loop {
        let started = Instant::now();
        let mut adapter = config.build();
        let run_ctx = ctx.clone();
        // A task of its own, so that a panic in an adapter is a failure like any other.
        let mut run = tokio::spawn(async move { adapter.run(&run_ctx).await });
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                Ok(()) = status.changed() => report(&device, &status.borrow_and_update(), &live),
            }
        };
        let failure = match outcome {
            Ok(Ok(())) | Ok(Err(AdapterError::Closed)) => break,
            Ok(Err(AdapterError::Config(message))) => {
                error!(device = %device, error = %message, "Adapter cannot work with this configuration; device stopped");
                ctx.set_status(DeviceStatus::Error(message));
                break;
            }
            Ok(Err(AdapterError::Transport(message))) => message,
            Err(join_error) => format!("adapter crashed: {join_error}"),
        };
        if ctx.cancelled().is_cancelled() {
            break;
        }
        ctx.set_status(DeviceStatus::Offline);
        ctx.counters().count_restart();
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        let retry_in = backoff.next_delay();
        warn!(device = %device, error = %failure, retry_in = %humantime::format_duration(round(retry_in)), "Adapter failed; restarting");
        tokio::select! {
            () = ctx.cancelled().cancelled() => break,
            () = tokio::time::sleep(retry_in) => {}
        }
    }
    if status.has_changed().unwrap_or(false) {
        report(&device, &status.borrow_and_update(), &live);
    }
}

fn report(device: &Arc<str>, status: &DeviceStatus, live: &LiveBus) {
    match status {
        DeviceStatus::Online => info!(device = %device, "Device online"),
        DeviceStatus::Offline => info!(device = %device, "Device offline"),
        DeviceStatus::Finished => info!(device = %device, "Device finished"),
        DeviceStatus::Error(message) => {
            error!(device = %device, error = %message, "Device stopped")
        }
    }
    live.publish(LiveEvent::Status {
        device: device.clone(),
        status: status.clone(),
    });
}

/// Milliseconds are noise in a log line about seconds of backoff.
fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
