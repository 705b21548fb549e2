//! The in-flight window, sized to the link: never more unacknowledged bytes than the link
//! carries in its round trip plus a couple of seconds. A satellite or dial-up link then never
//! holds minutes of backlog ahead of a live reading, and no answer waits anywhere near
//! `dead_after`; a LAN opens the window up to `mqtt.max_inflight_bytes` within a few round
//! trips.
//!
//! The rate is measured from acknowledgements: bytes acknowledged over the last few seconds.
//! The round trip is the shortest time any message took to be acknowledged on this
//! connection. When the window is too small for the link, messages come back in about one
//! round trip, the measured rate is the window per round trip, and the target grows past the
//! window; when it is too large, they queue, the rate is the link's, and the target shrinks.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The queue a window allows on top of the round trip.
const QUEUE: Duration = Duration::from_secs(2);

/// How far back acknowledgements count for the rate.
const SPAN: Duration = Duration::from_secs(3);

/// The smallest window: one small batch.
pub const FLOOR: usize = 1024;

/// The window when nothing is measured yet: small enough for a 2,400 bit/s link's answers to
/// come well within `dead_after`, and quickly outgrown on a fast one.
const INITIAL: usize = 4096;

/// The byte window of one connection.
#[derive(Debug)]
pub struct Window {
    cap: usize,
    allowed: usize,
    round_trip: Option<Duration>,
    acked: VecDeque<(Instant, usize)>,
}

impl Window {
    /// A window of at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            allowed: INITIAL.min(cap).max(FLOOR.min(cap)),
            round_trip: None,
            acked: VecDeque::new(),
        }
    }

    /// Bytes that may be unacknowledged now.
    pub fn allowed(&self) -> usize {
        self.allowed
    }

    /// A message of `bytes` sent at `sent` was acknowledged at `now`.
    pub fn acked(&mut self, bytes: usize, sent: Instant, now: Instant) {
        let took = now.saturating_duration_since(sent);
        let round_trip = self.round_trip.map_or(took, |rt| rt.min(took));
        self.round_trip = Some(round_trip);
        self.acked.push_back((now, bytes));
        while let Some(&(at, _)) = self.acked.front() {
            if now.saturating_duration_since(at) <= SPAN || self.acked.len() <= 2 {
                break;
            }
            self.acked.pop_front();
        }
        let Some(&(first, _)) = self.acked.front() else {
            return;
        };
        // The rate over the acknowledgements after the first one, which opens the span.
        let span = now.saturating_duration_since(first).max(round_trip);
        if span.is_zero() {
            return;
        }
        let bytes: usize = self
            .acked
            .iter()
            .skip(1)
            .map(|(_, b)| b)
            .sum::<usize>()
            .max(bytes);
        let rate = bytes as f64 / span.as_secs_f64();
        let target = rate * (round_trip + QUEUE).as_secs_f64();
        self.allowed = (target as usize).clamp(FLOOR.min(self.cap), self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends through a link of `rate` bytes/s and `rtt`, always as much as the window allows,
    /// and returns the window it settles on.
    fn settle(rate: f64, rtt: Duration, cap: usize) -> usize {
        let mut window = Window::new(cap);
        let t0 = Instant::now();
        let mut now = t0;
        let mut link_free = t0;
        // (sent, size) of messages in flight, acknowledged in order.
        let mut inflight: VecDeque<(Instant, Instant, usize)> = VecDeque::new();
        let message = 500;
        for _ in 0..5000 {
            let used: usize = inflight.iter().map(|m| m.2).sum();
            if used + message <= window.allowed() || inflight.is_empty() {
                let start = link_free.max(now);
                link_free = start + Duration::from_secs_f64(message as f64 / rate);
                inflight.push_back((now, link_free + rtt, message));
                continue;
            }
            let (sent, acked, size) = inflight.pop_front().unwrap();
            now = now.max(acked);
            window.acked(size, sent, now);
        }
        window.allowed()
    }

    #[test]
    fn the_window_settles_near_the_link_rate_times_the_round_trip_plus_two_seconds() {
        // 2,400 bit/s, 600 ms: 300 B/s x 2.6 s = 780 B, so the floor.
        assert_eq!(settle(300.0, Duration::from_millis(600), 1 << 20), FLOOR);
        // 9,600 bit/s: 1,200 B/s x 2.6 s = 3,120 B.
        let w = settle(1200.0, Duration::from_millis(600), 1 << 20);
        assert!((2500..4000).contains(&w), "{w}");
        // A LAN: the cap.
        assert_eq!(settle(10e6, Duration::from_millis(1), 1 << 20), 1 << 20);
        // 1 Mbit/s satellite: 125 kB/s x 2.6 s = 325 kB.
        let w = settle(125_000.0, Duration::from_millis(600), 1 << 20);
        assert!((250_000..400_000).contains(&w), "{w}");
    }
}
