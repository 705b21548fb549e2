//! The uplink: one MQTT connection that drains the outbox in `seq` order and deletes a row only
//! after the broker's PUBACK.
//!
//! `AsyncClient::publish` returning Ok only means "queued", and rumqttc forgets its queue when
//! the broker has no session, so this task owns both the client and the event loop, maps packet
//! ids to rows ([`inflight`]), and after every (re)connect publishes again everything the
//! outbox still holds. A fresh event loop per connection keeps no state between sessions.
//!
//! When some device takes writes, the uplink also subscribes to their `.../set` topics, hands
//! each command to the [`crate::commands`] router and publishes the answers it gets back.

mod inflight;
mod options;
pub mod topics;

use std::collections::VecDeque;
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
use crate::config::MqttConfig;
use crate::store::{Acker, Record, StoreReader};
use inflight::Inflight;
use topics::{DeviceMeta, Topics};

/// Rows read from the outbox at a time (at least the window).
const READ_AHEAD: usize = 512;

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
    /// The TLS files could not be read.
    #[error("TLS files: {0}")]
    Tls(#[from] std::io::Error),
}

impl From<rumqttc::ConnectionError> for UplinkError {
    fn from(e: rumqttc::ConnectionError) -> Self {
        UplinkError::Connection(Box::new(e))
    }
}

/// The link as people on site should see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkStatus {
    /// Whether the broker has accepted the connection.
    pub connected: bool,
    /// Since when the link is in this state.
    pub since: SystemTime,
    /// Why the last connection ended or failed.
    pub last_error: Option<String>,
}

/// The uplink task and its settings.
pub struct Uplink {
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
}

impl Uplink {
    /// An uplink for `gateway` that publishes `devices`' metadata, drains `reader`, and
    /// carries commands when given the router's `commands` end.
    pub fn new(
        config: &MqttConfig,
        gateway: &str,
        devices: Vec<DeviceMeta>,
        reader: StoreReader,
        acker: Acker,
        commands: Option<UplinkEnd>,
    ) -> Result<Self, UplinkError> {
        let (requests, answers) = commands.map(|end| (end.requests, end.results)).unzip();
        let topics = Topics::new(&config.topic_prefix, gateway);
        let (options, network) = options::build(config, gateway, &topics.status())?;
        let endpoint = config.endpoint();
        let status = UplinkStatus {
            connected: false,
            since: SystemTime::now(),
            last_error: None,
        };
        Ok(Self {
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
        })
    }

    /// The link's state, for the feed and the logs.
    pub fn status(&self) -> watch::Receiver<UplinkStatus> {
        self.status.subscribe()
    }

    /// Connects, drains, reconnects with backoff, until `cancel` fires; then leaves cleanly.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.reconnect.0, self.reconnect.1);
        let mut answers = self.answers.take();
        loop {
            let error = match self.session(&cancel, &mut backoff, &mut answers).await {
                Ok(()) => break,
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
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(retry_in) => {}
            }
        }
        self.set_status(false, None);
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

    /// One connection, from CONNECT to failure (`Err`) or shutdown (`Ok`).
    async fn session(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        answers: &mut Option<mpsc::Receiver<SetResult>>,
    ) -> Result<(), UplinkError> {
        // Room for the window, the status and metadata messages, the subscription and answers.
        let capacity = self.window + self.devices.len() + 3 + ANSWER_ROOM;
        let (client, mut events) = AsyncClient::new(self.options.clone(), capacity);
        events.set_network_options(self.network.clone());
        let connack = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            event = events.poll() => event?,
        };
        if let Event::Incoming(Packet::ConnAck(ack)) = &connack
            && ack.code != ConnectReturnCode::Success
        {
            return Err(UplinkError::Refused(ack.code));
        }
        info!(broker = %self.broker, backlog = self.reader.stats().backlog, "MQTT connected");
        self.set_status(true, None);

