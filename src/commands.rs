//! Writes requested over MQTT, or from the dashboard: each `<prefix>/<gateway>/<device>/<value>/set`
//! message, or `POST /api/set`, is checked against the config, handed to the device's adapter,
//! and answered, on `.../result` or to the page.
//!
//! The payload is a JSON scalar (`21.5`, `true`, `"auto"`) or `{"value": 21.5, "id": "..."}`,
//! or for a write of several fields (a LoRaWAN downlink) an object of them, with an `id` among
//! them if wanted. The answer echoes the `id`, so a caller can match it to its request:
//! `{"ok":true,"value":21.5,"id":"...","ts":"..."}` (the value read back from the device, or
//! `null`) or `{"ok":false,"error":"...","id":"...","ts":"..."}`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use cairn_adapters::{Command, CommandResult, CommandValue, DeviceStatus, Value};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::supervisor::DeviceHandle;

/// How long a command may wait for its device (behind the polls of a shared bus) before it is
/// refused: a setpoint applied long after it was sent can do harm.
const PATIENCE: Duration = Duration::from_secs(10);

/// How long to wait for the adapter's answer after the patience: a write and a read-back.
const ANSWER_AFTER: Duration = Duration::from_secs(20);

/// Requests, and results, that may wait between the uplink and the router.
const QUEUE: usize = 64;

/// A `.../set` message as it arrived, or the dashboard's request in the same form.
#[derive(Debug)]
pub struct SetRequest {
    /// The device named in the topic.
    pub device: String,
    /// The value (point) named in the topic.
    pub point: String,
    /// The message's payload.
    pub payload: Vec<u8>,
    /// Where the answer goes: to the dashboard's request that waits on it, or, with `None`,
    /// to the broker on `.../result`.
    pub reply: Option<oneshot::Sender<Vec<u8>>>,
}

/// An answer to publish on `.../result`.
#[derive(Debug)]
pub struct SetResult {
    /// The device the request named.
    pub device: String,
    /// The value the request named.
    pub point: String,
    /// The JSON answer.
    pub payload: Vec<u8>,
}

/// The uplink's end: where it hands requests, and where it takes the answers to publish.
#[derive(Debug)]
pub struct UplinkEnd {
    /// Requests for the router.
    pub requests: mpsc::Sender<SetRequest>,
    /// Answers for the broker.
    pub results: mpsc::Receiver<SetResult>,
}

/// Routes requests to the devices' adapters and collects their answers.
pub struct Router {
    targets: HashMap<String, Target>,
    requests: mpsc::Receiver<SetRequest>,
    results: mpsc::Sender<SetResult>,
}

/// A device that takes commands.
struct Target {
    writable: Vec<String>,
    /// Set for a device that listens now and then: commands wait this long for it, online
    /// or not.
    queued_for: Option<Duration>,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<DeviceStatus>,
}

/// The `.../set` payload: a bare value, or a value with an id to echo.
#[derive(Deserialize)]
#[serde(untagged)]
enum SetPayload {
    Tagged {
        value: serde_json::Value,
        #[serde(default)]
        id: serde_json::Value,
    },
    Fields(serde_json::Map<String, serde_json::Value>),
    Bare(serde_json::Value),
}

impl Router {
    /// A router for the devices that take commands, and the uplink's end of it; `None` when
    /// no device takes any (the uplink then subscribes to nothing).
    pub fn new(devices: &[DeviceHandle]) -> Option<(Router, UplinkEnd)> {
        let targets: HashMap<String, Target> = devices
            .iter()
            .filter(|d| !d.writable.is_empty())
            .map(|d| {
                let target = Target {
                    writable: d.writable.clone(),
                    queued_for: d.queued_for,
                    commands: d.commands.clone(),
                    status: d.status.clone(),
                };
                (d.name.to_string(), target)
            })
            .collect();
        if targets.is_empty() {
            return None;
        }
        let (requests_tx, requests) = mpsc::channel(QUEUE);
        let (results, results_rx) = mpsc::channel(QUEUE);
        let router = Router {
            targets,
            requests,
            results,
        };
        let end = UplinkEnd {
            requests: requests_tx,
            results: results_rx,
        };
        Some((router, end))
    }

