//! Builds every part from the config, wires the channels, and shuts down in order:
//! adapters first, then the uplink, then the store once it has committed the last reading.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use cairn_adapters::Shared;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::commands::Router;
use crate::config::Config;
use crate::feed::{self, FeedSources};
use crate::live::LiveBus;
use crate::supervisor::{self, DeviceHandle};
use crate::uplink::Uplink;
use crate::uplink::meter::Meter;
use crate::uplink::topics::DeviceMeta;
use crate::{pipeline, reload, service, store};

/// Events the live bus keeps for subscribers that fall behind.
const LIVE_CAPACITY: usize = 4096;

/// Runs the gateway described by `config` (read from `config_path`) until `shutdown` fires;
/// each message on `hangups` reloads the file.
pub async fn run(
    config: Config,
    config_path: &Path,
    shutdown: CancellationToken,
    mut hangups: mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let path: PathBuf = config.buffer.path_in(&config.gateway.data_dir);
    let clock = Arc::new(Clock::new());
    let stop_clock = CancellationToken::new();
    let _stop_clock = stop_clock.clone().drop_guard();
    tokio::spawn(clock.clone().run(stop_clock));
    let (reader, acker, writer) = store::open(&path, &config.buffer, clock.clone())
        .await
        .with_context(|| format!("cannot open the outbox at {}", path.display()))?;
    let state = store::DeviceState::open(&path, &config.buffer)
        .await
        .with_context(|| format!("cannot open the device state in {}", path.display()))?;
    let stats = reader.stats();
    info!(
        gateway = %config.gateway.id,
        outbox = %path.display(),
        backlog = stats.backlog,
        next_seq = stats.next_seq,
        "Outbox open"
    );

    let live = LiveBus::new(LIVE_CAPACITY);
    let (sink, readings) = pipeline::channel();
    let (prepared_tx, prepared) = pipeline::channel();
    let writer = tokio::spawn(writer.run(prepared, live.clone()));

    let metas: Vec<DeviceMeta> = config
        .devices()
        .map(|d| {
            DeviceMeta::new(
                &d.name,
                d.adapter.kind().as_str(),
                d.description.clone(),
                &d.adapter.values(),
            )
        })
        .collect();

    let stop_adapters = CancellationToken::new();
    let mut adapters = JoinSet::new();
    let shared = Shared::new(Arc::new(state));
    let (devices, settings): (Vec<DeviceHandle>, reload::Settings) = config
        .devices()
        .map(|d| {
            let (handle, settings) = supervisor::spawn(
                d,
                &shared,
                sink.clone(),
                live.clone(),
                stop_adapters.clone(),
                &mut adapters,
            );
            (handle, (d.name.clone(), settings))
        })
        .unzip();
    // Adapters -> pipeline -> store: each stage ends when the one before it has closed.
    let pipeline = tokio::spawn(
        pipeline::Pipeline::new(&config, &devices, clock.clone()).run(readings, prepared_tx),
    );
    let stop_uplink = CancellationToken::new();
    let commands = Router::new(&devices).map(|(router, end)| {
        tokio::spawn(router.run(stop_uplink.clone()));
        end
    });
    // The dashboard's writes take the same path as the broker's.
    let page_commands = commands.as_ref().map(|end| end.requests.clone());
    let meter = Arc::new(Meter::resume(Meter::from_saved(
        &reader
            .counters("link_")
            .await
            .context("cannot read the link's counters")?,
    )));
    let uplink = Uplink::new(
        &config.mqtt,
        &config.gateway.id,
        metas.clone(),
        reader.clone(),
        acker,
        commands,
        &config.gateway.data_dir.join("link"),
        meter.clone(),
    )
    .context("cannot set up the MQTT uplink")?
    .with_discovery(&config.homeassistant, &config.gateway.id);
    let uplink_status = uplink.status();
    let delivered = uplink.delivered();
    let link_state = uplink.link_state();
    let budget = uplink.budget();
    let uplink = tokio::spawn(uplink.run(stop_uplink.clone()));

    // The feed starts whatever the broker does, and stops last, so people on site see the
    // gateway until it is gone.
    let stop_feed = CancellationToken::new();
    let mut feed_tasks = JoinSet::new();
    if config.feed.enabled {
        let sources = FeedSources {
            gateway: config.gateway.id.clone(),
            metas,
            devices: devices.clone(),
            commands: page_commands,
            uplink: uplink_status,
            store: reader.clone(),
            live: live.clone(),
            delivered,
            live_age: config.mqtt.lanes.live_age,
            meter,
            link: link_state,
            // A third of the way to giving up on the link: long enough for a slow link's
            // queue, short enough to show a silent one at once.
            stall_after: config.mqtt.dead_after / 3,
            budget,
            clock: clock.clone(),
        };
        feed::start(
            &config.feed,
            &config.gateway.data_dir,
            sources,
            stop_feed.clone(),
            &mut feed_tasks,
        )
        .await;
    }

    // From here only the adapters hold senders: the channel closes when the last one stops.
    drop(sink);
    info!(gateway = %config.gateway.id, config = %config_path.display(), devices = devices.len(), "Cairn running");
    if devices.is_empty() {
        // A fresh install's config has none: say what to do next, where people look first.
        warn!(
            config = %config_path.display(),
            examples = "/usr/share/doc/cairn/examples",
            "No devices configured: add them under `devices:` in the config, then restart Cairn (systemctl restart cairn)"
        );
    }
    service::ready(&format!("running, {} devices", devices.len()));
    let stop_watchdog = CancellationToken::new();
    let watchdog = tokio::spawn(service::watchdog(reader.clone(), stop_watchdog.clone()));

    let mut config = config;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(()) = hangups.recv() => {
                service::reloading();
                match reload::reload(config_path, &mut config, &settings) {
                    reload::Outcome::Applied(changed) => {
                        info!(restarted = ?changed, "Config reloaded");
                    }
                    reload::Outcome::Refused(reason) => {
                        error!(reason = %reason, "Config reload refused; the running config stays");
                    }
                }
                service::reloaded(&format!("running, {} devices", devices.len()));
            }
        }
    }
    info!("Shutting down");
    service::stopping();
    let ordered = async {
        stop_adapters.cancel();
        while adapters.join_next().await.is_some() {}
        let _ = pipeline.await;
        stop_uplink.cancel();
        let _ = uplink.await;
        // The writer commits what the adapters sent and the uplink's last acks, then stops.
        writer
            .await
            .context("the outbox writer crashed")?
            .context("the outbox writer failed")
    };
    let outcome = tokio::time::timeout(config.gateway.shutdown_timeout, ordered).await;
    stop_feed.cancel();
    while feed_tasks.join_next().await.is_some() {}
    stop_watchdog.cancel();
    let _ = watchdog.await;
    match outcome {
        Ok(result) => {
            result?;
            info!(backlog = reader.stats().backlog, "Stopped cleanly");
        }
        Err(_) => warn!(
            timeout = %humantime::format_duration(config.gateway.shutdown_timeout),
            "Shutdown took too long; stopping anyway (committed readings are safe)"
        ),
    }
    Ok(())
}
