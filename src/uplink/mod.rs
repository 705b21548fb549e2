//! The uplink: one MQTT connection that drains the outbox in `seq` order and deletes a row only
//! after the broker's PUBACK for the message that carried it.
//!
//! Rows become messages in steps, each a module: the [`batcher`] groups them (per device or
//! gateway, bounded by readings, bytes and linger), the [`encoding`] turns a batch into a
//! payload (`json`, or `cbor` with optional compression), and [`inflight`] maps each packet id
//! to the rows its message carried.
//!
//! `AsyncClient::publish` returning Ok only means "queued", and rumqttc forgets its queue when
//! the broker has no session, so this task owns both the client and the event loop, and after
//! every (re)connect publishes again everything the outbox still holds. A fresh event loop per
//! connection keeps no state between sessions.
//!
//! When some device takes writes, the uplink also subscribes to their `.../set` topics, hands
//! each command to the [`crate::commands`] router and publishes the answers it gets back.

pub mod batcher;
pub mod budget;
pub mod encoding;
pub mod homeassistant;
mod inflight;
pub mod lanes;
pub mod link;
pub mod meter;
pub mod network;
mod options;
pub mod schedule;
pub mod topics;
pub mod window;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing,
    Packet, QoS,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::commands::{SetRequest, SetResult, UplinkEnd};
use crate::config::{BatchConfig, LanesConfig, MqttConfig};
use crate::store::{Acker, DropReason, StoreReader, Unsent};
use batcher::{Batch, Batcher};
use budget::{Budget, Step};
use cairn_adapters::Priority;
use encoding::Encoder;
use inflight::{Carried, Inflight};
use lanes::{Cursors, Delivered, Lane, Pacer};
use link::{Link, LinkError, LinkState};
use meter::Meter;
use schedule::Schedule;
use topics::{DeviceMeta, Topics};

/// Rows read from the outbox at a time (at least a batch).
const READ_AHEAD: usize = 512;

/// The largest command payload carried out; larger `.../set` messages are ignored and counted.
const COMMAND_LIMIT: usize = 4096;

/// The most bytes of a PUBLISH packet around its topic and payload: a fixed header with the
/// longest remaining length, the topic's length, a packet id.
const PUBLISH_OVERHEAD: usize = 1 + 4 + 2 + 2;

/// The size of a PUBLISH of `payload` bytes on a `topic` of that many bytes, at most.
pub fn publish_size(topic: usize, payload: usize) -> u64 {
    (PUBLISH_OVERHEAD + topic + payload) as u64
}

/// How long a clean shutdown waits for outstanding acknowledgements before leaving anyway.
const LEAVE_GRACE: Duration = Duration::from_secs(3);

