//! The Semtech UDP packet-forwarder protocol (GWMP, Lora-net `packet_forwarder` PROTOCOL.TXT):
//! a 4-byte header (version, token, identifier), the gateway's 8-byte EUI, then JSON.
//!
//! Written here rather than taken from the `semtech-udp` crate: that crate rejects protocol
//! version 1, and its `rxpk` requires `lsnr` and `codr`, so one FSK packet (which has neither)
//! fails a whole datagram.

use serde::Deserialize;

/// PUSH_DATA: the gateway forwards received packets and its statistics.
pub const PUSH_DATA: u8 = 0;
/// PUSH_ACK: the server's answer to PUSH_DATA.
pub const PUSH_ACK: u8 = 1;
/// PULL_DATA: the gateway's keepalive, opening the downlink path.
pub const PULL_DATA: u8 = 2;
/// PULL_RESP: a downlink for the gateway to send, to the address its PULL_DATA came from.
pub const PULL_RESP: u8 = 3;
/// PULL_ACK: the server's answer to PULL_DATA.
pub const PULL_ACK: u8 = 4;
/// TX_ACK: the gateway's report on a downlink.
pub const TX_ACK: u8 = 5;

/// One datagram from a gateway.
#[derive(Debug, PartialEq)]
pub struct Datagram<'a> {
    /// Protocol version (1 or 2), echoed in the acknowledgement.
    pub version: u8,
    /// The random token the acknowledgement must carry.
    pub token: [u8; 2],
    /// `PUSH_DATA`, `PULL_DATA` or `TX_ACK`.
    pub kind: u8,
    /// The gateway's EUI.
    pub gateway: u64,
    /// The JSON body (PUSH_DATA, TX_ACK), without a trailing NUL.
    pub body: &'a [u8],
}

/// Why a datagram was dropped; each is counted under [`GwmpError::counter`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GwmpError {
    /// Shorter than the header.
    #[error("{0} bytes is too short for a datagram")]
    Truncated(usize),
    /// Not protocol version 1 or 2.
    #[error("protocol version {0} is not 1 or 2")]
    Version(u8),
    /// An identifier a gateway does not send.
    #[error("identifier {0:#04x} is not an upstream message")]
    Kind(u8),
}

impl GwmpError {
    /// The name of the device error counter.
    pub fn counter(&self) -> &'static str {
        match self {
            GwmpError::Truncated(_) => "truncated",
            GwmpError::Version(_) => "bad_version",
            GwmpError::Kind(_) => "bad_identifier",
        }
    }
}

/// Parses the header of a datagram from a gateway.
pub fn parse(datagram: &[u8]) -> Result<Datagram<'_>, GwmpError> {
    let [version, t0, t1, kind, rest @ ..] = datagram else {
        return Err(GwmpError::Truncated(datagram.len()));
    };
    if !matches!(version, 1 | 2) {
        return Err(GwmpError::Version(*version));
    }
    if !matches!(*kind, PUSH_DATA | PULL_DATA | TX_ACK) {
        return Err(GwmpError::Kind(*kind));
    }
    let Some((eui, body)) = rest.split_first_chunk::<8>() else {
        return Err(GwmpError::Truncated(datagram.len()));
    };
    Ok(Datagram {
        version: *version,
        token: [*t0, *t1],
        kind: *kind,
        gateway: u64::from_be_bytes(*eui),
        body: body.strip_suffix(&[0]).unwrap_or(body),
    })
}

/// The acknowledgement of `datagram`, or `None` for messages that take none (TX_ACK).
pub fn ack(datagram: &Datagram<'_>) -> Option<[u8; 4]> {
    let kind = match datagram.kind {
        PUSH_DATA => PUSH_ACK,
        PULL_DATA => PULL_ACK,
        _ => return None,
    };
    Some([datagram.version, datagram.token[0], datagram.token[1], kind])
}

/// The JSON of a PUSH_DATA. Each packet and the statistics are parsed on their own, so that
/// one malformed entry costs only itself.
#[derive(Debug, Deserialize)]
pub struct PushData {
    /// Received packets.
    #[serde(default)]
    rxpk: Vec<serde_json::Value>,
    /// The gateway's statistics.
    stat: Option<serde_json::Value>,
}

impl PushData {
    /// The received packets, each parsed or the reason it is not.
    pub fn packets(self) -> impl Iterator<Item = Result<RxPk, serde_json::Error>> {
        self.rxpk.into_iter().map(serde_json::from_value)
    }

    /// The gateway's statistics, if the datagram has them.
    pub fn stat(&self) -> Option<Result<Stat, serde_json::Error>> {
        self.stat.clone().map(serde_json::from_value)
    }
}

