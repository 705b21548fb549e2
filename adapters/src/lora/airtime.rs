//! How long a downlink keeps a gateway's transmitter busy, and the duty-cycle ledger that
//! refuses a downlink a sub-band has no time left for.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::region::lora_rate;

/// The window a duty cycle is measured over (ETSI EN 300 220: one hour).
const DUTY_WINDOW: Duration = Duration::from_secs(3600);

/// The time on air of a LoRa frame of `len` bytes sent at `datr` ("SF9BW125") and `codr`
/// ("4/5"), as Semtech's SX127x datasheet (4.1.1.7) gives it: an 8-symbol preamble, an
/// explicit header, and no payload CRC (downlinks carry none). `None` for a rate that is not
/// LoRa.
pub fn time_on_air(datr: &str, codr: &str, len: usize, crc: bool) -> Option<Duration> {
    let (sf, bw) = lora_rate(datr)?;
    if !(5..=12).contains(&sf) || bw == 0 {
        return None;
    }
    let cr: i64 = match codr {
        "4/5" => 1,
        "4/6" => 2,
        "4/7" => 3,
        "4/8" => 4,
        _ => return None,
    };
    let symbol = f64::from(1u32 << sf) / (f64::from(bw) * 1000.0);
    // Low data rate optimisation, which SF11 and SF12 at 125 kHz switch on.
    let de = i64::from(bw == 125 && sf >= 11);
    let sf = i64::from(sf);
    let bits = 8 * len as i64 - 4 * sf + 28 + 16 * i64::from(crc);
    let per_block = 4 * (sf - 2 * de);
    let blocks = (bits + per_block - 1).div_euclid(per_block).max(0);
    let symbols = 8.0 + 4.25 + 8.0 + (blocks * (cr + 4)) as f64;
    Some(Duration::from_secs_f64(symbols * symbol))
}

/// The airtime each gateway spent in each sub-band over the last hour.
#[derive(Debug, Default)]
pub struct DutyCycle {
    sent: HashMap<(u64, usize), VecDeque<(Instant, Duration)>>,
}

impl DutyCycle {
    /// Books `airtime` for `gateway` in `band` when that keeps its use within `share` of the
    /// last hour; `false` (nothing booked) when it would not.
    pub fn book(&mut self, gateway: u64, band: usize, share: f64, airtime: Duration) -> bool {
        let now = Instant::now();
        let sent = self.sent.entry((gateway, band)).or_default();
        while sent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= DUTY_WINDOW)
        {
            sent.pop_front();
        }
        let used: Duration = sent.iter().map(|(_, t)| *t).sum();
        if used + airtime > DUTY_WINDOW.mul_f64(share) {
            return false;
        }
        sent.push_back((now, airtime));
        true
    }

    /// Gives back what was booked last for `gateway` in `band`: the gateway did not send it.
    pub fn release(&mut self, gateway: u64, band: usize, airtime: Duration) {
        if let Some(sent) = self.sent.get_mut(&(gateway, band))
            && let Some(i) = sent.iter().rposition(|(_, t)| *t == airtime)
        {
            sent.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(datr: &str, len: usize, crc: bool) -> f64 {
        time_on_air(datr, "4/5", len, crc).unwrap().as_secs_f64() * 1000.0
    }

    #[test]
    fn time_on_air_matches_semtechs_calculator() {
        // Semtech's LoRa calculator and the TTN airtime tables, with CRC (uplinks).
        assert!((ms("SF12BW125", 51, true) - 2465.8).abs() < 0.1);
        assert!((ms("SF7BW125", 51, true) - 102.7).abs() < 0.1);
        assert!((ms("SF7BW125", 13, true) - 46.3).abs() < 0.1);
        assert!((ms("SF12BW125", 13, true) - 1155.1).abs() < 0.1);
        // Without CRC, as downlinks go: 12 bytes (an empty ACK) at SF9 is 3 blocks of
        // 36 bits, 35.25 symbols of 4.096 ms.
        assert!((ms("SF9BW125", 12, false) - 144.4).abs() < 0.1);
        assert!(time_on_air("FSK50000", "4/5", 10, false).is_none());
        assert!(time_on_air("SF7BW125", "4/9", 10, false).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sub_band_refuses_what_its_hour_has_no_room_for() {
        let mut duty = DutyCycle::default();
        let second = Duration::from_secs(1);
        // 1 % of an hour is 36 s.
        for _ in 0..36 {
            assert!(duty.book(1, 0, 0.01, second));
        }
        assert!(!duty.book(1, 0, 0.01, second), "the hour is used up");
        assert!(duty.book(2, 0, 0.01, second), "another gateway has its own");
        assert!(duty.book(1, 3, 0.1, second), "and another band");
        duty.release(1, 0, second);
        assert!(
            duty.book(1, 0, 0.01, second),
            "what was not sent is given back"
        );
        tokio::time::advance(DUTY_WINDOW).await;
        assert!(
            duty.book(1, 0, 0.01, second),
            "an hour later it is free again"
        );
    }
}
