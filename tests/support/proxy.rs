//! A fault-injecting TCP proxy (the kernel here has no netem): added latency each way, a rate
//! cap like a modem's, a silent blackhole where nothing gets through and nothing is closed
//! (like a satellite outage: the bytes wait, as TCP would keep retransmitting them, and flow
//! again when it ends), cutting every connection, and a count of the bytes that crossed each
//! way: the link's bill.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Bytes written at a time on a rate-capped link, so that a big chunk does not hold the link
/// in one go.
const RATE_SLICE: usize = 64;

#[derive(Default)]
struct Faults {
    one_way_delay_ms: AtomicU64,
    /// Bits per second each way; 0 for no cap.
    rate_bps: AtomicU64,
    blackhole: AtomicBool,
    /// Bytes delivered client -> server, and server -> client.
    up: AtomicU64,
    down: AtomicU64,
    connections: AtomicU64,
    live: Mutex<Vec<TcpStream>>,
    /// Bytes (up, down) of each connection, in the order they came.
    per_connection: Mutex<Vec<Arc<[AtomicU64; 2]>>>,
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
                shared.connections.fetch_add(1, Ordering::Relaxed);
                {
                    let mut live = shared.live.lock().unwrap();
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                let counts: Arc<[AtomicU64; 2]> = Arc::default();
                shared.per_connection.lock().unwrap().push(counts.clone());
                for (from, to, up) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        true,
                    ),
                    (server, client, false),
                ] {
                    pipe(from, to, up, shared.clone(), counts.clone());
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

    /// Caps each direction at `bits_per_second` (0: no cap), as a modem would.
    pub fn set_rate(&self, bits_per_second: u64) {
        self.faults
            .rate_bps
            .store(bits_per_second, Ordering::Relaxed);
    }

    /// While on, nothing is delivered in either direction; connections stay open.
    pub fn set_blackhole(&self, on: bool) {
        self.faults.blackhole.store(on, Ordering::Relaxed);
    }

    /// Closes every connection through the proxy, both ends, at once.
    pub fn cut(&self) {
        for stream in self.faults.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Bytes delivered so far: (client to server, server to client).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.faults.up.load(Ordering::Relaxed),
            self.faults.down.load(Ordering::Relaxed),
        )
    }

    /// Bytes (client to server, server to client) of each connection so far, oldest first.
    pub fn per_connection(&self) -> Vec<(u64, u64)> {
        self.faults
            .per_connection
            .lock()
            .unwrap()
            .iter()
            .map(|c| (c[0].load(Ordering::Relaxed), c[1].load(Ordering::Relaxed)))
            .collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.faults.connections.load(Ordering::Relaxed)
    }
}

/// Copies `from` to `to`, holding each chunk back by the current delay and pacing it by the
/// rate cap (order preserved), and counts what was delivered.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    up: bool,
    faults: Arc<Faults>,
    connection: Arc<[AtomicU64; 2]>,
) {
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
        let counter = if up { &faults.up } else { &faults.down };
        // When the capped link is free again.
        let mut free_at = Instant::now();
        'chunks: for (due, bytes) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            for slice in bytes.chunks(RATE_SLICE) {
                while faults.blackhole.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let rate = faults.rate_bps.load(Ordering::Relaxed);
                if rate > 0 {
                    let now = Instant::now();
                    free_at = free_at.max(now)
                        + Duration::from_secs_f64(slice.len() as f64 * 8.0 / rate as f64);
                    std::thread::sleep(free_at.saturating_duration_since(now));
                }
                if to.write_all(slice).is_err() {
                    break 'chunks;
                }
                counter.fetch_add(slice.len() as u64, Ordering::Relaxed);
                connection[usize::from(!up)].fetch_add(slice.len() as u64, Ordering::Relaxed);
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