/// One received packet. Only what Cairn uses is required; the rest varies between forwarders.
#[derive(Debug, Deserialize)]
pub struct RxPk {
    /// Centre frequency in MHz.
    pub freq: f64,
    /// CRC status: 1 good, -1 bad, 0 none.
    pub stat: i8,
    /// "SF7BW125" for LoRa, bits per second for FSK.
    pub datr: DataRate,
    /// RSSI in dBm (absent from version 2 `rsig` packets).
    pub rssi: Option<f64>,
    /// LoRa SNR in dB.
    pub lsnr: Option<f64>,
    /// Per-antenna signal of SX1302 forwarders (JSON version 2).
    #[serde(default)]
    pub rsig: Vec<RSig>,
    /// Payload size in bytes.
    pub size: Option<usize>,
    /// Payload, base64.
    pub data: String,
    /// The concentrator's microsecond counter at the end of reception: downlinks are timed
    /// from it (it wraps every 71 minutes).
    pub tmst: Option<u32>,
    /// LoRa coding rate, "4/5".
    pub codr: Option<String>,
    /// UTC time of reception, ISO 8601 (gateways with GPS, or a host clock, give it).
    pub time: Option<String>,
    /// GPS time of reception in milliseconds since 1980-01-06 (gateways with GPS).
    pub tmms: Option<u64>,
}

impl RxPk {
    /// GPS time at reception, from `tmms`, else from `time` (UTC, plus the 18 leap seconds
    /// GPS has gained since 1980).
    pub fn gps_time(&self) -> Option<std::time::Duration> {
        if let Some(ms) = self.tmms {
            return Some(std::time::Duration::from_millis(ms));
        }
        let utc = humantime_serde::re::humantime::parse_rfc3339(self.time.as_deref()?).ok()?;
        gps_from_utc(utc)
    }
}

/// GPS time (since 1980-01-06, without leap seconds) of a UTC time: the 18 leap seconds GPS
/// has gained since 1980 added; none has been announced since 2017.
pub fn gps_from_utc(utc: std::time::SystemTime) -> Option<std::time::Duration> {
    /// 1980-01-06T00:00:00Z in Unix seconds.
    const GPS_EPOCH: u64 = 315_964_800;
    const LEAP_SECONDS: u64 = 18;
    let unix = utc.duration_since(std::time::UNIX_EPOCH).ok()?;
    unix.checked_sub(std::time::Duration::from_secs(GPS_EPOCH - LEAP_SECONDS))
}

/// A downlink as PULL_RESP carries it (`txpk`), sent at a concentrator time.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TxPk {
    /// false: send at `tmst`.
    pub imme: bool,
    /// The concentrator time to send at, in microseconds.
    pub tmst: u32,
    /// Frequency in MHz.
    pub freq: f64,
    /// The radio chain to send on.
    pub rfch: u8,
    /// Output power in dBm.
    pub powe: u8,
    /// "LORA".
    pub modu: &'static str,
    /// "SF7BW125".
    pub datr: String,
    /// "4/5".
    pub codr: String,
    /// Inverted polarity: true for every LoRaWAN downlink.
    pub ipol: bool,
    /// Payload size in bytes.
    pub size: usize,
    /// Payload, base64.
    pub data: String,
}

/// A PULL_RESP datagram carrying `txpk`, with `token` (protocol version 2).
pub fn pull_resp(token: [u8; 2], txpk: &TxPk) -> Vec<u8> {
    let mut datagram = vec![2, token[0], token[1], PULL_RESP];
    let body = serde_json::json!({ "txpk": txpk });
    datagram.extend_from_slice(body.to_string().as_bytes());
    datagram
}

/// The error a TX_ACK reports, if any (`NONE`, or no body, means the downlink was taken).
pub fn tx_ack_error(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = json.get("txpk_ack")?.get("error")?.as_str()?;
    (error != "NONE").then(|| error.to_ascii_lowercase())
}

/// A data rate as the forwarder writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DataRate {
    /// LoRa: "SF7BW125".
    Lora(String),
    /// FSK: bits per second.
    Fsk(u32),
}

impl std::fmt::Display for DataRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataRate::Lora(s) => f.write_str(s),
            DataRate::Fsk(bps) => write!(f, "FSK{bps}"),
        }
    }
}

/// The signal on one antenna (JSON version 2).
#[derive(Debug, Deserialize)]
pub struct RSig {
    /// Channel RSSI in dBm.
    pub rssic: Option<f64>,
    /// SNR in dB.
    pub lsnr: Option<f64>,
}

impl RxPk {
    /// RSSI, from the packet or its best antenna.
    pub fn rssi(&self) -> Option<f64> {
        self.rssi
            .or_else(|| self.rsig.iter().filter_map(|r| r.rssic).reduce(f64::max))
    }

    /// SNR, from the packet or its best antenna.
    pub fn snr(&self) -> Option<f64> {
        self.lsnr
            .or_else(|| self.rsig.iter().filter_map(|r| r.lsnr).reduce(f64::max))
    }
}

