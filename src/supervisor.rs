//! Keeps every adapter running: restarts a failed one with backoff, reports its status, and
//! isolates it, so that one failing device (or a panicking adapter) never stops another.

use std::sync::Arc;
use std::time::Duration;

use cairn_adapters::{
    Adapter, AdapterConfig, AdapterContext, AdapterError, Command, DeviceCounters, DeviceStatus,
    Reading, Shared,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::config::DeviceConfig;
use crate::live::{LiveBus, LiveEvent};

/// First and longest wait before restarting a failed adapter. A minute at most: a sensor
/// plugged back in after a long absence should not wait minutes to be read again, and a
/// retry a minute costs a port open or one timed-out request.
const RESTART_MIN: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(60);

/// An adapter that ran this long before failing is considered to have worked: the next
/// restart starts from the shortest delay again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How often a device's error counters are looked at, and how often at most they are logged.
const ERROR_CHECK: Duration = Duration::from_secs(1);
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// Logs a device's error counters when they change: the first time at once, then at most once
/// a minute, so a sensor spewing garbage for months does not flood the journal.
#[derive(Default)]
struct ErrorLog {
    logged: std::collections::BTreeMap<&'static str, u64>,
    at: Option<Instant>,
}

impl ErrorLog {
    fn report(&mut self, device: &Arc<str>, counters: &DeviceCounters) {
        if self.at.is_some_and(|at| at.elapsed() < ERROR_LOG_EVERY) {
            return;
        }
        let now = counters.errors();
        if now != self.logged {
            warn!(device = %device, errors = ?now, "Device errors (totals)");
            self.logged = now;
            self.at = Some(Instant::now());
        }
    }
}

/// What the rest of the gateway can see of a supervised device.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    /// The device's name.
    pub name: Arc<str>,
    /// The adapter type.
    pub adapter: &'static str,
    /// What the config says it is (`description:`).
    pub description: Option<Arc<str>>,
    /// Its current status.
    pub status: watch::Receiver<DeviceStatus>,
    /// Its counters.
    pub counters: Arc<DeviceCounters>,
    /// The points that commands may name.
    pub writable: Vec<String>,
    /// How long a command waits for a device that listens only now and then (see
    /// [`cairn_adapters::Commands::queued_for`]).
    pub queued_for: Option<std::time::Duration>,
    /// Where commands for it go.
    pub commands: mpsc::Sender<Command>,
}

