//! Simulated devices: realistic signals at any rate, for the demo, the tests and the benchmarks.

use std::f64::consts::TAU;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior};

use crate::adapter::{Adapter, AdapterContext, AdapterError, DeviceStatus};
use crate::config::{ValueInfo, ValueKind};
use crate::reading::{Reading, Value};
use crate::report::{Priority, ReportConfig};

/// Below this period the adapter wakes every `MIN_TICK` and emits the readings that fell due,
/// because tokio timers cannot fire 100,000 times a second.
const MIN_TICK: Duration = Duration::from_millis(5);

/// Settings of a simulated device (`type: sim`).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Time between readings (default 1s). Exclusive with `rate`.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub interval: Option<Duration>,
    /// Readings per second, for load tests. Exclusive with `interval`.
    pub rate: Option<f64>,
    /// Stop after this many readings (the device then shows `finished`).
    pub limit: Option<u64>,
    /// Seed for the noise, so that runs repeat.
    pub seed: Option<u64>,
    /// The simulated values.
    pub values: Vec<SimValue>,
}

/// One simulated value: a name, a unit and exactly one signal shape.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimValue {
    /// Name of the value in readings.
    pub name: String,
    /// Unit announced in the device's metadata.
    pub unit: Option<String>,
    /// A sine wave with noise (temperatures, levels).
    pub sine: Option<Sine>,
    /// A bounded random walk (pressures, prices).
    pub random_walk: Option<RandomWalk>,
    /// An integer counter (pulses, energy).
    pub counter: Option<Counter>,
    /// A boolean that flips every half period (pumps, doors).
    pub toggle: Option<Toggle>,
    /// Text states that follow each other (operating modes).
    pub cycle: Option<Cycle>,
    /// A number that steps between two levels (a load switched on and off).
    pub square: Option<Square>,
    /// Round to this many decimal places, as a real sensor resolves.
    pub decimals: Option<u8>,
    /// Report by exception: a deadband, `min_interval`, `max_interval` (default: every
    /// reading).
    pub report: Option<ReportConfig>,
    /// `alarm`: goes before everything else, and retention drops it last (default `normal`).
    #[serde(default)]
    pub priority: Priority,
}

/// `mean + amplitude * sin(2 pi t / period) + noise`, with t the wall clock.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sine {
    /// Centre of the wave.
    #[serde(default)]
    pub mean: f64,
    /// Half the peak-to-peak swing.
    #[serde(default = "one")]
    pub amplitude: f64,
    /// Length of one full wave.
    #[serde(with = "humantime_serde", default = "minute")]
    #[schemars(with = "String")]
    pub period: Duration,
    /// Standard deviation of the added noise.
    #[serde(default)]
    pub noise: f64,
}

/// A walk that moves by up to `step` per reading and stays within `[min, max]`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandomWalk {
    /// First value.
    pub start: f64,
    /// Largest move per reading.
    pub step: f64,
    /// Lower bound.
    pub min: f64,
    /// Upper bound.
    pub max: f64,
}

/// An integer that grows by `step` per reading.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Counter {
    /// First value.
    #[serde(default)]
    pub start: i64,
    /// Increment per reading.
    #[serde(default = "one_int")]
    pub step: i64,
}

/// `true` for the first half of each period, `false` for the second.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Toggle {
    /// Length of one on/off cycle.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub period: Duration,
}

/// `high` for the first half of each period, `low` for the second.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Square {
    /// The level of the second half.
    #[serde(default)]
    pub low: f64,
    /// The level of the first half.
    pub high: f64,
    /// Length of one full cycle.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub period: Duration,
}

/// Each state in turn, each held for `every`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cycle {
    /// The states, in order.
    pub states: Vec<String>,
    /// How long each state lasts.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub every: Duration,
}

fn one() -> f64 {
    1.0
}

fn one_int() -> i64 {
    1
}

fn minute() -> Duration {
    Duration::from_secs(60)
}

