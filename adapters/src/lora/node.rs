//! A LoRaWAN end device heard through a packet-forwarder device: checks and decrypts its frames,
//! keeps its frame counter in the state store so that a replay is refused after a restart too,
//! and decodes the payload by FPort.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use base64::Engine as _;
use tokio::sync::mpsc;

use super::gwmp::TxPk;
use super::join::{self, JoinRefused};
use super::lorawan::{self, Session};
use super::routing::{Downlink, Heard, Radios};
use super::{AbpSession, Activation, LoraConfig, LorawanConfig};
use crate::adapter::{Adapter, AdapterContext, AdapterError, DeviceStatus};
use crate::codec::PayloadDecoder;
use crate::codec::hex;
use crate::reading::{Reading, Value};
use crate::state::StateStore;

/// The frame's own values, added to every reading.
pub(super) const FRAME_VALUES: [&str; 2] = ["fcnt", "fport"];

/// A running LoRaWAN end device.
pub(super) struct Node {
    lorawan: LorawanConfig,
    allow_radio: bool,
    payload: PayloadDecoder,
    ports: BTreeMap<u8, PayloadDecoder>,
    radios: Radios,
    state: Arc<dyn StateStore>,
}

impl Node {
    pub(super) fn new(
        config: LoraConfig,
        lorawan: LorawanConfig,
        radios: Radios,
        state: Arc<dyn StateStore>,
    ) -> Self {
        Self {
            lorawan,
            allow_radio: config.radio,
            payload: config.payload.decoder(),
            ports: config
                .ports
                .iter()
                .map(|(port, payload)| (*port, payload.decoder()))
                .collect(),
            radios,
            state,
        }
    }

    /// Checks, records and publishes one frame.
    async fn frame(
        &self,
        ctx: &AdapterContext,
        session: &mut Session,
        key: &str,
        heard: Heard,
    ) -> Result<(), AdapterError> {
        let counters = ctx.counters();
        let up = match session.accept(&heard.phy) {
            Ok(up) => up,
            Err(e) => {
                tracing::debug!(device = %ctx.device(), error = %e, "Frame refused");
                counters.count_error(e.counter());
                return Ok(());
            }
        };
        if let Some(last) = up.reset_from {
            tracing::warn!(device = %ctx.device(), fcnt = up.fcnt, last, "Frame counter restarted; accepted as a device reset");
        }
        // Saved before the reading is handed on: after a crash the frame may be lost, but it
        // can never be accepted twice.
        if let Err(e) = self
            .state
            .save(ctx.device(), key, &up.fcnt.to_string())
            .await
        {
            tracing::warn!(device = %ctx.device(), error = %e, "Frame counter not saved; a replay of this frame would be accepted after a restart");
            counters.count_error("state_not_saved");
        }
        ctx.set_status(DeviceStatus::Online);
        let mut values = Vec::new();
        if !up.payload.is_empty() {
            let decoder = up
                .fport
                .and_then(|port| self.ports.get(&port))
                .unwrap_or(&self.payload);
            match decoder.decode(&up.payload) {
                Ok(decoded) => values = decoded,
                Err(e) => {
                    tracing::debug!(device = %ctx.device(), fport = ?up.fport, error = %e, "Payload not decoded");
                    counters.count_error(e.counter());
                }
            }
        }
        let [fcnt, fport] = FRAME_VALUES;
        values.push((Arc::from(fcnt), Value::Int(up.fcnt.into())));
        if let Some(port) = up.fport {
            values.push((Arc::from(fport), Value::Int(port.into())));
        }
        if self.allow_radio {
            heard.radio.push_values(&mut values);
        }
        ctx.emit(Reading::now(ctx.device().clone(), values)).await
    }
}

/// Where the DevNonces an OTAA device used are kept, and how many: LoRaWAN 1.0.2 devices
/// pick them at random, so a replay is any of the recent ones.
const DEVNONCES: &str = "lorawan/otaa/devnonces";
const DEVNONCES_KEPT: usize = 2048;
/// An OTAA device's session (`DEVADDR:NWKSKEY:APPSKEY`) and its frame counter.
const OTAA_SESSION: &str = "lorawan/otaa/session";
const OTAA_FCNT: &str = "lorawan/otaa/fcnt";
/// JOIN_ACCEPT_DELAY1: RX1 of a join accept opens 5 s after the end of the request.
const JOIN_ACCEPT_DELAY1_US: u32 = 5_000_000;

