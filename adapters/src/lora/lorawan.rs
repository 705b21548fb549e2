//! LoRaWAN 1.0.x uplinks of devices activated by personalisation (ABP): the MIC, the 32-bit
//! frame counter rebuilt from its 16 transmitted bits, replay rejection, and decryption. The
//! `lorawan` crate does the parsing and the cryptography; the counter policy is ours.

use lorawan::creator::DataPayloadCreator;
use lorawan::keys::{AES128, AppSKey, NewSKey};
use lorawan::maccommandcreator::DeviceTimeAnsCreator;
use lorawan::maccommands::{SerializableMacCommand, UplinkMacCommand, parse_uplink_mac_commands};
use lorawan::parser::{self, DataHeader, DataPayload, FCtrl, FRMPayload, MICAble, PhyPayload};

use crate::codec::unhex;

/// The kinds of PHYPayload, from the MType bits of the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Unconfirmed or confirmed data up: the frames Cairn decodes.
    DataUp,
    /// A join request: OTAA, which Cairn does not serve.
    JoinRequest,
    /// Anything else a gateway may hear (downlinks, join accepts, proprietary frames).
    Other,
}

/// The kind of frame and, for data up, its DevAddr; `None` when too short to be LoRaWAN.
pub fn peek(phy: &[u8]) -> Option<(FrameKind, Option<u32>)> {
    // MHDR, DevAddr, FCtrl, FCnt and MIC: the smallest data frame.
    const MIN_DATA: usize = 12;
    let mhdr = *phy.first()?;
    match mhdr >> 5 {
        0b010 | 0b100 => {
            let addr: [u8; 4] = phy.get(1..5)?.try_into().ok()?;
            (phy.len() >= MIN_DATA).then_some((FrameKind::DataUp, Some(u32::from_le_bytes(addr))))
        }
        0b000 => Some((FrameKind::JoinRequest, None)),
        _ => Some((FrameKind::Other, None)),
    }
}

/// A frame that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// The full 32-bit frame counter.
    pub fcnt: u32,
    /// The application port; `None` for frames without payload.
    pub fport: Option<u8>,
    /// The decrypted application payload (empty for MAC-only frames).
    pub payload: Vec<u8>,
    /// Whether the device asked for an acknowledgement (a confirmed uplink).
    pub confirmed: bool,
    /// Whether the frame acknowledges the last confirmed downlink (FCtrl ACK).
    pub ack: bool,
    /// Whether the device asks for the time (a DeviceTimeReq MAC command, in FOpts or on
    /// FPort 0).
    pub device_time: bool,
    /// The last counter before this frame, when this frame restarted the count (allowed by
    /// `allow_fcnt_reset`).
    pub reset_from: Option<u32>,
}

/// Why a frame was not accepted; each is counted under [`Rejected::counter`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Not a data frame the `lorawan` crate can parse.
    #[error("not a LoRaWAN data uplink")]
    Malformed,
    /// The MIC does not match: wrong keys, or a corrupted or forged frame.
    #[error("bad MIC (wrong keys, or a forged frame)")]
    BadMic,
    /// The same frame again, heard by a second gateway or forwarded twice.
    #[error("frame {0} again (heard twice)")]
    Duplicate(u32),
    /// A valid frame whose counter is not above the last accepted one.
    #[error("frame counter {fcnt} is not above {last}: replayed")]
    Replay {
        /// The frame's counter.
        fcnt: u32,
        /// The last accepted counter.
        last: u32,
    },
}

impl Rejected {
    /// The name of the device error counter.
    pub fn counter(&self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed_frame",
            Rejected::BadMic => "bad_mic",
            Rejected::Duplicate(_) => "duplicate",
            Rejected::Replay { .. } => "replay",
        }
    }
}

/// An ABP device's session: its keys and the last frame accepted from it.
#[derive(Debug)]
pub struct Session {
    nwk_s_key: AES128,
    app_s_key: AES128,
    allow_reset: bool,
    last: Option<(u32, [u8; 4])>,
}

impl Session {
    /// A session with the given keys that last accepted frame `last` (from the state store).
    /// `allow_reset` accepts a counter that restarted from 0, for devices that do not keep it
    /// across their own reboots (against the specification, but common).
    pub fn new(
        nwk_s_key: [u8; 16],
        app_s_key: [u8; 16],
        last: Option<u32>,
        allow_reset: bool,
    ) -> Self {
        Self {
            nwk_s_key: AES128(nwk_s_key),
            app_s_key: AES128(app_s_key),
            allow_reset,
            // The MIC of the last frame is not stored: after a restart, a duplicate counts as
            // a replay.
            last: last.map(|fcnt| (fcnt, [0; 4])),
        }
    }

