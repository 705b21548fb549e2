//! The packet-forwarder endpoint: a UDP socket that acknowledges what gateways send, routes
//! each LoRaWAN frame to the end device that owns its DevAddr, and turns gateway statistics
//! into readings. Every datagram or packet it cannot use is counted by reason; none stops it.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use tokio::net::UdpSocket;

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::airtime::{DutyCycle, time_on_air};
use super::gwmp::{self, PushData, RxPk, Stat, TxPk};
use super::lorawan::{self, FrameKind};
use super::radio::{Radio, eui};
use super::region::Region;
use super::routing::{Downlink, Heard, NotSent, Radios, Route, RxWindow, Timing};
use super::{ForwarderConfig, UnknownDevices, parse_eui};
use crate::adapter::{Adapter, AdapterContext, AdapterError, DeviceStatus};
use crate::codec::hex;
use crate::reading::{Reading, Value};

/// The readings of gateway statistics, with units.
pub(super) const STAT_VALUES: [(&str, Option<&str>); 10] = [
    ("rx_packets", None),
    ("rx_ok", None),
    ("rx_forwarded", None),
    ("ack_ratio", Some("%")),
    ("downlinks", None),
    ("tx_packets", None),
    ("latitude", Some("°")),
    ("longitude", Some("°")),
    ("altitude", Some("m")),
    ("temperature", Some("°C")),
];

/// The values of a frame from an unknown DevAddr, when they are published.
pub(super) const UNKNOWN_VALUES: [&str; 4] = ["dev_addr", "fcnt", "fport", "payload"];

/// Payloads are base64, padded by the specification but not by every forwarder (nor by the
/// specification's own examples).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// How long a gateway has to answer a PULL_RESP with TX_ACK. Forwarders of protocol 1
/// never do: their downlinks count as sent when this has passed.
const TX_ACK_WAIT: Duration = Duration::from_secs(2);

/// A running packet-forwarder endpoint.
pub(super) struct Forwarder {
    config: ForwarderConfig,
    radio: bool,
    radios: Radios,
    allowed: Vec<u64>,
    /// Where each gateway's PULL_DATA came from: its downlinks go there.
    pulls: HashMap<u64, SocketAddr>,
    /// Downlinks sent and waiting for their TX_ACK, by token.
    pending: HashMap<[u8; 2], Pending>,
    duty: DutyCycle,
}

/// A downlink the gateway has not yet acknowledged, with the windows left to try.
struct Pending {
    gateway: u64,
    region: Region,
    window: RxWindow,
    /// The duty-cycle booking it holds: sub-band and airtime.
    booked: Option<(usize, Duration)>,
    /// RX2, when RX1 was tried first.
    fallback: Option<TxPk>,
    sent: oneshot::Sender<Result<RxWindow, NotSent>>,
    since: Instant,
}

impl Forwarder {
    pub(super) fn new(config: ForwarderConfig, radio: bool, radios: Radios) -> Self {
        let allowed = config
            .gateways
            .iter()
            .filter_map(|g| parse_eui(g))
            .collect();
        Self {
            config,
            radio,
            radios,
            allowed,
            pulls: HashMap::new(),
            pending: HashMap::new(),
            duty: DutyCycle::default(),
        }
    }

