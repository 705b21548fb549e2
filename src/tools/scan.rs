//! `cairn scan modbus`: which Modbus units answer on a serial bus or behind a TCP gateway, at
//! which line settings, and which built-in profile each one fits, printed as config to paste.
//!
//! On RS-485 every device on a bus shares the line settings, and most leave the factory at
//! unit 1. So an RTU scan first tries the first few ids of the range at each common setting
//! (the most common first) and, once something answers, sweeps the whole range at that setting
//! only: about 40 s to find an unknown bus instead of half an hour for every id at every setting.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use cairn_adapters::Value;
use cairn_adapters::modbus::scan::{self, Answer, Found};
use cairn_adapters::modbus::{Link, RtuConfig};
use cairn_adapters::serial::Parity;

/// Line settings in the order field devices use them: 9600 8N1 and 19200 8E1 (the Modbus
/// specification's default) cover most; the rest are the other rates meters and sensors offer.
const BAUDS: [u32; 7] = [9600, 19200, 38400, 115200, 4800, 2400, 57600];
const PARITIES: [Parity; 3] = [Parity::None, Parity::Even, Parity::Odd];

/// Ids tried at each setting before the search settles on one.
const FIRST_IDS: usize = 10;

/// What to scan.
#[derive(Debug, Clone)]
pub enum Target {
    /// A serial port, with the baud rates and parities to try.
    Rtu {
        /// The port.
        port: PathBuf,
        /// Baud rates to try, most likely first.
        bauds: Vec<u32>,
        /// Parities to try.
        parities: Vec<Parity>,
    },
    /// A Modbus TCP server or gateway, `host:port`.
    Tcp(String),
}

impl Target {
    /// An RTU target trying `bauds` and `parities`, or every common one when empty.
    pub fn rtu(port: PathBuf, bauds: Vec<u32>, parities: Vec<Parity>) -> Self {
        Target::Rtu {
            port,
            bauds: if bauds.is_empty() {
                BAUDS.to_vec()
            } else {
                bauds
            },
            parities: if parities.is_empty() {
                PARITIES.to_vec()
            } else {
                parities
            },
        }
    }
}

/// What a scan found: the link it found units on, and the units.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The link (with the line settings that worked, for RTU).
    pub link: Link,
    /// The units that answered, in id order.
    pub found: Vec<Found>,
    /// Ids probed in all.
    pub probed: usize,
}

