//! SIGINT and SIGTERM as a cancellation token; SIGHUP as a stream of reload requests.

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

/// A message per SIGHUP (several signals in a row may arrive as one).
pub fn hangups() -> std::io::Result<tokio::sync::mpsc::Receiver<()>> {
    let mut hangup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            info!(signal = "SIGHUP", "Signal received; reloading the config");
            // A reload already waiting covers this one too.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}