    /// Handles one datagram from `peer`.
    async fn datagram(
        &mut self,
        ctx: &AdapterContext,
        socket: &UdpSocket,
        datagram: &[u8],
        peer: SocketAddr,
    ) -> Result<(), AdapterError> {
        let counters = ctx.counters();
        if datagram.len() > self.config.max_datagram {
            counters.count_error("oversize");
            return Ok(());
        }
        let packet = match gwmp::parse(datagram) {
            Ok(packet) => packet,
            Err(e) => {
                tracing::debug!(device = %ctx.device(), peer = %peer, error = %e, "Datagram dropped");
                counters.count_error(e.counter());
                return Ok(());
            }
        };
        if !self.allowed.is_empty() && !self.allowed.contains(&packet.gateway) {
            tracing::debug!(device = %ctx.device(), gateway = %eui(packet.gateway), "Datagram from a gateway not in `gateways`");
            counters.count_error("unknown_gateway");
            return Ok(());
        }
        if let Some(ack) = gwmp::ack(&packet)
            && let Err(e) = socket.send_to(&ack, peer).await
        {
            tracing::debug!(device = %ctx.device(), peer = %peer, error = %e, "Acknowledgement not sent");
        }
        match packet.kind {
            gwmp::PULL_DATA => {
                self.pulls.insert(packet.gateway, peer);
                return Ok(());
            }
            gwmp::TX_ACK => {
                let error = gwmp::tx_ack_error(packet.body);
                if let Some(error) = &error {
                    tracing::warn!(device = %ctx.device(), gateway = %eui(packet.gateway), error = %error, "The gateway did not send a downlink");
                    counters.count_error(tx_error(error));
                }
                self.tx_ack(ctx, socket, packet.token, error).await;
                return Ok(());
            }
            _ => {}
        }
        let push: PushData = match serde_json::from_slice(packet.body) {
            Ok(push) => push,
            Err(e) => {
                tracing::debug!(device = %ctx.device(), error = %e, "PUSH_DATA with malformed JSON");
                counters.count_error("bad_json");
                return Ok(());
            }
        };
        let stat = push.stat();
        for rxpk in push.packets() {
            match rxpk {
                Ok(rxpk) => self.packet(ctx, &rxpk, packet.gateway).await?,
                Err(e) => {
                    tracing::debug!(device = %ctx.device(), error = %e, "Malformed rxpk entry");
                    counters.count_error("bad_rxpk");
                }
            }
        }
        match stat {
            Some(Ok(stat)) => {
                ctx.emit(self.stat_reading(ctx, &stat, packet.gateway))
                    .await?
            }
            Some(Err(e)) => {
                tracing::debug!(device = %ctx.device(), error = %e, "Malformed stat entry");
                counters.count_error("bad_stat");
            }
            None => {}
        }
        Ok(())
    }

    /// Routes one received packet to its end device.
    async fn packet(
        &self,
        ctx: &AdapterContext,
        rxpk: &RxPk,
        gateway: u64,
    ) -> Result<(), AdapterError> {
        let counters = ctx.counters();
        let (phy, kind, dev_addr) = match received(rxpk) {
            Ok(frame) => frame,
            Err(reason) => {
                counters.count_error(reason);
                return Ok(());
            }
        };
        let radio = Radio {
            rssi: rxpk.rssi(),
            snr: rxpk.snr(),
            frequency: Some(rxpk.freq),
            data_rate: Some(rxpk.datr.to_string()),
            gateway: Some(gateway),
        };
        let timing = rxpk.tmst.map(|tmst| Timing {
            gateway,
            tmst,
            freq: rxpk.freq,
            datr: rxpk.datr.to_string(),
            codr: rxpk.codr.clone().unwrap_or_else(|| "4/5".into()),
            region: self.config.region,
            gps_time: rxpk.gps_time().or_else(host_gps_time),
        });
        let dev_addr = match (kind, dev_addr) {
            (FrameKind::DataUp, Some(dev_addr)) => dev_addr,
            (FrameKind::JoinRequest, _) => {
                let Some(dev_eui) = super::join::dev_eui(&phy) else {
                    counters.count_error("not_lorawan");
                    return Ok(());
                };
                let heard = Heard { phy, radio, timing };
                match self.radios.route_join(ctx.device(), dev_eui, heard) {
                    Route::Delivered => {}
                    Route::Busy => counters.count_error("device_busy"),
                    Route::Unknown => {
                        tracing::debug!(device = %ctx.device(), dev_eui = %format!("{dev_eui:016X}"), "Join request from a DevEUI no device claims");
                        counters.count_error("unknown_join");
                    }
                }
                return Ok(());
            }
            _ => {
                counters.count_error("not_uplink");
                return Ok(());
            }
        };
        let unknown = match self.radios.route(
            ctx.device(),
            dev_addr,
            Heard {
                phy: phy.clone(),
                radio: radio.clone(),
                timing,
            },
        ) {
            Route::Delivered => return Ok(()),
            Route::Busy => {
                counters.count_error("device_busy");
                return Ok(());
            }
            Route::Unknown => unknown_frame(&phy, dev_addr),
        };
        counters.count_error("unknown_device");
        tracing::debug!(device = %ctx.device(), dev_addr = %format!("{dev_addr:08X}"), "Frame from a DevAddr no device claims");
        if self.config.unknown_devices == UnknownDevices::Publish {
            let mut values = unknown;
            if self.radio {
                radio.push_values(&mut values);
            }
            ctx.emit(Reading::now(ctx.device().clone(), values)).await?;
        }
        Ok(())
    }