    /// The last accepted frame counter.
    pub fn last_fcnt(&self) -> Option<u32> {
        self.last.map(|(fcnt, _)| fcnt)
    }

    /// Checks and decrypts one PHYPayload.
    pub fn accept(&mut self, phy: &[u8]) -> Result<Uplink, Rejected> {
        let Ok(PhyPayload::Data(DataPayload::Encrypted(frame))) = parser::parse(phy.to_vec())
        else {
            return Err(Rejected::Malformed);
        };
        if !frame.is_uplink() {
            return Err(Rejected::Malformed);
        }
        let low = u32::from(frame.fhdr().fcnt());
        let mic = frame.mic().0;
        let mut reset_from = None;
        let valid = |fcnt: u32| frame.validate_mic(&self.nwk_s_key, fcnt);
        let fcnt = match self.last {
            // First heard: the counter may be past its first 65536-block already.
            None => match blocks_up(low, FIRST_BLOCKS).find(|n| valid(*n)) {
                Some(fcnt) => fcnt,
                None => return Err(Rejected::BadMic),
            },
            Some((last, last_mic)) => {
                let same_epoch = (last & !0xFFFF) | low;
                if same_epoch == last && mic == last_mic {
                    return Err(Rejected::Duplicate(last));
                }
                // The next counter with these low bits: the same 65536-block, or the next
                // one when the 16-bit field rolled over.
                let next = if same_epoch > last {
                    Some(same_epoch)
                } else {
                    same_epoch.checked_add(0x1_0000)
                };
                if let Some(next) = next.filter(|n| valid(*n)) {
                    next
                } else if self.allow_reset && valid(low) {
                    reset_from = Some(last);
                    low
                } else if let Some(old) = replay_start(same_epoch, last)
                    .and_then(|start| blocks_down(start, REPLAY_BLOCKS).find(|n| valid(*n)))
                {
                    // A frame of this block or of an earlier one, played again.
                    return Err(Rejected::Replay { fcnt: old, last });
                } else {
                    return Err(Rejected::BadMic);
                }
            }
        };
        let confirmed = phy[0] >> 5 == 0b100;
        let ack = phy[5] & 0x20 != 0;
        let asks_time = |commands: &[u8]| {
            parse_uplink_mac_commands(commands)
                .any(|c| matches!(c, UplinkMacCommand::DeviceTimeReq(_)))
        };
        let mut device_time = asks_time(frame.fhdr().data());
        let fport = frame.f_port();
        let decrypted = frame
            .decrypt(Some(&self.nwk_s_key), Some(&self.app_s_key), fcnt)
            .map_err(|_| Rejected::Malformed)?;
        let payload = match decrypted.frm_payload() {
            FRMPayload::Data(data) if fport != Some(0) => data.to_vec(),
            FRMPayload::MACCommands(commands) => {
                device_time |= asks_time(commands.data());
                Vec::new()
            }
            _ => Vec::new(),
        };
        self.last = Some((fcnt, mic));
        Ok(Uplink {
            fcnt,
            fport,
            payload,
            confirmed,
            ack,
            device_time,
            reset_from,
        })
    }
}

/// A data downlink to build: what it carries, and the counter it goes under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDown<'a> {
    /// The device's address.
    pub dev_addr: u32,
    /// The downlink frame counter (FCntDown).
    pub fcnt: u32,
    /// Acknowledges the confirmed uplink it answers.
    pub ack: bool,
    /// More downlinks wait: the device should send an uplink soon (FPending).
    pub pending: bool,
    /// The device must acknowledge it.
    pub confirmed: bool,
    /// The application port and payload; `None` for an empty frame (an ACK alone).
    pub data: Option<(u8, &'a [u8])>,
    /// A DeviceTimeAns in FOpts: the GPS time at the end of the uplink that asked.
    pub device_time: Option<std::time::Duration>,
}

