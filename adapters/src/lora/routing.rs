//! Frames from packet-forwarder devices to the end devices that own their DevAddrs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::radio::Radio;

/// Frames waiting for one end device's adapter; more are dropped and counted.
const NODE_QUEUE: usize = 64;

/// A frame a forwarder heard, on its way to the end device's adapter.
#[derive(Debug)]
pub(crate) struct Heard {
    pub(super) phy: Vec<u8>,
    pub(super) radio: Radio,
}

/// What became of a frame handed to [`Radios::route`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// In the end device's queue.
    Delivered,
    /// No device claims the DevAddr, or its adapter is not running.
    Unknown,
    /// Its adapter is not keeping up.
    Busy,
}

/// Which end device's adapter listens for which DevAddr behind which forwarder device. Shared
/// by the adapters of one gateway (see [`crate::Shared`]).
#[derive(Debug, Clone, Default)]
pub struct Radios(Arc<Mutex<HashMap<Listener, mpsc::Sender<Heard>>>>);

/// A forwarder device's name and a DevAddr.
type Listener = (String, u32);

impl Radios {
    /// Frames for `dev_addr` heard by `forwarder`, from now on (replacing an earlier listener).
    pub(super) fn listen(&self, forwarder: &str, dev_addr: u32) -> mpsc::Receiver<Heard> {
        let (tx, rx) = mpsc::channel(NODE_QUEUE);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert((forwarder.to_string(), dev_addr), tx);
        rx
    }

    /// Hands a frame to the adapter listening for `dev_addr` behind `forwarder`.
    pub(super) fn route(&self, forwarder: &str, dev_addr: u32, heard: Heard) -> Route {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = map.get(&(forwarder.to_string(), dev_addr)) else {
            return Route::Unknown;
        };
        match tx.try_send(heard) {
            Ok(()) => Route::Delivered,
            Err(mpsc::error::TrySendError::Full(_)) => Route::Busy,
            Err(mpsc::error::TrySendError::Closed(_)) => Route::Unknown,
        }
    }
}
