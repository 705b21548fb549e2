//! The dashboard port against a hostile LAN: connection floods from one and from many
//! addresses, slowloris headers and idle sockets, under a small descriptor limit. The
//! dashboard keeps answering, the uplink keeps its descriptors, nothing is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use support::{Broker, Cairn, PATIENCE, Subscriber, rss_kib};

/// The descriptor limit Cairn runs under here: a quarter of systemd's default, so that the
/// flood below is four times what would exhaust it.
const FD_LIMIT: u64 = 256;

/// A TCP connection to `to` from the loopback address `127.0.0.<from>`.
fn connect_from(from: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, from), 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// `GET /api/status` from `127.0.0.<from>`: the status code, or `None` when refused.
fn status_from(from: u8, feed: SocketAddr) -> Option<u16> {
    let mut stream = connect_from(from, feed).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.get(9..12)?.parse().ok()
}

/// Whether a connection is still open: a read that would block (it is), or one that ends.
fn still_open(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let open =
        matches!(stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    open
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Lets this test process hold the flood's sockets.
fn raise_own_fd_limit(wanted: u64) -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(wanted);
    limit.current = Some(wanted.min(hard));
    let _ = setrlimit(Resource::Nofile, limit);
    getrlimit(Resource::Nofile).current.unwrap_or(wanted)
}

#[test]
fn a_flood_of_idle_and_slow_connections_takes_neither_the_dashboard_nor_the_uplink() {
    let own = raise_own_fd_limit(4096);
    let mut broker = Broker::start();
    let sub = Subscriber::start(&broker, "cairn/test/#");
    let last = 1500;
    let config = format!(
        "gateway:\n  id: test\n  data_dir: {{data}}\n\
         mqtt:\n  host: 127.0.0.1\n  port: {}\n{}\
         feed: {{listen: '127.0.0.1:0', header_timeout: 2s, idle_timeout: 4s}}\n\
         devices:\n  - name: counter\n    type: sim\n    rate: 50\n    limit: {last}\n    values:\n      - {{name: n, counter: {{}}}}\n",
        broker.port,
        support::FAST_RECONNECT
    );
    let mut cairn = Cairn::prepare(&config);
    cairn.fd_limit = Some(FD_LIMIT);
    cairn.restart();
    let feed = cairn.feed();
    let pid = cairn.pid().unwrap();
    let log = cairn.log();
    assert!(
        log.contains("The descriptor limit leaves room for fewer dashboard connections"),
        "{log}"
    );
    let rss_before = rss_kib(pid);

    // One address opens 1,100 connections (the count that took the dashboard down): it
    // keeps its share, 32, and the rest are closed at once.
    let started = Instant::now();
    let mut from_one = Vec::new();
    for _ in 0..1100.min(own as usize / 3) {
        if let Ok(stream) = connect_from(2, feed) {
            from_one.push(stream);
        }
    }
    // Once Cairn has taken each of them, it holds at most 32 (and this request's own
    // connection); the rest were refused, or timed out (they never sent a header).
    let tried = from_one.len() as u64;
    println!(
        "{tried} connections from one address in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + PATIENCE;
    let (held, refused, timed_out) = loop {
        let c = &support::feed::api(feed, "/api/status")["connections"];
        let n = |k: &str| c[k].as_u64().unwrap();
        let (open, refused, timed_out) = (n("open") - 1, n("refused_per_client"), n("timed_out"));
        if open + refused + timed_out >= tried {
            break (open, refused, timed_out);
        }
        assert!(Instant::now() < deadline, "{c}");
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("from one address: {held} held, {refused} refused, {timed_out} timed out");
    assert!(held <= 32, "one address holds {held}");
    assert!(refused + 32 + timed_out >= tried);
    assert_eq!(status_from(9, feed), Some(200), "another address is served");

    // Forty addresses flood it: the total stays within what the descriptor limit leaves.
    let mut from_many = Vec::new();
    for from in 10..50u8 {
        for _ in 0..32 {
            if from_many.len() + from_one.len() + 64 > own as usize {
                break;
            }
            if let Ok(stream) = connect_from(from, feed) {
                from_many.push(stream);
            }
        }
    }
    let fds = open_fds(pid);
    println!(
        "{} connections tried: cairn holds {fds} descriptors of {FD_LIMIT}",
        from_one.len() + from_many.len()
    );
    assert!((fds as u64) < FD_LIMIT, "{fds} descriptors open");

    // With the dashboard full, the uplink still has descriptors: the broker restarts and
    // every reading arrives.
    broker.stop();
    broker.restart();
    let (_, duplicates) = sub.expect_every_reading(last);
    println!("{last} readings: 0 lost, {duplicates} duplicates");
    assert!(
        !cairn.log().contains("Too many open files"),
        "{}",
        cairn.log()
    );

    // The idle flood times out; then the dashboard answers everyone again.
    let started = Instant::now();
    let deadline = started + PATIENCE;
    while status_from(60, feed) != Some(200) {
        assert!(Instant::now() < deadline, "the dashboard never came back");
        std::thread::sleep(Duration::from_millis(250));
    }
    println!(
        "dashboard answering again {:.1} s after the flood; RSS {} KiB before, {} KiB after",
        started.elapsed().as_secs_f64(),
        rss_before,
        rss_kib(pid)
    );
    let closed = from_many.iter().filter(|s| !still_open(s)).count();
    assert!(closed > 0, "idle connections are closed");
    drop(from_one);
    drop(from_many);

    // Slowloris: a header byte every 500 ms is cut off after header_timeout (2 s).
    let mut slow = connect_from(70, feed).unwrap();
    let started = Instant::now();
    let mut cut = None;
    for byte in b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if slow.write_all(&[*byte]).is_err() || !still_open(&slow) {
            cut = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let cut = cut.expect("a slow header is cut off");
    println!("slowloris cut off after {:.1} s", cut.as_secs_f64());
    assert!(cut < Duration::from_secs(6), "{cut:?}");
    let status = support::feed::api(feed, "/api/status");
    let connections = &status["connections"];
    println!("connections: {connections}");
    assert!(connections["refused_per_client"].as_u64().unwrap() > 0);
    assert!(connections["refused_full"].as_u64().unwrap() > 0);
    assert!(connections["timed_out"].as_u64().unwrap() > 0);
}