/// The PHYPayload of `down`, its FRMPayload encrypted with `app_s_key` and signed with
/// `nwk_s_key`, by the `lorawan` crate.
pub fn data_down(down: &DataDown<'_>, nwk_s_key: &[u8; 16], app_s_key: &[u8; 16]) -> Vec<u8> {
    let mut creator = DataPayloadCreator::new();
    let mut fctrl = FCtrl::new(0, false);
    if down.ack {
        fctrl.set_ack();
    }
    // FPending, bit 4 of a downlink's FCtrl.
    if down.pending {
        fctrl.0 |= 1 << 4;
    }
    creator
        .set_uplink(false)
        .set_confirmed(down.confirmed)
        .set_dev_addr(&down.dev_addr.to_le_bytes())
        .set_fctrl(&fctrl)
        .set_fcnt(down.fcnt);
    let payload = match down.data {
        Some((port, payload)) => {
            creator.set_f_port(port);
            payload
        }
        None => &[],
    };
    let mut time = DeviceTimeAnsCreator::new();
    let mut commands: Vec<&dyn SerializableMacCommand> = Vec::new();
    if let Some(gps) = down.device_time {
        // Seconds wrap in 2116; the fraction is in 1/256 s.
        let _ = time
            .set_seconds(gps.as_secs() as u32)
            .set_nano_seconds(gps.subsec_nanos());
        commands.push(&time);
    }
    // Building fails only for MAC commands past FOpts' 15 bytes, an FRMPayload without a
    // port, or one past the 255-byte buffer: the callers send one 6-byte command at most,
    // give a port, and bound the payload.
    creator
        .build(
            payload,
            &commands,
            &NewSKey::from(*nwk_s_key),
            &AppSKey::from(*app_s_key),
        )
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// 65536-blocks searched for the counter of a device first heard (up to 16,777,216). Each is
/// one AES-CMAC: a forged frame costs at most this many, well under a millisecond.
const FIRST_BLOCKS: u32 = 256;

/// Earlier 65536-blocks searched to tell a replay from a forgery.
const REPLAY_BLOCKS: u32 = 16;

/// `low`, then `low` in each following 65536-block, `blocks` in all.
fn blocks_up(low: u32, blocks: u32) -> impl Iterator<Item = u32> {
    (0..blocks).map_while(move |k| low.checked_add(k.checked_mul(0x1_0000)?))
}

/// The latest counter with `same_epoch`'s low bits that is not past `last`.
fn replay_start(same_epoch: u32, last: u32) -> Option<u32> {
    if same_epoch <= last {
        Some(same_epoch)
    } else {
        same_epoch.checked_sub(0x1_0000)
    }
}

/// The counters with the low bits of `from` at or below it, block by block down, `blocks` in
/// all.
fn blocks_down(from: u32, blocks: u32) -> impl Iterator<Item = u32> {
    (0..blocks).map_while(move |k| from.checked_sub(k.checked_mul(0x1_0000)?))
}

/// Parses a 16-byte key written as 32 hex digits (spaces and colons allowed).
pub fn parse_key(text: &str) -> Result<[u8; 16], String> {
    let bytes = unhex(text)?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("a key has 16 bytes (32 hex digits), not {}", b.len()))
}

