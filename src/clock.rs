//! Whether the wall clock can be believed. A Raspberry Pi has no real-time clock: it boots in
//! 1970, or at the time `fake-hwclock` saved at shutdown, and the clock jumps when NTP first
//! syncs. Readings taken before then carry timestamps that are wrong by the jump.
//!
//! The wall clock is compared, once a second, with `CLOCK_BOOTTIME`, which no one sets: a
//! difference between the two that moves by more than [`STEP`] is a step of the wall clock.
//! Until the clock is *known good*, readings are provisional, and each step is added to them
//! (the store applies [`Clock::correction`]); after, steps are logged and counted, and
//! change no reading. The clock becomes known good when
//!
//! - systemd-timesyncd says it synchronized (`/run/systemd/timesync/synchronized`), or
//! - it steps to a time after [`FLOOR`] (the first sync, seen from the jump), or
//! - it reads after [`FLOOR`] on a machine with no timesyncd to wait for.
//!
//! Ages (`buffer.max_age`) are not read from the wall clock either: from the moment the
//! clock is known good they run on `CLOCK_BOOTTIME` ([`Clock::now_for_age`]), so a later step
//! forward does not age the outbox at once.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::pipeline::unix_millis;

/// No clock that reads earlier than this is right: 2026-11-01T00:00:00Z, before this Cairn
/// was released.
pub const FLOOR: i64 = 1_793_491_200_000;

/// A move of the wall clock against `CLOCK_BOOTTIME` larger than this is a step, not drift.
pub const STEP: i64 = 2_000;

/// Where systemd-timesyncd says that the clock is synchronized.
const TIMESYNC: &str = "/run/systemd/timesync";

/// The gateway's view of its wall clock; shared by the pipeline, the store and the feed.
#[derive(Debug)]
pub struct Clock {
    inner: Mutex<Inner>,
    timesync: PathBuf,
}

#[derive(Debug)]
struct Inner {
    known: bool,
    /// What provisional readings need added, in milliseconds: the steps seen before the
    /// clock was known good.
    correction: i64,
    /// The wall clock minus `CLOCK_BOOTTIME` at the last look.
    offset: i64,
    /// `CLOCK_BOOTTIME` and the wall clock when the clock became known good.
    anchor: Option<(i64, i64)>,
    /// Steps seen since start.
    steps: u64,
}

impl Clock {
    /// The clock as it looks now.
    pub fn new() -> Self {
        Self::with_timesync(PathBuf::from(TIMESYNC), wall_ms(), boot_ms())
    }

    /// A clock that reads `wall` (ms) now, on a machine without timesyncd: known good from
    /// the start when `wall` is after [`FLOOR`], else not until it steps past it.
    #[cfg(test)]
    pub(crate) fn reading(wall: i64) -> Self {
        Self::with_timesync(PathBuf::from("/nonexistent/timesync"), wall, boot_ms())
    }