/// Room in the client's request queue for command answers, beside the window.
const ANSWER_ROOM: usize = 16;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// TCP, TLS or MQTT failed (refused, reset, timed out).
    #[error("{0}")]
    Connection(Box<rumqttc::ConnectionError>),
    /// The broker answered CONNECT with a refusal (bad credentials, not authorized...).
    #[error("broker refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    /// The client's request queue refused a publish (the event loop is gone).
    #[error("{0}")]
    Client(#[from] rumqttc::ClientError),
    /// The outbox could not be read.
    #[error("reading the outbox: {0}")]
    Store(#[from] sqlx::Error),
    /// The link to the broker failed (refused, timed out, dead, TLS).
    #[error("{0}")]
    Link(#[from] LinkError),
}

impl From<rumqttc::ConnectionError> for UplinkError {
    fn from(e: rumqttc::ConnectionError) -> Self {
        UplinkError::Connection(Box::new(e))
    }
}

/// The link as people on site should see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkStatus {
    /// Whether a broker is configured at all.
    pub configured: bool,
    /// Whether the broker has accepted the connection.
    pub connected: bool,
    /// Since when the link is in this state.
    pub since: SystemTime,
    /// Why the last connection ended or failed.
    pub last_error: Option<String>,
    /// `.../set` messages not carried out since start: larger than a command may be,
    /// retained, or arriving while too many wait for their devices.
    pub ignored_commands: u64,
    /// Between connection windows: when the next one opens.
    pub sleeping_until: Option<SystemTime>,
}

/// The uplink task and its settings.
pub struct Uplink {
    /// False without an `mqtt:` section: nothing to connect to.
    enabled: bool,
    options: MqttOptions,
    network: NetworkOptions,
    broker: String,
    qos: QoS,
    window: usize,
    reconnect: (Duration, Duration),
    topics: Topics,
    devices: Vec<DeviceMeta>,
    reader: StoreReader,
    acker: Acker,
    status: watch::Sender<UplinkStatus>,
    commands: Option<mpsc::Sender<SetRequest>>,
    answers: Option<mpsc::Receiver<SetResult>>,
    encoder: Encoder,
    batch: BatchConfig,
    lanes: LanesConfig,
    max_message: u64,
    max_inflight_bytes: usize,
    delivered: Arc<Delivered>,
    /// When the last lane summary went upstream, with the delivered counts then.
    summarised: Option<(Instant, [u64; 3])>,
    link: Arc<Link>,
    meter: Arc<Meter>,
    budget: Arc<Budget>,
    schedule: Option<Schedule>,
    /// Lines about ignored commands: a flood of them must not flood the log.
    command_log: crate::logging::Throttle,
    /// Home Assistant discovery messages, per device (empty unless discovery is on).
    discovery: Vec<(String, Vec<homeassistant::Announcement>)>,
}

impl Uplink {
    /// An uplink for `gateway` that publishes `devices`' metadata, drains `reader`, and
    /// carries commands when given the router's `commands` end.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &MqttConfig,
        gateway: &str,
        devices: Vec<DeviceMeta>,
        reader: StoreReader,
        acker: Acker,
        commands: Option<UplinkEnd>,
        link_dir: &std::path::Path,
        meter: Arc<Meter>,
    ) -> Result<Self, UplinkError> {
        let (requests, answers) = commands.map(|end| (end.requests, end.results)).unzip();
        let topics = Topics::new(&config.topic_prefix, gateway);
        let link = Link::new(config, link_dir, meter.clone())?;
        let (options, network) = options::build(config, gateway, &topics.status(), link.path());
        let endpoint = config.endpoint();
        let status = UplinkStatus {
            configured: config.enabled,
            connected: false,
            since: SystemTime::now(),
            last_error: None,
            ignored_commands: 0,
            sleeping_until: None,
        };
        Ok(Self {
            enabled: config.enabled,
            options,
            network,
            broker: format!("{}:{}", endpoint.host, endpoint.port),
            qos: if config.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            window: usize::from(config.max_inflight),
            reconnect: (config.reconnect_min, config.reconnect_max),
            topics,
            devices,
            reader,
            acker,
            status: watch::channel(status).0,
            commands: requests,
            answers,
            encoder: Encoder::new(config.encoding, config.compression),
            batch: config.batch.clone(),
            lanes: config.lanes.clone(),
            max_message: config.max_message.as_u64(),
            max_inflight_bytes: config.max_inflight_bytes.as_u64() as usize,
            delivered: Arc::default(),
            summarised: None,
            link: Arc::new(link),
            meter,
            budget: Arc::new(Budget::new(config.budget.clone())),
            schedule: config.connect.clone().map(Schedule::new),
            command_log: crate::logging::Throttle::new(Duration::from_secs(60)),
            discovery: Vec::new(),
        })
    }

    /// Announces every value to Home Assistant's MQTT discovery at each connect, when `config`
    /// turns it on.
    pub fn with_discovery(
        mut self,
        config: &crate::config::HomeAssistantConfig,
        gateway: &str,
    ) -> Self {
        if config.discovery {
            self.discovery = self
                .devices
                .iter()
                .map(|device| {
                    let announced = homeassistant::announcements(
                        &config.prefix,
                        gateway,
                        &mut self.topics,
                        device,
                    );
                    (device.name.clone(), announced)
                })
                .collect();
        }
        self
    }

    /// The link's state, for the feed and the logs.
    pub fn status(&self) -> watch::Receiver<UplinkStatus> {
        self.status.subscribe()
    }

    /// Readings delivered per lane, for the feed's drain rates.
    pub fn delivered(&self) -> Arc<Delivered> {
        self.delivered.clone()
    }

    /// The link budget's state, for the feed.
    pub fn budget(&self) -> Arc<Budget> {
        self.budget.clone()
    }

    /// What the link knows (answers awaited), for the feed.
    pub fn link_state(&self) -> Arc<LinkState> {
        self.link.state()
    }

    /// Connects, drains, reconnects with backoff, until `cancel` fires; then leaves cleanly.
    pub async fn run(mut self, cancel: CancellationToken) {
        if !self.enabled {
            info!(
                "No broker configured (no `mqtt:` section): readings stay in the outbox until one is added and Cairn restarted"
            );
            self.status
                .send_modify(|s| s.last_error = Some("no broker configured".into()));
            cancel.cancelled().await;
            return;
        }
        let mut backoff = Backoff::new(self.reconnect.0, self.reconnect.1);
        let mut answers = self.answers.take();
        let mut network = network::Watch::new();
        // Stopped after the last goodbye, so that its bytes are counted too.
        let stop_saver = CancellationToken::new();
        let saver = tokio::spawn(save_counters(
            self.meter.clone(),
            self.acker.clone(),
            stop_saver.clone(),
        ));
        'windows: loop {
            // With connection windows: sleep until one opens; it closes at `closing`.
            let closing = match self.schedule.clone() {
                Some(schedule) => match self.sleep(&schedule, &cancel).await {
                    Some(()) => Some(Instant::now() + schedule.config().open_for),
                    None => break,
                },
                None => None,
            };
            loop {
                let error = match self
                    .session(&cancel, &mut backoff, &mut answers, closing)
                    .await
                {
                    Ok(Ended::Shutdown) => break 'windows,
                    Ok(Ended::Sleeping) => continue 'windows,
                    Err(e) => e,
                };
                let was_connected = self.status.borrow().connected;
                self.set_status(false, Some(error.to_string()));
                let retry_in = backoff.next_delay();
                let retry = humantime::format_duration(retry_in);
                if was_connected {
                    warn!(broker = %self.broker, error = %error, retry_in = %retry, "MQTT connection lost; readings stay in the outbox");
                } else {
                    warn!(broker = %self.broker, error = %error, retry_in = %retry, "MQTT connect failed; readings stay in the outbox");
                }
                tokio::select! {
                    () = cancel.cancelled() => break 'windows,
                    () = tokio::time::sleep(retry_in) => {}
                    () = network.changed() => {
                        info!(broker = %self.broker, "The local network changed; connecting now");
                    }
                }
                if closing.is_some_and(|at| Instant::now() >= at) {
                    continue 'windows;
                }
            }
        }
        self.set_status(false, None);
        stop_saver.cancel();
        let _ = saver.await;
    }

    /// Waits for the next connection window: its scheduled time, an alarm, or a backlog over
    /// the threshold (and at once when one is already waiting). `None` on shutdown.
    async fn sleep(&self, schedule: &Schedule, cancel: &CancellationToken) -> Option<()> {
        let config = schedule.config();
        let next = schedule.next_open(SystemTime::now());
        self.status.send_modify(|s| s.sleeping_until = Some(next));
        let alarms_waiting = config.on_alarm
            && self
                .reader
                .count_after(Priority::Alarm, 0)
                .await
                .is_ok_and(|(n, _, _)| n > 0);
        let mut alarms = self.reader.alarms();
        let mut stats = self.reader.stats_changes();
        let over = |s: &crate::store::Stats| config.backlog_over.is_some_and(|n| s.backlog > n);
        if alarms_waiting || over(&stats.borrow()) {
            info!("An alarm or a large backlog is waiting; connecting now");
        } else {
            let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
            info!(until = %humantime::format_rfc3339_seconds(next), "Sleeping until the next connection window");
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
                Ok(()) = alarms.changed(), if config.on_alarm => info!("Alarm: connecting now"),
                Ok(_) = stats.wait_for(over), if config.backlog_over.is_some() => {
                    info!("The backlog passed its threshold; connecting now");
                }
            }
        }
        self.status.send_modify(|s| s.sleeping_until = None);
        Some(())
    }

    fn set_status(&self, connected: bool, last_error: Option<String>) {
        self.status.send_modify(|s| {
            if s.connected != connected {
                s.since = SystemTime::now();
            }
            s.connected = connected;
            if last_error.is_some() {
                s.last_error = last_error;
            }
        });
    }

    /// One connection, from CONNECT to failure (`Err`) or shutdown (`Ok`): rumqttc on one
    /// side of the link's socket, the link carrying its bytes to the broker on the other.
    async fn session(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        answers: &mut Option<mpsc::Receiver<SetResult>>,
        closing: Option<Instant>,
    ) -> Result<Ended, UplinkError> {
        let stop_link = CancellationToken::new();
        let _stop_link = stop_link.clone().drop_guard();
        let link = self.link.clone();
        let mut carried = tokio::spawn(async move { link.carry(stop_link).await });
        let result = self
            .converse(cancel, backoff, answers, &mut carried, closing)
            .await;
        if result.is_ok() {
            // rumqttc wrote its DISCONNECT and closed its socket: let the link carry the rest
            // to the broker, or the broker would take the closed link for a lost one and
            // publish the last will.
            let _ = tokio::time::timeout(LEAVE_GRACE, &mut carried).await;
        }
        match result {
            // rumqttc saw its socket close: the link knows why (refused, dead, TLS...).
            Err(UplinkError::Connection(e)) => {
                match tokio::time::timeout(Duration::from_millis(500), &mut carried).await {
                    Ok(Ok(Err(link))) => Err(link.into()),
                    _ => Err(UplinkError::Connection(e)),
                }
            }
            other => other,
        }
    }

    /// The MQTT side of one connection.
    async fn converse(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        answers: &mut Option<mpsc::Receiver<SetResult>>,
        carried: &mut tokio::task::JoinHandle<Result<(), LinkError>>,
        closing: Option<Instant>,
    ) -> Result<Ended, UplinkError> {
        // Room for the window, the status, metadata and discovery messages, the subscription
        // and answers.
        let announcements: usize = self.discovery.iter().map(|(_, a)| a.len()).sum();
        let capacity = self.window + self.devices.len() + announcements + 3 + ANSWER_ROOM;
        let (client, mut events) = AsyncClient::new(self.options.clone(), capacity);
        events.set_network_options(self.network.clone());
        let connack = tokio::select! {
            () = cancel.cancelled() => return Ok(Ended::Shutdown),
            event = events.poll() => event?,
            ended = &mut *carried => return Err(link_ended(ended)),
        };
        if let Event::Incoming(Packet::ConnAck(ack)) = &connack
            && ack.code != ConnectReturnCode::Success
        {
            return Err(UplinkError::Refused(ack.code));
        }
        info!(broker = %self.broker, backlog = self.reader.stats().backlog, "MQTT connected");
        self.set_status(true, None);

        let mut inflight = Inflight::new(self.max_inflight_bytes);
        client.try_publish(self.topics.status(), QoS::AtLeastOnce, true, "online")?;
        inflight.queued(Carried::control());
        // A retained meta goes again only when it changed, or a day after it last went (in
        // case the broker lost its retained messages): on a metered link every reconnect
        // otherwise pays for all of them.
        let published = self.reader.counters("meta_").await?;
        let now = crate::pipeline::unix_millis(SystemTime::now()) / 1000;
        for device in &self.devices {
            let payload = device.payload();
            let (hash, at) = (
                format!("meta_hash_{}", device.name),
                format!("meta_at_{}", device.name),
            );
            let print = fingerprint(&payload);
            let fresh = published
                .get(&at)
                .is_some_and(|t| (0..META_REFRESH).contains(&(now - t)));
            if fresh && published.get(&hash) == Some(&print) {
                continue;
            }
            client.try_publish(
                self.topics.meta(&device.name),
                QoS::AtLeastOnce,
                true,
                payload,
            )?;
            inflight.queued(Carried::saving(vec![(hash, print), (at, now)]));
        }
        // Discovery configs go the same way: again only when changed, or a day later.
        for (device, announced) in &self.discovery {
            let (hash, at) = (
                format!("meta_ha_hash_{device}"),
                format!("meta_ha_at_{device}"),
            );
            let all: Vec<u8> = announced
                .iter()
                .flat_map(|a| a.topic.bytes().chain(a.payload.iter().copied()))
                .collect();
            let print = fingerprint(&all);
            let fresh = published
                .get(&at)
                .is_some_and(|t| (0..META_REFRESH).contains(&(now - t)));
            if fresh && published.get(&hash) == Some(&print) {
                continue;
            }
            for (i, announcement) in announced.iter().enumerate() {
                client.try_publish(
                    announcement.topic.clone(),
                    QoS::AtLeastOnce,
                    true,
                    announcement.payload.clone(),
                )?;
                // The last one's acknowledgement records that all of them went.
                inflight.queued(if i + 1 == announced.len() {
                    Carried::saving(vec![(hash.clone(), print), (at.clone(), now)])
                } else {
                    Carried::control()
                });
            }
        }
        if self.commands.is_some() {
            // Commands sent while the link was down are not delivered later (clean session):
            // a stale write is worse than none.
            client.try_subscribe(self.topics.set_filter(), QoS::AtLeastOnce)?;
        }

        // Every connect starts from the oldest unacknowledged row: whatever was in flight on
        // the last connection may or may not have arrived.
        // In a window, nothing lingers: everything goes while the link is up.
        let mut drain = Drain::new(self, self.reader.committed(), closing.is_some());
        let until_drained = self
            .schedule
            .as_ref()
            .is_some_and(|s| s.config().until_drained);
        loop {
            self.fill(&client, &mut inflight, &mut drain).await?;
            if closing.is_some()
                && until_drained
                && drain.is_empty()
                && inflight.is_empty()
                && self.reader.stats().backlog == 0
            {
                return self.sleep_now(&client, &mut events, &mut inflight).await;
            }
            let room = self.room(&inflight);
            let linger = drain.lane(Lane::Live).batcher.deadline();
            let paced =
                (!drain.lane(Lane::Backlog).ready.is_empty()).then(|| drain.pacer.ready_at());
            let summary = self.summary_due();
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    self.leave(&client, &mut events, &mut inflight, "offline").await;
                    return Ok(Ended::Shutdown);
                }
                () = sleep_until(closing), if closing.is_some() => {
                    return self.sleep_now(&client, &mut events, &mut inflight).await;
                }
                event = events.poll() => {
                    if self.handle(event?, &mut inflight) {
                        // The broker is taking messages: the link works, whatever happened before.
                        backoff.reset();
                    }
                }
                ended = &mut *carried => return Err(link_ended(ended)),
                Ok(()) = drain.committed.changed(), if room => {}
                () = sleep_until(linger), if room && linger.is_some() => {}
                () = sleep_until(paced), if room && paced.is_some() => {}
                () = sleep_until(summary), if summary.is_some() => {
                    self.summarise(&client, &mut inflight).await?;
                }
                // Only while the queue is nearly empty, so that the window always fits beside.
                Some(answer) = next_answer(answers), if inflight.unwritten() < ANSWER_ROOM => {
                    let topic = self.topics.result(&answer.device, &answer.point);
                    client.try_publish(topic, QoS::AtLeastOnce, false, answer.payload)?;
                    inflight.queued(Carried::control());
                }
            }
        }
    }

    /// Whether the window has room for another message.
    fn room(&self, inflight: &Inflight) -> bool {
        inflight.messages() < self.window && inflight.bytes() < inflight.window()
    }

    /// The last row of the backlog: rows committed longer than `live_age` ago.
    fn boundary(&self, now: Instant) -> i64 {
        now.checked_sub(self.lanes.live_age)
            .map_or(0, |at| self.reader.committed_at(at))
    }

    /// Unsent rows of `priority` in `(after, upto]`; rows that cannot be read are given up.
    async fn read(
        &self,
        priority: Priority,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Unsent, UplinkError> {
        let mut unsent = self.reader.unsent(priority, after, upto, limit).await?;
        if !unsent.undecodable.is_empty() {
            self.acker.give_up(
                std::mem::take(&mut unsent.undecodable),
                DropReason::Undecodable,
            );
        }
        Ok(unsent)
    }

    /// Publishes while the window has room: alarms first; then the backlog's share of the
    /// link (all of it when no live reading waits); then the live lane; then the backlog.
    async fn fill(
        &mut self,
        client: &AsyncClient,
        inflight: &mut Inflight,
        drain: &mut Drain,
    ) -> Result<(), UplinkError> {
        while self.room(inflight) {
            let now = Instant::now();
            let committed = *drain.committed.borrow_and_update();
            let step = self.budget.step(&self.meter.counts());
            // Alarms, before everything.
            if let Some(batch) = drain.lane(Lane::Alarm).ready.pop_front() {
                if self
                    .publish(client, inflight, drain, Lane::Alarm, batch)?
                    .blocked
                {
                    break;
                }
                continue;
            }
            if drain.alarms_seen < committed {
                let unsent = self
                    .read(
                        Priority::Alarm,
                        drain.cursors.alarm(),
                        committed,
                        READ_AHEAD,
                    )
                    .await?;
                if unsent.records.len() < READ_AHEAD {
                    drain.alarms_seen = committed;
                }
                drain.cursors.alarm_read(unsent.last);
                drain.take(Lane::Alarm, unsent, now);
                drain.seal(Lane::Alarm, now);
                continue;
            }
            // A used-up budget leaves the rest in the outbox, where it ages into the backlog.
            if step >= Step::AlarmsOnly {
                break;
            }
            let backlog_open = step < Step::BacklogPaused;
            let live_from = drain.cursors.live_from(self.boundary(now));
            let live = drain.lane(Lane::Live);
            let live_waiting =
                !live.ready.is_empty() || live.batcher.held() > 0 || live_from < committed;
            // The backlog's share while live readings wait; all of the link when none do.
            if backlog_open
                && !drain.lane(Lane::Backlog).ready.is_empty()
                && (!live_waiting || drain.pacer.allows(now))
            {
                let batch = drain.lanes[2].ready.pop_front();
                if let Some(batch) = batch {
                    let sent = self.publish(client, inflight, drain, Lane::Backlog, batch)?;
                    if live_waiting {
                        drain.pacer.spend(sent.bytes);
                    }
                    if sent.blocked {
                        break;
                    }
                }
                continue;
            }
            // The live lane.
            if let Some(batch) = drain.lane(Lane::Live).ready.pop_front() {
                if self
                    .publish(client, inflight, drain, Lane::Live, batch)?
                    .blocked
                {
                    break;
                }
                continue;
            }
            if let Some(batch) = drain.lane(Lane::Live).batcher.due(now) {
                drain.lane(Lane::Live).ready.push_back(batch);
                continue;
            }
            if live_from < committed {
                let unsent = self
                    .read(Priority::Normal, live_from, committed, drain.read_limit)
                    .await?;
                let upto = if unsent.last > 0 {
                    unsent.last
                } else {
                    committed
                };
                drain.cursors.live_read(upto);
                let unsent = if step >= Step::LiveThinned {
                    let thin_to = self.budget.config().map_or(Duration::ZERO, |b| b.thin_to);
                    drain.thin(unsent, thin_to, (live_from, upto), now)
                } else {
                    unsent
                };
                drain.take(Lane::Live, unsent, now);
                continue;
            }
            if !backlog_open {
                break;
            }
            // The backlog, oldest first, while nothing of it waits to be sent.
            let hold = drain.hold;
            let backlog = drain.lane(Lane::Backlog);
            if !backlog.ready.is_empty() {
                break;
            }
            if backlog.batcher.held() >= hold {
                let largest = backlog.batcher.largest();
                backlog.ready.extend(largest);
                continue;
            }
            if let Some((after, upto)) = drain.cursors.backlog() {
                let unsent = self
                    .read(Priority::Normal, after, upto, drain.read_limit)
                    .await?;
                drain
                    .cursors
                    .backlog_read((unsent.last > 0).then_some(unsent.last));
                drain.take(Lane::Backlog, unsent, now);
                continue;
            }
            // The backlog's last rows, in batches that will not fill any more.
            if drain.seal(Lane::Backlog, now) {
                continue;
            }
            break;
        }
        Ok(())
    }

    /// Encodes `batch` and hands it to the client, split into as many messages as
    /// `mqtt.max_message` and the in-flight byte window need; a single reading that cannot
    /// fit any message is given up, counted. What does not fit in the window now goes back to
    /// the front of its lane.
    fn publish(
        &mut self,
        client: &AsyncClient,
        inflight: &mut Inflight,
        drain: &mut Drain,
        lane: Lane,
        batch: Batch,
    ) -> Result<Sent, UplinkError> {
        let topic = match &batch.device {
            Some(device) => self.topics.data(device).to_string(),
            None => self.topics.batch(),
        };
        // No message larger than the window, so that none holds the link longer than the
        // window's queue: batches split down to single readings for that; only a reading
        // beyond `max_message` is given up.
        let limits = (inflight.window() as u64, self.max_message);
        let historical = lane == Lane::Backlog;
        let mut sent = Sent::default();
        let mut messages = fit(&self.encoder, topic.len(), limits, historical, batch).into_iter();
        while let Some(message) = messages.next() {
            match message {
                Ok((batch, payload)) => {
                    let size = publish_size(topic.len(), payload.len()) as usize;
                    if !inflight.fits(size) || inflight.messages() >= self.window {
                        let rest: Vec<Batch> = std::iter::once(batch)
                            .chain(messages.filter_map(Result::ok).map(|(b, _)| b))
                            .collect();
                        let ready = &mut drain.lane(lane).ready;
                        for batch in rest.into_iter().rev() {
                            ready.push_front(batch);
                        }
                        sent.blocked = true;
                        return Ok(sent);
                    }
                    client.try_publish(&topic, self.qos, false, payload)?;
                    inflight.queued(Carried::rows(lane, batch.seqs(), size));
                    sent.bytes += size;
                }
                Err(batch) => {
                    warn!(topic = %topic, seqs = ?batch.seqs(), "Reading too large for mqtt.max_message; dropped and counted");
                    self.acker.give_up(batch.seqs(), DropReason::Oversize);
                }
            }
        }
        Ok(sent)
    }

    /// When the next lane summary is due, if summaries are on.
    fn summary_due(&self) -> Option<Instant> {
        let every = self.lanes.summary_every;
        // Nothing but alarms once the budget is used up.
        let open = self.budget.current() < Step::AlarmsOnly;
        (open && !every.is_zero()).then(|| {
            self.summarised
                .map_or_else(Instant::now, |(at, _)| at + every)
        })
    }

    /// Publishes the lanes' depths and drain rates, retained, on `.../summary`.
    async fn summarise(
        &mut self,
        client: &AsyncClient,
        inflight: &mut Inflight,
    ) -> Result<(), UplinkError> {
        let now = Instant::now();
        let delivered = Lane::ALL.map(|lane| self.delivered.get(lane));
        let depths = lanes::depths(&self.reader, self.lanes.live_age).await?;
        let elapsed = self
            .summarised
            .map(|(at, before)| (now.saturating_duration_since(at).as_secs_f64(), before));
        let mut lanes = serde_json::Map::new();
        for (i, (lane, depth)) in depths.iter().enumerate() {
            let rate = elapsed.and_then(|(secs, before)| {
                (secs > 0.0).then(|| delivered[i].saturating_sub(before[i]) as f64 / secs)
            });
            lanes.insert(
                lane.as_str().into(),
                serde_json::json!({
                    "readings": depth.readings,
                    "bytes": depth.bytes,
                    "oldest": depth.oldest_ms.map(encoding::json::rfc3339_millis),
                    "drain_per_s": rate,
                    "eta_s": rate.filter(|r| *r > 0.0).map(|r| (depth.readings as f64 / r).ceil()),
                }),
            );
        }
        let stats = self.reader.stats();
        let dropped: serde_json::Map<String, serde_json::Value> = stats
            .dropped
            .iter()
            .map(|(reason, n)| (reason.as_str().to_string(), serde_json::json!(n)))
            .collect();
        let payload = serde_json::json!({
            "ts": encoding::json::rfc3339_millis(crate::pipeline::unix_millis(SystemTime::now())),
            "lanes": lanes,
            "dropped": dropped,
        });
        client.try_publish(
            self.topics.summary(),
            QoS::AtLeastOnce,
            true,
            payload.to_string(),
        )?;
        inflight.queued(Carried::control());
        self.summarised = Some((now, delivered));
        Ok(())
    }

    /// Applies one event to the window; returns whether it was an acknowledgement.
    fn handle(&mut self, event: Event, inflight: &mut Inflight) -> bool {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(carried) = inflight.written(pkid) {
                    self.done(carried);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(carried) = inflight.acked(ack.pkid) {
                    self.done(carried);
                }
                return true;
            }
            Event::Incoming(Packet::Publish(publish)) => self.command(&publish),
            other => debug!(event = ?other, "MQTT event"),
        }
        false
    }

    /// The rows of a delivered message can go, and what it asked to save is saved.
    fn done(&self, carried: Carried) {
        if let Some(lane) = carried.lane {
            self.delivered.add(lane, carried.seqs.len());
            self.acker.ack(carried.seqs);
        }
        if !carried.saves.is_empty() {
            self.acker.save_counters(carried.saves);
        }
    }

    /// Hands a `.../set` message to the command router.
    fn command(&mut self, publish: &rumqttc::Publish) {
        let (Some(commands), Some((device, point))) =
            (&self.commands, self.topics.parse_set(&publish.topic))
        else {
            return;
        };
        if publish.retain || publish.payload.len() > COMMAND_LIMIT {
            // A retained command would be carried out again on every reconnect; an oversized
            // one is no command Cairn knows. Reading it and saying so keeps the connection: a
            // retained one comes back once per connect.
            self.status.send_modify(|s| s.ignored_commands += 1);
            if let Some(held) = self.command_log.pass() {
                warn!(topic = %publish.topic, bytes = publish.payload.len(), retained = publish.retain, more_ignored = held, "Command ignored: commands are at most 4 KiB and never retained");
            }
            return;
        }
        let request = SetRequest {
            device: device.to_string(),
            point: point.to_string(),
            payload: publish.payload.to_vec(),
            reply: None,
        };
        if commands.try_send(request).is_err() {
            self.status.send_modify(|s| s.ignored_commands += 1);
            if let Some(held) = self.command_log.pass() {
                warn!(topic = %publish.topic, more_ignored = held, "Command dropped: too many commands waiting");
            }
        }
    }

    /// Closes a connection window: the retained status says when the next one opens.
    async fn sleep_now(
        &mut self,
        client: &AsyncClient,
        events: &mut EventLoop,
        inflight: &mut Inflight,
    ) -> Result<Ended, UplinkError> {
        let next = self
            .schedule
            .as_ref()
            .map_or(SystemTime::now(), |s| s.next_open(SystemTime::now()));
        let status = format!("sleeping until {}", humantime::format_rfc3339_seconds(next));
        self.leave(client, events, inflight, &status).await;
        self.set_status(false, None);
        Ok(Ended::Sleeping)
    }

    /// Waits briefly for outstanding acks (each one spares a duplicate next time), publishes
    /// the retained `status` (`offline`, or when the next window opens; a clean disconnect
    /// does not fire the last will) and disconnects.
    async fn leave(
        &mut self,
        client: &AsyncClient,
        events: &mut EventLoop,
        inflight: &mut Inflight,
        status: &str,
    ) {
        let deadline = Instant::now() + LEAVE_GRACE;
        let mut offline_sent = false;
        loop {
            if inflight.is_empty() {
                if offline_sent {
                    break;
                }
                if client
                    .try_publish(self.topics.status(), QoS::AtLeastOnce, true, status)
                    .is_err()
                {
                    break;
                }
                inflight.queued(Carried::control());
                offline_sent = true;
            }
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Ok(Ok(event)) => {
                    self.handle(event, inflight);
                }
                Ok(Err(_)) | Err(_) => return,
            }
        }
        if client.try_disconnect().is_ok() {
            while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.poll()).await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        }
        info!(broker = %self.broker, "MQTT disconnected");
    }
}

