//! A LoRaWAN end device heard through a packet-forwarder device: checks and decrypts its frames,
//! keeps its frame counter in the state store so that a replay is refused after a restart too,
//! and decodes the payload by FPort.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::lorawan::Session;
use super::routing::{Heard, Radios};
use super::{LoraConfig, LorawanConfig};
use crate::adapter::{Adapter, AdapterContext, AdapterError, DeviceStatus};
use crate::codec::PayloadDecoder;
use crate::reading::{Reading, Value};
use crate::state::StateStore;

/// The frame's own values, added to every reading.
pub(super) const FRAME_VALUES: [&str; 2] = ["fcnt", "fport"];

/// A running LoRaWAN end device.
pub(super) struct Node {
    lorawan: LorawanConfig,
    allow_radio: bool,
    payload: PayloadDecoder,
    ports: BTreeMap<u8, PayloadDecoder>,
    radios: Radios,
    state: Arc<dyn StateStore>,
}

impl Node {
    pub(super) fn new(
        config: LoraConfig,
        lorawan: LorawanConfig,
        radios: Radios,
        state: Arc<dyn StateStore>,
    ) -> Self {
        Self {
            lorawan,
            allow_radio: config.radio,
            payload: config.payload.decoder(),
            ports: config
                .ports
                .iter()
                .map(|(port, payload)| (*port, payload.decoder()))
                .collect(),
            radios,
            state,
        }
    }

    /// Checks, records and publishes one frame.
    async fn frame(
        &self,
        ctx: &AdapterContext,
        session: &mut Session,
        key: &str,
        heard: Heard,
    ) -> Result<(), AdapterError> {
        let counters = ctx.counters();
        let up = match session.accept(&heard.phy) {
            Ok(up) => up,
            Err(e) => {
                tracing::debug!(device = %ctx.device(), error = %e, "Frame refused");
                counters.count_error(e.counter());
                return Ok(());
            }
        };
        if let Some(last) = up.reset_from {
            tracing::warn!(device = %ctx.device(), fcnt = up.fcnt, last, "Frame counter restarted; accepted as a device reset");
        }
        // Saved before the reading is handed on: after a crash the frame may be lost, but it
        // can never be accepted twice.
        if let Err(e) = self
            .state
            .save(ctx.device(), key, &up.fcnt.to_string())
            .await
        {
            tracing::warn!(device = %ctx.device(), error = %e, "Frame counter not saved; a replay of this frame would be accepted after a restart");
            counters.count_error("state_not_saved");
        }
        ctx.set_status(DeviceStatus::Online);
        let mut values = Vec::new();
        if !up.payload.is_empty() {
            let decoder = up
                .fport
                .and_then(|port| self.ports.get(&port))
                .unwrap_or(&self.payload);
            match decoder.decode(&up.payload) {
                Ok(decoded) => values = decoded,
                Err(e) => {
                    tracing::debug!(device = %ctx.device(), fport = ?up.fport, error = %e, "Payload not decoded");
                    counters.count_error(e.counter());
                }
            }
        }
        let [fcnt, fport] = FRAME_VALUES;
        values.push((Arc::from(fcnt), Value::Int(up.fcnt.into())));
        if let Some(port) = up.fport {
            values.push((Arc::from(fport), Value::Int(port.into())));
        }
        if self.allow_radio {
            heard.radio.push_values(&mut values);
        }
        ctx.emit(Reading::now(ctx.device().clone(), values)).await
    }
}

#[async_trait]
impl Adapter for Node {
    async fn run(&mut self, ctx: &AdapterContext) -> Result<(), AdapterError> {
        let (dev_addr, nwk_s_key, app_s_key) = self
            .lorawan
            .session()
            .map_err(|(path, message)| AdapterError::Config(format!("{path}: {message}")))?;
        // Keyed by DevAddr: a new session (new address) starts a new counter.
        let key = format!("lorawan/{dev_addr:08X}/fcnt");
        let last = self
            .state
            .load(ctx.device(), &key)
            .await
            .map_err(|e| AdapterError::Transport(format!("cannot read the frame counter: {e}")))?
            .and_then(|text| text.parse::<u32>().ok())
            .or_else(|| self.lorawan.fcnt_start.and_then(|s| s.checked_sub(1)));
        let mut session = Session::new(nwk_s_key, app_s_key, last, self.lorawan.allow_fcnt_reset);
        let mut frames = self.radios.listen(&self.lorawan.via, dev_addr);
        tracing::debug!(device = %ctx.device(), dev_addr = %format!("{dev_addr:08X}"), last_fcnt = ?last, "Waiting for frames");
        loop {
            let silence = async {
                match self.lorawan.silence {
                    Some(silence) => tokio::time::sleep(silence).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = ctx.cancelled().cancelled() => return Ok(()),
                heard = frames.recv() => match heard {
                    Some(heard) => self.frame(ctx, &mut session, &key, heard).await?,
                    None => return Err(AdapterError::Transport("another adapter took over this DevAddr".into())),
                },
                () = silence => ctx.set_status(DeviceStatus::Offline),
            }
        }
    }
}
