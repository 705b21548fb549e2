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

/// Lets one log line through per `every`, and counts the ones held back in between, so that
/// a flood (a broker replaying thousands of commands) costs a line a minute, not a line each,
/// on an SD card that wears with every write.
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    held: u64,
}

impl Throttle {
    /// One line per `every`.
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(lines held back since the last one)` when this line may go, else `None`.
    pub fn pass(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_costs_one_line_per_period() {
        let mut throttle = Throttle::new(std::time::Duration::from_secs(3600));
        assert_eq!(throttle.pass(), Some(0));
        let passed = (0..3000).filter(|_| throttle.pass().is_some()).count();
        assert_eq!(passed, 0);
        assert_eq!(throttle.held, 3000);
        throttle.last = Some(std::time::Instant::now() - std::time::Duration::from_secs(3601));
        assert_eq!(throttle.pass(), Some(3000));
        assert_eq!(throttle.pass(), None);
    }
}