/// `batch` encoded into messages on a topic of `topic` bytes, halving it while a message is
/// larger than `split_above`; a single reading larger than `max_message` comes back as `Err`.
fn fit(
    encoder: &Encoder,
    topic: usize,
    (split_above, max_message): (u64, u64),
    historical: bool,
    batch: Batch,
) -> Vec<Result<(Batch, Vec<u8>), Batch>> {
    let payload = encoder.encode(&batch.records, historical);
    let size = publish_size(topic, payload.len());
    if batch.records.len() < 2 {
        return vec![if size <= max_message {
            Ok((batch, payload))
        } else {
            Err(batch)
        }];
    }
    if size <= split_above.min(max_message) {
        return vec![Ok((batch, payload))];
    }
    let (head, tail) = batch.split();
    let limits = (split_above, max_message);
    let mut messages = fit(encoder, topic, limits, historical, head);
    messages.extend(fit(encoder, topic, limits, historical, tail));
    messages
}

/// Seconds after which a retained meta goes again even unchanged.
const META_REFRESH: i64 = 24 * 3600;

/// A stable fingerprint of a payload (FNV-1a, 64 bits): the same bytes give the same number
/// in every run and every Rust release, which std's hasher does not promise.
fn fingerprint(bytes: &[u8]) -> i64 {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash as i64
}

