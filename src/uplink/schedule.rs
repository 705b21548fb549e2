//! Connection windows, for links billed per session or powered on a schedule: the uplink
//! connects when a window opens (every so often from local midnight, or at set local times),
//! or at once when the backlog passes a threshold or an alarm is committed; and it leaves
//! when the outbox is drained or the window's time is up, telling the broker it is
//! `sleeping until <next window>` rather than letting the last will say `offline`.

use std::time::SystemTime;

use jiff::civil::Time;
use jiff::{Timestamp, Zoned};

use crate::config::ConnectConfig;

/// When windows open and how long they stay open.
#[derive(Debug, Clone)]
pub struct Schedule {
    config: ConnectConfig,
}

impl Schedule {
    /// The windows of `config`.
    pub fn new(config: ConnectConfig) -> Self {
        Self { config }
    }

    /// The settings.
    pub fn config(&self) -> &ConnectConfig {
        &self.config
    }

    /// When the next scheduled window opens after `now` (local time, the system's zone).
    pub fn next_open(&self, now: SystemTime) -> SystemTime {
        let Ok(at) = Timestamp::try_from(now) else {
            return now;
        };
        let zoned = at.to_zoned(jiff::tz::TimeZone::system());
        next_after(&self.config, &zoned).map_or(now, SystemTime::from)
    }
}

/// The first window opening strictly after `now`.
fn next_after(config: &ConnectConfig, now: &Zoned) -> Option<Timestamp> {
    let midnight = now.start_of_day().ok()?;
    let mut candidates: Vec<Timestamp> = Vec::new();
    for day in 0..2 {
        let start = midnight.checked_add(jiff::Span::new().days(day)).ok()?;
        if let Some(every) = config.every.filter(|e| !e.is_zero()) {
            // Every `every` from local midnight: the first one of the day after now.
            let since = now.timestamp().duration_since(start.timestamp());
            let step = jiff::SignedDuration::try_from(every).ok()?;
            let k = if since.is_negative() {
                0
            } else {
                since.as_nanos() / step.as_nanos() + 1
            };
            let next = start
                .timestamp()
                .checked_add(step.checked_mul(i32::try_from(k).ok()?)?)
                .ok()?;
            if next.duration_since(start.timestamp()) < jiff::SignedDuration::from_hours(24) {
                candidates.push(next);
            }
        }
        for time in &config.at {
            let time: Time = time.parse().ok()?;
            let at = start.with().time(time).build().ok()?;
            candidates.push(at.timestamp());
        }
    }
    candidates
        .into_iter()
        .filter(|t| *t > now.timestamp())
        .min()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(every: Option<u64>, at: &[&str]) -> ConnectConfig {
        ConnectConfig {
            every: every.map(Duration::from_secs),
            at: at.iter().map(|s| s.to_string()).collect(),
            ..ConnectConfig::default()
        }
    }

    fn zoned(text: &str) -> Zoned {
        text.parse().unwrap()
    }

    #[test]
    fn windows_open_every_so_often_from_midnight_or_at_set_times() {
        let now = zoned("2026-12-01T10:17:00+01:00[Europe/Paris]");
        let hourly = next_after(&config(Some(3600), &[]), &now).unwrap();
        assert_eq!(hourly.to_string(), "2026-12-01T10:00:00Z", "11:00 in Paris");
        let times = next_after(&config(None, &["06:00", "18:30"]), &now).unwrap();
        assert_eq!(times.to_string(), "2026-12-01T17:30:00Z");
        // After the last time of the day: the first one tomorrow.
        let late = zoned("2026-12-01T19:00:00+01:00[Europe/Paris]");
        let tomorrow = next_after(&config(None, &["06:00", "18:30"]), &late).unwrap();
        assert_eq!(tomorrow.to_string(), "2026-12-02T05:00:00Z");
        // 7 hours from midnight: 00, 07, 14, 21, then midnight again, not 04:00.
        let evening = zoned("2026-12-01T22:00:00+01:00[Europe/Paris]");
        let next = next_after(&config(Some(7 * 3600), &[]), &evening).unwrap();
        assert_eq!(next.to_string(), "2026-12-01T23:00:00Z");
    }
}
