//! Byte budgets per day and per month (UTC), as the link meter counts them, TLS and
//! reconnects included. As a budget nears its end the uplink gives way in a fixed order:
//!
//! 1. at 80 %, the backlog pauses (it stays in the outbox, for the next day or month);
//! 2. at 90 %, live readings thin to one per device per `budget.thin_to` (the others wait in
//!    the outbox as backlog);
//! 3. at 100 %, only alarms go.
//!
//! Alarms always pass. Each step is logged once when reached, counted, and shown.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

use super::meter::Counts;
use crate::config::BudgetConfig;

/// How far the uplink has given way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Within budget.
    #[default]
    Open,
    /// 80 %: the backlog waits.
    BacklogPaused,
    /// 90 %: live readings thinned.
    LiveThinned,
    /// 100 %: alarms only.
    AlarmsOnly,
}

impl Step {
    /// Every step past `Open`, in order.
    pub const ALL: [Step; 3] = [Step::BacklogPaused, Step::LiveThinned, Step::AlarmsOnly];

    /// The name used in logs, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Open => "open",
            Step::BacklogPaused => "backlog_paused",
            Step::LiveThinned => "live_thinned",
            Step::AlarmsOnly => "alarms_only",
        }
    }

    /// The step a budget used to `fraction` calls for.
    fn at(fraction: f64) -> Step {
        match fraction {
            f if f >= 1.0 => Step::AlarmsOnly,
            f if f >= 0.9 => Step::LiveThinned,
            f if f >= 0.8 => Step::BacklogPaused,
            _ => Step::Open,
        }
    }
}

/// The budget's state, shared with the feed.
#[derive(Debug, Default)]
pub struct Budget {
    config: Option<BudgetConfig>,
    step: AtomicU64,
    /// Times each step past `Open` was reached.
    reached: [AtomicU64; 3],
}

impl Budget {
    /// A budget of `config` (none: unlimited).
    pub fn new(config: Option<BudgetConfig>) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The settings.
    pub fn config(&self) -> Option<&BudgetConfig> {
        self.config.as_ref()
    }

    /// The step the link's `counts` call for now; a step reached is logged and counted once
    /// each time it is reached.
    pub fn step(&self, counts: &Counts) -> Step {
        let Some(config) = &self.config else {
            return Step::Open;
        };
        let fraction = |used: u64, limit: Option<bytesize::ByteSize>| {
            limit.map_or(0.0, |l| used as f64 / l.as_u64().max(1) as f64)
        };
        let used = fraction(counts.day.bytes.total(), config.day)
            .max(fraction(counts.month.bytes.total(), config.month));
        let step = Step::at(used);
        let before = self.current();
        if step != before {
            self.step.store(step as u64, Ordering::Relaxed);
            for reached in Step::ALL.iter().filter(|s| **s > before && **s <= step) {
                self.reached[*reached as usize - 1].fetch_add(1, Ordering::Relaxed);
                warn!(
                    step = reached.as_str(),
                    today = counts.day.bytes.total(),
                    month = counts.month.bytes.total(),
                    "Link budget: {}",
                    match reached {
                        Step::BacklogPaused => "80% used; the backlog waits",
                        Step::LiveThinned => "90% used; live readings thinned",
                        _ => "used up; only alarms go",
                    }
                );
            }
        }
        step
    }

    /// The step last computed.
    pub fn current(&self) -> Step {
        match self.step.load(Ordering::Relaxed) {
            1 => Step::BacklogPaused,
            2 => Step::LiveThinned,
            3 => Step::AlarmsOnly,
            _ => Step::Open,
        }
    }

    /// How many times `step` was reached.
    pub fn reached(&self, step: Step) -> u64 {
        match step {
            Step::Open => 0,
            other => self.reached[other as usize - 1].load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::meter::{Bytes, Period};

    #[test]
    fn steps_come_in_order_and_each_is_counted_once() {
        let budget = Budget::new(Some(BudgetConfig {
            day: Some(bytesize::ByteSize::b(1000)),
            month: None,
            thin_to: std::time::Duration::from_secs(60),
        }));
        let used = |n: u64| Counts {
            day: Period {
                id: 1,
                bytes: Bytes { up: n, down: 0 },
            },
            ..Counts::default()
        };
        assert_eq!(budget.step(&used(100)), Step::Open);
        assert_eq!(budget.step(&used(850)), Step::BacklogPaused);
        assert_eq!(budget.step(&used(860)), Step::BacklogPaused);
        // A jump past two thresholds reaches both.
        assert_eq!(budget.step(&used(1200)), Step::AlarmsOnly);
        for step in Step::ALL {
            assert_eq!(budget.reached(step), 1, "{step:?}");
        }
        // A new day opens it again.
        assert_eq!(budget.step(&used(0)), Step::Open);
        assert_eq!(Budget::new(None).step(&used(1 << 40)), Step::Open);
    }
}
