//! rumqttc options from the validated config: endpoint, session, last will, TLS.

use rumqttc::{LastWill, MqttOptions, NetworkOptions, QoS, TlsConfiguration, Transport};

use crate::config::MqttConfig;

/// The largest packet read from the broker. MQTT 3.1.1 cannot tell the broker a limit, so a
/// message up to this size (an oversized retained command, say) is read, judged and ignored
/// rather than cutting the connection, which would only bring it back at the next connect.
const MAX_INCOMING: usize = 1024 * 1024;

/// The options for every connection attempt, and the network options that carry the
/// connect/flush timeout.
pub fn build(
    config: &MqttConfig,
    gateway: &str,
    status_topic: &str,
) -> std::io::Result<(MqttOptions, NetworkOptions)> {
    let endpoint = config.endpoint();
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("cairn-{gateway}"));
    let mut options = MqttOptions::new(client_id, endpoint.host, endpoint.port);
    options
        .set_keep_alive(config.keepalive)
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
    if endpoint.tls {
        // rumqttc is built without a default crypto provider; ring cross-compiles to the Pi
        // without a C toolchain beyond gcc. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let transport = match &config.tls {
            Some(tls) => {
                let ca = std::fs::read(&tls.ca_file.value)?;
                let client_auth = match (&tls.cert_file, &tls.key_file) {
                    (Some(cert), Some(key)) => {
                        Some((std::fs::read(&cert.value)?, std::fs::read(&key.value)?))
                    }
                    _ => None,
                };
                Transport::tls_with_config(TlsConfiguration::Simple {
                    ca,
                    alpn: None,
                    client_auth,
                })
            }
            None => Transport::tls_with_default_config(),
        };
        options.set_transport(transport);
    }
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(config.connect_timeout.as_secs().max(1));
    Ok((options, network))
}