/// How often the link meter's counters are saved: a crash loses at most this much of them.
const SAVE_COUNTERS: Duration = Duration::from_secs(60);

/// Saves the link meter's counters in the outbox every minute, and once more at shutdown.
async fn save_counters(meter: Arc<Meter>, acker: Acker, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(SAVE_COUNTERS);
    tick.tick().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => acker.save_counters(meter.saved()),
        }
    }
    acker.save_counters(meter.saved());
}

/// Why the link's task ended, as the uplink's error.
fn link_ended(ended: Result<Result<(), LinkError>, tokio::task::JoinError>) -> UplinkError {
    let error = match ended {
        Ok(Err(e)) => e,
        Ok(Ok(())) => LinkError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the broker closed the connection",
        )),
        Err(e) => LinkError::Io(std::io::Error::other(e.to_string())),
    };
    UplinkError::Link(error)
}

/// How a connection ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The gateway is stopping.
    Shutdown,
    /// A connection window closed.
    Sleeping,
}

/// What one publish did: bytes handed to the client, and whether the window stopped it.
#[derive(Debug, Default)]
struct Sent {
    bytes: usize,
    blocked: bool,
}

/// One lane's batches on a connection: those being filled, and those sealed and waiting.
struct LaneQueue {
    batcher: Batcher,
    ready: VecDeque<Batch>,
}