/// Starts supervising `device` on `tasks`; readings go to `sink`; `shared` holds what its
/// adapter may share with others (an RS-485 bus). New settings sent on the returned channel
/// restart the adapter with them at once.
pub fn spawn(
    device: &DeviceConfig,
    shared: &Shared,
    sink: mpsc::Sender<Reading>,
    live: LiveBus,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> (DeviceHandle, watch::Sender<AdapterConfig>) {
    let name: Arc<str> = Arc::from(device.name.as_str());
    let (status_tx, status) = watch::channel(DeviceStatus::Offline);
    let counters = Arc::new(DeviceCounters::default());
    let ctx = AdapterContext::new(name.clone(), sink, status_tx, counters.clone(), cancel);
    let commands = ctx.commander();
    let (settings, config) = watch::channel(device.adapter.clone());
    let shared = shared.clone();
    let reload = config.clone();
    tasks.spawn(supervise(
        move || config.borrow().build(&shared),
        ctx,
        status.clone(),
        live,
        reload,
    ));
    let takes = device.adapter.commands();
    let handle = DeviceHandle {
        name,
        adapter: device.adapter.kind().as_str(),
        description: device.description.as_deref().map(Arc::from),
        status,
        counters,
        writable: takes.points,
        queued_for: takes.queued_for,
        commands,
    };
    (handle, settings)
}

/// Runs adapters made by `build` until one finishes, fails for good, or shutdown. A change on
/// `reload` stops the running adapter and builds the next one at once.
async fn supervise<R>(
    build: impl Fn() -> Box<dyn Adapter>,
    ctx: AdapterContext,
    mut status: watch::Receiver<DeviceStatus>,
    live: LiveBus,
    mut reload: watch::Receiver<R>,
) {
    let device = ctx.device().clone();
    let mut backoff = Backoff::new(RESTART_MIN, RESTART_MAX);
    let mut error_check = tokio::time::interval(ERROR_CHECK);
    let mut errors = ErrorLog::default();
    loop {
        let started = Instant::now();
        reload.mark_unchanged();
        let mut adapter = build();
        let stop_run = ctx.cancelled().child_token();
        let run_ctx = ctx.with_cancel(stop_run.clone());
        // A task of its own, so that a panic in an adapter is a failure like any other.
        let mut run = tokio::spawn(async move { adapter.run(&run_ctx).await });
        let mut reloaded = false;
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                Ok(()) = status.changed() => report(&device, &status.borrow_and_update(), &live),
                _ = error_check.tick() => errors.report(&device, ctx.counters()),
                Ok(()) = reload.changed(), if !reloaded => {
                    reloaded = true;
                    stop_run.cancel();
                }
            }
        };
        if reloaded && !ctx.cancelled().is_cancelled() {
            info!(device = %device, "Device settings changed; adapter restarted with them");
            backoff.reset();
            continue;
        }
        let failure = match outcome {
            Ok(Ok(())) | Ok(Err(AdapterError::Closed)) => None,
            Ok(Err(AdapterError::Config(message))) => {
                error!(device = %device, error = %message, "Adapter cannot work with this configuration; device stopped until its settings change");
                ctx.set_status(DeviceStatus::Error(message));
                None
            }
            Ok(Err(AdapterError::Transport(message))) => Some(message),
            Err(join_error) => Some(format!("adapter crashed: {join_error}")),
        };
        if ctx.cancelled().is_cancelled() {
            break;
        }
        let Some(failure) = failure else {
            // Finished, or stopped by its settings: only new settings start it again.
            report_change(&device, &mut status, &live);
            tokio::select! {
                () = ctx.cancelled().cancelled() => break,
                Ok(()) = reload.changed() => {
                    info!(device = %device, "Device settings changed; adapter started with them");
                    backoff.reset();
                    continue;
                }
            }
        };
        // Reported now, not when the next adapter starts: the wait may last minutes.
        ctx.set_status(DeviceStatus::Offline);
        report_change(&device, &mut status, &live);
        ctx.counters().count_restart();
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        let retry_in = backoff.next_delay();
        warn!(device = %device, error = %failure, retry_in = %humantime::format_duration(retry_in), "Adapter failed; restarting");
        tokio::select! {
            () = ctx.cancelled().cancelled() => break,
            () = tokio::time::sleep(retry_in) => {}
            // New settings may be the fix: try them now.
            Ok(()) = reload.changed() => backoff.reset(),
        }
    }
    report_change(&device, &mut status, &live);
}

