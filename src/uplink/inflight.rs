//! The in-flight window: which outbox rows each MQTT packet id stands for, and how many
//! messages and bytes travel unacknowledged.
//!
//! rumqttc assigns packet ids inside its event loop, so a publish is first *queued* (we know
//! its rows, not its id); the `Outgoing::Publish(pkid)` event that follows, in the same order,
//! names the id; the broker's PUBACK for that id means its rows can go.

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

use super::lanes::Lane;
use super::window::Window;

/// What a publish carried: a batch or a reading of some lane, or nothing of the outbox
/// (status, metadata, command answers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// The lane its rows came from; `None` for control messages.
    pub lane: Option<Lane>,
    /// The outbox rows.
    pub seqs: Vec<i64>,
    /// The size of the PUBLISH.
    pub bytes: usize,
    /// Counters to save in the outbox once the broker has it (a retained meta's fingerprint).
    pub saves: Vec<(String, i64)>,
}

impl Carried {
    /// A message of `lane` carrying `seqs` in a PUBLISH of `bytes`.
    pub fn rows(lane: Lane, seqs: Vec<i64>, bytes: usize) -> Self {
        Self {
            lane: Some(lane),
            seqs,
            bytes,
            saves: Vec::new(),
        }
    }

    /// A control message.
    pub fn control() -> Self {
        Self::default()
    }

    /// A control message whose acknowledgement saves `saves`.
    pub fn saving(saves: Vec<(String, i64)>) -> Self {
        Self {
            saves,
            ..Self::default()
        }
    }
}

/// Publishes sent on the current connection and not yet acknowledged, and the byte window
/// their acknowledgements size.
#[derive(Debug)]
pub struct Inflight {
    queued: VecDeque<(Instant, Carried)>,
    by_pkid: HashMap<u16, (Instant, Carried)>,
    /// Messages carrying rows, queued or awaiting their ack: what the window counts.
    messages: usize,
    /// Their bytes.
    bytes: usize,
    window: Window,
}

impl Inflight {
    /// Nothing in flight, with a byte window of at most `cap`.
    pub fn new(cap: usize) -> Self {
        Self {
            queued: VecDeque::new(),
            by_pkid: HashMap::new(),
            messages: 0,
            bytes: 0,
            window: Window::new(cap),
        }
    }

    /// A publish was handed to the client.
    pub fn queued(&mut self, carried: Carried) {
        if carried.lane.is_some() {
            self.messages += 1;
            self.bytes += carried.bytes;
        }
        self.queued.push_back((Instant::now(), carried));
    }

    /// Whether a message of `bytes` fits in the window now; with nothing in flight, any does.
    pub fn fits(&self, bytes: usize) -> bool {
        self.messages == 0 || self.bytes + bytes <= self.window.allowed()
    }

    /// The bytes the window allows now.
    pub fn window(&self) -> usize {
        self.window.allowed()
    }

    fn done(&mut self, carried: &Carried) {
        if carried.lane.is_some() {
            self.messages -= 1;
            self.bytes -= carried.bytes;
        }
    }

    /// The event loop wrote the oldest queued publish with `pkid` (0 for QoS 0, which is then
    /// as delivered as it will ever be). Returns what a QoS 0 publish carried.
    pub fn written(&mut self, pkid: u16) -> Option<Carried> {
        let (sent, carried) = self.queued.pop_front()?;
        if pkid == 0 {
            self.done(&carried);
            Some(carried)
        } else {
            self.by_pkid.insert(pkid, (sent, carried));
            None
        }
    }

    /// The broker acknowledged `pkid`. Returns what it carried, or `None` for an id we do not
    /// know (a duplicate ack).
    pub fn acked(&mut self, pkid: u16) -> Option<Carried> {
        let (sent, carried) = self.by_pkid.remove(&pkid)?;
        if carried.lane.is_some() {
            self.window.acked(carried.bytes, sent, Instant::now());
        }
        self.done(&carried);
        Some(carried)
    }

    /// Messages carrying rows, queued or awaiting their ack.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Their bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
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
        let mut inflight = Inflight::new(1 << 20);
        inflight.queued(Carried::control());
        inflight.queued(Carried::rows(Lane::Backlog, vec![10, 12], 300));
        inflight.queued(Carried::rows(Lane::Live, vec![11], 40));
        assert_eq!((inflight.messages(), inflight.bytes()), (2, 340));
        assert_eq!(inflight.written(1), None);
        assert_eq!(inflight.written(2), None);
        assert_eq!(inflight.written(3), None);
        assert_eq!(inflight.acked(3).unwrap().seqs, [11]);
        assert_eq!(inflight.acked(3), None, "a duplicate ack is ignored");
        assert_eq!(inflight.acked(2).unwrap().seqs, [10, 12]);
        assert_eq!((inflight.messages(), inflight.bytes()), (0, 0));
        assert!(
            !inflight.is_empty(),
            "the control message is still unacknowledged"
        );
        assert_eq!(inflight.acked(1), Some(Carried::control()));
        assert!(inflight.is_empty());
    }

    #[test]
    fn qos0_rows_count_as_done_once_written() {
        let mut inflight = Inflight::new(1 << 20);
        inflight.queued(Carried::rows(Lane::Live, vec![5], 30));
        assert_eq!(inflight.written(0).unwrap().seqs, [5]);
        assert_eq!((inflight.messages(), inflight.bytes()), (0, 0));
        assert!(inflight.is_empty());
    }
}
