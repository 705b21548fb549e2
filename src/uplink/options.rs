//! rumqttc options from the validated config: the session, the last will, and the way to the
//! broker, which is Cairn's own link ([`super::link`]) over a private Unix socket.

use std::path::Path;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, NetworkOptions, QoS, Transport};

use crate::config::MqttConfig;

/// The largest packet read from the broker. MQTT 3.1.1 cannot tell the broker a limit, so a
/// message up to this size (an oversized retained command, say) is read, judged and ignored
/// rather than cutting the connection, which would only bring it back at the next connect.
const MAX_INCOMING: usize = 1024 * 1024;

/// The options for every connection attempt through the link's socket at `link`, and the
/// network options that carry the connect/flush timeout.
pub fn build(
    config: &MqttConfig,
    gateway: &str,
    status_topic: &str,
    link: &Path,
) -> (MqttOptions, NetworkOptions) {
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("cairn-{gateway}"));
    let mut options = MqttOptions::new(client_id, link.display().to_string(), 0);
    options
        .set_transport(Transport::Unix)
        // rumqttc would ping every keepalive whatever the traffic; the link pings only when
        // the link is idle, and writes the keepalive into CONNECT itself.
        .set_keep_alive(Duration::ZERO)
        // The outbox, not the broker's session, is the truth about what is unsent; a clean
        // session on every connect keeps rumqttc from replaying a stale queue of its own.
        .set_clean_session(true)
        .set_inflight(config.max_inflight.saturating_add(4))
        .set_max_packet_size(MAX_INCOMING, config.max_message.as_u64() as usize)
        .set_last_will(LastWill::new(
            status_topic,
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(username) = &config.username {
        options.set_credentials(username, config.password.clone().unwrap_or_default());
    }
    let mut network = NetworkOptions::new();
    // The link bounds TCP and TLS by `connect_timeout`; this bounds the MQTT CONNECT on top,
    // and each write's flush.
    network.set_connection_timeout(2 * config.connect_timeout.as_secs().max(1));
    (options, network)
}