    /// Sends `downlink` to its gateway, at the address of the gateway's last PULL_DATA, in
    /// the first receive window whose sub-band has duty cycle left.
    async fn downlink(&mut self, ctx: &AdapterContext, socket: &UdpSocket, downlink: Downlink) {
        let timing = &downlink.timing;
        let region = timing.region;
        let window = |delay_us: u32, rx: super::region::Window| TxPk {
            imme: false,
            tmst: timing.tmst.wrapping_add(delay_us),
            freq: rx.freq,
            rfch: 0,
            powe: rx.powe,
            modu: "LORA",
            datr: rx.datr,
            codr: timing.codr.clone(),
            ipol: true,
            size: downlink.phy.len(),
            data: base64::engine::general_purpose::STANDARD.encode(&downlink.phy),
        };
        let rx2 = (
            RxWindow::Rx2,
            window(
                downlink.rx1_delay_us.saturating_add(1_000_000),
                region.rx2(),
            ),
        );
        // An uplink off the region's channels has no RX1; RX2 is fixed.
        let windows = match region.rx1(timing.freq, &timing.datr) {
            Some(rx1) => vec![(RxWindow::Rx1, window(downlink.rx1_delay_us, rx1)), rx2],
            None => vec![rx2],
        };
        let gateway = (timing.gateway, region);
        self.try_windows(ctx, socket, gateway, windows, downlink.sent)
            .await;
    }

    /// Sends the first of `windows` the duty cycle allows, keeping the rest for a refusal.
    async fn try_windows(
        &mut self,
        ctx: &AdapterContext,
        socket: &UdpSocket,
        (gateway, region): (u64, Region),
        windows: Vec<(RxWindow, TxPk)>,
        sent: oneshot::Sender<Result<RxWindow, NotSent>>,
    ) {
        let counters = ctx.counters();
        let Some(peer) = self.pulls.get(&gateway).copied() else {
            tracing::warn!(device = %ctx.device(), gateway = %eui(gateway), "Downlink dropped: the gateway has sent no PULL_DATA yet");
            counters.count_error("no_downlink_path");
            let _ = sent.send(Err(NotSent::NoPath));
            return;
        };
        let mut windows = windows.into_iter();
        while let Some((window, txpk)) = windows.next() {
            let band = region.duty_cycle(txpk.freq);
            let booked = match (band, time_on_air(&txpk.datr, &txpk.codr, txpk.size, false)) {
                (Some((band, share)), Some(airtime)) => {
                    if !self.duty.book(gateway, band, share, airtime) {
                        tracing::debug!(device = %ctx.device(), gateway = %eui(gateway), window = window.name(), "Receive window refused: its sub-band's duty cycle is used up");
                        counters.count_error("duty_cycle");
                        continue;
                    }
                    Some((band, airtime))
                }
                _ => None,
            };
            let token = fastrand::u16(..).to_le_bytes();
            let datagram = gwmp::pull_resp(token, &txpk);
            if let Err(e) = socket.send_to(&datagram, peer).await {
                tracing::warn!(device = %ctx.device(), peer = %peer, error = %e, "Downlink not sent");
                counters.count_error("downlink_not_sent");
                if let Some((band, airtime)) = booked {
                    self.duty.release(gateway, band, airtime);
                }
                continue;
            }
            self.pending.insert(
                token,
                Pending {
                    gateway,
                    region,
                    window,
                    booked,
                    fallback: windows.next().map(|(_, txpk)| txpk),
                    sent,
                    since: Instant::now(),
                },
            );
            return;
        }
        let _ = sent.send(Err(NotSent::DutyCycle));
    }

    /// The gateway's answer to the PULL_RESP with `token`: taken, or refused with `error`,
    /// in which case RX2 is tried when RX1 was.
    async fn tx_ack(
        &mut self,
        ctx: &AdapterContext,
        socket: &UdpSocket,
        token: [u8; 2],
        error: Option<String>,
    ) {
        let Some(pending) = self.pending.remove(&token) else {
            return;
        };
        let Some(error) = error else {
            let _ = pending.sent.send(Ok(pending.window));
            return;
        };
        if let Some((band, airtime)) = pending.booked {
            self.duty.release(pending.gateway, band, airtime);
        }
        match pending.fallback {
            Some(rx2) => {
                tracing::info!(device = %ctx.device(), gateway = %eui(pending.gateway), error = %error, "RX1 refused by the gateway; trying RX2");
                let windows = vec![(RxWindow::Rx2, rx2)];
                let gateway = (pending.gateway, pending.region);
                self.try_windows(ctx, socket, gateway, windows, pending.sent)
                    .await;
            }
            None => {
                let _ = pending.sent.send(Err(NotSent::Refused(error)));
            }
        }
    }