/// Parses a DevAddr written as 8 hex digits, most significant first (as consoles show it).
pub fn parse_dev_addr(text: &str) -> Result<u32, String> {
    let bytes: [u8; 4] = unhex(text)?
        .try_into()
        .map_err(|b: Vec<u8>| format!("a DevAddr has 4 bytes (8 hex digits), not {}", b.len()))?;
    Ok(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        unhex(s).unwrap()
    }

    /// Keys of the public test vectors of lora-packet (anthonykirby/lora-packet, test/mic.js,
    /// test/decrypt.js), also used by lora-rs and LoRa.Message.
    const NWK: &str = "44024241ed4ce9a68c6a8bc055233fd3";
    const APP: &str = "ec925802ae430ca77fd3dd73cb2cc588";

    fn session(last: Option<u32>) -> Session {
        Session::new(
            parse_key(NWK).unwrap(),
            parse_key(APP).unwrap(),
            last,
            false,
        )
    }

    #[test]
    fn public_vectors_decode() {
        let frame = hex("40F17DBE4900020001954378762B11FF0D");
        assert_eq!(peek(&frame), Some((FrameKind::DataUp, Some(0x49BE7DF1))));
        let mut s = session(None);
        let up = s.accept(&frame).unwrap();
        assert_eq!(up.fcnt, 2);
        assert_eq!(up.fport, Some(1));
        assert_eq!(up.payload, b"test");
        let long = hex(
            "40f17dbe490004000155332de41a11adc072553544429ce7787707d1c316e027e7e5e334263376affb8aa17ad30075293f28dea8a20af3c5e7",
        );
        let up = s.accept(&long).unwrap();
        assert_eq!(up.payload, b"The quick brown fox jumps over the lazy dog.");
        assert_eq!(s.last_fcnt(), Some(4));
    }

    #[test]
    fn replays_duplicates_and_forgeries_are_refused() {
        let two = hex("40F17DBE4900020001954378762B11FF0D");
        let three = hex("40F17DBE49000300012A3518AF");
        let mut s = session(None);
        s.accept(&two).unwrap();
        assert_eq!(s.accept(&two), Err(Rejected::Duplicate(2)));
        let up = s.accept(&three).unwrap();
        assert_eq!((up.fcnt, up.payload.len()), (3, 0));
        assert_eq!(s.accept(&two), Err(Rejected::Replay { fcnt: 2, last: 3 }));
        // After a restart the counter comes from the store: the same frame is a replay.
        let mut restarted = session(Some(3));
        assert_eq!(
            restarted.accept(&three),
            Err(Rejected::Replay { fcnt: 3, last: 3 })
        );
        let mut forged = three.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(session(None).accept(&forged), Err(Rejected::BadMic));
        let mut wrong_key = Session::new([0; 16], [0; 16], None, false);
        assert_eq!(wrong_key.accept(&two), Err(Rejected::BadMic));
        assert_eq!(session(None).accept(&two[..11]), Err(Rejected::Malformed));
    }

    #[test]
    fn a_reset_counter_is_accepted_only_when_allowed() {
        let two = hex("40F17DBE4900020001954378762B11FF0D");
        let mut strict = session(Some(70_000));
        assert!(strict.accept(&two).is_err());
        let mut relaxed = Session::new(
            parse_key(NWK).unwrap(),
            parse_key(APP).unwrap(),
            Some(70_000),
            true,
        );
        let up = relaxed.accept(&two).unwrap();
        assert_eq!((up.fcnt, up.reset_from), (2, Some(70_000)));
    }

    /// An unconfirmed uplink of the test vectors' device with the 32-bit counter `fcnt`.
    fn frame(fcnt: u32) -> Vec<u8> {
        let mut phy = lorawan::creator::DataPayloadCreator::new();
        phy.set_uplink(true)
            .set_f_port(1)
            .set_dev_addr(&[0xF1, 0x7D, 0xBE, 0x49])
            .set_fcnt(fcnt);
        let nwk = lorawan::keys::NewSKey::from(parse_key(NWK).unwrap());
        let app = lorawan::keys::AppSKey::from(parse_key(APP).unwrap());
        phy.build(b"x", &[], &nwk, &app).unwrap().to_vec()
    }

    #[test]
    fn a_device_first_heard_past_65535_is_accepted_and_old_blocks_are_replays() {
        let mut s = session(None);
        let up = s.accept(&frame(200_003)).unwrap();
        assert_eq!(up.fcnt, 200_003, "found three blocks up");
        assert_eq!(s.accept(&frame(200_004)).unwrap().fcnt, 200_004);
        // A frame of an earlier 65536-block, played again: a replay, not a bad MIC.
        assert_eq!(
            s.accept(&frame(70_000)),
            Err(Rejected::Replay {
                fcnt: 70_000,
                last: 200_004
            })
        );
        assert_eq!(
            s.accept(&frame(200_004 - 0x1_0000)),
            Err(Rejected::Replay {
                fcnt: 200_004 - 0x1_0000,
                last: 200_004
            })
        );
        // Past the searched range, a first frame is not recognised.
        assert_eq!(
            session(None).accept(&frame(FIRST_BLOCKS * 0x1_0000 + 5)),
            Err(Rejected::BadMic)
        );
        // A known starting counter is the store's last one: frames below it are replays.
        let mut started = session(Some(199_999));
        assert_eq!(started.accept(&frame(200_000)).unwrap().fcnt, 200_000);
    }

    #[test]
    fn keys_and_addresses_parse() {
        assert_eq!(parse_dev_addr("26:01:1B:DA").unwrap(), 0x26011BDA);
        assert!(parse_dev_addr("26011B").is_err());
        assert!(parse_key("00").is_err());
        assert!(parse_key(&"zz".repeat(16)).is_err());
        assert_eq!(peek(&[0x00; 23]), Some((FrameKind::JoinRequest, None)));
        assert_eq!(peek(&[0xE0, 1, 2]), Some((FrameKind::Other, None)));
        assert_eq!(peek(&[0x40, 1, 2]), None);
        assert_eq!(peek(&[]), None);
    }
}