    /// Handles requests until `cancel` fires or the uplink goes; commands still waiting for
    /// their device are abandoned (their adapters see the requester gone).
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut waiting = JoinSet::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                request = self.requests.recv() => match request {
                    Some(request) => self.start(request, &mut waiting),
                    None => break,
                },
                Some(_) = waiting.join_next() => {}
            }
        }
        waiting.shutdown().await;
    }

    /// Sends the command to its device, or refuses it, and answers in the background.
    fn start(&self, request: SetRequest, waiting: &mut JoinSet<()>) {
        let (value, id) = parse_payload(&request.payload);
        let via = if request.reply.is_some() {
            "dashboard"
        } else {
            "mqtt"
        };
        info!(device = %request.device, point = %request.point, value = ?value, via, "Command received");
        let dispatched = match value {
            Some(value) => self.dispatch(&request, value),
            None => Err("the payload must be a JSON number, true/false, a \"string\", or {\"value\": ..., \"id\": ...}".into()),
        };
        let results = self.results.clone();
        waiting.spawn(async move {
            let result = match dispatched {
                Ok((answer, within)) => match tokio::time::timeout(within, answer).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err("the device's adapter stopped before answering".into()),
                    Err(_) => Err("no answer from the device in time".into()),
                },
                Err(refusal) => Err(refusal),
            };
            if let Err(e) = &result {
                warn!(device = %request.device, point = %request.point, error = %e, "Command failed");
            }
            let payload = answer_payload(&result, id);
            match request.reply {
                // A page that gave up waiting does not need it.
                Some(reply) => {
                    let _ = reply.send(payload);
                }
                None => {
                    let answer = SetResult {
                        device: request.device,
                        point: request.point,
                        payload,
                    };
                    // The uplink gone means shutdown; the answer has nowhere to go.
                    let _ = results.send(answer).await;
                }
            }
        });
    }

    /// Hands the command to its device's adapter, or says why not; gives how long to wait
    /// for its answer.
    fn dispatch(
        &self,
        request: &SetRequest,
        value: CommandValue,
    ) -> Result<(oneshot::Receiver<CommandResult>, Duration), String> {
        let target = self.targets.get(&request.device).ok_or_else(|| {
            format!(
                "no device named `{}` takes writes on this gateway",
                request.device
            )
        })?;
        if !target.writable.contains(&request.point) {
            return Err(format!(
                "`{}` is not writable (a point needs `writable: true`)",
                request.point
            ));
        }
        if target.queued_for.is_none() && *target.status.borrow() != DeviceStatus::Online {
            return Err("the device is offline".into());
        }
        let patience = target.queued_for.unwrap_or(PATIENCE);
        let (command, answer) = Command::new(request.point.clone(), value, patience);
        target.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => "the device is busy with other commands".into(),
            mpsc::error::TrySendError::Closed(_) => "the device has stopped".to_string(),
        })?;
        Ok((answer, patience + ANSWER_AFTER))
    }
}

/// What a `.../set` payload asks to write (`None`: nothing a device takes), and the id to
/// echo (JSON `null` when none was given).
pub fn parse_payload(payload: &[u8]) -> (Option<CommandValue>, serde_json::Value) {
    let null = serde_json::Value::Null;
    match serde_json::from_slice::<SetPayload>(payload) {
        Ok(SetPayload::Tagged { value, id }) => {
            (Value::from_json(value).map(CommandValue::Value), id)
        }
        Ok(SetPayload::Fields(mut fields)) => {
            let id = fields.remove("id").unwrap_or(null);
            (Some(CommandValue::Fields(fields)), id)
        }
        Ok(SetPayload::Bare(value)) => (Value::from_json(value).map(CommandValue::Value), null),
        Err(_) => (None, null),
    }
}

