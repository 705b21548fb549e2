//! SIGINT and SIGTERM as a cancellation token.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A token cancelled on the first SIGINT or SIGTERM. A second signal exits at once, for a
/// person at a terminal whose shutdown is stuck.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        for round in 0..2 {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            if round == 0 {
                info!(signal = name, "Signal received");
                cancel.cancel();
            } else {
                warn!(signal = name, "Second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    Ok(token)
}