/// Where the draining of the outbox stands on one connection.
struct Drain {
    committed: watch::Receiver<i64>,
    cursors: Cursors,
    /// The committed seq up to which alarms were looked for.
    alarms_seen: i64,
    /// Alarm, live and backlog, in that order.
    lanes: [LaneQueue; 3],
    pacer: Pacer,
    /// Rows read from the outbox at a time.
    read_limit: usize,
    /// Rows the backlog's batcher may hold before its fullest batch goes early.
    hold: usize,
    /// When each device last had a live reading sent while the budget thins them.
    thinned: std::collections::HashMap<Arc<str>, Instant>,
}

impl Drain {
    fn new(uplink: &Uplink, committed: watch::Receiver<i64>, hurry: bool) -> Self {
        let single = uplink.encoder.single();
        let at_once = BatchConfig {
            linger: Duration::ZERO,
            ..uplink.batch.clone()
        };
        let live = if hurry {
            at_once.clone()
        } else {
            uplink.batch.clone()
        };
        let backlog = BatchConfig {
            max_readings: uplink.lanes.backlog_readings,
            ..at_once.clone()
        };
        let queue = |config: &BatchConfig| LaneQueue {
            batcher: Batcher::new(config, single),
            ready: VecDeque::new(),
        };
        let lanes = [queue(&at_once), queue(&live), queue(&backlog)];
        let most = lanes
            .iter()
            .map(|l| l.batcher.max_readings())
            .max()
            .unwrap_or(1);
        Self {
            cursors: Cursors::new(uplink.boundary(Instant::now())),
            committed,
            alarms_seen: 0,
            lanes,
            pacer: Pacer::new(uplink.lanes.backlog_rate.as_u64()),
            read_limit: READ_AHEAD.max(most),
            hold: READ_AHEAD.max(2 * most),
            thinned: Default::default(),
        }
    }

