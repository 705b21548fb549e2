//! Quick return: the uplink backs off up to `reconnect_max` between failed connects, but when
//! the local network changes (a modem dials up, a cellular interface comes back, the default
//! route changes) it retries at once instead of waiting out the backoff. Reading two small
//! kernel tables every two seconds costs nothing on the link, where probing the broker would
//! cost a TCP handshake each time on a link billed per byte.

use std::time::Duration;

/// How often the tables are read.
const EVERY: Duration = Duration::from_secs(2);

/// What the gateway's network looks like: its default routes and the interfaces that are up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// (interface, gateway) of each IPv4 default route that is up.
    routes: Vec<(String, String)>,
    /// Interfaces whose operational state is up, `lo` aside.
    up: Vec<String>,
}

impl Snapshot {
    /// The network now, as Linux shows it (empty elsewhere).
    pub fn now() -> Self {
        let routes = std::fs::read_to_string("/proc/net/route")
            .map(|text| default_routes(&text))
            .unwrap_or_default();
        let mut up: Vec<String> = std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let state = std::fs::read_to_string(entry.path().join("operstate")).ok()?;
                (name != "lo" && state.trim() == "up").then_some(name)
            })
            .collect();
        up.sort();
        Self { routes, up }
    }

    /// Whether there is a way out at all.
    pub fn routed(&self) -> bool {
        !self.routes.is_empty()
    }
}

/// The IPv4 default routes of `/proc/net/route` that are up: (interface, gateway in hex).
fn default_routes(text: &str) -> Vec<(String, String)> {
    let mut routes: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, destination, gateway, flags) = (
                fields.first()?,
                fields.get(1)?,
                fields.get(2)?,
                fields.get(3)?,
            );
            let up = u32::from_str_radix(flags, 16).ok()? & 1 == 1;
            (up && *destination == "00000000").then(|| (iface.to_string(), gateway.to_string()))
        })
        .collect();
    routes.sort();
    routes
}

/// Watches for changes that give the network a way out.
#[derive(Debug)]
pub struct Watch {
    last: Snapshot,
}

impl Watch {
    /// Starts from the network as it is now.
    pub fn new() -> Self {
        Self {
            last: Snapshot::now(),
        }
    }

    /// Returns when the network changed and has a default route: worth a connect at once.
    pub async fn changed(&mut self) {
        loop {
            tokio::time::sleep(EVERY).await;
            let now = Snapshot::now();
            if now != self.last {
                let worth = now.routed();
                self.last = now;
                if worth {
                    return;
                }
            }
        }
    }
}

impl Default for Watch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_are_read_from_the_kernel_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     ppp0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     wwan0\t00000000\t0101A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            default_routes(table),
            [("ppp0".to_string(), "0100000A".to_string())],
            "the down route and the subnet route do not count"
        );
        assert!(default_routes("Iface\n").is_empty());
    }
}
