//! `/metrics` in the Prometheus text format (version 0.0.4).

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::{AppState, Authorized};

/// One metric family: its help line, type, and samples (label pairs, value).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(Vec<(&str, &str)>, f64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `/metrics`: readings in and out, backlog, drops, uplink, devices and feed clients.
pub async fn metrics(_: Authorized, State(state): State<AppState>) -> impl IntoResponse {
    let stats = state.store.stats();
    let mut out = String::with_capacity(4096);
    let one = |value: f64| vec![(Vec::new(), value)];
    family(
        &mut out,
        "cairn_readings_accepted_total",
        "counter",
        "Readings committed to the outbox since start.",
        &one(stats.accepted as f64),
    );
    family(
        &mut out,
        "cairn_readings_published_total",
        "counter",
        "Readings acknowledged by the broker since start.",
        &one(stats.delivered as f64),
    );
    family(
        &mut out,
        "cairn_backlog_readings",
        "gauge",
        "Readings in the outbox not yet acknowledged.",
        &one(stats.backlog as f64),
    );
    family(
        &mut out,
        "cairn_backlog_bytes",
        "gauge",
        "Size of the backlog as counted against buffer.max_bytes.",
        &one(stats.bytes as f64),
    );
    let dropped: Vec<_> = stats
        .dropped
        .iter()
        .map(|(reason, n)| (vec![("reason", reason.as_str())], *n as f64))
        .collect();
    family(
        &mut out,
        "cairn_readings_dropped_total",
        "counter",
        "Readings dropped by the retention policy, by reason.",
        &dropped,
    );
    let uplink = state.uplink.borrow().clone();
    family(
        &mut out,
        "cairn_uplink_connected",
        "gauge",
        "1 while the MQTT broker has accepted the connection.",
        &one(f64::from(u8::from(uplink.connected))),
    );
    let link = state.meter.counts();
    let directions = |b: crate::uplink::meter::Bytes| {
        vec![
            (vec![("direction", "up")], b.up as f64),
            (vec![("direction", "down")], b.down as f64),
        ]
    };
    family(
        &mut out,
        "cairn_uplink_bytes_total",
        "counter",
        "Bytes across the link to the broker at the socket, TLS included, since the outbox was made.",
        &directions(link.total),
    );
    family(
        &mut out,
        "cairn_uplink_bytes_today",
        "gauge",
        "Bytes across the link today (UTC).",
        &directions(link.day.bytes),
    );
    family(
        &mut out,
        "cairn_uplink_bytes_month",
        "gauge",
        "Bytes across the link this month (UTC).",
        &directions(link.month.bytes),
    );
    family(
        &mut out,
        "cairn_uplink_connects_total",
        "counter",
        "Connections to the broker established since the outbox was made.",
        &one(link.connects as f64),
    );
    if state.budget.config().is_some() {
        use crate::uplink::budget::Step;
        family(
            &mut out,
            "cairn_budget_step",
            "gauge",
            "How far the uplink gave way to its byte budget: 0 open, 1 backlog paused, 2 live thinned, 3 alarms only.",
            &one(state.budget.current() as u8 as f64),
        );
        let reached: Vec<_> = Step::ALL
            .iter()
            .map(|s| (vec![("step", s.as_str())], state.budget.reached(*s) as f64))
            .collect();
        family(
            &mut out,
            "cairn_budget_reached_total",
            "counter",
            "Times each budget step was reached since start.",
            &reached,
        );
    }
    let stalled = uplink.connected && state.link.waiting().is_some_and(|w| w >= state.stall_after);
    family(
        &mut out,
        "cairn_uplink_stalled",
        "gauge",
        "1 while connected but an answer from the broker is overdue.",
        &one(f64::from(u8::from(stalled))),
    );
    family(
        &mut out,
        "cairn_commands_ignored_total",
        "counter",
        "MQTT command messages not carried out: retained, larger than a command may be, or too many waiting.",
        &one(uplink.ignored_commands as f64),
    );

    let lanes = state.rates.lanes();
    let per_lane = |value: &dyn Fn(&super::api::LaneView) -> Option<f64>| {
        lanes
            .iter()
            .filter_map(|l| Some((vec![("lane", l.lane.as_str())], value(l)?)))
            .collect::<Vec<_>>()
    };
    family(
        &mut out,
        "cairn_lane_readings",
        "gauge",
        "Unsent readings per lane (alarm, live, backlog).",
        &per_lane(&|l| Some(l.depth.readings as f64)),
    );
    family(
        &mut out,
        "cairn_lane_bytes",
        "gauge",
        "Their size as counted against buffer.max_bytes.",
        &per_lane(&|l| Some(l.depth.bytes as f64)),
    );
    let now = crate::pipeline::unix_millis(std::time::SystemTime::now());
    family(
        &mut out,
        "cairn_lane_oldest_age_seconds",
        "gauge",
        "Age of the oldest unsent reading per lane (absent when the lane is empty).",
        &per_lane(&|l| Some((now - l.depth.oldest_ms?).max(0) as f64 / 1000.0)),
    );
    family(
        &mut out,
        "cairn_lane_drain_readings_per_second",
        "gauge",
        "Readings delivered per second per lane, over the last ten seconds.",
        &per_lane(&|l| Some(l.drain_per_s)),
    );
    family(
        &mut out,
        "cairn_lane_eta_seconds",
        "gauge",
        "Seconds until the lane is empty at its drain rate (absent when it does not drain).",
        &per_lane(&super::api::LaneView::eta_s),
    );

    let views = state.hub.devices();
    let per_device = |value: &dyn Fn(&crate::supervisor::DeviceHandle) -> f64| {
        state
            .devices
            .iter()
            .map(|d| (vec![("device", &*d.name)], value(d)))
            .collect::<Vec<_>>()
    };
    let online = per_device(&|d| {
        f64::from(u8::from(
            views.get(&d.name).is_some_and(|v| v.status == "online"),
        ))
    });
    family(
        &mut out,
        "cairn_device_online",
        "gauge",
        "1 while the device's link is up.",
        &online,
    );
    family(
        &mut out,
        "cairn_device_readings_total",
        "counter",
        "Readings the device produced since start.",
        &per_device(&|d| d.counters.readings() as f64),
    );
    family(
        &mut out,
        "cairn_device_requests_total",
        "counter",
        "Requests sent to the device since start.",
        &per_device(&|d| d.counters.requests() as f64),
    );
    family(
        &mut out,
        "cairn_device_restarts_total",
        "counter",
        "Times the device's adapter was restarted after a failure.",
        &per_device(&|d| d.counters.restarts() as f64),
    );
    let suppressed: Vec<_> = state
        .devices
        .iter()
        .flat_map(|d| {
            let (readings, values) = d.counters.suppressed();
            [
                (
                    vec![("device", &*d.name), ("what", "readings")],
                    readings as f64,
                ),
                (
                    vec![("device", &*d.name), ("what", "values")],
                    values as f64,
                ),
            ]
        })
        .collect();
    family(
        &mut out,
        "cairn_device_suppressed_total",
        "counter",
        "Readings and values report-by-exception withheld (unchanged within the deadband).",
        &suppressed,
    );
    let counts: Vec<_> = state
        .devices
        .iter()
        .map(|d| (d.name.clone(), d.counters.errors()))
        .collect();
    let error_samples: Vec<_> = counts
        .iter()
        .flat_map(|(device, kinds)| {
            kinds
                .iter()
                .map(move |(kind, n)| (vec![("device", &**device), ("kind", *kind)], *n as f64))
        })
        .collect();
    family(
        &mut out,
        "cairn_device_errors_total",
        "counter",
        "Device errors by kind (bad checksum, timeout, exception...).",
        &error_samples,
    );
    family(
        &mut out,
        "cairn_feed_clients",
        "gauge",
        "WebSocket clients connected.",
        &one(state.hub.clients() as f64),
    );
    let server = &state.server;
    let load =
        |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed) as f64;
    family(
        &mut out,
        "cairn_feed_connections",
        "gauge",
        "HTTP and WebSocket connections open.",
        &one(load(&server.open)),
    );
    family(
        &mut out,
        "cairn_feed_connections_refused_total",
        "counter",
        "Connections refused: all taken (full), or their address held its share (per_client).",
        &[
            (vec![("reason", "full")], load(&server.refused_full)),
            (
                vec![("reason", "per_client")],
                load(&server.refused_per_client),
            ),
        ],
    );
    family(
        &mut out,
        "cairn_feed_connections_timed_out_total",
        "counter",
        "Connections closed for headers slower than header_timeout or idleness.",
        &one(load(&server.timed_out)),
    );
    family(
        &mut out,
        "cairn_feed_lost_total",
        "counter",
        "Live events the feed missed because it fell behind.",
        &one(state.hub.lost() as f64),
    );
    let uptime = std::time::SystemTime::now()
        .duration_since(state.started)
        .unwrap_or_default()
        .as_secs_f64();
    let (written, per_day) = state.rates.wear();
    if let Some(written) = written {
        family(
            &mut out,
            "cairn_disk_written_bytes_total",
            "counter",
            "Bytes Cairn wrote to storage since start (write_bytes of /proc/self/io): what wears an SD card.",
            &one(written as f64),
        );
    }
    if let Some(per_day) = per_day {
        family(
            &mut out,
            "cairn_disk_written_bytes_per_day",
            "gauge",
            "Bytes written to storage per day, over the last day.",
            &one(per_day.round()),
        );
    }
    family(
        &mut out,
        "cairn_uptime_seconds",
        "gauge",
        "Seconds since the gateway started.",
        &one(uptime),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