impl SimValue {
    fn shapes(&self) -> usize {
        [
            self.sine.is_some(),
            self.random_walk.is_some(),
            self.counter.is_some(),
            self.toggle.is_some(),
            self.cycle.is_some(),
            self.square.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count()
    }
}

impl SimConfig {
    /// Time between two readings.
    pub fn period(&self) -> Duration {
        match (self.rate, self.interval) {
            (Some(rate), _) if rate > 0.0 => Duration::from_secs_f64(1.0 / rate),
            (_, Some(interval)) => interval,
            _ => Duration::from_secs(1),
        }
    }

    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.rate.is_some() && self.interval.is_some() {
            problems.push((
                "rate".into(),
                "give either `rate` or `interval`, not both".into(),
            ));
        }
        if let Some(rate) = self.rate
            && !(rate > 0.0 && rate <= 1_000_000.0)
        {
            problems.push((
                "rate".into(),
                format!("{rate} is not within (0, 1000000] readings/s"),
            ));
        }
        if self.interval.is_some_and(|i| i.is_zero()) {
            problems.push(("interval".into(), "must be longer than zero".into()));
        }
        if self.values.is_empty() {
            problems.push((
                "values".into(),
                "a simulated device needs at least one value".into(),
            ));
        }
        for (i, value) in self.values.iter().enumerate() {
            let at = |field: &str| format!("values[{i}].{field}");
            if value.shapes() != 1 {
                problems.push((
                    format!("values[{i}]"),
                    format!(
                        "`{}` needs exactly one of sine, random_walk, counter, toggle, cycle, square",
                        value.name
                    ),
                ));
            }
            if self.values[..i].iter().any(|v| v.name == value.name) {
                problems.push((at("name"), format!("`{}` appears twice", value.name)));
            }
            if let Some(s) = &value.sine
                && s.period.is_zero()
            {
                problems.push((at("sine.period"), "must be longer than zero".into()));
            }
            if let Some(w) = &value.random_walk
                && !(w.min <= w.start && w.start <= w.max)
            {
                problems.push((at("random_walk"), "needs min <= start <= max".into()));
            }
            if let Some(t) = &value.toggle
                && t.period.is_zero()
            {
                problems.push((at("toggle.period"), "must be longer than zero".into()));
            }
            if let Some(s) = &value.square
                && s.period.is_zero()
            {
                problems.push((at("square.period"), "must be longer than zero".into()));
            }
            if let Some(report) = &value.report {
                report.problems(&at("report"), &mut |path, message| {
                    problems.push((path, message))
                });
            }
            if let Some(c) = &value.cycle {
                if c.states.is_empty() {
                    problems.push((at("cycle.states"), "needs at least one state".into()));
                }
                if c.every.is_zero() {
                    problems.push((at("cycle.every"), "must be longer than zero".into()));
                }
            }
        }
        problems
    }

    pub(crate) fn values(&self) -> Vec<ValueInfo> {
        self.values
            .iter()
            .map(|v| ValueInfo {
                name: v.name.clone(),
                unit: v.unit.clone(),
                writable: false,
                decimals: v.decimals,
                report: v.report.clone(),
                priority: v.priority,
                kind: if v.toggle.is_some() {
                    ValueKind::Bool
                } else if v.cycle.is_some() {
                    ValueKind::Text
                } else if v.counter.is_some() {
                    ValueKind::Counter
                } else {
                    ValueKind::Number
                },
            })
            .collect()
    }

    pub(crate) fn build(&self) -> SimAdapter {
        let rng = match self.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        SimAdapter {
            config: self.clone(),
            names: self
                .values
                .iter()
                .map(|v| Arc::from(v.name.as_str()))
                .collect(),
            walks: self
                .values
                .iter()
                .map(|v| v.random_walk.as_ref().map(|w| w.start))
                .collect(),
            produced: 0,
            rng,
        }
    }
}

/// A running simulated device.
#[derive(Debug)]
pub struct SimAdapter {
    config: SimConfig,
    names: Vec<Arc<str>>,
    walks: Vec<Option<f64>>,
    produced: u64,
    rng: fastrand::Rng,
}

