//! A fault-injecting TCP proxy (the kernel here has no netem): added latency each way, and a
//! silent blackhole where nothing gets through and nothing is closed, like a satellite outage
//! (the bytes wait, as TCP would keep retransmitting them, and flow again when it ends).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Faults {
    one_way_delay_ms: AtomicU64,
    blackhole: AtomicBool,
}

/// Forwards `127.0.0.1:port` to a target port, with faults switched at run time.
pub struct Proxy {
    pub port: u16,
    faults: Arc<Faults>,
}

impl Proxy {
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        let shared = faults.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    pipe(from, to, shared.clone());
                }
            }
        });
        Self { port, faults }
    }

    /// Adds `rtt / 2` of delay in each direction.
    pub fn set_round_trip(&self, rtt: Duration) {
        self.faults
            .one_way_delay_ms
            .store(rtt.as_millis() as u64 / 2, Ordering::Relaxed);
    }

    /// While on, nothing is delivered in either direction; connections stay open.
    pub fn set_blackhole(&self, on: bool) {
        self.faults.blackhole.store(on, Ordering::Relaxed);
    }
}

/// Copies `from` to `to`, holding each chunk back by the current delay (order preserved).
fn pipe(mut from: TcpStream, mut to: TcpStream, faults: Arc<Faults>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_faults = faults.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay =
                Duration::from_millis(reader_faults.one_way_delay_ms.load(Ordering::Relaxed));
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, bytes) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            while faults.blackhole.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
