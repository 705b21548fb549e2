//! Finding what answers on a Modbus link, for `cairn scan modbus`: which unit ids respond, and
//! which built-in profiles their registers fit.
//!
//! A unit is probed by reading holding register 0. Any answer, data or an exception such as
//! "illegal data address", shows that a device has that id; silence, a transport error, or a
//! TCP gateway's "gateway path unavailable" / "target device failed to respond" (0x0A, 0x0B)
//! show that none has. After silence the link is reopened, so that a late answer is never read
//! as the next unit's.

use std::time::Duration;

use tokio_modbus::client::Client;
use tokio_modbus::{ExceptionCode, Request as ModbusRequest};

use super::bus::{Bus, Link};
use super::plan::plan;
use super::{Profile, read};
use crate::config::AdapterKind;
use crate::reading::Value;

/// How a probed unit answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// It returned holding register 0.
    Register(u16),
    /// It answered with an exception, which still shows it is there.
    Exception(String),
}

/// A built-in profile a unit fits: its name, and each of its points with the value read.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// The profile's name (`profile: <name>`).
    pub profile: String,
    /// Each point's name and what the unit answered for it.
    pub values: Vec<(String, Option<Value>)>,
}

/// A unit that answered, and the profiles whose registers it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Its unit id.
    pub unit: u8,
    /// Its answer to the probe.
    pub answer: Answer,
    /// Each built-in profile every register of which it answered, with the values read.
    pub profiles: Vec<Fit>,
}

/// Probes one unit: `Ok(Some)` when something answered as it, `Err` when the link cannot be
/// opened at all (a missing port, a refused connection).
pub async fn probe(bus: &mut Bus, unit: u8, timeout: Duration) -> Result<Option<Answer>, String> {
    let call = ModbusRequest::ReadHoldingRegisters(0, 1);
    let modbus = bus.unit(unit, timeout).await?;
    let outcome = tokio::time::timeout(timeout, modbus.call(call)).await;
    bus.done();
    Ok(match outcome {
        Ok(Ok(Ok(tokio_modbus::Response::ReadHoldingRegisters(words)))) => {
            Some(Answer::Register(words.first().copied().unwrap_or_default()))
        }
        Ok(Ok(Ok(_))) => Some(Answer::Exception("an answer of another function".into())),
        Ok(Ok(Err(ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice))) => {
            None
        }
        Ok(Ok(Err(code))) => Some(Answer::Exception(format!("{code}"))),
        Ok(Err(_)) | Err(_) => {
            bus.broken();
            None
        }
    })
}

/// The built-in profiles whose every register `unit` answers, with what it answered.
pub async fn profiles(bus: &mut Bus, unit: u8, timeout: Duration) -> Vec<Fit> {
    let mut fitting = Vec::new();
    'profiles: for name in crate::profiles::names(AdapterKind::Modbus) {
        let Ok(profile) = crate::profiles::load::<Profile>(AdapterKind::Modbus, name) else {
            continue;
        };
        let points: Vec<&super::Point> = profile.points.iter().collect();
        let mut values = vec![None; points.len()];
        for request in plan(&points, 8) {
            let words = match bus.unit(unit, timeout).await {
                Ok(modbus) => tokio::time::timeout(timeout, read(modbus, &request)).await,
                Err(_) => continue 'profiles,
            };
            bus.done();
            match words {
                Ok(Ok(Ok(words))) => {
                    for (i, value) in request.decode(&profile.points, &words) {
                        values[i] = value;
                    }
                }
                Ok(Ok(Err(_))) => continue 'profiles,
                Ok(Err(_)) | Err(_) => {
                    bus.broken();
                    continue 'profiles;
                }
            }
        }
        fitting.push(Fit {
            profile: name.to_string(),
            values: profile
                .points
                .iter()
                .map(|p| p.name.clone())
                .zip(values)
                .collect(),
        });
    }
    fitting
}

/// Probes `units` on `link` in turn, calling `progress` before each; then tries the profiles
/// on each unit that answered. `Err` when the link cannot be opened.
pub async fn scan(
    link: Link,
    units: impl IntoIterator<Item = u8>,
    timeout: Duration,
    with_profiles: bool,
    mut progress: impl FnMut(u8),
) -> Result<Vec<Found>, String> {
    let mut bus = Bus::new(link);
    let mut found = Vec::new();
    for unit in units {
        progress(unit);
        if let Some(answer) = probe(&mut bus, unit, timeout).await? {
            found.push(Found {
                unit,
                answer,
                profiles: Vec::new(),
            });
        }
    }
    if with_profiles {
        for unit in &mut found {
            unit.profiles = profiles(&mut bus, unit.unit, timeout).await;
        }
    }
    Ok(found)
}
