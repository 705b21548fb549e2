//! systemd integration: `READY=1` once the pipeline runs, `WATCHDOG=1` only while the outbox
//! writer shows it is alive, `RELOADING=1` and `STOPPING=1` around reloads and shutdown.
//! Outside systemd (no `NOTIFY_SOCKET`) every notice is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::store::StoreReader;

/// The writer beats at least once a second; half the timeout must leave room for that.
const MIN_WATCHDOG: Duration = Duration::from_secs(4);

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "systemd notification not sent");
    }
}

/// Startup is finished.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts; `reloaded` must follow.
pub fn reloading() {
    // systemd 253 and later require the monotonic time with RELOADING=1.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(e) => debug!(error = %e, "No monotonic clock for the reload notice"),
    }
}

/// A reload ended (applied or refused).
pub fn reloaded(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown starts.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Whether the watchdog may be fed: the writer went round its loop within half the timeout.
fn alive(pulse: Duration, timeout: Duration) -> bool {
    pulse < timeout / 2
}

/// Feeds the systemd watchdog (`WatchdogSec=`) at a quarter of its timeout while the outbox
/// writer is alive. A hung disk or a deadlock stops the feeding, and systemd restarts Cairn;
/// readings committed before stay in the outbox.
pub async fn watchdog(store: StoreReader, stop: CancellationToken) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    if timeout < MIN_WATCHDOG {
        warn!(watchdog = %humantime::format_duration(timeout), "WatchdogSec is shorter than the outbox writer's pulse allows; use 4 s or more");
    }
    let mut tick = tokio::time::interval(timeout / 4);
    let mut stalled = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pulse = store.writer_pulse();
        if alive(pulse, timeout) {
            notify(&[NotifyState::Watchdog]);
            stalled = false;
        } else if !stalled {
            warn!(stalled_for = %humantime::format_duration(pulse), "The outbox writer is not making progress; the systemd watchdog is no longer fed");
            stalled = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_only_while_the_writer_beats() {
        let timeout = Duration::from_secs(60);
        assert!(alive(Duration::from_secs(1), timeout));
        assert!(alive(Duration::from_secs(29), timeout));
        assert!(!alive(Duration::from_secs(30), timeout));
        assert!(!alive(Duration::from_secs(600), timeout));
    }
}
