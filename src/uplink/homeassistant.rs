//! Home Assistant MQTT discovery: a retained config per value on
//! `<prefix>/<component>/<gateway>_<device>/<value>/config`, so that Cairn's devices appear in
//! Home Assistant by themselves (<https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery>).
//!
//! Entities read Cairn's own `json` messages on `<topic_prefix>/<gateway>/<device>`; nothing is
//! published twice. A message carries the values of one reading, and with report by exception
//! only those that changed, so each template takes its value when the message has it and keeps
//! the entity's state (`this.state`) when it does not. Backlog readings (`"historical": true`)
//! arrive after newer ones and are skipped the same way: the entity shows the present.
//! Availability is the gateway's retained status topic (`online`, or `offline` as its will).
//! Writable points become `number` and `switch` entities whose commands go to Cairn's own
//! `.../<value>/set`, answered on `.../result` like any command.

use cairn_adapters::{ValueInfo, ValueKind};
use serde_json::{Value as Json, json};

use super::topics::{DeviceMeta, Topics};

/// One discovery message: its topic and retained payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    /// `<prefix>/<component>/<node>/<object>/config`.
    pub topic: String,
    /// The entity's config.
    pub payload: Vec<u8>,
}

/// The discovery messages of `device`'s values, for a gateway whose topics are `topics`.
pub fn announcements(
    prefix: &str,
    gateway: &str,
    topics: &mut Topics,
    device: &DeviceMeta,
) -> Vec<Announcement> {
    let state_topic = topics
        .data(&std::sync::Arc::from(device.name.as_str()))
        .to_string();
    let node = format!("{}_{}", id_safe(gateway), id_safe(&device.name));
    let device_block = json!({
        "identifiers": [format!("cairn_{node}")],
        "name": device.name,
        "model": format!("{} device", device.adapter),
        "manufacturer": "Cairn",
        "sw_version": env!("CARGO_PKG_VERSION"),
        "suggested_area": gateway,
    });
    device
        .values
        .iter()
        .map(|value| {
            let component = component(value);
            let mut config = json!({
                "name": value.name,
                "unique_id": format!("cairn_{node}_{}", id_safe(&value.name)),
                "state_topic": state_topic,
                "value_template": template(component, &value.name),
                "availability": [{
                    "topic": topics.status(),
                    "payload_available": "online",
                    "payload_not_available": "offline",
                }],
                "device": device_block,
                "origin": {"name": "Cairn", "sw_version": env!("CARGO_PKG_VERSION")},
                "qos": 1,
            });
            if let Json::Object(keys) = &mut config {
                let set = topics.set(&device.name, &value.name);
                keys.extend(
                    fields(component, value, &set)
                        .into_iter()
                        .map(|(key, field)| (key.to_string(), field)),
                );
            }
            Announcement {
                topic: format!(
                    "{prefix}/{component}/{node}/{}/config",
                    id_safe(&value.name)
                ),
                payload: serde_json::to_vec(&config).unwrap_or_default(),
            }
        })
        .collect()
}

/// The entity kind a value becomes.
fn component(value: &ValueInfo) -> &'static str {
    match (value.kind, value.writable) {
        (ValueKind::Bool, true) => "switch",
        (ValueKind::Bool, false) => "binary_sensor",
        (ValueKind::Number | ValueKind::Counter, true) => "number",
        _ => "sensor",
    }
}

/// Takes the value from a message that has it, else keeps the state; `None` is Home Assistant's
/// "unknown" payload, for an entity that has no state yet.
fn template(component: &str, name: &str) -> String {
    let name = name.replace('\'', "\\'");
    let (fresh, keep) = match component {
        "binary_sensor" | "switch" => (
            format!("{{{{ 'ON' if v['{name}'] else 'OFF' }}}}"),
            "{{ this.state | upper }}",
        ),
        _ => (format!("{{{{ v['{name}'] }}}}"), "{{ this.state }}"),
    };
    format!(
        "{{% set v = value_json['values'] %}}{{% if '{name}' in v and 'historical' not in value_json %}}{fresh}\
         {{% elif this.state in ['unknown', 'unavailable'] %}}None{{% else %}}{keep}{{% endif %}}"
    )
}

/// The component's own keys: unit and classes for sensors, commands for writable points.
fn fields(component: &str, value: &ValueInfo, set_topic: &str) -> Vec<(&'static str, Json)> {
    let mut fields = Vec::new();
    let class = device_class(value);
    match component {
        "sensor" => {
            if let Some(unit) = &value.unit {
                fields.push(("unit_of_measurement", json!(unit)));
            }
            if let Some(class) = class {
                fields.push(("device_class", json!(class)));
            }
            let total = value.kind == ValueKind::Counter || class == Some("energy");
            match value.kind {
                ValueKind::Number | ValueKind::Counter => fields.push((
                    "state_class",
                    json!(if total {
                        "total_increasing"
                    } else {
                        "measurement"
                    }),
                )),
                // A text field with a unit is a number in practice (`T=21.5` with `unit: °C`).
                ValueKind::Unknown if value.unit.is_some() => {
                    fields.push(("state_class", json!("measurement")));
                }
                _ => {}
            }
            if let Some(places) = value.decimals {
                fields.push(("suggested_display_precision", json!(places)));
            }
        }
        "binary_sensor" => {}
        "number" => {
            fields.push(("command_topic", json!(set_topic)));
            if let Some(unit) = &value.unit {
                fields.push(("unit_of_measurement", json!(unit)));
            }
            if let Some(class) = class.filter(|c| *c != "energy") {
                fields.push(("device_class", json!(class)));
            }
            // The device checks the range; Home Assistant's default (1 to 100) would refuse
            // most setpoints, and their own states.
            fields.push(("min", json!(-1.0e9)));
            fields.push(("max", json!(1.0e9)));
            let step = value.decimals.map_or(0.001, |d| 10f64.powi(-i32::from(d)));
            fields.push(("step", json!(step)));
            fields.push(("mode", json!("box")));
        }
        "switch" => {
            fields.push(("command_topic", json!(set_topic)));
            // Cairn's commands are JSON scalars; the state template renders ON and OFF.
            fields.push(("payload_on", json!("true")));
            fields.push(("payload_off", json!("false")));
            fields.push(("state_on", json!("ON")));
            fields.push(("state_off", json!("OFF")));
        }
        _ => {}
    }
    fields
}