/// Parses `1-247`, `1,2,5` or `7` into unit ids.
pub fn parse_units(text: &str) -> Result<Vec<u8>, String> {
    let mut ids = Vec::new();
    for part in text.split(',').map(str::trim) {
        let id = |s: &str| {
            s.trim()
                .parse::<u8>()
                .map_err(|_| format!("`{s}` is not a unit id (0 to 255)"))
        };
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (id(from)?, id(to)?);
                if from > to {
                    return Err(format!("`{part}`: the range is backwards"));
                }
                ids.extend(from..=to);
            }
            None => ids.push(id(part)?),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Scans `target` for `units`, reporting each step on `progress`; `Err` when the port or
/// server cannot be opened.
pub async fn run(
    target: &Target,
    units: &[u8],
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> Result<Outcome, String> {
    match target {
        Target::Tcp(endpoint) => {
            let link = Link::Tcp(endpoint.clone());
            progress(&format!("{endpoint}: units {}", span(units)));
            let found =
                scan::scan(link.clone(), units.iter().copied(), timeout, true, |_| {}).await?;
            Ok(Outcome {
                link,
                found,
                probed: units.len(),
            })
        }
        Target::Rtu {
            port,
            bauds,
            parities,
        } => {
            let settings: Vec<RtuConfig> = bauds
                .iter()
                .flat_map(|&baud| {
                    parities.iter().map(move |&parity| RtuConfig {
                        port: port.clone(),
                        baud,
                        parity,
                        stop_bits: 1,
                    })
                })
                .collect();
            let mut probed = 0;
            // With one setting there is nothing to search: sweep the range at once.
            let first: &[u8] = if settings.len() > 1 {
                &units[..units.len().min(FIRST_IDS)]
            } else {
                units
            };
            for setting in &settings {
                progress(&format!("{}: units {}", line(setting), span(first)));
                let link = Link::Rtu(setting.clone());
                let found =
                    scan::scan(link.clone(), first.iter().copied(), timeout, false, |_| {}).await?;
                probed += first.len();
                if found.is_empty() {
                    continue;
                }
                progress(&format!(
                    "{}: found unit {}; sweeping units {}",
                    line(setting),
                    found[0].unit,
                    span(units)
                ));
                let found =
                    scan::scan(link.clone(), units.iter().copied(), timeout, true, |_| {}).await?;
                probed += units.len();
                return Ok(Outcome {
                    link,
                    found,
                    probed,
                });
            }
            Ok(Outcome {
                link: Link::Rtu(settings[0].clone()),
                found: Vec::new(),
                probed,
            })
        }
    }
}

fn span(units: &[u8]) -> String {
    match (units.first(), units.last()) {
        (Some(a), Some(b)) if a != b => format!("{a}-{b}"),
        (Some(a), _) => a.to_string(),
        _ => "none".into(),
    }
}

fn line(config: &RtuConfig) -> String {
    let parity = match config.parity {
        Parity::None => 'N',
        Parity::Even => 'E',
        Parity::Odd => 'O',
    };
    format!(
        "{} {} 8{parity}{}",
        config.port.display(),
        config.baud,
        config.stop_bits
    )
}

fn parity_name(parity: Parity) -> &'static str {
    match parity {
        Parity::None => "none",
        Parity::Even => "even",
        Parity::Odd => "odd",
    }
}

fn show(value: &Option<Value>) -> String {
    match value {
        Some(value) => serde_json::to_string(value).unwrap_or_default(),
        None => "?".into(),
    }
}

/// The outcome as people read it: each unit and its fitting profiles, then the devices as
/// config to paste, or what to check when nothing answered.
pub fn render(outcome: &Outcome, units: &[u8]) -> String {
    let mut out = String::new();
    let (where_, device_link) = match &outcome.link {
        Link::Tcp(endpoint) => {
            let (host, port) = endpoint.rsplit_once(':').unwrap_or((endpoint, "502"));
            (
                endpoint.clone(),
                format!("tcp: {{ host: {host}, port: {port} }}"),
            )
        }
        Link::Rtu(c) => (
            line(c),
            format!(
                "rtu: {{ port: {}, baud: {}, parity: {} }}",
                c.port.display(),
                c.baud,
                parity_name(c.parity)
            ),
        ),
    };
    if outcome.found.is_empty() {
        let _ = writeln!(
            out,
            "No unit answered ({} probes of units {}).",
            outcome.probed,
            span(units)
        );
        out.push_str(match outcome.link {
            Link::Rtu(_) => {
                "Check: A and B swapped (the most common fault), 120 ohm termination at both \
                 ends, the device's power, its id (--units) and line settings (--baud, --parity).\n"
            }
            Link::Tcp(_) => {
                "Check the unit ids (--units; many TCP devices answer only at 1 or 255) and \
                 whether the gateway's serial side matches its devices.\n"
            }
        });
        return out;
    }
    let _ = writeln!(out, "{where_}: {} unit(s) answered", outcome.found.len());
    if outcome.found.len() == units.len() && units.len() > 2 {
        out.push_str(
            "Every id answered: this is one device that ignores the unit id (common for Modbus \
             TCP devices); use unit_id 1 or 255.\n",
        );
    }
    for unit in &outcome.found {
        let answer = match &unit.answer {
            Answer::Register(word) => format!("holding register 0 = {word}"),
            Answer::Exception(e) => format!("answered with an exception: {e}"),
        };
        let _ = writeln!(out, "  unit {}: {answer}", unit.unit);
        for fit in &unit.profiles {
            let shown: Vec<String> = fit
                .values
                .iter()
                .map(|(point, value)| format!("{point}={}", show(value)))
                .collect();
            let _ = writeln!(
                out,
                "    profile {} fits (check the values): {}",
                fit.profile,
                shown.join(" ")
            );
        }
    }
    out.push_str("\nAs config (pick the profile whose values look right, or list `points:`):\n");
    out.push_str("devices:\n");
    for unit in &outcome.found {
        let _ = writeln!(out, "  - name: unit-{}", unit.unit);
        out.push_str("    type: modbus\n");
        let _ = writeln!(out, "    {device_link}");
        let _ = writeln!(out, "    unit_id: {}", unit.unit);
        match unit.profiles.first() {
            Some(first) => {
                let others: Vec<&str> = unit.profiles[1..]
                    .iter()
                    .map(|f| f.profile.as_str())
                    .collect();
                let _ = write!(out, "    profile: {}", first.profile);
                if !others.is_empty() {
                    let _ = write!(out, "            # or: {}", others.join(", "));
                }
                out.push('\n');
            }
            None => out.push_str("    points: []               # no built-in profile fits\n"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_ranges() {
        assert_eq!(parse_units("1-3,7,2").unwrap(), [1, 2, 3, 7]);
        assert_eq!(parse_units("247").unwrap(), [247]);
        assert!(parse_units("5-1").unwrap_err().contains("backwards"));
        assert!(parse_units("1-300").unwrap_err().contains("300"));
    }

    #[test]
    fn rtu_defaults_try_the_common_settings_first() {
        let Target::Rtu {
            bauds, parities, ..
        } = Target::rtu("/dev/ttyUSB0".into(), vec![], vec![])
        else {
            panic!("an RTU target");
        };
        assert_eq!(bauds[..2], [9600, 19200]);
        assert_eq!(parities.len(), 3);
    }
}
