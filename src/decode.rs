//! `cairn decode`: any payload Cairn publishes, of either encoding, as one JSON object per
//! reading, from files or live from a broker, so that a consumer can check what arrives.

use std::io::Write;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

use crate::uplink::encoding::json::{Values, rfc3339_millis};
use crate::uplink::encoding::{self, DecodeError};

/// Topics of the MQTT contract that carry no readings.
const NOT_READINGS: [&str; 5] = ["/status", "/meta", "/set", "/result", "/summary"];

/// Whether `topic` is one of the contract's topics without readings.
pub fn carries_readings(topic: &str) -> bool {
    !NOT_READINGS.iter().any(|end| topic.ends_with(end))
}

/// Writes a line per reading of `payload`, received on `topic` (when known), to `out`.
/// Returns how many readings it held.
pub fn print(
    topic: Option<&str>,
    payload: &[u8],
    out: &mut impl Write,
) -> Result<usize, DecodeError> {
    // A `json` payload names no device: it is the topic's last level.
    let device = topic.and_then(|t| t.rsplit('/').next()).unwrap_or("");
    let readings = encoding::decode(payload, device)?;
    for reading in &readings {
        let line = serde_json::json!({
            "topic": topic,
            "device": if reading.device.is_empty() { None } else { Some(&*reading.device) },
            "seq": reading.seq,
            "ts": rfc3339_millis(reading.ts_ms),
            "values": Values(&reading.values),
            "historical": reading.historical,
            "unsynced": reading.unsynced,
        });
        let _ = writeln!(out, "{line}");
    }
    Ok(readings.len())
}

/// Decodes `topic hex-payload` lines, as `mosquitto_sub -F '%t %x'` prints them, skipping
/// the contract's topics without readings. Returns the number of lines that did not decode,
/// each reported on stderr.
pub fn print_hex_lines(input: impl std::io::BufRead, out: &mut impl Write) -> usize {
    let mut failed = 0;
    for line in input.lines().map_while(Result::ok) {
        let (topic, hex) = line.split_once(' ').unwrap_or((&line, ""));
        if line.is_empty() || !carries_readings(topic) {
            continue;
        }
        let outcome = cairn_adapters::codec::unhex(hex)
            .map_err(|e| e.to_string())
            .and_then(|payload| print(Some(topic), &payload, out).map_err(|e| e.to_string()));
        if let Err(e) = outcome {
            eprintln!("{topic}: {e}");
            failed += 1;
        }
    }
    failed
}

/// Subscribes to `filter` at the broker `url` (`mqtt://host:port` or `mqtts://`) and prints
/// every reading that arrives, until `count` messages with readings did (or forever).
pub async fn subscribe(url: &str, filter: &str, count: Option<usize>) -> Result<(), String> {
    let (tls, host, port) = crate::config::parse_url(url)?;
    let port = port.unwrap_or(if tls { 8883 } else { 1883 });
    let mut options = MqttOptions::new(format!("cairn-decode-{}", std::process::id()), host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(encoding::DECODE_LIMIT, 64 * 1024);
    if tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
        options.set_transport(Transport::tls_with_default_config());
    }
    let (client, mut events) = AsyncClient::new(options, 16);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout().lock();
    let mut messages = 0;
    while count.is_none_or(|n| messages < n) {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) if carries_readings(&publish.topic) => {
                match print(Some(&publish.topic), &publish.payload, &mut stdout) {
                    Ok(_) => messages += 1,
                    Err(e) => eprintln!("{}: {e}", publish.topic),
                }
                let _ = stdout.flush();
            }
            Ok(_) => {}
            Err(e) => return Err(format!("{url}: {e}")),
        }
    }
    Ok(())
}