/// The JSON answer to a command.
fn answer_payload(result: &CommandResult, id: serde_json::Value) -> Vec<u8> {
    let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let mut answer = match result {
        Ok(value) => serde_json::json!({"ok": true, "value": value}),
        Err(error) => serde_json::json!({"ok": false, "error": error}),
    };
    if let Some(fields) = answer.as_object_mut() {
        if !id.is_null() {
            fields.insert("id".into(), id);
        }
        fields.insert("ts".into(), ts.into());
    }
    serde_json::to_vec(&answer).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_adapters::DeviceCounters;

    use super::*;

    fn handle(status: DeviceStatus) -> (DeviceHandle, mpsc::Receiver<Command>) {
        let (commands, received) = mpsc::channel(4);
        let handle = DeviceHandle {
            name: Arc::from("boiler"),
            adapter: "modbus",
            description: None,
            status: watch::channel(status).1,
            counters: Arc::new(DeviceCounters::default()),
            writable: vec!["setpoint".into()],
            queued_for: None,
            commands,
        };
        (handle, received)
    }

    fn request(point: &str, payload: &str) -> SetRequest {
        SetRequest {
            device: "boiler".into(),
            point: point.into(),
            payload: payload.as_bytes().to_vec(),
            reply: None,
        }
    }

    async fn answer(end: &mut UplinkEnd) -> serde_json::Value {
        let result = end.results.recv().await.unwrap();
        serde_json::from_slice(&result.payload).unwrap()
    }

    #[tokio::test]
    async fn a_command_reaches_the_adapter_and_its_answer_comes_back_with_the_id() {
        let (device, mut adapter) = handle(DeviceStatus::Online);
        let (router, mut end) = Router::new(&[device]).unwrap();
        let cancel = CancellationToken::new();
        let running = tokio::spawn(router.run(cancel.clone()));

        end.requests
            .send(request("setpoint", r#"{"value": 21.5, "id": "r1"}"#))
            .await
            .unwrap();
        let command = adapter.recv().await.unwrap();
        assert_eq!(
            (command.point.as_str(), &command.value),
            ("setpoint", &CommandValue::Value(Value::Float(21.5)))
        );
        command.reply(Ok(Some(Value::Float(21.5))));
        let got = answer(&mut end).await;
        assert_eq!(
            (&got["ok"], &got["value"], &got["id"]),
            (&true.into(), &21.5.into(), &"r1".into())
        );

        end.requests
            .send(request("setpoint", "true"))
            .await
            .unwrap();
        adapter
            .recv()
            .await
            .unwrap()
            .reply(Err("exception: Illegal data value".into()));
        let got = answer(&mut end).await;
        assert_eq!(got["ok"], false);
        assert_eq!(got["error"], "exception: Illegal data value");
        assert!(got.get("id").is_none());

        // The dashboard's request is answered to it alone.
        let (reply, answered) = oneshot::channel();
        end.requests
            .send(SetRequest {
                reply: Some(reply),
                ..request("setpoint", "19")
            })
            .await
            .unwrap();
        adapter
            .recv()
            .await
            .unwrap()
            .reply(Ok(Some(Value::Int(19))));
        let got: serde_json::Value = serde_json::from_slice(&answered.await.unwrap()).unwrap();
        assert_eq!((&got["ok"], &got["value"]), (&true.into(), &19.into()));
        assert!(end.results.try_recv().is_err(), "nothing for the broker");

        cancel.cancel();
        running.await.unwrap();
    }

    #[tokio::test]
    async fn refusals_never_reach_the_adapter() {
        let (device, mut adapter) = handle(DeviceStatus::Online);
        let (offline, _) = handle(DeviceStatus::Offline);
        let offline = DeviceHandle {
            name: Arc::from("pump"),
            ..offline
        };
        let (router, mut end) = Router::new(&[device, offline]).unwrap();
        tokio::spawn(router.run(CancellationToken::new()));
        let cases = [
            (request("mode", "1"), "not writable"),
            (request("setpoint", "not json"), "the payload must be"),
            (request("setpoint", "[1, 2]"), "the payload must be"),
            (
                SetRequest {
                    device: "pump".into(),
                    ..request("setpoint", "1")
                },
                "offline",
            ),
            (
                SetRequest {
                    device: "nobody".into(),
                    ..request("setpoint", "1")
                },
                "no device named `nobody`",
            ),
        ];
        for (request, expected) in cases {
            end.requests.send(request).await.unwrap();
            let got = answer(&mut end).await;
            assert_eq!(got["ok"], false);
            let error = got["error"].as_str().unwrap();
            assert!(error.contains(expected), "{error}");
        }
        assert!(adapter.try_recv().is_err());
    }

    #[tokio::test]
    async fn fields_reach_a_device_that_queues_commands_even_while_it_is_offline() {
        let (mut device, mut adapter) = handle(DeviceStatus::Offline);
        device.queued_for = Some(Duration::from_secs(3600));
        let (router, mut end) = Router::new(&[device]).unwrap();
        tokio::spawn(router.run(CancellationToken::new()));
        end.requests
            .send(request(
                "setpoint",
                r#"{"fport": 10, "hex": "0258", "id": "d1"}"#,
            ))
            .await
            .unwrap();
        let command = adapter.recv().await.unwrap();
        let CommandValue::Fields(fields) = &command.value else {
            panic!("{:?}", command.value);
        };
        assert_eq!(fields.get("fport"), Some(&serde_json::json!(10)));
        assert!(
            fields.get("id").is_none(),
            "the id is the router's, not the device's"
        );
        assert!(!command.expired());
        command.reply(Ok(Some(Value::Text("sent in rx1, FCntDown 0".into()))));
        let got = answer(&mut end).await;
        assert_eq!((&got["ok"], &got["id"]), (&true.into(), &"d1".into()));
    }

    #[test]
    fn no_writable_device_no_router() {
        let (mut device, _) = handle(DeviceStatus::Online);
        device.writable.clear();
        assert!(Router::new(&[device]).is_none());
    }
}
