//! Writes to a device, requested from outside (an MQTT `.../set` message) and answered by the
//! adapter that owns the device's link.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::reading::Value;

/// What became of a write: the value read back from the device (when it can be read back), or
/// why the write did not happen.
pub type CommandResult = Result<Option<Value>, String>;

/// What a command asks to write.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandValue {
    /// One value for a point, in the units the point reads in (`21.5`, `true`, `"auto"`).
    Value(Value),
    /// Named fields, for a write that takes several: a LoRaWAN downlink's `fport`, `hex` or
    /// `values`, and `confirmed`.
    Fields(serde_json::Map<String, serde_json::Value>),
}

/// A request to write `value` to the point `point` of one device.
#[derive(Debug)]
pub struct Command {
    /// The point (value name) to write, or `downlink` for a LoRaWAN device.
    pub point: String,
    /// What to write.
    pub value: CommandValue,
    deadline: Instant,
    reply: oneshot::Sender<CommandResult>,
}

impl Command {
    /// A command that must start within `patience`: a setpoint written minutes late, after
    /// the link came back, can do more harm than one never written.
    pub fn new(
        point: String,
        value: CommandValue,
        patience: Duration,
    ) -> (Self, oneshot::Receiver<CommandResult>) {
        let (reply, result) = oneshot::channel();
        let command = Self {
            point,
            value,
            deadline: Instant::now() + patience,
            reply,
        };
        (command, result)
    }

    /// When it becomes too late to carry the command out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether it is too late to carry the command out.
    pub fn expired(&self) -> bool {
        Instant::now() > self.deadline
    }

    /// Answers the requester (who may have stopped waiting: that is not an error here).
    pub fn reply(self, result: CommandResult) {
        let _ = self.reply.send(result);
    }
}
