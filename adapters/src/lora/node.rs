//! A LoRaWAN end device heard through a packet-forwarder device: checks and decrypts its frames,
//! keeps its frame counters in the state store so that a replay is refused after a restart too,
//! decodes the payload by FPort, and answers in its receive windows: join accepts, ACKs of
//! confirmed uplinks, and the downlinks queued for it over MQTT.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use tokio::sync::{mpsc, oneshot};

use super::join::{self, JoinRefused};
use super::lorawan::{self, DataDown, Rejected, Session, Uplink};
use super::routing::{Downlink, Heard, NotSent, Radios, RxWindow, Timing};
use super::{AbpSession, Activation, LoraConfig, LorawanConfig};
use crate::adapter::{Adapter, AdapterContext, AdapterError, DeviceStatus};
use crate::codec::{PayloadDecoder, hex, unhex};
use crate::command::{Command, CommandValue};
use crate::reading::{Reading, Value};
use crate::state::StateStore;

/// The frame's own values, added to every reading.
pub(super) const FRAME_VALUES: [&str; 2] = ["fcnt", "fport"];

/// How long copies of a frame from other gateways are awaited before one is chosen to answer
/// through: RX1 opens a second after the frame, and a LAN carries the copies in milliseconds.
const GATHER: Duration = Duration::from_millis(200);

/// RECEIVE_DELAY1 of data (the join accept grants 1 s, and ABP devices default to it).
const RECEIVE_DELAY1_US: u32 = 1_000_000;

/// How long the forwarder may take to say what became of a downlink (it waits 2 s for a
/// TX_ACK).
const SENT_WITHIN: Duration = Duration::from_secs(5);

/// Downlinks that may wait for one device; more are refused.
const QUEUE_MAX: usize = 16;

/// The largest application payload every receive window carries in both regions, RX2
/// included: EU868 DR0 carries 51 bytes, US915 DR8 53 (RP002, without repeater).
const PAYLOAD_MAX: usize = 51;

/// How often a confirmed downlink is sent before it is given up unacknowledged.
const CONFIRMED_TRIES: u8 = 2;

/// A copy of the last frame this long after it is the device sending it again (a confirmed
/// uplink whose ACK it missed), not another gateway's copy: a device repeats only after both
/// receive windows closed, 2 s after the frame.
const REPEATED_AFTER: Duration = Duration::from_secs(2);

/// A running LoRaWAN end device.
pub(super) struct Node {
    lorawan: LorawanConfig,
    allow_radio: bool,
    payload: PayloadDecoder,
    ports: BTreeMap<u8, PayloadDecoder>,
    radios: Radios,
    state: Arc<dyn StateStore>,
}

/// A device's session: its address, keys, counters, and where the counters are kept.
struct Link {
    session: Session,
    dev_addr: u32,
    nwk_s_key: [u8; 16],
    app_s_key: [u8; 16],
    /// State key of the uplink counter; the downlink counter's is this with `_down`.
    key: String,
    /// The next FCntDown.
    fcnt_down: u32,
    /// When the last frame was accepted.
    accepted_at: Option<tokio::time::Instant>,
}

/// A downlink waiting for the device's next uplink.
struct Queued {
    fport: u8,
    payload: Vec<u8>,
    confirmed: bool,
    command: Command,
    tries: u8,
    /// Why the last try did not go out.
    last_error: Option<String>,
}

/// An uplink that passed and what an answer to it needs.
struct Answerable {
    up: Uplink,
    heard: Heard,
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

