//! Frames from packet-forwarder devices to the end devices that own their DevAddrs (or, for
//! join requests, their DevEUIs), and downlinks from end devices back to the forwarder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::radio::Radio;
use super::region::Region;

/// Frames waiting for one end device's adapter; more are dropped and counted.
const NODE_QUEUE: usize = 64;

/// Downlinks waiting for a forwarder; more are refused and counted by the end device.
const DOWNLINK_QUEUE: usize = 64;

/// A frame a forwarder heard, on its way to the end device's adapter.
#[derive(Debug)]
pub(crate) struct Heard {
    pub(super) phy: Vec<u8>,
    pub(super) radio: Radio,
    /// When and how it was received, for a downlink in its receive windows.
    pub(super) timing: Option<Timing>,
}

/// The reception of an uplink, as a downlink answering it needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Timing {
    /// The gateway that heard it.
    pub(super) gateway: u64,
    /// Its concentrator time at the end of reception, in microseconds.
    pub(super) tmst: u32,
    /// Its frequency in MHz.
    pub(super) freq: f64,
    /// Its data rate, "SF7BW125".
    pub(super) datr: String,
    /// Its coding rate.
    pub(super) codr: String,
    /// The region of the forwarder's gateways.
    pub(super) region: Region,
    /// GPS time at reception: the gateway's (a GPS-disciplined gateway gives `tmms`, others
    /// `time` from their host's clock), else this host's clock when it is plausible.
    pub(super) gps_time: Option<std::time::Duration>,
}

/// A downlink answering an uplink, for the forwarder whose gateway heard it. The forwarder
/// picks the window: RX1, or RX2 when RX1's sub-band has no duty cycle left or the gateway
/// refused RX1.
#[derive(Debug)]
pub(crate) struct Downlink {
    /// The uplink it answers, as the gateway chosen to answer heard it.
    pub(super) timing: Timing,
    /// Microseconds from the end of the uplink to RX1; RX2 opens a second later.
    pub(super) rx1_delay_us: u32,
    /// The PHYPayload.
    pub(super) phy: Vec<u8>,
    /// Told which window the gateway took it for, or why it was not sent.
    pub(super) sent: oneshot::Sender<Result<RxWindow, NotSent>>,
}

/// The receive window a downlink went out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RxWindow {
    /// The first, on the uplink's channel (EU868) or its region's mapping.
    Rx1,
    /// The second, on the region's fixed channel.
    Rx2,
}

impl RxWindow {
    /// Its name in results and logs.
    pub(super) fn name(self) -> &'static str {
        match self {
            RxWindow::Rx1 => "rx1",
            RxWindow::Rx2 => "rx2",
        }
    }
}

/// Why a downlink was not sent; each is counted by the forwarder under its name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotSent {
    /// The gateway has not sent PULL_DATA, so there is no address to send to.
    #[error("the gateway has sent no PULL_DATA yet")]
    NoPath,
    /// Neither window's sub-band has duty cycle left this hour.
    #[error("the gateway's duty cycle is used up in both receive windows")]
    DutyCycle,
    /// The gateway refused both windows (TX_ACK), with its last error.
    #[error("the gateway refused it: {0}")]
    Refused(String),
    /// The forwarder is not running, or its queue is full.
    #[error("the forwarder cannot take it now")]
    Busy,
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

/// Which end device's adapter listens for which DevAddr (and DevEUI, for joins) behind which
/// forwarder device, and where each forwarder takes downlinks. Shared by the adapters of one
/// gateway (see [`crate::Shared`]).
#[derive(Debug, Clone, Default)]
pub struct Radios(Arc<Mutex<Tables>>);

#[derive(Debug, Default)]
struct Tables {
    frames: HashMap<Listener, mpsc::Sender<Heard>>,
    joins: HashMap<Listener64, mpsc::Sender<Heard>>,
    downlinks: HashMap<String, mpsc::Sender<Downlink>>,
}

/// A forwarder device's name and a DevAddr.
type Listener = (String, u32);
/// A forwarder device's name and a DevEUI.
type Listener64 = (String, u64);

impl Radios {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frames for `dev_addr` heard by `forwarder`, from now on (replacing an earlier listener).
    pub(super) fn listen(&self, forwarder: &str, dev_addr: u32) -> mpsc::Receiver<Heard> {
        let (tx, rx) = mpsc::channel(NODE_QUEUE);
        self.tables()
            .frames
            .insert((forwarder.to_string(), dev_addr), tx);
        rx
    }

    /// Join requests from `dev_eui` heard by `forwarder`, from now on.
    pub(super) fn listen_joins(&self, forwarder: &str, dev_eui: u64) -> mpsc::Receiver<Heard> {
        let (tx, rx) = mpsc::channel(NODE_QUEUE);
        self.tables()
            .joins
            .insert((forwarder.to_string(), dev_eui), tx);
        rx
    }

    /// Hands a frame to the adapter listening for `dev_addr` behind `forwarder`.
    pub(super) fn route(&self, forwarder: &str, dev_addr: u32, heard: Heard) -> Route {
        let tables = self.tables();
        deliver(tables.frames.get(&(forwarder.to_string(), dev_addr)), heard)
    }

    /// Hands a join request to the adapter of `dev_eui` behind `forwarder`.
    pub(super) fn route_join(&self, forwarder: &str, dev_eui: u64, heard: Heard) -> Route {
        let tables = self.tables();
        deliver(tables.joins.get(&(forwarder.to_string(), dev_eui)), heard)
    }

    /// Downlinks for `forwarder`'s gateways, from now on.
    pub(super) fn take_downlinks(&self, forwarder: &str) -> mpsc::Receiver<Downlink> {
        let (tx, rx) = mpsc::channel(DOWNLINK_QUEUE);
        self.tables().downlinks.insert(forwarder.to_string(), tx);
        rx
    }

    /// Queues a downlink for `forwarder`; when it is not running or its queue is full, the
    /// downlink's `sent` is told so at once.
    pub(super) fn send(&self, forwarder: &str, downlink: Downlink) {
        let tables = self.tables();
        let refused = match tables.downlinks.get(forwarder) {
            Some(tx) => tx.try_send(downlink).err().map(|e| e.into_inner()),
            None => Some(downlink),
        };
        if let Some(downlink) = refused {
            let _ = downlink.sent.send(Err(NotSent::Busy));
        }
    }
}

fn deliver(listener: Option<&mpsc::Sender<Heard>>, heard: Heard) -> Route {
    let Some(tx) = listener else {
        return Route::Unknown;
    };
    match tx.try_send(heard) {
        Ok(()) => Route::Delivered,
        Err(mpsc::error::TrySendError::Full(_)) => Route::Busy,
        Err(mpsc::error::TrySendError::Closed(_)) => Route::Unknown,
    }
}