/// The session an end device is in (its counter state and where it is kept), and its frames.
type Active = (mpsc::Receiver<Heard>, (Session, String));

/// What an OTAA device joins with.
#[derive(Clone, Copy)]
struct Otaa {
    dev_eui: u64,
    join_eui: u64,
    app_key: [u8; 16],
}

impl Node {
    /// Starts listening for `dev_addr` with its keys, the counter read from `key`.
    async fn activate(
        &self,
        ctx: &AdapterContext,
        (dev_addr, nwk_s_key, app_s_key): AbpSession,
        key: String,
        fcnt_start: Option<u32>,
    ) -> Result<Active, AdapterError> {
        let last = self
            .state
            .load(ctx.device(), &key)
            .await
            .map_err(|e| AdapterError::Transport(format!("cannot read the frame counter: {e}")))?
            .and_then(|text| text.parse::<u32>().ok())
            .or_else(|| fcnt_start.and_then(|s| s.checked_sub(1)));
        tracing::debug!(device = %ctx.device(), dev_addr = %format!("{dev_addr:08X}"), last_fcnt = ?last, "Waiting for frames");
        Ok((
            self.radios.listen(&self.lorawan.via, dev_addr),
            (
                Session::new(nwk_s_key, app_s_key, last, self.lorawan.allow_fcnt_reset),
                key,
            ),
        ))
    }

    /// The session an OTAA device joined in before a restart, if any.
    async fn joined_before(&self, ctx: &AdapterContext) -> Option<AbpSession> {
        let text = self.state.load(ctx.device(), OTAA_SESSION).await.ok()??;
        let mut parts = text.split(':');
        let dev_addr = lorawan::parse_dev_addr(parts.next()?).ok()?;
        let nwk = lorawan::parse_key(parts.next()?).ok()?;
        let app = lorawan::parse_key(parts.next()?).ok()?;
        Some((dev_addr, nwk, app))
    }

    /// Answers a join request: checks it, refuses a replayed DevNonce, and sends the join
    /// accept in RX1 through the forwarder whose gateway heard it. The new session is saved
    /// before the accept goes, so a restart keeps it.
    async fn join(
        &self,
        ctx: &AdapterContext,
        otaa: Otaa,
        heard: Heard,
    ) -> Result<Option<AbpSession>, AdapterError> {
        let counters = ctx.counters();
        let refuse = |e: JoinRefused| {
            tracing::warn!(device = %ctx.device(), error = %e, "Join request refused");
            counters.count_error(e.counter());
            Ok(None)
        };
        let request = match join::request(&heard.phy, &otaa.app_key) {
            Ok(request) => request,
            Err(e) => return refuse(e),
        };
        if request.join_eui != otaa.join_eui {
            return refuse(JoinRefused::JoinEui(request.join_eui));
        }
        let nonce = u16::from_le_bytes(request.dev_nonce);
        let saved = self
            .state
            .load(ctx.device(), DEVNONCES)
            .await
            .map_err(|e| AdapterError::Transport(format!("cannot read the DevNonces used: {e}")))?;
        let mut used: Vec<u16> = saved
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter_map(|n| u16::from_str_radix(n, 16).ok())
            .collect();
        if used.contains(&nonce) {
            return refuse(JoinRefused::Replay(nonce));
        }
        used.push(nonce);
        let from = used.len().saturating_sub(DEVNONCES_KEPT);
        let kept: Vec<String> = used[from..].iter().map(|n| format!("{n:04X}")).collect();
        // Saved before answering: after a crash this nonce is still refused.
        self.state
            .save(ctx.device(), DEVNONCES, &kept.join(","))
            .await
            .map_err(|e| AdapterError::Transport(format!("cannot save the DevNonce: {e}")))?;
        let Some(timing) = heard.timing else {
            tracing::warn!(device = %ctx.device(), "Join request without a concentrator time: no receive window to answer in");
            counters.count_error("no_tmst");
            return Ok(None);
        };
        // EU868: RX1 on the request's channel at its data rate (RX1DROffset 0); RX2 stays at
        // the region's default (DR0, 869.525 MHz); RX1 of data a second after an uplink.
        let grant = join::grant(0, 1);
        let accepted = join::accept(&request, &otaa.app_key, &grant);
        let session = format!(
            "{:08X}:{}:{}",
            accepted.dev_addr,
            hex(&accepted.nwk_s_key),
            hex(&accepted.app_s_key)
        );
        for (key, value) in [(OTAA_SESSION, session.as_str()), (OTAA_FCNT, "")] {
            self.state
                .save(ctx.device(), key, value)
                .await
                .map_err(|e| {
                    AdapterError::Transport(format!("cannot save the joined session: {e}"))
                })?;
        }
        let txpk = TxPk {
            imme: false,
            tmst: timing.tmst.wrapping_add(JOIN_ACCEPT_DELAY1_US),
            freq: timing.freq,
            rfch: 0,
            powe: 14,
            modu: "LORA",
            datr: timing.datr,
            codr: timing.codr,
            ipol: true,
            size: accepted.phy.len(),
            data: base64::engine::general_purpose::STANDARD.encode(&accepted.phy),
        };
        let downlink = Downlink {
            gateway: timing.gateway,
            txpk,
        };
        if !self.radios.send(&self.lorawan.via, downlink) {
            counters.count_error("downlink_refused");
        }
        tracing::info!(device = %ctx.device(), dev_eui = %format!("{:016X}", otaa.dev_eui), dev_addr = %format!("{:08X}", accepted.dev_addr), "Device joined");
        Ok(Some((
            accepted.dev_addr,
            accepted.nwk_s_key,
            accepted.app_s_key,
        )))
    }
}