/// Reports the status if it changed since it was last reported.
fn report_change(device: &Arc<str>, status: &mut watch::Receiver<DeviceStatus>, live: &LiveBus) {
    if status.has_changed().unwrap_or(false) {
        report(device, &status.borrow_and_update(), live);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use cairn_adapters::Value;

    use super::*;

    /// Fails `failures` times (the last of them by panicking), then reads every 100 ms.
    struct Flaky {
        runs: Arc<AtomicU32>,
        failures: u32,
    }

    #[async_trait]
    impl Adapter for Flaky {
        async fn run(&mut self, ctx: &AdapterContext) -> Result<(), AdapterError> {
            let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            if run < self.failures {
                return Err(AdapterError::Transport(format!("unplugged ({run})")));
            }
            if run == self.failures {
                panic!("adapter bug");
            }
            ctx.set_status(DeviceStatus::Online);
            loop {
                tokio::select! {
                    () = ctx.cancelled().cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                let reading =
                    Reading::now(ctx.device().clone(), vec![(Arc::from("x"), Value::Int(1))]);
                ctx.emit(reading).await?;
            }
        }
    }

    struct Misconfigured;

    #[async_trait]
    impl Adapter for Misconfigured {
        async fn run(&mut self, _ctx: &AdapterContext) -> Result<(), AdapterError> {
            Err(AdapterError::Config("no such port".into()))
        }
    }

    fn context(
        name: &str,
        sink: &mpsc::Sender<Reading>,
        cancel: &CancellationToken,
    ) -> (AdapterContext, watch::Receiver<DeviceStatus>) {
        let (tx, rx) = watch::channel(DeviceStatus::Offline);
        let ctx = AdapterContext::new(
            Arc::from(name),
            sink.clone(),
            tx,
            Arc::new(DeviceCounters::default()),
            cancel.clone(),
        );
        (ctx, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_adapter_is_restarted_with_backoff_and_never_stops_the_others() {
        let (sink, mut readings) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let live = LiveBus::new(64);
        let mut events = live.subscribe();
        let runs = Arc::new(AtomicU32::new(0));
        let (flaky_ctx, mut flaky_status) = context("flaky", &sink, &cancel);
        let (steady_ctx, _) = context("steady", &sink, &cancel);
        let (broken_ctx, mut broken_status) = context("broken", &sink, &cancel);
        let flaky_counters = flaky_ctx.clone();
        let mut tasks = JoinSet::new();
        let flaky_runs = runs.clone();
        tasks.spawn(supervise(
            move || {
                Box::new(Flaky {
                    runs: flaky_runs.clone(),
                    failures: 4,
                })
            },
            flaky_ctx,
            flaky_status.clone(),
            live.clone(),
            watch::channel(()).1,
        ));
        tasks.spawn(supervise(
            || {
                Box::new(Flaky {
                    runs: Arc::new(AtomicU32::new(10)),
                    failures: 0,
                })
            },
            steady_ctx,
            watch::channel(DeviceStatus::Offline).1,
            live.clone(),
            watch::channel(()).1,
        ));
        tasks.spawn(supervise(
            || Box::new(Misconfigured),
            broken_ctx,
            broken_status.clone(),
            live.clone(),
            watch::channel(()).1,
        ));
        drop(sink);

        let started = Instant::now();
        flaky_status
            .wait_for(|s| *s == DeviceStatus::Online)
            .await
            .unwrap();
        // Three transport failures and one panic: backoff of about 1 + 2 + 4 + 8 s, halved at most.
        assert_eq!(runs.load(Ordering::SeqCst), 5);
        assert_eq!(flaky_counters.counters().restarts(), 4);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(7500) && waited <= Duration::from_secs(15),
            "{waited:?}"
        );

        // Meanwhile the steady device kept reading, about every 100 ms.
        let mut steady = 0;
        while let Ok(reading) = readings.try_recv() {
            steady += usize::from(&*reading.device == "steady");
        }
        assert!(
            steady as f64 >= waited.as_secs_f64() * 10.0 * 0.9,
            "{steady} readings in {waited:?}"
        );

        // A configuration error stops that device, with its reason, until its settings change.
        broken_status
            .wait_for(|s| matches!(s, DeviceStatus::Error(m) if m == "no such port"))
            .await
            .unwrap();

        let mut seen_online = false;
        while let Ok(event) = events.try_recv() {
            if let LiveEvent::Status {
                device,
                status: DeviceStatus::Online,
            } = event
            {
                seen_online |= &*device == "flaky";
            }
        }
        assert!(seen_online, "status changes reach the live bus");

        cancel.cancel();
        while tasks.join_next().await.is_some() {}
    }

    #[tokio::test(start_paused = true)]
    async fn new_settings_restart_a_running_adapter_and_revive_a_stopped_one() {
        let (sink, _readings) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let live = LiveBus::new(64);
        let (ctx, mut status) = context("d", &sink, &cancel);
        let counters = ctx.clone();
        let (settings, reload) = watch::channel(false);
        let (built, mut builds) = watch::channel(0u32);
        // Misconfigured until the settings say otherwise.
        let fixed = reload.clone();
        let task = tokio::spawn(supervise(
            move || -> Box<dyn Adapter> {
                built.send_modify(|n| *n += 1);
                if *fixed.borrow() {
                    Box::new(Flaky {
                        runs: Arc::new(AtomicU32::new(10)),
                        failures: 0,
                    })
                } else {
                    Box::new(Misconfigured)
                }
            },
            ctx,
            status.clone(),
            live,
            reload,
        ));
        status
            .wait_for(|s| matches!(s, DeviceStatus::Error(_)))
            .await
            .unwrap();
        settings.send_replace(true);
        status
            .wait_for(|s| *s == DeviceStatus::Online)
            .await
            .unwrap();
        assert_eq!(*builds.borrow_and_update(), 2);
        // Running: new settings stop it and build the next adapter at once (no backoff, no
        // restart counted as a failure).
        let before = Instant::now();
        settings.send_replace(true);
        builds.wait_for(|n| *n == 3).await.unwrap();
        assert!(before.elapsed() < RESTART_MIN);
        assert_eq!(counters.counters().restarts(), 0);
        cancel.cancel();
        task.await.unwrap();
    }
}