    /// Downlinks whose gateway sent no TX_ACK in time count as sent: forwarders of protocol
    /// 1 send none.
    fn tx_ack_overdue(&mut self) {
        let now = Instant::now();
        let overdue: Vec<[u8; 2]> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= TX_ACK_WAIT)
            .map(|(token, _)| *token)
            .collect();
        for token in overdue {
            if let Some(pending) = self.pending.remove(&token) {
                let _ = pending.sent.send(Ok(pending.window));
            }
        }
    }

    fn stat_reading(&self, ctx: &AdapterContext, stat: &Stat, gateway: u64) -> Reading {
        let int = |n: Option<u64>| n.map(|n| Value::Int(n as i64));
        let float = |f: Option<f64>| f.map(Value::Float);
        let fields = [
            int(stat.rxnb),
            int(stat.rxok),
            int(stat.rxfw),
            float(stat.ackr),
            int(stat.dwnb),
            int(stat.txnb),
            float(stat.lati),
            float(stat.long),
            float(stat.alti),
            float(stat.temp),
        ];
        let mut values: Vec<(Arc<str>, Value)> = STAT_VALUES
            .iter()
            .zip(fields)
            .filter_map(|((name, _), value)| Some((Arc::from(*name), value?)))
            .collect();
        if self.radio {
            Radio {
                gateway: Some(gateway),
                ..Radio::default()
            }
            .push_values(&mut values);
        }
        Reading::now(ctx.device().clone(), values)
    }
}

/// The PHYPayload of a LoRaWAN data uplink and its DevAddr, or the counter of why the packet
/// is dropped (the fuzz target's way into [`received`]).
#[cfg(fuzzing)]
pub fn data_frame(rxpk: &RxPk) -> Result<(Vec<u8>, u32), &'static str> {
    match received(rxpk)? {
        (phy, FrameKind::DataUp, Some(dev_addr)) => Ok((phy, dev_addr)),
        (_, FrameKind::JoinRequest, _) => Err("join_request"),
        _ => Err("not_uplink"),
    }
}

/// The PHYPayload of a received LoRaWAN frame, its kind and (for data) its DevAddr, or the
/// counter of why the packet is dropped.
fn received(rxpk: &RxPk) -> Result<(Vec<u8>, FrameKind, Option<u32>), &'static str> {
    match rxpk.stat {
        1 => {}
        0 => return Err("no_crc"),
        _ => return Err("bad_crc"),
    }
    let phy = BASE64.decode(&rxpk.data).map_err(|_| "bad_base64")?;
    if rxpk.size.is_some_and(|size| size != phy.len()) {
        return Err("bad_size");
    }
    let (kind, dev_addr) = lorawan::peek(&phy).ok_or("not_lorawan")?;
    Ok((phy, kind, dev_addr))
}

/// This host's clock as GPS time, if it is plausible: a Pi without a real-time clock starts in
/// 1970 until NTP syncs, so its clock is not believed before 2026.
fn host_gps_time() -> Option<Duration> {
    /// 2026-01-01T00:00:00Z, in Unix seconds.
    const PLAUSIBLE_FROM: u64 = 1_767_225_600;
    let now = std::time::SystemTime::now();
    let unix = now.duration_since(std::time::UNIX_EPOCH).ok()?;
    if unix.as_secs() < PLAUSIBLE_FROM {
        return None;
    }
    gwmp::gps_from_utc(now)
}

/// The counter of a TX_ACK error (Semtech's names, lower case).
fn tx_error(error: &str) -> &'static str {
    match error {
        "too_late" => "tx_too_late",
        "too_early" => "tx_too_early",
        "collision_packet" => "tx_collision",
        "collision_beacon" => "tx_collision_beacon",
        "tx_freq" => "tx_freq",
        "tx_power" => "tx_power",
        "gps_unlocked" => "tx_gps_unlocked",
        _ => "tx_error",
    }
}

/// What can be read of a frame without its keys.
pub fn unknown_frame(phy: &[u8], dev_addr: u32) -> Vec<(Arc<str>, Value)> {
    let [dev_addr_name, fcnt, fport, payload] = UNKNOWN_VALUES;
    let mut values = vec![(
        Arc::from(dev_addr_name),
        Value::Text(format!("{dev_addr:08X}")),
    )];
    if let Some(count) = phy.get(6..8) {
        values.push((
            Arc::from(fcnt),
            Value::Int(i64::from(u16::from_le_bytes([count[0], count[1]]))),
        ));
    }
    // MHDR, DevAddr, FCtrl, FCnt and FOpts (length in FCtrl), then FPort and the payload,
    // then the MIC.
    let port_at = 8 + usize::from(phy[5] & 0x0F);
    if phy.len() > port_at + 4 {
        values.push((Arc::from(fport), Value::Int(phy[port_at].into())));
        values.push((
            Arc::from(payload),
            Value::Text(hex(&phy[port_at + 1..phy.len() - 4])),
        ));
    }
    values
}