    fn lane(&mut self, lane: Lane) -> &mut LaneQueue {
        &mut self.lanes[lane as usize]
    }

    /// Whether nothing is held or waiting in any lane.
    fn is_empty(&self) -> bool {
        self.lanes
            .iter()
            .all(|l| l.ready.is_empty() && l.batcher.held() == 0)
    }

    /// Rows read for `lane` go into its batches; full ones are sealed.
    fn take(&mut self, lane: Lane, unsent: Unsent, now: Instant) {
        let queue = self.lane(lane);
        for record in unsent.records {
            queue.ready.extend(queue.batcher.push(record, now));
        }
    }

    /// Live rows `read` from `range`, thinned to one per device per `thin_to`; when any are
    /// left out, the range goes to the backlog, which sends them once the budget allows.
    fn thin(
        &mut self,
        mut read: Unsent,
        thin_to: Duration,
        range: (i64, i64),
        now: Instant,
    ) -> Unsent {
        let before = read.records.len();
        read.records.retain(|record| {
            let due = self
                .thinned
                .get(&record.device)
                .is_none_or(|at| now.saturating_duration_since(*at) >= thin_to);
            if due {
                self.thinned.insert(record.device.clone(), now);
            }
            due
        });
        if read.records.len() < before {
            self.cursors.defer(range.0, range.1);
        }
        read
    }

