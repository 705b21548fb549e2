//! The regional parameters a downlink is sent by (LoRaWAN Regional Parameters RP002-1.0.x):
//! the channel and data rate of each receive window, the power, and the sub-bands whose duty
//! cycle limits what a gateway may send.

use serde::Deserialize;

/// The region of a site's gateways.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// Europe, 863-870 MHz: RX1 on the uplink's channel and data rate, RX2 on 869.525 MHz at
    /// SF12, and a duty cycle per sub-band.
    #[default]
    Eu868,
    /// North America, 902-928 MHz: RX1 on one of 8 downlink channels at a 500 kHz data rate,
    /// RX2 on 923.3 MHz at SF12BW500; no duty cycle.
    Us915,
}

/// Where and how a downlink goes out.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Frequency in MHz.
    pub freq: f64,
    /// Data rate, "SF9BW125".
    pub datr: String,
    /// Output power in dBm.
    pub powe: u8,
}

/// EU868 sub-bands (ETSI EN 300 220, as RP002 lists them): lowest and highest frequency in
/// MHz, and the share of time a transmitter may use.
const EU868_BANDS: [(f64, f64, f64); 5] = [
    (863.0, 868.0, 0.01),
    (868.0, 868.6, 0.01),
    (868.7, 869.2, 0.001),
    (869.4, 869.65, 0.1),
    (869.7, 870.0, 0.01),
];

impl Region {
    /// RX1 for an uplink heard on `freq` at `datr` (RX1DROffset 0); `None` when the uplink
    /// is not on a channel of the region.
    pub fn rx1(self, freq: f64, datr: &str) -> Option<Window> {
        let (sf, bw) = lora_rate(datr)?;
        match self {
            Region::Eu868 => ((7..=12).contains(&sf) && matches!(bw, 125 | 250)).then(|| Window {
                freq,
                datr: datr.to_string(),
                powe: 14,
            }),
            Region::Us915 => {
                // Uplink channels: 64 of 125 kHz from 902.3 MHz every 200 kHz, then 8 of
                // 500 kHz from 903.0 MHz every 1.6 MHz; downlink channel = uplink mod 8.
                let channel = match bw {
                    125 => step(freq, 902.3, 0.2).filter(|n| *n < 64)?,
                    500 => step(freq, 903.0, 1.6).filter(|n| *n < 8)? + 64,
                    _ => return None,
                };
                // DR0-DR3 (SF10-SF7 at 125 kHz) answer at DR10-DR13 (the same SF at 500 kHz),
                // DR4 (SF8BW500) at DR13 (SF7BW500).
                let down_sf = match (sf, bw) {
                    (7..=10, 125) => sf,
                    (8, 500) => 7,
                    _ => return None,
                };
                Some(Window {
                    freq: round_khz(923.3 + f64::from(channel % 8) * 0.6),
                    datr: format!("SF{down_sf}BW500"),
                    powe: 20,
                })
            }
        }
    }

    /// RX2, at the region's default channel and data rate.
    pub fn rx2(self) -> Window {
        match self {
            Region::Eu868 => Window {
                freq: 869.525,
                datr: "SF12BW125".into(),
                powe: 14,
            },
            Region::Us915 => Window {
                freq: 923.3,
                datr: "SF12BW500".into(),
                powe: 20,
            },
        }
    }

    /// A join accept's DLSettings: RX1DROffset 0, and the region's RX2 data rate (EU868 DR0,
    /// US915 DR8), so that a device keeps the defaults it already has.
    pub fn dl_settings(self) -> u8 {
        match self {
            Region::Eu868 => 0,
            Region::Us915 => 8,
        }
    }

    /// The sub-band of `freq` and its duty cycle, where the region limits it.
    pub fn duty_cycle(self, freq: f64) -> Option<(usize, f64)> {
        match self {
            Region::Eu868 => EU868_BANDS
                .iter()
                .position(|(low, high, _)| (*low..=*high).contains(&freq))
                .map(|band| (band, EU868_BANDS[band].2)),
            Region::Us915 => None,
        }
    }
}

/// The spreading factor and bandwidth (kHz) of "SF7BW125".
pub fn lora_rate(datr: &str) -> Option<(u8, u32)> {
    let (sf, bw) = datr.strip_prefix("SF")?.split_once("BW")?;
    Some((sf.parse().ok()?, bw.parse().ok()?))
}

/// `n` such that `freq` = `first` + `n` × `spacing`, within 10 kHz.
fn step(freq: f64, first: f64, spacing: f64) -> Option<u32> {
    let n = ((freq - first) / spacing).round();
    (n >= 0.0 && (first + n * spacing - freq).abs() < 0.01).then_some(n as u32)
}

/// `freq` in MHz rounded to the kHz, as forwarders write it.
fn round_khz(freq: f64) -> f64 {
    (freq * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eu868_answers_on_the_uplink_channel_and_rate() {
        let rx1 = Region::Eu868.rx1(868.3, "SF9BW125").unwrap();
        assert_eq!((rx1.freq, rx1.datr.as_str()), (868.3, "SF9BW125"));
        assert_eq!(Region::Eu868.rx2().freq, 869.525);
        assert!(Region::Eu868.rx1(868.1, "SF7BW500").is_none());
        assert_eq!(Region::Eu868.duty_cycle(868.1), Some((1, 0.01)));
        assert_eq!(Region::Eu868.duty_cycle(869.525), Some((3, 0.1)));
        assert_eq!(Region::Eu868.duty_cycle(915.0), None);
    }

    #[test]
    fn us915_maps_channels_and_rates_as_rp002_tables_them() {
        // Uplink channel 8 (903.9 MHz, the first of sub-band 2) answers on downlink channel 0.
        let rx1 = Region::Us915.rx1(903.9, "SF10BW125").unwrap();
        assert_eq!((rx1.freq, rx1.datr.as_str()), (923.3, "SF10BW500"));
        // Channel 15 (905.3 MHz) on downlink channel 7, 927.5 MHz.
        let rx1 = Region::Us915.rx1(905.3, "SF7BW125").unwrap();
        assert_eq!((rx1.freq, rx1.datr.as_str()), (927.5, "SF7BW500"));
        // The 500 kHz channel 65 (904.6 MHz) at DR4 answers on channel 1 at DR13.
        let rx1 = Region::Us915.rx1(904.6, "SF8BW500").unwrap();
        assert_eq!((rx1.freq, rx1.datr.as_str()), (923.9, "SF7BW500"));
        assert!(Region::Us915.rx1(903.95, "SF7BW125").is_none(), "off-grid");
        assert!(
            Region::Us915.rx1(903.9, "SF12BW125").is_none(),
            "no such DR"
        );
        assert_eq!(Region::Us915.rx2().datr, "SF12BW500");
        assert_eq!(Region::Us915.duty_cycle(923.3), None);
    }
}