#[async_trait]
impl Adapter for Forwarder {
    async fn run(&mut self, ctx: &AdapterContext) -> Result<(), AdapterError> {
        let listen = self.config.listen;
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|e| AdapterError::Transport(format!("cannot listen on {listen}: {e}")))?;
        let local = socket
            .local_addr()
            .map_err(|e| AdapterError::Transport(e.to_string()))?;
        tracing::info!(device = %ctx.device(), listen = %local, "Listening for LoRa packet forwarders");
        ctx.set_status(DeviceStatus::Online);
        // One byte more than allowed, so that an oversize datagram is seen as such.
        let mut buf = vec![0u8; self.config.max_datagram + 1];
        // Datagrams the kernel dropped because the socket's buffer was full never reach
        // here: its own count of them is read from /proc and counted as `kernel_drops`.
        let mut drops_tick = tokio::time::interval(std::time::Duration::from_secs(5));
        let mut dropped = kernel_drops(local.port());
        let mut downlinks = self.radios.take_downlinks(ctx.device());
        loop {
            let overdue = self.pending.values().map(|p| p.since + TX_ACK_WAIT).min();
            let tx_ack_due = async {
                match overdue {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = ctx.cancelled().cancelled() => return Ok(()),
                Some(downlink) = downlinks.recv() => self.downlink(ctx, &socket, downlink).await,
                () = tx_ack_due => self.tx_ack_overdue(),
                received = socket.recv_from(&mut buf) => {
                    let (n, peer) = received.map_err(|e| AdapterError::Transport(format!("receive failed: {e}")))?;
                    self.datagram(ctx, &socket, &buf[..n], peer).await?;
                }
                _ = drops_tick.tick() => {
                    let now = kernel_drops(local.port());
                    if let (Some(before), Some(now)) = (dropped, now)
                        && now > before
                    {
                        ctx.counters().count_errors("kernel_drops", now - before);
                    }
                    dropped = now.or(dropped);
                }
            }
        }
    }
}

/// The datagrams the kernel dropped on the UDP socket bound to local `port`, as
/// `/proc/net/udp` and `udp6` count them; `None` where they cannot be read.
fn kernel_drops(port: u16) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|table| drops_in(&table, port))
}

/// The `drops` column of the socket on local `port` in a `/proc/net/udp` table.
fn drops_in(table: &str, port: u16) -> Option<u64> {
    let port = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?;
        local
            .ends_with(&port)
            .then(|| fields.last()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_drops_are_read_from_the_udp_table() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          1: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 17393 2 0000000000000000 0\n\
          2: 00000000:06A4 00000000:0000 07 00000000:00034000 00:00000000 00000000   999        0 28122 2 0000000000000000 6796\n";
        assert_eq!(drops_in(table, 1700), Some(6796));
        assert_eq!(drops_in(table, 53), Some(0));
        assert_eq!(drops_in(table, 1701), None);
    }

    #[test]
    fn a_socket_nobody_reads_shows_its_kernel_drops() {
        let quiet = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = quiet.local_addr().unwrap().port();
        assert_eq!(kernel_drops(port), Some(0));
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Far more than a default receive buffer holds.
        for _ in 0..5000 {
            sender.send_to(&[0u8; 1000], ("127.0.0.1", port)).unwrap();
        }
        assert!(kernel_drops(port).unwrap() > 0);
    }

    #[test]
    fn unknown_frames_show_what_needs_no_key() {
        let phy = [
            0x40, 0xF1, 0x7D, 0xBE, 0x49, 0x00, 0x02, 0x00, 0x01, 0x95, 0x43, 0x78, 0x76, 0x2B,
            0x11, 0xFF, 0x0D,
        ];
        let values = unknown_frame(&phy, 0x49BE7DF1);
        let shown: Vec<String> = values.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
        assert_eq!(
            shown,
            [
                "dev_addr=Text(\"49BE7DF1\")",
                "fcnt=Int(2)",
                "fport=Int(1)",
                "payload=Text(\"95437876\")"
            ]
        );
        // Without payload: no port.
        assert_eq!(unknown_frame(&phy[..12], 1).len(), 2);
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        // From the examples of PROTOCOL.TXT: 32 bytes without padding.
        assert_eq!(
            BASE64
                .decode("ysgRl452xNLep9S1NTIg2lomKDxUgn3DJ7DE+b00Ass")
                .unwrap()
                .len(),
            32
        );
        assert!(
            BASE64
                .decode("-DS4CGaDCdG+48eJNM3Vai-zDpsR71Pn9CPA9uCON84")
                .is_err()
        );
    }
}