    /// Checks, records and publishes one frame; returns it when it passed, for an answer.
    async fn frame(
        &self,
        ctx: &AdapterContext,
        link: &mut Link,
        heard: Heard,
    ) -> Result<Option<Answerable>, AdapterError> {
        let counters = ctx.counters();
        let up = match link.session.accept(&heard.phy) {
            Ok(up) => up,
            Err(e) => {
                tracing::debug!(device = %ctx.device(), error = %e, "Frame refused");
                counters.count_error(e.counter());
                // A confirmed uplink sent again because its ACK was missed is ACKed again
                // (its reading went on the first time).
                let repeated = link
                    .accepted_at
                    .is_some_and(|at| at.elapsed() >= REPEATED_AFTER);
                if let Rejected::Duplicate(fcnt) = e
                    && repeated
                    && heard.phy.first().is_some_and(|mhdr| mhdr >> 5 == 0b100)
                {
                    tracing::debug!(device = %ctx.device(), fcnt, "Confirmed uplink repeated; acknowledged again");
                    link.accepted_at = Some(tokio::time::Instant::now());
                    let up = Uplink {
                        fcnt,
                        fport: None,
                        payload: Vec::new(),
                        confirmed: true,
                        ack: heard.phy.get(5).is_some_and(|fctrl| fctrl & 0x20 != 0),
                        device_time: false,
                        reset_from: None,
                    };
                    return Ok(Some(Answerable { up, heard }));
                }
                return Ok(None);
            }
        };
        link.accepted_at = Some(tokio::time::Instant::now());
        if let Some(last) = up.reset_from {
            tracing::warn!(device = %ctx.device(), fcnt = up.fcnt, last, "Frame counter restarted; accepted as a device reset");
        }
        // Saved before the reading is handed on: after a crash the frame may be lost, but it
        // can never be accepted twice.
        if let Err(e) = self
            .state
            .save(ctx.device(), &link.key, &up.fcnt.to_string())
            .await
        {
            tracing::warn!(device = %ctx.device(), error = %e, "Frame counter not saved; a replay of this frame would be accepted after a restart");
            counters.count_error("state_not_saved");
        }
        ctx.set_status(DeviceStatus::Online);
        let mut values = Vec::new();
        if !up.payload.is_empty() {
            match self.decoder(up.fport).decode(&up.payload) {
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
        ctx.emit(Reading::now(ctx.device().clone(), values)).await?;
        Ok(Some(Answerable { up, heard }))
    }

    /// The codec of `fport`.
    fn decoder(&self, fport: Option<u8>) -> &PayloadDecoder {
        fport
            .and_then(|port| self.ports.get(&port))
            .unwrap_or(&self.payload)
    }

    /// A downlink command's port and payload, or why it cannot be sent. The fields are
    /// `fport` (1-223), and `hex` or `values` (encoded with the port's `layout`), and
    /// optionally `confirmed`.
    fn downlink_request(&self, value: &CommandValue) -> Result<(u8, Vec<u8>, bool), String> {
        const FORM: &str = r#"a downlink is {"fport": 1-223, "hex": "0102"} or {"fport": N, "values": {...}} for a port with a `layout` codec, with "confirmed": true for an acknowledged one"#;
        let CommandValue::Fields(fields) = value else {
            return Err(FORM.into());
        };
        let fport = fields
            .get("fport")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u8::try_from(p).ok())
            .filter(|p| (1..=223).contains(p))
            .ok_or(FORM)?;
        let payload = match (fields.get("hex"), fields.get("values")) {
            (Some(serde_json::Value::String(text)), None) => {
                unhex(text).map_err(|e| format!("`hex`: {e}"))?
            }
            (None, Some(serde_json::Value::Object(values))) => {
                self.decoder(Some(fport)).encode(values)?
            }
            _ => return Err(FORM.into()),
        };
        if payload.len() > PAYLOAD_MAX {
            return Err(format!(
                "{} bytes is more than the {PAYLOAD_MAX} every data rate carries",
                payload.len()
            ));
        }
        let confirmed = match fields.get("confirmed") {
            None => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => return Err("`confirmed` is true or false".into()),
        };
        if let Some(unknown) = fields
            .keys()
            .find(|k| !["fport", "hex", "values", "confirmed"].contains(&k.as_str()))
        {
            return Err(format!("unknown field `{unknown}`; {FORM}"));
        }
        Ok((fport, payload, confirmed))
    }

    /// Queues a downlink command, or answers it with why not.
    fn queue(&self, ctx: &AdapterContext, queue: &mut VecDeque<Queued>, command: Command) {
        if command.point != super::DOWNLINK_POINT {
            let refusal = format!(
                "`{}` is not writable; a LoRaWAN device takes `{}`",
                command.point,
                super::DOWNLINK_POINT
            );
            command.reply(Err(refusal));
            return;
        }
        if queue.len() >= QUEUE_MAX {
            command.reply(Err(format!(
                "{QUEUE_MAX} downlinks already wait for the device"
            )));
            return;
        }
        match self.downlink_request(&command.value) {
            Ok((fport, payload, confirmed)) => {
                tracing::info!(device = %ctx.device(), fport, bytes = payload.len(), confirmed, waiting = queue.len() + 1, "Downlink queued for the next uplink");
                queue.push_back(Queued {
                    fport,
                    payload,
                    confirmed,
                    command,
                    tries: 0,
                    last_error: None,
                });
            }
            Err(refusal) => command.reply(Err(refusal)),
        }
    }

    /// Answers an uplink in its receive windows when it asked for an ACK or a downlink
    /// waits: through the gateway that heard it best, once copies from other gateways have
    /// had [`GATHER`] to come in. Returns a different frame that came in meanwhile.
    async fn answer(
        &self,
        ctx: &AdapterContext,
        link: &mut Link,
        frames: &mut mpsc::Receiver<Heard>,
        queue: &mut VecDeque<Queued>,
        awaiting: &mut Option<Queued>,
        uplink: Answerable,
    ) -> Option<Heard> {
        let Answerable { up, heard } = uplink;
        if let Some(sent) = awaiting.take() {
            if up.ack {
                tracing::info!(device = %ctx.device(), fport = sent.fport, "Confirmed downlink acknowledged");
                sent.command
                    .reply(Ok(Some(Value::Text("acknowledged by the device".into()))));
            } else if sent.tries < CONFIRMED_TRIES {
                queue.push_front(sent);
            } else {
                ctx.counters().count_error("downlink_unacknowledged");
                sent.command.reply(Err(format!(
                    "the device did not acknowledge it ({} tries)",
                    sent.tries
                )));
            }
        }
        if !up.confirmed && queue.is_empty() && !up.device_time {
            return None;
        }
        let (best, interrupted) = gather(ctx, frames, heard).await;
        let Some(timing) = best.timing else {
            ctx.counters().count_error("no_tmst");
            return interrupted;
        };
        let time = if up.device_time {
            device_time(ctx, &timing)
        } else {
            None
        };
        if !up.confirmed && queue.is_empty() && time.is_none() {
            return interrupted;
        }
        let data = queue
            .front()
            .map(|q| (q.fport, q.payload.clone(), q.confirmed));
        let fcnt_down = link.fcnt_down;
        let down = DataDown {
            dev_addr: link.dev_addr,
            fcnt: fcnt_down,
            ack: up.confirmed,
            pending: queue.len() > 1,
            confirmed: data.as_ref().is_some_and(|(_, _, c)| *c),
            data: data
                .as_ref()
                .map(|(port, payload, _)| (*port, payload.as_slice())),
            device_time: time,
        };
        let phy = lorawan::data_down(&down, &link.nwk_s_key, &link.app_s_key);
        // Saved before it goes: a counter is never used twice, even across a crash.
        link.fcnt_down = fcnt_down.wrapping_add(1);
        let down_key = format!("{}_down", link.key);
        if let Err(e) = self
            .state
            .save(ctx.device(), &down_key, &link.fcnt_down.to_string())
            .await
        {
            tracing::warn!(device = %ctx.device(), error = %e, "Downlink counter not saved; no downlink is sent");
            ctx.counters().count_error("state_not_saved");
            return interrupted;
        }
        let result = self.send(timing, RECEIVE_DELAY1_US, phy).await;
        match (result, data.is_some()) {
            (Ok(window), true) => {
                let Some(mut q) = queue.pop_front() else {
                    return interrupted;
                };
                q.tries += 1;
                tracing::info!(device = %ctx.device(), fport = q.fport, fcnt_down, window = window.name(), ack = up.confirmed, "Downlink sent");
                if q.confirmed {
                    *awaiting = Some(q);
                } else {
                    q.command.reply(Ok(Some(Value::Text(format!(
                        "sent in {}, FCntDown {fcnt_down}",
                        window.name()
                    )))));
                }
            }
            (Ok(window), false) => {
                tracing::debug!(device = %ctx.device(), fcnt = up.fcnt, fcnt_down, window = window.name(), "Confirmed uplink acknowledged");
            }
            (Err(e), _) => {
                tracing::warn!(device = %ctx.device(), fcnt = up.fcnt, error = %e, "No answer sent in the receive windows; a queued downlink waits for the next uplink");
                ctx.counters().count_error("downlink_not_sent");
                if let Some(q) = queue.front_mut() {
                    q.last_error = Some(e.to_string());
                }
            }
        }
        interrupted
    }

    /// Hands `phy` to the forwarder for the windows after `timing`, and waits to hear which
    /// one the gateway took.
    async fn send(
        &self,
        timing: Timing,
        rx1_delay_us: u32,
        phy: Vec<u8>,
    ) -> Result<RxWindow, NotSent> {
        let (sent, result) = oneshot::channel();
        let downlink = Downlink {
            timing,
            rx1_delay_us,
            phy,
            sent,
        };
        self.radios.send(&self.lorawan.via, downlink);
        match tokio::time::timeout(SENT_WITHIN, result).await {
            Ok(Ok(result)) => result,
            _ => Err(NotSent::Busy),
        }
    }
}

/// The GPS time a DeviceTimeReq is answered with (see [`Timing::gps_time`]); without one the
/// request is counted and left unanswered.
fn device_time(ctx: &AdapterContext, timing: &Timing) -> Option<Duration> {
    if timing.gps_time.is_none() {
        ctx.counters().count_error("device_time_unknown");
    }
    timing.gps_time
}

/// Waits [`GATHER`] for copies of `first` from other gateways, and returns the copy heard
/// best (highest SNR, then RSSI), and a different frame if one came in meanwhile (the
/// gathering then stops). Copies are counted as `duplicate`.
async fn gather(
    ctx: &AdapterContext,
    rx: &mut mpsc::Receiver<Heard>,
    first: Heard,
) -> (Heard, Option<Heard>) {
    let deadline = tokio::time::Instant::now() + GATHER;
    let mut best = first;
    loop {
        let heard = tokio::select! {
            () = tokio::time::sleep_until(deadline) => return (best, None),
            heard = rx.recv() => match heard {
                Some(heard) => heard,
                None => return (best, None),
            },
        };
        if heard.phy != best.phy {
            return (best, Some(heard));
        }
        ctx.counters().count_error("duplicate");
        if heard.timing.is_some() && heard.radio.better_than(&best.radio) {
            best = heard;
        }
    }
}

/// Where the DevNonces an OTAA device used are kept, and how many: LoRaWAN 1.0.2 devices
/// pick them at random, so a replay is any of the recent ones.
const DEVNONCES: &str = "lorawan/otaa/devnonces";
const DEVNONCES_KEPT: usize = 2048;
/// An OTAA device's session (`DEVADDR:NWKSKEY:APPSKEY`) and its frame counters.
const OTAA_SESSION: &str = "lorawan/otaa/session";
const OTAA_FCNT: &str = "lorawan/otaa/fcnt";
/// JOIN_ACCEPT_DELAY1: RX1 of a join accept opens 5 s after the end of the request.
const JOIN_ACCEPT_DELAY1_US: u32 = 5_000_000;

/// What an OTAA device joins with.
#[derive(Clone, Copy)]
struct Otaa {
    dev_eui: u64,
    join_eui: u64,
    app_key: [u8; 16],
}

impl Node {
    /// Starts listening for `dev_addr` with its keys, the counters read from `key` and
    /// `key` + `_down`.
    async fn activate(
        &self,
        ctx: &AdapterContext,
        (dev_addr, nwk_s_key, app_s_key): AbpSession,
        key: String,
        fcnt_start: Option<u32>,
    ) -> Result<(mpsc::Receiver<Heard>, Link), AdapterError> {
        let load = |key: String| async move {
            self.state
                .load(ctx.device(), &key)
                .await
                .map_err(|e| AdapterError::Transport(format!("cannot read the frame counter: {e}")))
                .map(|text| text.and_then(|text| text.parse::<u32>().ok()))
        };
        let last = load(key.clone())
            .await?
            .or_else(|| fcnt_start.and_then(|s| s.checked_sub(1)));
        let fcnt_down = load(format!("{key}_down")).await?.unwrap_or(0);
        tracing::debug!(device = %ctx.device(), dev_addr = %format!("{dev_addr:08X}"), last_fcnt = ?last, fcnt_down, "Waiting for frames");
        Ok((
            self.radios.listen(&self.lorawan.via, dev_addr),
            Link {
                session: Session::new(nwk_s_key, app_s_key, last, self.lorawan.allow_fcnt_reset),
                dev_addr,
                nwk_s_key,
                app_s_key,
                key,
                fcnt_down,
                accepted_at: None,
            },
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
    /// accept through the forwarder whose gateway heard it best. The new session is saved
    /// before the accept goes, so a restart keeps it. Returns a different join request that
    /// came in while copies were gathered.
    async fn join(
        &self,
        ctx: &AdapterContext,
        otaa: Otaa,
        joins: &mut mpsc::Receiver<Heard>,
        heard: Heard,
    ) -> Result<(Option<Joined>, Option<Heard>), AdapterError> {
        let counters = ctx.counters();
        let refuse = |e: JoinRefused| {
            tracing::warn!(device = %ctx.device(), error = %e, "Join request refused");
            counters.count_error(e.counter());
        };
        let request = match join::request(&heard.phy, &otaa.app_key) {
            Ok(request) => request,
            Err(e) => {
                refuse(e);
                return Ok((None, None));
            }
        };
        if request.join_eui != otaa.join_eui {
            refuse(JoinRefused::JoinEui(request.join_eui));
            return Ok((None, None));
        }
        // Copies from other gateways carry the same DevNonce: gathered here, they are
        // duplicates, not replays.
        let (heard, interrupted) = gather(ctx, joins, heard).await;
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
            refuse(JoinRefused::Replay(nonce));
            return Ok((None, interrupted));
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
            return Ok((None, interrupted));
        };
        // RX1DROffset 0 and the region's RX2 rate, so the device keeps its defaults; RX1 of
        // data a second after an uplink.
        let grant = join::grant(timing.region.dl_settings(), 1);
        let accepted = join::accept(&request, &otaa.app_key, &grant);
        let session = format!(
            "{:08X}:{}:{}",
            accepted.dev_addr,
            hex(&accepted.nwk_s_key),
            hex(&accepted.app_s_key)
        );
        let down = format!("{OTAA_FCNT}_down");
        for (key, value) in [
            (OTAA_SESSION, session.as_str()),
            (OTAA_FCNT, ""),
            (&down, ""),
        ] {
            self.state
                .save(ctx.device(), key, value)
                .await
                .map_err(|e| {
                    AdapterError::Transport(format!("cannot save the joined session: {e}"))
                })?;
        }
        tracing::info!(device = %ctx.device(), dev_eui = %format!("{:016X}", otaa.dev_eui), dev_addr = %format!("{:08X}", accepted.dev_addr), "Device joined");
        let joined = Joined {
            session: (accepted.dev_addr, accepted.nwk_s_key, accepted.app_s_key),
            timing,
            accept: accepted.phy,
        };
        Ok((Some(joined), interrupted))
    }

    /// Sends a join accept, once the session it opens is listened for.
    async fn send_accept(&self, ctx: &AdapterContext, timing: Timing, accept: Vec<u8>) {
        match self.send(timing, JOIN_ACCEPT_DELAY1_US, accept).await {
            Ok(window) => {
                tracing::debug!(device = %ctx.device(), window = window.name(), "Join accept sent");
            }
            Err(e) => {
                tracing::warn!(device = %ctx.device(), error = %e, "Join accept not sent; the device will try again");
                ctx.counters().count_error("join_accept_not_sent");
            }
        }
    }
}

/// A join accepted: the session it opens, and the accept to send after the uplink's timing.
struct Joined {
    session: AbpSession,
    timing: Timing,
    accept: Vec<u8>,
}

/// The next item of a channel that may not exist yet (an OTAA device before its first join).
async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Answers the downlinks whose time ran out before the device was heard.
fn expire(ctx: &AdapterContext, queue: &mut VecDeque<Queued>) {
    while let Some(i) = queue.iter().position(|q| q.command.expired()) {
        let Some(q) = queue.remove(i) else { break };
        ctx.counters().count_error("downlink_expired");
        let why = q
            .last_error
            .map(|e| format!(": {e}"))
            .unwrap_or_else(|| ": the device sent no uplink".into());
        q.command
            .reply(Err(format!("expired before it could be sent{why}")));
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
                // Keyed by DevAddr: a new session (new address) starts new counters.
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
        let (mut frames, mut link) = match active {
            Some((rx, link)) => (Some(rx), Some(link)),
            None => (None, None),
        };
        let mut queue: VecDeque<Queued> = VecDeque::new();
        let mut awaiting: Option<Queued> = None;
        // A frame that came in while an answer was being prepared, handled next.
        let mut held: Option<Heard> = None;
        let mut held_join: Option<Heard> = None;
        loop {
            if let (Some(heard), Some(l), Some(rx)) = (held.take(), link.as_mut(), frames.as_mut())
                && let Some(uplink) = self.frame(ctx, l, heard).await?
            {
                held = self
                    .answer(ctx, l, rx, &mut queue, &mut awaiting, uplink)
                    .await;
                continue;
            }
            if let (Some(heard), Some(otaa), Some(rx)) = (held_join.take(), otaa, joins.as_mut()) {
                let (joined, interrupted) = self.join(ctx, otaa, rx, heard).await?;
                held_join = interrupted;
                if let Some(joined) = joined {
                    let (rx, now) = self
                        .activate(ctx, joined.session, OTAA_FCNT.into(), None)
                        .await?;
                    frames = Some(rx);
                    link = Some(now);
                    self.send_accept(ctx, joined.timing, joined.accept).await;
                    // A confirmed downlink of the old session cannot be acknowledged in the new one.
                    if let Some(sent) = awaiting.take() {
                        queue.push_front(sent);
                    }
                }
                continue;
            }
            let silence = async {
                match self.lorawan.silence {
                    Some(silence) => tokio::time::sleep(silence).await,
                    None => std::future::pending().await,
                }
            };
            let first_expiry = queue.iter().map(|q| q.command.deadline()).min();
            let expiry = async {
                match first_expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = ctx.cancelled().cancelled() => return Ok(()),
                heard = next(&mut frames) => match heard {
                    Some(heard) => held = Some(heard),
                    None => return Err(AdapterError::Transport("another adapter took over this DevAddr".into())),
                },
                Some(heard) = next(&mut joins) => held_join = Some(heard),
                Some(command) = ctx.next_command() => self.queue(ctx, &mut queue, command),
                () = expiry => expire(ctx, &mut queue),
                () = silence => ctx.set_status(DeviceStatus::Offline),
            }
        }
    }
}
