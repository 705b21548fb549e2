//! Wear in sight: the bytes Cairn has written to storage, as the kernel counts them when they
//! reach the block layer (`write_bytes` of `/proc/self/io`), which is what wears an SD card.
//! Shown in `/metrics`, `/api/status` and on the dashboard, per day over the last day.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How far back the rate looks, and how finely.
const WINDOW: Duration = Duration::from_secs(24 * 3600);
const STEP: Duration = Duration::from_secs(60);

/// Samples of the bytes written, one a minute over the last day.
#[derive(Debug, Default)]
pub struct Wear {
    samples: VecDeque<(Instant, u64)>,
}

impl Wear {
    /// Notes that `written` bytes were written in all by `at`.
    pub fn record(&mut self, at: Instant, written: u64) {
        let n = self.samples.len();
        // The newest sample is always the latest; the ones before it are a minute apart.
        if n >= 2 && self.samples[n - 1].0.duration_since(self.samples[n - 2].0) < STEP {
            self.samples[n - 1] = (at, written);
        } else {
            self.samples.push_back((at, written));
        }
        while let Some(&(first, _)) = self.samples.front() {
            if at.duration_since(first) <= WINDOW {
                break;
            }
            self.samples.pop_front();
        }
    }

    /// Bytes written since the process started, at the last sample.
    pub fn written(&self) -> Option<u64> {
        self.samples.back().map(|&(_, bytes)| bytes)
    }

    /// Bytes written per day, over the last day (or since the first sample), once the
    /// samples span a minute.
    pub fn per_day(&self) -> Option<f64> {
        let (&(t0, b0), &(t1, b1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.duration_since(t0);
        (span >= STEP).then(|| b1.saturating_sub(b0) as f64 * 86_400.0 / span.as_secs_f64())
    }
}

/// Bytes this process has written to storage since it started; `None` where the kernel does
/// not say (no task I/O accounting).
pub async fn written_bytes() -> Option<u64> {
    parse(&tokio::fs::read_to_string("/proc/self/io").await.ok()?)
}

fn parse(io: &str) -> Option<u64> {
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_write_bytes_from_proc_io() {
        let io = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(parse(io), Some(8192));
        assert_eq!(parse("rchar: 1\n"), None);
    }

    #[test]
    fn per_day_spans_the_last_day_at_most() {
        let mut wear = Wear::default();
        let start = Instant::now();
        wear.record(start, 0);
        assert_eq!(wear.per_day(), None, "one sample says no rate");
        // 1 KB a second for two days: the rate is 86.4 MB a day, and the window a day long.
        for s in 1..=2 * 86_400u64 {
            wear.record(start + Duration::from_secs(s), s * 1000);
        }
        assert_eq!(wear.written(), Some(2 * 86_400_000));
        let per_day = wear.per_day().unwrap();
        assert!((per_day - 86_400_000.0).abs() < 1.0, "{per_day}");
        assert!(wear.samples.len() <= 24 * 60 + 2, "{}", wear.samples.len());
    }
}