    fn with_timesync(timesync: PathBuf, wall: i64, boot: i64) -> Self {
        let clock = Self {
            inner: Mutex::new(Inner {
                known: false,
                correction: 0,
                offset: wall - boot,
                anchor: None,
                steps: 0,
            }),
            timesync,
        };
        clock.observe(wall, boot);
        clock
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the wall clock is known good.
    pub fn known(&self) -> bool {
        self.lock().known
    }

    /// What provisional readings need added to their timestamps, in milliseconds.
    pub fn correction(&self) -> i64 {
        self.lock().correction
    }

    /// The wall clock minus `CLOCK_BOOTTIME` at the last look, in milliseconds: within one
    /// boot, a change of it is a step of the wall clock, even one made while Cairn was down.
    pub fn offset(&self) -> i64 {
        self.lock().offset
    }

    /// Wall-clock steps seen since start.
    pub fn steps(&self) -> u64 {
        self.lock().steps
    }

    /// Now, for ages: the time the clock was known good plus `CLOCK_BOOTTIME` since; `None`
    /// while it is not.
    pub fn now_for_age(&self) -> Option<i64> {
        self.lock()
            .anchor
            .map(|(boot, wall)| wall + (boot_ms() - boot))
    }

    /// Looks at the wall clock against `CLOCK_BOOTTIME`, both in milliseconds.
    fn observe(&self, wall: i64, boot: i64) {
        let synced = self.timesync.join("synchronized").exists();
        let no_timesyncd = !self.timesync.exists();
        let mut inner = self.lock();
        let offset = wall - boot;
        let step = offset - inner.offset;
        inner.offset = offset;
        if step.abs() > STEP {
            inner.steps += 1;
            if inner.known {
                warn!(
                    step_s = step / 1000,
                    "The wall clock stepped; readings keep the times they were given, ages run on"
                );
            } else {
                inner.correction += step;
                info!(
                    step_s = step / 1000,
                    "The wall clock stepped before it was known good; provisional readings move with it"
                );
            }
        }
        if !inner.known && wall >= FLOOR && (synced || no_timesyncd || step.abs() > STEP) {
            inner.known = true;
            inner.anchor = Some((boot, wall));
            info!(
                correction_s = inner.correction / 1000,
                "The wall clock is known good"
            );
        }
    }

    /// Looks once a second until `cancel` fires.
    pub async fn run(self: std::sync::Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => self.observe(wall_ms(), boot_ms()),
            }
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

fn wall_ms() -> i64 {
    unix_millis(SystemTime::now())
}

/// `CLOCK_BOOTTIME` in milliseconds: it counts suspended time too, and no one sets it.
fn boot_ms() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec * 1000 + t.tv_nsec / 1_000_000
}

/// This boot's id, as a number the outbox's meta table holds; 0 when unknown.
pub fn boot_id() -> i64 {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .and_then(|id| i64::from_str_radix(id.trim().replace('-', "").get(..15)?, 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn clock(timesyncd: bool, wall: i64) -> (Clock, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let timesync = if timesyncd {
            dir.path().to_path_buf()
        } else {
            dir.path().join("absent")
        };
        (Clock::with_timesync(timesync, wall, 0), dir)
    }

    #[test]
    fn a_clock_in_1970_is_not_believed_until_it_steps_forward() {
        let (clock, _dir) = clock(false, 5_000);
        assert!(!clock.known());
        clock.observe(65_000, 60_000);
        assert!(!clock.known(), "drift is no sync");
        let jump = FLOOR + 30 * DAY;
        clock.observe(jump + 61_000, 61_000);
        assert!(clock.known());
        assert_eq!(clock.correction(), jump + 61_000 - 66_000);
        // Back by an hour once known: counted, no correction.
        clock.observe(jump + 62_000 - 3_600_000, 62_000);
        assert_eq!(clock.steps(), 2);
        assert_eq!(clock.correction(), jump - 5_000);
    }

    #[test]
    fn a_plausible_clock_waits_for_timesyncd_where_there_is_one() {
        let (clock, dir) = clock(true, FLOOR + DAY);
        assert!(!clock.known(), "fake-hwclock's time may be days old");
        std::fs::write(dir.path().join("synchronized"), "").unwrap();
        clock.observe(FLOOR + DAY + 1_000, 1_000);
        assert!(clock.known());
        assert_eq!(clock.correction(), 0);
        let (clock, _dir) = clock_without(FLOOR + DAY);
        assert!(clock.known(), "nothing will set it: believed");
    }

    fn clock_without(wall: i64) -> (Clock, tempfile::TempDir) {
        clock(false, wall)
    }

    #[test]
    fn a_stale_clock_steps_forward_and_is_corrected() {
        let (clock, _dir) = clock(true, FLOOR + DAY);
        clock.observe(FLOOR + 3 * DAY + 10_000, 10_000);
        assert!(clock.known());
        assert_eq!(clock.correction(), 2 * DAY);
    }
}