/// Home Assistant's device class for a value, where its unit (and for a few, its name) says
/// it; each is one of the units Home Assistant accepts for that class.
fn device_class(value: &ValueInfo) -> Option<&'static str> {
    let unit = value.unit.as_deref()?;
    let name = value.name.to_ascii_lowercase();
    Some(match unit {
        "°C" | "°F" | "K" => "temperature",
        "%" if name.contains("humid") => "humidity",
        "%" if name.contains("batt") => "battery",
        "%" if name.contains("moist") => "moisture",
        "Pa" | "hPa" | "kPa" | "bar" | "mbar" | "psi" | "mmHg" | "inHg" => "pressure",
        "V" | "mV" | "kV" => "voltage",
        "A" | "mA" => "current",
        "W" | "kW" | "MW" => "power",
        "Wh" | "kWh" | "MWh" => "energy",
        "VA" | "kVA" => "apparent_power",
        "var" | "kvar" => "reactive_power",
        "Hz" | "kHz" => "frequency",
        "lx" => "illuminance",
        "dBm" | "dB" if name.contains("rssi") || name.contains("signal") => "signal_strength",
        "ppm" if name.contains("co2") => "carbon_dioxide",
        "µg/m³" if name.contains("pm2") => "pm25",
        "µg/m³" if name.contains("pm10") => "pm10",
        "µg/m³" if name.contains("pm1") => "pm1",
        "m/s" | "km/h" if name.contains("wind") || name.contains("speed") => "wind_speed",
        _ => return None,
    })
}

/// A topic level or unique id part: Home Assistant allows `[a-zA-Z0-9_-]` in node and object
/// ids; anything else becomes `_`.
fn id_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_adapters::Priority;

    fn value(name: &str, unit: Option<&str>, kind: ValueKind, writable: bool) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            unit: unit.map(Into::into),
            writable,
            decimals: Some(1),
            report: None,
            priority: Priority::default(),
            kind,
        }
    }

    fn announced(values: Vec<ValueInfo>) -> Vec<(String, Json)> {
        let device = DeviceMeta::new("pump 1", "modbus", None, &values);
        let mut topics = Topics::new("cairn", "site-1");
        announcements("homeassistant", "site-1", &mut topics, &device)
            .into_iter()
            .map(|a| (a.topic, serde_json::from_slice(&a.payload).unwrap()))
            .collect()
    }

    #[test]
    fn each_kind_of_value_becomes_its_entity() {
        let got = announced(vec![
            value("temperature", Some("°C"), ValueKind::Number, false),
            value("energy", Some("kWh"), ValueKind::Number, false),
            value("running", None, ValueKind::Bool, false),
            value("setpoint", Some("°C"), ValueKind::Number, true),
            value("pump", None, ValueKind::Bool, true),
            value("mode", None, ValueKind::Text, false),
        ]);
        let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/sensor/site-1_pump_1/temperature/config",
                "homeassistant/sensor/site-1_pump_1/energy/config",
                "homeassistant/binary_sensor/site-1_pump_1/running/config",
                "homeassistant/number/site-1_pump_1/setpoint/config",
                "homeassistant/switch/site-1_pump_1/pump/config",
                "homeassistant/sensor/site-1_pump_1/mode/config",
            ]
        );
        let (_, t) = &got[0];
        assert_eq!(t["state_topic"], "cairn/site-1/pump 1");
        assert_eq!(t["device_class"], "temperature");
        assert_eq!(t["state_class"], "measurement");
        assert_eq!(t["unit_of_measurement"], "°C");
        assert_eq!(t["unique_id"], "cairn_site-1_pump_1_temperature");
        assert_eq!(t["device"]["identifiers"][0], "cairn_site-1_pump_1");
        assert_eq!(t["availability"][0]["topic"], "cairn/site-1/status");
        assert_eq!(got[1].1["state_class"], "total_increasing");
        assert_eq!(got[1].1["device_class"], "energy");
        assert_eq!(
            got[3].1["command_topic"],
            "cairn/site-1/pump 1/setpoint/set"
        );
        assert_eq!(got[3].1["step"], 0.1);
        assert_eq!(got[4].1["payload_on"], "true");
        assert!(
            got[5].1.get("state_class").is_none(),
            "text has no state class"
        );
    }

    #[test]
    fn templates_keep_the_state_when_a_message_lacks_the_value() {
        let t = template("sensor", "temperature");
        assert!(
            t.contains("'temperature' in v and 'historical' not in value_json"),
            "{t}"
        );
        assert!(t.contains("{{ this.state }}"), "{t}");
        let b = template("binary_sensor", "running");
        assert!(b.contains("'ON' if v['running'] else 'OFF'"), "{b}");
    }
}
