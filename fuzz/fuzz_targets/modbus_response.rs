//! A Modbus device's answer: the input's first bytes pick the transport (RTU or TCP), the table
//! and the points; the rest is what the "device" sends back. The answer goes through the same
//! client (tokio-modbus over an in-memory pipe), the same checks and the same decoding as a
//! poll.
#![no_main]

use std::time::Duration;

use cairn_adapters::modbus::{Point, plan, read};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_modbus::Slave;
use tokio_modbus::client::{rtu, tcp};

const TYPES: [&str; 10] = [
    "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "bool", "string",
];
const ORDERS: [&str; 4] = ["abcd", "cdab", "badc", "dcba"];
const TABLES: [&str; 4] = ["holding", "input", "coil", "discrete_input"];

/// Points of one table from 3-byte descriptions; only ones `cairn check` accepts.
fn points(table: &str, spec: &[u8]) -> Vec<Point> {
    spec.chunks_exact(3)
        .take(8)
        .filter_map(|p| {
            let bits = table == "coil" || table == "discrete_input";
            let point = json!({
                "name": format!("p{}", p[0]),
                "table": table,
                "address": u16::from(p[0] & 0x3F),
                "type": if bits { "bool" } else { TYPES[usize::from(p[1]) % TYPES.len()] },
                "order": ORDERS[usize::from(p[1] >> 4) % ORDERS.len()],
                "bit": (p[2] & 0x80 != 0 && !bits).then_some(p[2] & 0x0F),
                "length": (p[2] & 0x40 != 0).then_some(u16::from(p[2] & 0x07) + 1),
                "scale": (p[2] & 0x20 != 0).then_some(0.1),
                "offset": (p[2] & 0x10 != 0).then_some(-40),
            });
            let point: Point = serde_json::from_value(point).ok()?;
            point.problems().is_empty().then_some(point)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let [setup, spec_len, rest @ ..] = data else {
        return;
    };
    let (spec, answer) = rest.split_at(usize::from(*spec_len).min(rest.len()));
    let table = TABLES[usize::from(setup >> 1) % TABLES.len()];
    let points = points(table, spec);
    let refs: Vec<&Point> = points.iter().collect();
    let Some(request) = plan(&refs, 8).into_iter().next() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (client, mut device) = tokio::io::duplex(1024);
        let mut ctx = if setup & 1 == 0 {
            rtu::attach_slave(client, Slave(1))
        } else {
            tcp::attach_slave(client, Slave(1))
        };
        let answer = answer.to_vec();
        let device = tokio::spawn(async move {
            let mut request = [0u8; 260];
            let _ = device.read(&mut request).await;
            let _ = device.write_all(&answer).await;
            // Then silence, as from a device that said all it had: the poll times out.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let call = read(&mut ctx, &request);
        if let Ok(Ok(Ok(words))) = tokio::time::timeout(Duration::from_secs(1), call).await {
            assert_eq!(words.len(), usize::from(request.count));
            for (_, value) in request.decode(&points, &words) {
                let _ = value;
            }
        }
        device.abort();
    });
});
