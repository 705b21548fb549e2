//! SIGHUP: re-read the config file and restart the devices whose settings changed, while the
//! others keep running and the outbox is untouched. A new config that is invalid, or that
//! changes what only a restart can change, is refused as a whole: the running one stays.

use std::path::Path;

use cairn_adapters::AdapterConfig;
use tokio::sync::watch;

use crate::config::{Config, DeviceConfig};

/// The devices' settings channels, in config order, by name.
pub type Settings = Vec<(String, watch::Sender<AdapterConfig>)>;

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// These devices were restarted with new settings (none: nothing had changed).
    Applied(Vec<String>),
    /// Nothing was changed, for this reason.
    Refused(String),
}

/// Re-reads `path`; applies it if only device settings changed.
pub fn reload(path: &Path, current: &mut Config, settings: &Settings) -> Outcome {
    let new = match Config::load(path) {
        Ok(new) => new,
        Err(report) => return Outcome::Refused(format!("the new config is invalid:\n{report}")),
    };
    let changed = match changed_devices(current, &new) {
        Ok(changed) => changed,
        Err(reason) => return Outcome::Refused(reason),
    };
    for device in &changed {
        if let Some((_, tx)) = settings.iter().find(|(name, _)| name == &device.name) {
            tx.send_replace(device.adapter.clone());
        }
    }
    let names = changed.iter().map(|d| d.name.clone()).collect();
    *current = new;
    Outcome::Applied(names)
}

/// The devices of `new` whose settings differ from `current`, or why a restart is needed.
fn changed_devices<'n>(current: &Config, new: &'n Config) -> Result<Vec<&'n DeviceConfig>, String> {
    let sections = [
        ("gateway", current.gateway == new.gateway),
        ("mqtt", current.mqtt == new.mqtt),
        ("buffer", current.buffer == new.buffer),
        ("feed", current.feed == new.feed),
        ("homeassistant", current.homeassistant == new.homeassistant),
    ];
    let mut restart: Vec<&str> = sections
        .iter()
        .filter(|(_, same)| !same)
        .map(|(name, _)| *name)
        .collect();
    let names = |c: &Config| {
        c.devices()
            .map(|d| (d.name.clone(), d.adapter.kind()))
            .collect::<Vec<_>>()
    };
    if names(current) != names(new) {
        restart.push("the list of devices (names, order or types)");
    }
    if !restart.is_empty() {
        return Err(format!(
            "changes to {} take effect at the next restart (systemctl restart cairn)",
            restart.join(", ")
        ));
    }
    Ok(new
        .devices()
        .zip(current.devices())
        // A new description alone restarts nothing: it is metadata, announced at start.
        .filter(|(new, old)| new.adapter != old.adapter)
        .map(|(new, _)| new)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    const BASE: &str = "gateway: {id: g}\ndevices:\n  - {name: a, type: sim, interval: 1s, values: [{name: x, counter: {}}]}\n  - {name: b, type: sim, interval: 1s, values: [{name: y, counter: {}}]}\n";

    #[test]
    fn only_changed_devices_restart() {
        let current = config(BASE);
        let moved = config(&format!("# a comment moves every line\n{BASE}"));
        assert!(changed_devices(&current, &moved).unwrap().is_empty());
        let faster = config(&BASE.replacen(
            "interval: 1s, values: [{name: y",
            "interval: 2s, values: [{name: y",
            1,
        ));
        let changed: Vec<&str> = changed_devices(&current, &faster)
            .unwrap()
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(changed, ["b"]);
    }

    #[test]
    fn what_needs_a_restart_is_refused() {
        let current = config(BASE);
        let broker =
            config(&BASE.replace("gateway: {id: g}", "gateway: {id: g}\nmqtt: {port: 1884}"));
        assert!(
            changed_devices(&current, &broker)
                .unwrap_err()
                .contains("mqtt")
        );
        let fewer = config(BASE.split("  - {name: b").next().unwrap());
        assert!(
            changed_devices(&current, &fewer)
                .unwrap_err()
                .contains("list of devices")
        );
    }
}
