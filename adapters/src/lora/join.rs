//! Over-the-air activation, LoRaWAN 1.0.x, as the network server of one site: checks a join
//! request's MIC with the AppKey, builds and encrypts the join accept, and derives the session
//! keys the device will derive from it, with the `lorawan` crate.

use lorawan::creator::JoinAcceptCreator;
use lorawan::keys::{AES128, AppKey};
use lorawan::parser::{self, DevNonce, PhyPayload};

/// A join request whose MIC checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinRequest {
    /// JoinEUI (AppEUI in 1.0), as written MSB first (`70B3D57ED0000001`).
    pub join_eui: u64,
    /// DevEUI, MSB first.
    pub dev_eui: u64,
    /// DevNonce as sent (little-endian on the wire), which the keys are derived from.
    pub dev_nonce: [u8; 2],
}

/// Why a join request is refused; each is counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    /// Not a join request of LoRaWAN 1.0.
    #[error("not a join request")]
    NotJoin,
    /// The MIC does not match the AppKey: another device, or a forgery.
    #[error("the MIC does not match the AppKey")]
    BadMic,
    /// The JoinEUI is not the device's.
    #[error("JoinEUI {0:016X} is not the configured one")]
    JoinEui(u64),
    /// A DevNonce the device used before: a replayed request.
    #[error("DevNonce {0:04X} was used before (a replay)")]
    Replay(u16),
}

impl JoinRefused {
    /// The device error counter.
    pub fn counter(&self) -> &'static str {
        match self {
            JoinRefused::NotJoin => "not_join",
            JoinRefused::BadMic => "join_bad_mic",
            JoinRefused::JoinEui(_) => "join_eui",
            JoinRefused::Replay(_) => "join_replay",
        }
    }
}

/// The DevEUI of a join request, read without a key (to route it), MSB first.
pub fn dev_eui(phy: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = phy.get(9..17)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Parses `phy` as a join request and checks its MIC with `app_key`.
pub fn request(phy: &[u8], app_key: &[u8; 16]) -> Result<JoinRequest, JoinRefused> {
    let Ok(PhyPayload::JoinRequest(request)) = parser::parse(phy.to_vec()) else {
        return Err(JoinRefused::NotJoin);
    };
    if !request.validate_mic(&AES128(*app_key)) {
        return Err(JoinRefused::BadMic);
    }
    let eui = |raw: &[u8]| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(raw);
        u64::from_le_bytes(bytes)
    };
    let mut dev_nonce = [0u8; 2];
    dev_nonce.copy_from_slice(request.dev_nonce().as_ref());
    Ok(JoinRequest {
        join_eui: eui(request.app_eui().as_ref()),
        dev_eui: eui(request.dev_eui().as_ref()),
        dev_nonce,
    })
}

/// What the network gives a device that joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The join accept PHYPayload, encrypted, to send in RX1 (or RX2).
    pub phy: Vec<u8>,
    /// The DevAddr given, MSB first.
    pub dev_addr: u32,
    /// The network session key.
    pub nwk_s_key: [u8; 16],
    /// The application session key.
    pub app_s_key: [u8; 16],
}

/// The network's side of a join: the settings the accept carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// JoinNonce (AppNonce in 1.0): random, never reused with the same DevNonce.
    pub app_nonce: [u8; 3],
    /// The network's NetID (0 for a private network).
    pub net_id: [u8; 3],
    /// The device's new address.
    pub dev_addr: u32,
    /// DLSettings: RX1 data-rate offset in bits 4-6, RX2 data rate in bits 0-3.
    pub dl_settings: u8,
    /// Seconds from the end of an uplink to RX1 (0 means 1).
    pub rx_delay: u8,
}

/// Builds the join accept for `request` and derives its session keys.
pub fn accept(request: &JoinRequest, app_key: &[u8; 16], grant: &Grant) -> Accepted {
    let mut creator = JoinAcceptCreator::new();
    creator
        .set_app_nonce(&grant.app_nonce)
        .set_net_id(&grant.net_id)
        .set_dev_addr(&grant.dev_addr.to_le_bytes())
        .set_dl_settings(grant.dl_settings)
        .set_rx_delay(grant.rx_delay);
    let key = AppKey::from(*app_key);
    // The creator's buffer holds a CFList too; without one the accept is its first 17 bytes,
    // and building cannot fail.
    let phy = creator
        .build(key.inner())
        .map(|built| built[..built.len().min(17)].to_vec())
        .unwrap_or_default();
    // The keys from the accept as the device will read it: the same derivation both sides.
    let decrypted = match parser::parse(phy.clone()) {
        Ok(PhyPayload::JoinAccept(parser::JoinAcceptPayload::Encrypted(encrypted))) => {
            Some(encrypted.decrypt(&key))
        }
        _ => None,
    };
    let nonce = DevNonce::from(request.dev_nonce);
    let (nwk_s_key, app_s_key) = decrypted
        .map(|accept| {
            (
                *accept.derive_newskey(&nonce, &key).as_ref_array(),
                *accept.derive_appskey(&nonce, &key).as_ref_array(),
            )
        })
        .unwrap_or_default();
    Accepted {
        phy,
        dev_addr: grant.dev_addr,
        nwk_s_key,
        app_s_key,
    }
}

