//! Device profiles: YAML files in `adapters/profiles/<adapter>/<name>.yaml`, built into the
//! binary, that describe a real device so that a user names it in one line (`profile: sdm630`).

use serde::de::DeserializeOwned;

use crate::config::AdapterKind;

/// Every profile, by adapter and name.
const PROFILES: &[(AdapterKind, &str, &str)] = &[
    (
        AdapterKind::Uart,
        "gps",
        include_str!("../profiles/uart/gps.yaml"),
    ),
    (
        AdapterKind::Uart,
        "pms5003",
        include_str!("../profiles/uart/pms5003.yaml"),
    ),
    (
        AdapterKind::Modbus,
        "sdm120",
        include_str!("../profiles/modbus/sdm120.yaml"),
    ),
    (
        AdapterKind::Modbus,
        "sdm630",
        include_str!("../profiles/modbus/sdm630.yaml"),
    ),
    (
        AdapterKind::Modbus,
        "xy-md02",
        include_str!("../profiles/modbus/xy-md02.yaml"),
    ),
];

/// The names of the profiles for `adapter`.
pub fn names(adapter: AdapterKind) -> Vec<&'static str> {
    PROFILES
        .iter()
        .filter(|(a, _, _)| *a == adapter)
        .map(|(_, n, _)| *n)
        .collect()
}

/// The profile `name` for `adapter`, parsed as `T`; the error lists the profiles there are.
pub fn load<T: DeserializeOwned>(adapter: AdapterKind, name: &str) -> Result<T, String> {
    let (_, _, text) = PROFILES
        .iter()
        .find(|(a, n, _)| *a == adapter && *n == name)
        .ok_or_else(|| {
            format!(
                "no {adapter} profile `{name}`; there are: {}",
                names(adapter).join(", ")
            )
        })?;
    serde_saphyr::from_str(text).map_err(|e| format!("profile `{name}` is broken: {e}"))
}
