//! The link meter: bytes up and down at the socket (TLS included), per connection, per UTC
//! hour, day and month, and connects. The totals and the current day's and month's counts are
//! saved in the outbox's counters, so that they survive restarts (losing at most the last
//! minute's counts to a crash) and a daily or monthly budget can be held.

use std::sync::Mutex;
use std::time::SystemTime;

use crate::pipeline::unix_millis;

/// Bytes one way and the other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes {
    /// Cairn to broker.
    pub up: u64,
    /// Broker to Cairn.
    pub down: u64,
}

impl Bytes {
    /// Both ways.
    pub fn total(&self) -> u64 {
        self.up + self.down
    }
}

/// A calendar period (UTC) and what crossed the link in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Period {
    /// Which period: hours, days or months since 1970.
    pub id: i64,
    /// Its bytes.
    pub bytes: Bytes,
}

/// Everything the meter counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Since the outbox was created.
    pub total: Bytes,
    /// Connections established (TCP and TLS up) since the outbox was created.
    pub connects: u64,
    /// The current connection.
    pub connection: Bytes,
    /// This hour, day and month (UTC).
    pub hour: Period,
    /// Today.
    pub day: Period,
    /// This month.
    pub month: Period,
}

impl Counts {
    /// Starts the hour, day or month afresh that `now` no longer falls in.
    fn roll(&mut self, now: SystemTime) {
        let (hour, day, month) = periods(now);
        for (period, id) in [
            (&mut self.hour, hour),
            (&mut self.day, day),
            (&mut self.month, month),
        ] {
            if period.id != id {
                *period = Period {
                    id,
                    bytes: Bytes::default(),
                };
            }
        }
    }
}

/// The counters under one lock: a byte count touches several of them at once.
#[derive(Debug, Default)]
pub struct Meter(Mutex<Counts>);

/// The ids of the hour, day and month `at` falls in (UTC).
fn periods(at: SystemTime) -> (i64, i64, i64) {
    let secs = unix_millis(at) / 1000;
    let days = secs.div_euclid(86_400);
    // Months since 1970 from the civil date (Howard Hinnant's days-to-civil algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (secs.div_euclid(3600), days, (year - 1970) * 12 + month - 1)
}

impl Meter {
    /// A meter that goes on from `saved` (the counters of an earlier run).
    pub fn resume(saved: Counts) -> Self {
        Self(Mutex::new(Counts {
            connection: Bytes::default(),
            ..saved
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `up` and `down` bytes crossed the socket just now.
    pub fn count(&self, up: u64, down: u64) {
        let mut guard = self.lock();
        let counts = &mut *guard;
        counts.roll(SystemTime::now());
        for period in [&mut counts.hour, &mut counts.day, &mut counts.month] {
            period.bytes.up += up;
            period.bytes.down += down;
        }
        counts.total.up += up;
        counts.total.down += down;
        counts.connection.up += up;
        counts.connection.down += down;
    }

    /// A connection was established.
    pub fn connected(&self) {
        let mut counts = self.lock();
        counts.connects += 1;
        counts.connection = Bytes::default();
    }

    /// The counts now; the periods are those of now (a day without traffic reads 0).
    pub fn counts(&self) -> Counts {
        let mut counts = *self.lock();
        counts.roll(SystemTime::now());
        counts
    }

    /// The counters as the outbox keeps them (key, value).
    pub fn saved(&self) -> Vec<(String, i64)> {
        let c = self.counts();
        [
            ("link_up", c.total.up as i64),
            ("link_down", c.total.down as i64),
            ("link_connects", c.connects as i64),
            ("link_day", c.day.id),
            ("link_day_up", c.day.bytes.up as i64),
            ("link_day_down", c.day.bytes.down as i64),
            ("link_month", c.month.id),
            ("link_month_up", c.month.bytes.up as i64),
            ("link_month_down", c.month.bytes.down as i64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Counts as [`Meter::saved`] wrote them (missing keys read 0).
    pub fn from_saved(saved: &std::collections::BTreeMap<String, i64>) -> Counts {
        let get = |key: &str| saved.get(key).copied().unwrap_or(0);
        let bytes = |up: &str, down: &str| Bytes {
            up: get(up) as u64,
            down: get(down) as u64,
        };
        Counts {
            total: bytes("link_up", "link_down"),
            connects: get("link_connects") as u64,
            connection: Bytes::default(),
            hour: Period::default(),
            day: Period {
                id: get("link_day"),
                bytes: bytes("link_day_up", "link_day_down"),
            },
            month: Period {
                id: get("link_month"),
                bytes: bytes("link_month_up", "link_month_down"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn periods_follow_the_utc_calendar() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(periods(at(0)), (0, 0, 0));
        // 2026-11-30T23:59:59Z and 2026-12-01T00:00:00Z.
        let (_, day1, month1) = periods(at(1_796_083_199));
        let (_, day2, month2) = periods(at(1_796_083_200));
        assert_eq!(
            (day2 - day1, month1, month2),
            (1, 56 * 12 + 10, 56 * 12 + 11)
        );
        // 2024-02-29 is in February, 2024-03-01 in March.
        assert_eq!(periods(at(1_709_164_800)).2, 54 * 12 + 1);
        assert_eq!(periods(at(1_709_251_200)).2, 54 * 12 + 2);
    }

    #[test]
    fn counts_resume_from_what_was_saved() {
        let meter = Meter::default();
        meter.connected();
        meter.count(100, 20);
        let saved: std::collections::BTreeMap<String, i64> = meter.saved().into_iter().collect();
        let resumed = Meter::resume(Meter::from_saved(&saved));
        resumed.count(1, 2);
        let c = resumed.counts();
        assert_eq!((c.total.up, c.total.down, c.connects), (101, 22, 1));
        assert_eq!(c.day.bytes.total(), 123, "today carries over");
        assert_eq!(c.connection.total(), 3, "a new connection starts from zero");
    }
}
