//! The live bus: every reading the outbox takes (before its commit) and every device status change, broadcast in memory to
//! whoever watches on site. Slow subscribers lag and are told so; they never slow the pipeline.

use std::sync::Arc;

use cairn_adapters::DeviceStatus;
use tokio::sync::broadcast;

use crate::store::Record;

/// One thing that happened, as the live bus carries it.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// A reading the outbox took, under the sequence number it is committed with.
    Reading(Arc<Record>),
    /// A device changed status.
    Status {
        /// The device.
        device: Arc<str>,
        /// Its new status.
        status: DeviceStatus,
    },
}

/// The sending side of the live bus; cheap to clone.
#[derive(Debug, Clone)]
pub struct LiveBus(broadcast::Sender<LiveEvent>);

impl LiveBus {
    /// A bus that keeps the last `capacity` events for subscribers that fall behind.
    pub fn new(capacity: usize) -> Self {
        Self(broadcast::channel(capacity).0)
    }

    /// Broadcasts `event`; having no subscriber is normal.
    pub fn publish(&self, event: LiveEvent) {
        let _ = self.0.send(event);
    }

    /// A new subscriber that sees events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.0.subscribe()
    }
}
