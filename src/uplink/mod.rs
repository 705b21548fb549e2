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
pub mod encoding;
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
use crate::config::{BatchConfig, MqttConfig};
use crate::store::{Acker, DropReason, StoreReader};
use batcher::{Batch, Batcher};
use encoding::Encoder;
use inflight::Inflight;
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
    /// `.../set` messages ignored since start: larger than a command may be, or retained.
    pub ignored_commands: u64,
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
    encoder: Encoder,
    batch: BatchConfig,
    max_message: u64,
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
            ignored_commands: 0,
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
            encoder: Encoder::new(config.encoding, config.compression),
            batch: config.batch.clone(),
            max_message: config.max_message.as_u64(),
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
        inflight.queued(Vec::new());
        for device in &self.devices {
            client.try_publish(
                self.topics.meta(&device.name),
                QoS::AtLeastOnce,
                true,
                device.payload(),
            )?;
            inflight.queued(Vec::new());
        }
        if self.commands.is_some() {
            // Commands sent while the link was down are not delivered later (clean session):
            // a stale write is worse than none.
            client.try_subscribe(self.topics.set_filter(), QoS::AtLeastOnce)?;
        }

        // Every connect starts from the oldest unacknowledged row: whatever was in flight on
        // the last connection may or may not have arrived.
        let mut drain = Drain {
            committed: self.reader.committed(),
            cursor: 0,
            batcher: Batcher::new(&self.batch, self.encoder.single()),
            ready: VecDeque::new(),
        };
        loop {
            self.fill(&client, &mut inflight, &mut drain).await?;
            let room = inflight.messages() < self.window;
            let linger = drain.batcher.deadline();
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
                Ok(()) = drain.committed.changed(), if room => {}
                () = sleep_until(linger), if room && linger.is_some() => {}
                // Only while the queue is nearly empty, so that the window always fits beside.
                Some(answer) = next_answer(answers), if inflight.unwritten() < ANSWER_ROOM => {
                    let topic = self.topics.result(&answer.device, &answer.point);
                    client.try_publish(topic, QoS::AtLeastOnce, false, answer.payload)?;
                    inflight.queued(Vec::new());
                }
            }
        }
    }

    /// Publishes batches while the window has room: sealed ones first, then those whose
    /// linger ran out, then batches made from rows read ahead from the outbox.
    async fn fill(
        &mut self,
        client: &AsyncClient,
        inflight: &mut Inflight,
        drain: &mut Drain,
    ) -> Result<(), UplinkError> {
        let hold = READ_AHEAD.max(2 * drain.batcher.max_readings());
        while inflight.messages() < self.window {
            let now = Instant::now();
            if let Some(batch) = drain.ready.pop_front() {
                self.publish(client, inflight, batch)?;
            } else if let Some(batch) = drain.batcher.due(now) {
                drain.ready.push_back(batch);
            } else if drain.batcher.held() >= hold {
                drain.ready.extend(drain.batcher.largest());
            } else if drain.cursor < *drain.committed.borrow_and_update() {
                let limit = READ_AHEAD.max(drain.batcher.max_readings());
                let unsent = self.reader.unsent(drain.cursor, limit).await?;
                drain.cursor = if unsent.last > 0 {
                    unsent.last
                } else {
                    *drain.committed.borrow()
                };
                if !unsent.undecodable.is_empty() {
                    self.acker
                        .give_up(unsent.undecodable, DropReason::Undecodable);
                }
                for record in unsent.records {
                    drain.ready.extend(drain.batcher.push(record, now));
                }
            } else {
                break;
            }
        }
        Ok(())
    }

    /// Encodes `batch` and hands it to the client, split into as many messages as
    /// `mqtt.max_message` needs; a single reading that cannot fit is given up, counted.
    fn publish(
        &mut self,
        client: &AsyncClient,
        inflight: &mut Inflight,
        batch: Batch,
    ) -> Result<(), UplinkError> {
        let topic = match &batch.device {
            Some(device) => self.topics.data(device).to_string(),
            None => self.topics.batch(),
        };
        for message in fit(&self.encoder, topic.len(), self.max_message, batch) {
            match message {
                Ok((batch, payload)) => {
                    client.try_publish(&topic, self.qos, false, payload)?;
                    inflight.queued(batch.seqs());
                }
                Err(batch) => {
                    warn!(topic = %topic, seqs = ?batch.seqs(), "Reading too large for mqtt.max_message; dropped and counted");
                    self.acker.give_up(batch.seqs(), DropReason::Oversize);
                }
            }
        }
        Ok(())
    }

    /// Applies one event to the window; returns whether it was an acknowledgement.
    fn handle(&self, event: Event, inflight: &mut Inflight) -> bool {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(seqs) = inflight.written(pkid).filter(|s| !s.is_empty()) {
                    self.acker.ack(seqs);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seqs) = inflight.acked(ack.pkid).filter(|s| !s.is_empty()) {
                    self.acker.ack(seqs);
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
        if publish.retain || publish.payload.len() > COMMAND_LIMIT {
            // A retained command would be carried out again on every reconnect; an oversized
            // one is no command Cairn knows. Reading it and saying so keeps the connection: a
            // retained one comes back once per connect.
            self.status.send_modify(|s| s.ignored_commands += 1);
            warn!(topic = %publish.topic, bytes = publish.payload.len(), retained = publish.retain, "Command ignored: commands are at most 4 KiB and never retained");
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
                inflight.queued(Vec::new());
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

/// `batch` encoded into messages of at most `max_message` bytes on a topic of `topic` bytes,
/// halving it until each fits; a single reading that cannot fit comes back as `Err`.
fn fit(
    encoder: &Encoder,
    topic: usize,
    max_message: u64,
    batch: Batch,
) -> Vec<Result<(Batch, Vec<u8>), Batch>> {
    let payload = encoder.encode(&batch.records, false);
    if publish_size(topic, payload.len()) <= max_message {
        return vec![Ok((batch, payload))];
    }
    if batch.records.len() < 2 {
        return vec![Err(batch)];
    }
    let (head, tail) = batch.split();
    let mut messages = fit(encoder, topic, max_message, head);
    messages.extend(fit(encoder, topic, max_message, tail));
    messages
}

/// Where the draining of the outbox stands on one connection.
struct Drain {
    committed: watch::Receiver<i64>,
    /// The last row read from the outbox.
    cursor: i64,
    batcher: Batcher,
    /// Batches sealed and waiting for room in the window.
    ready: VecDeque<Batch>,
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
        let messages = fit(&encoder, 20, 1024, batch);
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
