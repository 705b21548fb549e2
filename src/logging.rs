//! Log output: colours and timestamps on a terminal, plain lines under systemd (journald adds
//! its own timestamps), `RUST_LOG` to choose what is shown.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, at start.
pub fn init() {
    // tokio-modbus logs every byte it skips in a corrupted RTU frame; Cairn counts those
    // frames itself (the `crc` error counter), so its own lines are off unless asked for.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_modbus=off"));
    let terminal = std::io::stderr().is_terminal();
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal)
        .with_target(false);
    if journald && !terminal {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
