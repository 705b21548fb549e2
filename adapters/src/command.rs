//! Writes to a device, requested from outside (an MQTT `.../set` message) and answered by the
//! adapter that owns the device's link.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::reading::Value;

/// What became of a write: the value read back from the device (when it can be read back), or
/// why the write did not happen.
pub type CommandResult = Result<Option<Value>, String>;

/// A request to write `value` to the point `point` of one device.
#[derive(Debug)]
pub struct Command {
    /// The point (value name) to write.
    pub point: String,
    /// The value, in the same units the point reads in (scale and offset are undone).
    pub value: Value,
    deadline: Instant,
    reply: oneshot::Sender<CommandResult>,
}

impl Command {
    /// A command that must start within `patience`: a setpoint written minutes late, after
    /// the link came back, can do more harm than one never written.
    pub fn new(
        point: String,
        value: Value,
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

    /// Whether it is too late to carry the command out.
    pub fn expired(&self) -> bool {
        Instant::now() > self.deadline
    }

    /// Answers the requester (who may have stopped waiting: that is not an error here).
    pub fn reply(self, result: CommandResult) {
        let _ = self.reply.send(result);
    }
}