    /// Seals `lane`'s open batches whose linger is over; whether there was one.
    fn seal(&mut self, lane: Lane, now: Instant) -> bool {
        let queue = self.lane(lane);
        let before = queue.ready.len();
        while let Some(batch) = queue.batcher.due(now) {
            queue.ready.push_back(batch);
        }
        queue.ready.len() > before
    }
}

/// Sleeps until `deadline`; never, without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The next answer to publish; never, when no device takes commands.
async fn next_answer(answers: &mut Option<mpsc::Receiver<SetResult>>) -> Option<SetResult> {
    match answers {
        Some(answers) => answers.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_adapters::Value;

    use super::*;
    use crate::config::{Compression, Encoding};
    use crate::store::Record;

    #[test]
    fn a_batch_splits_until_each_message_fits_and_a_giant_is_given_up() {
        let record = |seq: i64, text: usize| Record {
            priority: Default::default(),
            unsynced: false,
            seq,
            device: Arc::from("d"),
            ts_ms: seq,
            values: vec![(Arc::from("x"), Value::Text("y".repeat(text)))],
        };
        let encoder = Encoder::new(Encoding::Cbor, Compression::None);
        let batch = Batch {
            device: None,
            records: (1..=10)
                .map(|seq| record(seq, 300))
                .chain([record(11, 5000)])
                .collect(),
        };
        let messages = fit(&encoder, 20, (1024, 1024), false, batch);
        let mut sent = Vec::new();
        for message in &messages {
            match message {
                Ok((batch, payload)) => {
                    assert!(publish_size(20, payload.len()) <= 1024);
                    sent.extend(batch.seqs());
                }
                Err(batch) => assert_eq!(batch.seqs(), [11], "only the giant is given up"),
            }
        }
        assert_eq!(sent, (1..=10).collect::<Vec<_>>(), "in order, each once");
        assert!(messages.len() >= 5, "{} messages", messages.len());
    }
}