/// The next item of a channel that may not exist yet (an OTAA device before its first join).
async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[async_trait]
impl Adapter for Node {
    async fn run(&mut self, ctx: &AdapterContext) -> Result<(), AdapterError> {
        let activation = self
            .lorawan
            .activation()
            .map_err(|(path, message)| AdapterError::Config(format!("{path}: {message}")))?;
        let (otaa, active) = match activation {
            Activation::Abp(session) => {
                // Keyed by DevAddr: a new session (new address) starts a new counter.
                let key = format!("lorawan/{:08X}/fcnt", session.0);
                let active = self
                    .activate(ctx, session, key, self.lorawan.fcnt_start)
                    .await?;
                (None, Some(active))
            }
            Activation::Otaa {
                dev_eui,
                join_eui,
                app_key,
            } => {
                let otaa = Otaa {
                    dev_eui,
                    join_eui,
                    app_key,
                };
                let active = match self.joined_before(ctx).await {
                    Some(session) => {
                        Some(self.activate(ctx, session, OTAA_FCNT.into(), None).await?)
                    }
                    None => None,
                };
                (Some(otaa), active)
            }
        };
        let mut joins = otaa.map(|o| self.radios.listen_joins(&self.lorawan.via, o.dev_eui));
        let (mut frames, mut active) = match active {
            Some((rx, now)) => (Some(rx), Some(now)),
            None => (None, None),
        };
        loop {
            let silence = async {
                match self.lorawan.silence {
                    Some(silence) => tokio::time::sleep(silence).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = ctx.cancelled().cancelled() => return Ok(()),
                heard = next(&mut frames) => match (heard, active.as_mut()) {
                    (Some(heard), Some((session, key))) => self.frame(ctx, session, key, heard).await?,
                    _ => return Err(AdapterError::Transport("another adapter took over this DevAddr".into())),
                },
                Some(heard) = next(&mut joins) => {
                    let Some(otaa) = otaa else { continue };
                    if let Some(session) = self.join(ctx, otaa, heard).await? {
                        let (rx, now) = self.activate(ctx, session, OTAA_FCNT.into(), None).await?;
                        frames = Some(rx);
                        active = Some(now);
                    }
                }
                () = silence => ctx.set_status(DeviceStatus::Offline),
            }
        }
    }
}