impl SimAdapter {
    fn reading(&mut self, device: &Arc<str>) -> Reading {
        let ts = SystemTime::now();
        let t = ts
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let n = self.produced;
        let mut values = Vec::with_capacity(self.names.len());
        for (i, spec) in self.config.values.iter().enumerate() {
            let value = if let Some(s) = &spec.sine {
                let phase = TAU * t / s.period.as_secs_f64();
                Value::Float(s.mean + s.amplitude * phase.sin() + s.noise * gaussian(&mut self.rng))
            } else if let (Some(w), Some(current)) = (&spec.random_walk, &mut self.walks[i]) {
                let next = *current + w.step * (self.rng.f64() * 2.0 - 1.0);
                *current = next.clamp(w.min, w.max);
                Value::Float(*current)
            } else if let Some(c) = &spec.counter {
                Value::Int(c.start.wrapping_add(c.step.wrapping_mul(n as i64)))
            } else if let Some(tg) = &spec.toggle {
                Value::Bool((t % tg.period.as_secs_f64()) < tg.period.as_secs_f64() / 2.0)
            } else if let Some(s) = &spec.square {
                let first_half = (t % s.period.as_secs_f64()) < s.period.as_secs_f64() / 2.0;
                Value::Float(if first_half { s.high } else { s.low })
            } else if let Some(c) = &spec.cycle {
                let index = (t / c.every.as_secs_f64()) as usize % c.states.len().max(1);
                Value::Text(c.states.get(index).cloned().unwrap_or_default())
            } else {
                continue;
            };
            values.push((self.names[i].clone(), value));
        }
        self.produced += 1;
        Reading {
            device: device.clone(),
            ts,
            values,
            priority: Default::default(),
            provisional: None,
        }
    }

    fn finished(&self) -> bool {
        self.config
            .limit
            .is_some_and(|limit| self.produced >= limit)
    }
}

/// A standard normal sample (Box-Muller).
fn gaussian(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
}

#[async_trait]
impl Adapter for SimAdapter {
    async fn run(&mut self, ctx: &AdapterContext) -> Result<(), AdapterError> {
        let period = self.config.period();
        let tick = period.max(MIN_TICK);
        let per_second = 1.0 / period.as_secs_f64();
        // After a stall (a full pipeline), skip what fell due rather than bursting it all out.
        let max_backlog = (per_second * tick.as_secs_f64() * 4.0).max(1.0) as u64;
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let start = Instant::now();
        let mut emitted_this_run: u64 = 0;
        ctx.set_status(DeviceStatus::Online);
        while !self.finished() {
            tokio::select! {
                () = ctx.cancelled().cancelled() => return Ok(()),
                _ = ticker.tick() => {}
            }
            let due = (start.elapsed().as_secs_f64() * per_second) as u64 + 1;
            emitted_this_run = emitted_this_run.max(due.saturating_sub(max_backlog));
            while emitted_this_run < due && !self.finished() {
                let reading = self.reading(ctx.device());
                ctx.emit(reading).await?;
                emitted_this_run += 1;
            }
        }
        ctx.set_status(DeviceStatus::Finished);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml_values: Vec<SimValue>) -> SimConfig {
        SimConfig {
            interval: None,
            rate: None,
            limit: None,
            seed: Some(7),
            values: yaml_values,
        }
    }

    fn value(name: &str) -> SimValue {
        SimValue {
            name: name.into(),
            unit: None,
            sine: None,
            random_walk: None,
            counter: None,
            toggle: None,
            cycle: None,
            square: None,
            decimals: None,
            report: None,
            priority: Priority::Normal,
        }
    }

    #[test]
    fn counter_counts_and_walk_stays_in_bounds() {
        let mut counter = value("pulses");
        counter.counter = Some(Counter { start: 10, step: 2 });
        let mut walk = value("pressure");
        walk.random_walk = Some(RandomWalk {
            start: 1.0,
            step: 5.0,
            min: 0.0,
            max: 2.0,
        });
        let mut adapter = config(vec![counter, walk]).build();
        let device: Arc<str> = Arc::from("d");
        for n in 0..100 {
            let reading = adapter.reading(&device);
            assert_eq!(reading.values[0].1, Value::Int(10 + 2 * n));
            let Value::Float(p) = reading.values[1].1 else {
                panic!("walk is a float")
            };
            assert!((0.0..=2.0).contains(&p), "{p} out of bounds");
        }
    }

    #[test]
    fn problems_name_the_field() {
        let mut both = value("x");
        both.counter = Some(Counter { start: 0, step: 1 });
        both.toggle = Some(Toggle {
            period: Duration::from_secs(1),
        });
        let mut c = config(vec![both, value("x")]);
        c.rate = Some(0.0);
        let problems = c.problems();
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["rate", "values[0]", "values[1]", "values[1].name"]);
    }
}