/// A fresh grant for a private network: a random JoinNonce and DevAddr (NetID 0, so the
/// address's top 7 bits, its NwkID, are 0).
pub fn grant(dl_settings: u8, rx_delay: u8) -> Grant {
    let nonce = fastrand::u32(..).to_le_bytes();
    Grant {
        app_nonce: [nonce[0], nonce[1], nonce[2]],
        net_id: [0; 3],
        dev_addr: fastrand::u32(1..0x0200_0000),
        dl_settings,
        rx_delay,
    }
}

/// A key's bytes.
trait KeyBytes {
    fn as_ref_array(&self) -> &[u8; 16];
}

impl KeyBytes for lorawan::keys::NewSKey {
    fn as_ref_array(&self) -> &[u8; 16] {
        &self.inner().0
    }
}

impl KeyBytes for lorawan::keys::AppSKey {
    fn as_ref_array(&self) -> &[u8; 16] {
        &self.inner().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A join request built by the crate's own creator, as a device would send it.
    fn request_phy(app_key: &[u8; 16], dev_nonce: u16) -> Vec<u8> {
        let mut creator = lorawan::creator::JoinRequestCreator::new();
        creator
            .set_app_eui(&[1, 0, 0, 0, 0, 0, 0, 0x70])
            .set_dev_eui(&[8, 7, 6, 5, 4, 3, 2, 1])
            .set_dev_nonce(&dev_nonce.to_le_bytes());
        creator.build(&AppKey::from(*app_key)).to_vec()
    }

    #[test]
    fn a_request_is_checked_and_answered_with_keys_both_sides_derive() {
        let app_key = [0x2B; 16];
        let phy = request_phy(&app_key, 0x1234);
        assert_eq!(dev_eui(&phy), Some(0x0102_0304_0506_0708));
        let request = request(&phy, &app_key).unwrap();
        assert_eq!(request.join_eui, 0x7000_0000_0000_0001);
        assert_eq!(request.dev_eui, 0x0102_0304_0506_0708);
        assert_eq!(request.dev_nonce, [0x34, 0x12]);
        assert_eq!(super::request(&phy, &[0; 16]), Err(JoinRefused::BadMic));
        let mut forged = phy.clone();
        forged[18] ^= 1;
        assert_eq!(super::request(&forged, &app_key), Err(JoinRefused::BadMic));

        let grant = Grant {
            app_nonce: [1, 2, 3],
            net_id: [0; 3],
            dev_addr: 0x0012_3456,
            dl_settings: 0,
            rx_delay: 1,
        };
        let accepted = accept(&request, &app_key, &grant);
        assert_eq!(accepted.phy.len(), 17);
        assert_eq!(accepted.phy[0], 0x20, "MHDR of a join accept");
        assert_ne!(accepted.nwk_s_key, [0; 16]);
        assert_ne!(accepted.nwk_s_key, accepted.app_s_key);
        // The device's side: decrypt, check the MIC, read the address.
        let Ok(PhyPayload::JoinAccept(parser::JoinAcceptPayload::Encrypted(encrypted))) =
            parser::parse(accepted.phy.clone())
        else {
            panic!("a join accept");
        };
        let decrypted = encrypted.decrypt(&AppKey::from(app_key));
        assert!(decrypted.validate_mic(&AppKey::from(app_key)));
        assert_eq!(decrypted.dev_addr().as_ref(), 0x0012_3456u32.to_le_bytes());
    }

    #[test]
    fn grants_are_private_network_addresses() {
        for _ in 0..1000 {
            let g = grant(0, 1);
            assert_eq!(g.dev_addr >> 25, 0, "NwkID 0");
            assert_ne!(g.dev_addr, 0);
        }
    }
}
