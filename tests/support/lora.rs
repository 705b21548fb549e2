//! The LoRa side of the tests: the test itself plays the packet forwarder (a gateway's UDP
//! client, byte for byte as PROTOCOL.TXT defines it); Python peers build LoRaWAN frames
//! (tests/peers/lorawan_frames.py) and play serial LoRa modules (tests/peers/lora_module.py).

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use super::PYTHON;

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");

/// The EUI the test's gateway announces.
pub const GATEWAY: [u8; 8] = [0xAA, 0x55, 0x5A, 0x00, 0x00, 0x00, 0x00, 0x01];

/// A packet forwarder sending to Cairn's endpoint at `server`.
pub struct PacketForwarder {
    socket: UdpSocket,
    server: SocketAddr,
    token: u16,
}

impl PacketForwarder {
    pub fn new(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Self {
            socket,
            server,
            token: 0x1234,
        }
    }

    /// Sends a datagram as it is.
    pub fn send_raw(&self, datagram: &[u8]) {
        self.socket.send_to(datagram, self.server).unwrap();
    }

    /// The next datagram from the server, if one comes within a short while.
    pub fn receive(&self, wait: Duration) -> Option<Vec<u8>> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 2048];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    }

    fn header(&mut self, version: u8, kind: u8, gateway: [u8; 8]) -> Vec<u8> {
        self.token = self.token.wrapping_add(1);
        let mut datagram = vec![version];
        datagram.extend_from_slice(&self.token.to_be_bytes());
        datagram.push(kind);
        datagram.extend_from_slice(&gateway);
        datagram
    }

    /// PUSH_DATA with `json` from `gateway`; returns the acknowledgement, if any came.
    pub fn push_from(&mut self, gateway: [u8; 8], json: &str) -> Option<Vec<u8>> {
        let mut datagram = self.header(2, 0, gateway);
        datagram.extend_from_slice(json.as_bytes());
        self.send_raw(&datagram);
        let ack = self.receive(Duration::from_secs(5))?;
        assert_eq!(
            ack[..3],
            datagram[..3],
            "the ack carries the version and token"
        );
        Some(ack)
    }

    /// PUSH_DATA from the test gateway, which must be acknowledged.
    pub fn push(&mut self, json: &str) {
        let ack = self.push_from(GATEWAY, json).expect("PUSH_ACK");
        assert_eq!(ack[3], 1, "PUSH_ACK");
    }

    /// PULL_DATA (version 1, as older forwarders send), which must be acknowledged.
    pub fn pull(&mut self) {
        self.pull_as(GATEWAY);
    }

    /// PULL_DATA from `gateway`: its downlinks come to this socket from now on.
    pub fn pull_as(&mut self, gateway: [u8; 8]) {
        let datagram = self.header(1, 2, gateway);
        self.send_raw(&datagram);
        let ack = self.receive(Duration::from_secs(5)).expect("PULL_ACK");
        assert_eq!(ack, [1, datagram[1], datagram[2], 4]);
    }

    /// The next PULL_RESP, if one comes within `wait`: its token and its `txpk`.
    pub fn pull_resp(&self, wait: Duration) -> Option<([u8; 2], serde_json::Value)> {
        let datagram = self.receive(wait)?;
        assert_eq!(datagram[3], 3, "PULL_RESP: {datagram:?}");
        let body: serde_json::Value = serde_json::from_slice(&datagram[4..]).unwrap();
        Some(([datagram[1], datagram[2]], body["txpk"].clone()))
    }

    /// The next PULL_RESP (`what` it should be), taken by `gateway` with TX_ACK: its `txpk`.
    pub fn take_downlink(&mut self, gateway: [u8; 8], what: &str) -> serde_json::Value {
        let (token, txpk) = self.pull_resp(super::PATIENCE).expect(what);
        self.tx_ack(gateway, token, None);
        txpk
    }

    /// TX_ACK for the PULL_RESP with `token`, from `gateway`: taken, or refused with `error`
    /// (`TOO_LATE`, `COLLISION_PACKET`, ...), as PROTOCOL.TXT's version 2 writes it.
    pub fn tx_ack(&mut self, gateway: [u8; 8], token: [u8; 2], error: Option<&str>) {
        let mut datagram = vec![2, token[0], token[1], 5];
        datagram.extend_from_slice(&gateway);
        let body = serde_json::json!({"txpk_ack": {"error": error.unwrap_or("NONE")}});
        datagram.extend_from_slice(body.to_string().as_bytes());
        self.send_raw(&datagram);
    }
}

/// An `rxpk` entry carrying `phy`, as an SX1301 forwarder writes it.
pub fn rxpk(phy: &[u8], rssi: i32, snr: f64) -> serde_json::Value {
    serde_json::json!({
        "time": "2026-11-25T10:00:00.000000Z", "tmst": 3512348611u32, "chan": 2, "rfch": 0,
        "freq": 868.1, "stat": 1, "modu": "LORA", "datr": "SF7BW125", "codr": "4/5",
        "rssi": rssi, "lsnr": snr, "size": phy.len(),
        "data": base64::engine::general_purpose::STANDARD.encode(phy),
    })
}

/// A PUSH_DATA body with these packets.
pub fn push_data(rxpk: &[serde_json::Value]) -> String {
    serde_json::json!({ "rxpk": rxpk }).to_string()
}

pub fn unhex(hex: &str) -> Vec<u8> {
    cairn_adapters::codec::unhex(hex).unwrap()
}

/// A frame built by the Python peer: the PHYPayload, and what pycayennelpp decoded from its
/// payload.
pub struct Frame {
    pub phy: Vec<u8>,
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Builds frames with `lorawan_frames.py` (see its doc for `request`).
pub fn build_frames(request: serde_json::Value) -> Vec<Frame> {
    let mut child = Command::new(PYTHON)
        .arg(format!("{PEERS}/lorawan_frames.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the test venv exists (scripts/test creates it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "lorawan_frames.py failed");
    let out: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    out["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Frame {
            phy: unhex(f["phy"].as_str().unwrap()),
            fields: f["fields"].as_object().cloned(),
        })
        .collect()
}

/// `lora_module.py` playing a module of `kind` on `tty`, receiving `packets`.
pub struct LoraModule {
    pub log: PathBuf,
    child: Child,
}

impl LoraModule {
    pub fn start(kind: &str, tty: &Path, dir: &Path, packets: &[&str]) -> Self {
        let log = dir.join(format!("{kind}.log"));
        let child = Command::new(PYTHON)
            .arg(format!("{PEERS}/lora_module.py"))
            .args(["--kind", kind, "--tty"])
            .arg(tty)
            .arg("--log")
            .arg(&log)
            .args(packets)
            .spawn()
            .expect("the test venv exists (scripts/test creates it)");
        let deadline = std::time::Instant::now() + super::PATIENCE;
        while !log.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "lora_module.py never opened {}",
                tty.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { log, child }
    }

    /// The commands the module received, in order.
    pub fn commands(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for LoraModule {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the LoRaWAN device played by the npm package lora-packet
/// (`tests/peers/lorawan_device.js`) and parses the JSON line it prints.
pub fn lora_packet(args: &[&str]) -> serde_json::Value {
    super::peer_json_in("node", "lorawan_device.js", args)
}