        let mut inflight = Inflight::default();
        client.try_publish(self.topics.status(), QoS::AtLeastOnce, true, "online")?;
        inflight.queued(None);
        for device in &self.devices {
            client.try_publish(
                self.topics.meta(&device.name),
                QoS::AtLeastOnce,
                true,
                device.payload(),
            )?;
            inflight.queued(None);
        }
        if self.commands.is_some() {
            // Commands sent while the link was down are not delivered later (clean session):
            // a stale write is worse than none.
            client.try_subscribe(self.topics.set_filter(), QoS::AtLeastOnce)?;
        }

        let mut committed = self.reader.committed();
        // Every connect starts from the oldest unacknowledged row: whatever was in flight on
        // the last connection may or may not have arrived.
        let mut cursor = 0;
        // Rows read ahead of the window, so that the outbox is queried once per batch rather
        // than once per acknowledgement.
        let mut ahead: VecDeque<Record> = VecDeque::new();
        loop {
            while inflight.rows() < self.window {
                if ahead.is_empty() && cursor < *committed.borrow_and_update() {
                    ahead.extend(
                        self.reader
                            .unsent(cursor, self.window.max(READ_AHEAD))
                            .await?,
                    );
                    cursor = ahead.back().map_or(*committed.borrow(), |row| row.seq);
                }
                let Some(row) = ahead.pop_front() else { break };
                let topic = self.topics.data(&row.device);
                client.try_publish(topic, self.qos, false, row.payload.to_vec())?;
                inflight.queued(Some(row.seq));
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    self.leave(&client, &mut events, &mut inflight).await;
                    return Ok(());
                }
                event = events.poll() => {
                    if self.handle(event?, &mut inflight) {
                        // The broker is taking messages: the link works, whatever happened before.
                        backoff.reset();
                    }
                }
                Ok(()) = committed.changed(), if inflight.rows() < self.window => {}
                // Only while the queue is nearly empty, so that the window always fits beside.
                Some(answer) = next_answer(answers), if inflight.unwritten() < ANSWER_ROOM => {
                    let topic = self.topics.result(&answer.device, &answer.point);
                    client.try_publish(topic, QoS::AtLeastOnce, false, answer.payload)?;
                    inflight.queued(None);
                }
            }
        }
    }

    /// Applies one event to the window; returns whether it was an acknowledgement.
    fn handle(&self, event: Event, inflight: &mut Inflight) -> bool {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(Some(seq)) = inflight.written(pkid)
                    && pkid == 0
                {
                    self.acker.ack(seq);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(Some(seq)) = inflight.acked(ack.pkid) {
                    self.acker.ack(seq);
                }
                return true;
            }
            Event::Incoming(Packet::Publish(publish)) => self.command(&publish),
            other => debug!(event = ?other, "MQTT event"),
        }
        false
    }

    /// Hands a `.../set` message to the command router.
    fn command(&self, publish: &rumqttc::Publish) {
        let (Some(commands), Some((device, point))) =
            (&self.commands, self.topics.parse_set(&publish.topic))
        else {
            return;
        };
        if publish.retain {
            // A retained command would be carried out again on every reconnect.
            warn!(topic = %publish.topic, "Retained command ignored; publish commands without the retain flag");
            return;
        }
        let request = SetRequest {
            device: device.to_string(),
            point: point.to_string(),
            payload: publish.payload.to_vec(),
        };
        if commands.try_send(request).is_err() {
            warn!(topic = %publish.topic, "Command dropped: too many commands waiting");
        }
    }

    /// Waits briefly for outstanding acks (each one spares a duplicate next time), marks the
    /// gateway offline (a clean disconnect does not fire the last will) and disconnects.
    async fn leave(&self, client: &AsyncClient, events: &mut EventLoop, inflight: &mut Inflight) {
        let deadline = Instant::now() + LEAVE_GRACE;
        let mut offline_sent = false;
        loop {
            if inflight.is_empty() {
                if offline_sent {
                    break;
                }
                if client
                    .try_publish(self.topics.status(), QoS::AtLeastOnce, true, "offline")
                    .is_err()
                {
                    break;
                }
                inflight.queued(None);
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

/// The next answer to publish; never, when no device takes commands.
async fn next_answer(answers: &mut Option<mpsc::Receiver<SetResult>>) -> Option<SetResult> {
    match answers {
        Some(answers) => answers.recv().await,
        None => std::future::pending().await,
    }
}
