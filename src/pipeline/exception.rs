//! Report by exception, before the outbox: a value goes on only when it moved past its deadband
//! (or, for booleans and text, changed), not sooner than `min_interval` after the last report,
//! and at the latest `max_interval` after it, changed or not. Time is the monotonic clock, so a
//! clock that jumps at NTP sync changes nothing here.

use cairn_adapters::Value;
use cairn_adapters::report::{Deadband, ReportConfig};
use tokio::time::Instant;

/// The last report of one value.
#[derive(Debug, Clone)]
pub struct Reported {
    value: Value,
    at: Instant,
}

/// Whether `value`, read `now`, is to be reported under `config` after the `last` report.
pub fn should_report(
    config: &ReportConfig,
    last: Option<&Reported>,
    value: &Value,
    now: Instant,
) -> bool {
    let Some(last) = last else {
        return true;
    };
    let since = now.saturating_duration_since(last.at);
    if config.min_interval.is_some_and(|min| since < min) {
        return false;
    }
    if config.max_interval.is_some_and(|max| since >= max) {
        return true;
    }
    moved(config.deadband, &last.value, value)
}

/// Whether `value` differs from `last` by more than the deadband.
fn moved(deadband: Option<Deadband>, last: &Value, value: &Value) -> bool {
    let number = |v: &Value| match v {
        Value::Float(f) => Some(*f),
        Value::Int(i) => Some(*i as f64),
        _ => None,
    };
    match (deadband, number(last), number(value)) {
        (Some(band), Some(before), Some(now)) => {
            if now.is_nan() || before.is_nan() {
                return now.is_nan() != before.is_nan();
            }
            let limit = match band {
                Deadband::Absolute(limit) => limit,
                Deadband::Percent(percent) => before.abs() * percent / 100.0,
            };
            (now - before).abs() > limit
        }
        _ => last != value,
    }
}

impl Reported {
    /// `value`, reported `at`.
    pub fn new(value: Value, at: Instant) -> Self {
        Self { value, at }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(deadband: Option<Deadband>, min: u64, max: u64) -> ReportConfig {
        ReportConfig {
            deadband,
            min_interval: (min > 0).then(|| Duration::from_secs(min)),
            max_interval: (max > 0).then(|| Duration::from_secs(max)),
        }
    }

    #[test]
    fn deadbands_intervals_and_changes() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let last = Reported::new(Value::Float(20.0), t0);
        let band = config(Some(Deadband::Absolute(0.5)), 0, 60);
        assert!(should_report(&band, None, &Value::Float(20.0), t0), "first");
        assert!(
            !should_report(&band, Some(&last), &Value::Float(20.4), at(1)),
            "noise"
        );
        assert!(
            should_report(&band, Some(&last), &Value::Float(20.6), at(1)),
            "step"
        );
        assert!(
            should_report(&band, Some(&last), &Value::Float(20.0), at(60)),
            "heartbeat"
        );

        let percent = config(Some(Deadband::Percent(2.0)), 0, 0);
        let hundred = Reported::new(Value::Int(100), t0);
        assert!(!should_report(
            &percent,
            Some(&hundred),
            &Value::Int(102),
            at(1)
        ));
        assert!(should_report(
            &percent,
            Some(&hundred),
            &Value::Int(103),
            at(1)
        ));

        let on_change = config(None, 10, 0);
        let pump = Reported::new(Value::Bool(true), t0);
        assert!(!should_report(
            &on_change,
            Some(&pump),
            &Value::Bool(true),
            at(30)
        ));
        assert!(
            !should_report(&on_change, Some(&pump), &Value::Bool(false), at(5)),
            "too soon"
        );
        assert!(should_report(
            &on_change,
            Some(&pump),
            &Value::Bool(false),
            at(10)
        ));
        let mode = Reported::new(Value::Text("auto".into()), t0);
        assert!(should_report(
            &on_change,
            Some(&mode),
            &Value::Text("manual".into()),
            at(11)
        ));
        assert!(
            should_report(&band, Some(&last), &Value::Text("x".into()), at(1)),
            "a new type"
        );
        let nan = Reported::new(Value::Float(f64::NAN), t0);
        assert!(!should_report(
            &band,
            Some(&nan),
            &Value::Float(f64::NAN),
            at(1)
        ));
        assert!(should_report(&band, Some(&nan), &Value::Float(1.0), at(1)));
    }
}
