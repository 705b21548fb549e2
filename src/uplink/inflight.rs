//! The in-flight window: which outbox rows each MQTT packet id stands for.
//!
//! rumqttc assigns packet ids inside its event loop, so a publish is first *queued* (we know
//! its rows, not its id); the `Outgoing::Publish(pkid)` event that follows, in the same order,
//! names the id; the broker's PUBACK for that id means its rows can go.

use std::collections::{HashMap, VecDeque};

/// The outbox rows a publish carried: a batch, one reading, or none (status, metadata,
/// command answers).
pub type Carried = Vec<i64>;

/// Publishes sent on the current connection and not yet acknowledged.
#[derive(Debug, Default)]
pub struct Inflight {
    queued: VecDeque<Carried>,
    by_pkid: HashMap<u16, Carried>,
    /// Messages carrying rows, queued or awaiting their ack: what the window counts.
    messages: usize,
}

impl Inflight {
    /// A publish was handed to the client.
    pub fn queued(&mut self, carried: Carried) {
        self.messages += usize::from(!carried.is_empty());
        self.queued.push_back(carried);
    }

    /// The event loop wrote the oldest queued publish with `pkid` (0 for QoS 0, which is then
    /// as delivered as it will ever be). Returns the rows a QoS 0 publish carried.
    pub fn written(&mut self, pkid: u16) -> Option<Carried> {
        let carried = self.queued.pop_front()?;
        if pkid == 0 {
            self.messages -= usize::from(!carried.is_empty());
            Some(carried)
        } else {
            self.by_pkid.insert(pkid, carried);
            None
        }
    }

    /// The broker acknowledged `pkid`. Returns what it carried, or `None` for an id we do not
    /// know (a duplicate ack).
    pub fn acked(&mut self, pkid: u16) -> Option<Carried> {
        let carried = self.by_pkid.remove(&pkid)?;
        self.messages -= usize::from(!carried.is_empty());
        Some(carried)
    }

    /// Messages carrying rows, queued or awaiting their ack.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Publishes handed to the client and not yet written by its event loop.
    pub fn unwritten(&self) -> usize {
        self.queued.len()
    }

    /// Whether anything at all (rows or control messages) awaits an ack.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.by_pkid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_packet_ids_to_rows_in_order() {
        let mut inflight = Inflight::default();
        inflight.queued(vec![]);
        inflight.queued(vec![10, 12]);
        inflight.queued(vec![11]);
        assert_eq!(inflight.messages(), 2);
        assert_eq!(inflight.written(1), None);
        assert_eq!(inflight.written(2), None);
        assert_eq!(inflight.written(3), None);
        assert_eq!(inflight.acked(3), Some(vec![11]));
        assert_eq!(inflight.acked(3), None, "a duplicate ack is ignored");
        assert_eq!(inflight.acked(2), Some(vec![10, 12]));
        assert_eq!(inflight.messages(), 0);
        assert!(
            !inflight.is_empty(),
            "the control message is still unacknowledged"
        );
        assert_eq!(inflight.acked(1), Some(vec![]));
        assert!(inflight.is_empty());
    }

    #[test]
    fn qos0_rows_count_as_done_once_written() {
        let mut inflight = Inflight::default();
        inflight.queued(vec![5]);
        assert_eq!(inflight.written(0), Some(vec![5]));
        assert_eq!(inflight.messages(), 0);
        assert!(inflight.is_empty());
    }
}
