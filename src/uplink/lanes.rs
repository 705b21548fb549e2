//! Lanes: which outbox rows go next. Alarms go before everything; then the live lane, the
//! newest readings, in small batches with a short linger; then the backlog, oldest first, in
//! large batches, paced to a share of the link while live readings wait.
//!
//! A reading is **live** when it was committed less than `lanes.live_age` ago (by the
//! monotonic clock, as the store's commit timeline records it) and **backlog** otherwise, and
//! every reading left in the outbox by an earlier run is backlog. A live reading that waits
//! longer than `live_age` before it is read for sending (a link slower than the site) moves to
//! the backlog: the live lane stays the present. Per device, each lane keeps `seq` order;
//! live readings may overtake the backlog, and backlog messages say they are history.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_adapters::Priority;
use tokio::time::Instant;

use crate::store::StoreReader;

/// The lanes, in the order they are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Readings with an alarm value or of an alarm device.
    Alarm,
    /// The newest readings.
    Live,
    /// Everything older, oldest first.
    Backlog,
}

impl Lane {
    /// Every lane, in serving order.
    pub const ALL: [Lane; 3] = [Lane::Alarm, Lane::Live, Lane::Backlog];

    /// The name used in the API, metrics and the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Alarm => "alarm",
            Lane::Live => "live",
            Lane::Backlog => "backlog",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where one connection stands in the outbox, per lane.
#[derive(Debug)]
pub struct Cursors {
    /// The last alarm row read.
    alarm: i64,
    /// The last live row read (or the live boundary it started from).
    live: i64,
    /// `(after, upto]` ranges of normal rows the backlog has still to read, oldest first.
    gaps: VecDeque<(i64, i64)>,
}

impl Cursors {
    /// A connection's start: everything up to `boundary` is backlog, the rest live.
    pub fn new(boundary: i64) -> Self {
        Self {
            alarm: 0,
            live: boundary,
            gaps: (boundary > 0)
                .then_some((0, boundary))
                .into_iter()
                .collect(),
        }
    }

    /// Where the live lane reads from now that the boundary is `boundary`: rows it did not
    /// read before they aged past it join the backlog.
    pub fn live_from(&mut self, boundary: i64) -> i64 {
        if boundary > self.live {
            self.gaps.push_back((self.live, boundary));
            self.live = boundary;
        }
        self.live
    }

    /// Rows `(after, upto]` that the live lane read but left, for the backlog to send.
    pub fn defer(&mut self, after: i64, upto: i64) {
        if upto > after {
            self.gaps.push_back((after, upto));
        }
    }

    /// The live lane read up to `seq`.
    pub fn live_read(&mut self, seq: i64) {
        self.live = self.live.max(seq);
    }

    /// The last alarm row read.
    pub fn alarm(&self) -> i64 {
        self.alarm
    }

    /// The alarm lane read up to `seq`.
    pub fn alarm_read(&mut self, seq: i64) {
        self.alarm = self.alarm.max(seq);
    }

    /// The range the backlog reads next, if any is left.
    pub fn backlog(&self) -> Option<(i64, i64)> {
        self.gaps.front().copied()
    }