/// A gateway's statistics since its last report.
#[derive(Debug, Default, Deserialize)]
pub struct Stat {
    /// Latitude, degrees.
    pub lati: Option<f64>,
    /// Longitude, degrees.
    pub long: Option<f64>,
    /// Altitude, metres.
    pub alti: Option<f64>,
    /// Packets received.
    pub rxnb: Option<u64>,
    /// Packets received with a good CRC.
    pub rxok: Option<u64>,
    /// Packets forwarded.
    pub rxfw: Option<u64>,
    /// Percentage of upstream datagrams acknowledged.
    pub ackr: Option<f64>,
    /// Downlink datagrams received.
    pub dwnb: Option<u64>,
    /// Packets emitted.
    pub txnb: Option<u64>,
    /// Board temperature, °C (some forwarders).
    pub temp: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gps_time_comes_from_tmms_or_utc_with_the_leap_seconds() {
        let rxpk = |extra: serde_json::Value| -> RxPk {
            let mut json =
                serde_json::json!({"freq": 868.1, "stat": 1, "datr": "SF7BW125", "data": ""});
            json.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(json).unwrap()
        };
        // 2017-01-01T00:00:00Z is GPS second 1,167,264,018.
        let utc = rxpk(serde_json::json!({"time": "2017-01-01T00:00:00.250000Z"}));
        assert_eq!(
            utc.gps_time(),
            Some(std::time::Duration::from_millis(1_167_264_018_250))
        );
        let gps = rxpk(serde_json::json!({"time": "2017-01-01T00:00:00Z", "tmms": 5}));
        assert_eq!(gps.gps_time(), Some(std::time::Duration::from_millis(5)));
        assert_eq!(
            rxpk(serde_json::json!({"time": "yesterday"})).gps_time(),
            None
        );
        assert_eq!(rxpk(serde_json::json!({})).gps_time(), None);
    }

    #[test]
    fn headers_and_acknowledgements() {
        let mut push = vec![2, 0xAB, 0xCD, PUSH_DATA, 0xAA, 0x55, 0x5A, 0, 0, 0, 0, 1];
        push.extend_from_slice(b"{\"stat\":{}}\0");
        let datagram = parse(&push).unwrap();
        assert_eq!(datagram.gateway, 0xAA555A0000000001);
        assert_eq!(datagram.body, b"{\"stat\":{}}");
        assert_eq!(ack(&datagram), Some([2, 0xAB, 0xCD, PUSH_ACK]));
        let pull = parse(&[1, 0, 7, PULL_DATA, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(ack(&pull), Some([1, 0, 7, PULL_ACK]));
        let tx_ack = parse(&[2, 0, 7, TX_ACK, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(ack(&tx_ack), None);
    }

    #[test]
    fn bad_headers_are_named() {
        assert_eq!(parse(&[2, 0]), Err(GwmpError::Truncated(2)));
        assert_eq!(
            parse(&[2, 0, 0, PUSH_DATA, 1, 2]),
            Err(GwmpError::Truncated(6))
        );
        assert_eq!(
            parse(&[3, 0, 0, PUSH_DATA, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(GwmpError::Version(3))
        );
        assert_eq!(
            parse(&[2, 0, 0, PUSH_ACK, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(GwmpError::Kind(PUSH_ACK))
        );
    }

    #[test]
    fn one_malformed_packet_costs_only_itself() {
        let json =
            br#"{"rxpk":[{"freq":"high"},{"freq":868.1,"stat":1,"datr":"SF7BW125","data":"AA=="}],
                        "stat":{"rxnb":"two"}}"#;
        let push: PushData = serde_json::from_slice(json).unwrap();
        assert!(push.stat().unwrap().is_err());
        let parsed: Vec<bool> = push.packets().map(|p| p.is_ok()).collect();
        assert_eq!(parsed, [false, true]);
    }

    #[test]
    fn fsk_and_version_2_packets_parse() {
        let json = br#"{"rxpk":[
            {"tmst":1,"chan":9,"rfch":1,"freq":869.1,"stat":1,"modu":"FSK","datr":50000,"rssi":-75,"size":16,"data":"VEVTVF9QQUNLRVRfMTIzNA=="},
            {"jver":2,"tmst":2,"chan":0,"rfch":0,"freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","size":1,"data":"AA==",
             "rsig":[{"ant":0,"chan":0,"rssic":-80,"lsnr":7.5},{"ant":1,"chan":0,"rssic":-70,"lsnr":9.0}]}
        ]}"#;
        let push: PushData = serde_json::from_slice(json).unwrap();
        let rxpk: Vec<RxPk> = push.packets().map(Result::unwrap).collect();
        assert_eq!(rxpk[0].datr.to_string(), "FSK50000");
        assert_eq!(rxpk[0].snr(), None);
        assert_eq!(rxpk[1].rssi(), Some(-70.0));
        assert_eq!(rxpk[1].snr(), Some(9.0));
    }
}