    /// The backlog read its range up to `seq`, or to its end when `seq` is `None` (no rows
    /// were left in it).
    pub fn backlog_read(&mut self, seq: Option<i64>) {
        let Some(front) = self.gaps.front_mut() else {
            return;
        };
        match seq {
            Some(seq) if seq < front.1 => front.0 = seq,
            _ => {
                self.gaps.pop_front();
            }
        }
    }
}

/// The backlog's share of the link while live readings wait: a token bucket in bytes.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Pacer {
    /// A bucket that fills at `bytes_per_second`, up to one second's worth. It starts a
    /// second in debt, so that the live lane goes first when a connection starts.
    pub fn new(bytes_per_second: u64) -> Self {
        Self {
            rate: bytes_per_second as f64,
            tokens: -(bytes_per_second as f64),
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        self.at = now;
    }

    /// Whether the backlog may send now; a message may overdraw, and the debt is waited out.
    pub fn allows(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 0.0
    }

    /// The backlog sent `bytes`.
    pub fn spend(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }

    /// When the backlog may send again.
    pub fn ready_at(&self) -> Instant {
        if self.tokens >= 0.0 || self.rate <= 0.0 {
            return self.at;
        }
        self.at + Duration::from_secs_f64(-self.tokens / self.rate)
    }
}

/// Readings delivered per lane since start, shared with whoever reports on the lanes.
#[derive(Debug, Default)]
pub struct Delivered([AtomicU64; 3]);

impl Delivered {
    /// `n` readings of `lane` were acknowledged.
    pub fn add(&self, lane: Lane, n: usize) {
        self.0[lane.index()].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Readings of `lane` acknowledged since start.
    pub fn get(&self, lane: Lane) -> u64 {
        self.0[lane.index()].load(Ordering::Relaxed)
    }
}

/// One lane's share of the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Unsent readings.
    pub readings: u64,
    /// Their size as counted against `buffer.max_bytes`.
    pub bytes: u64,
    /// When the oldest was taken (milliseconds since 1970).
    pub oldest_ms: Option<i64>,
}

/// How much of the outbox is in each lane right now, with `live_age` as the boundary.
pub async fn depths(
    reader: &StoreReader,
    live_age: Duration,
) -> Result<[(Lane, Depth); 3], sqlx::Error> {
    let boundary = Instant::now()
        .checked_sub(live_age)
        .map_or(0, |at| reader.committed_at(at));
    let count = |priority, after| async move {
        let (readings, bytes, oldest_ms) = reader.count_after(priority, after).await?;
        Ok::<_, sqlx::Error>(Depth {
            readings,
            bytes,
            oldest_ms,
        })
    };
    let alarm = count(Priority::Alarm, 0).await?;
    let live = count(Priority::Normal, boundary).await?;
    let stats = reader.stats();
    let readings = stats.backlog.saturating_sub(alarm.readings + live.readings);
    let backlog = Depth {
        readings,
        bytes: stats.bytes.saturating_sub(alarm.bytes + live.bytes),
        oldest_ms: if readings > 0 {
            reader.oldest_normal_ms().await?
        } else {
            None
        },
    };
    Ok([
        (Lane::Alarm, alarm),
        (Lane::Live, live),
        (Lane::Backlog, backlog),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aged_live_rows_join_the_backlog_in_order() {
        let mut cursors = Cursors::new(100);
        assert_eq!(cursors.backlog(), Some((0, 100)));
        assert_eq!(cursors.live_from(100), 100);
        cursors.live_read(120);
        // The link fell behind: rows 121..=150 aged before the live lane read them.
        assert_eq!(cursors.live_from(150), 150);
        cursors.backlog_read(Some(60));
        assert_eq!(cursors.backlog(), Some((60, 100)));
        cursors.backlog_read(None);
        assert_eq!(
            cursors.backlog(),
            Some((120, 150)),
            "the aged rows, after the old backlog"
        );
        cursors.backlog_read(Some(150));
        assert_eq!(cursors.backlog(), None);
        assert_eq!(
            Cursors::new(0).backlog(),
            None,
            "an empty outbox has no backlog"
        );
    }

    #[test]
    fn the_pacer_gives_the_backlog_its_rate() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(1000);
        pacer.at = t0;
        assert!(!pacer.allows(t0), "live first");
        assert!(pacer.allows(t0 + Duration::from_secs(1)));
        pacer.at = t0;
        pacer.tokens = 0.0;
        pacer.spend(3000);
        assert!(!pacer.allows(t0 + Duration::from_secs(2)));
        assert_eq!(pacer.ready_at(), t0 + Duration::from_secs(3));
        assert!(pacer.allows(t0 + Duration::from_secs(3)));
    }
}
