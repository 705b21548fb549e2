//! IP-level byte counts with tcpdump: what a link billed per byte really carries, headers
//! included. The capture file is read here (pcap, a 24-byte header, then a 16-byte header per
//! packet with its original length).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running capture of one TCP port on the loopback interface.
pub struct Capture {
    child: Child,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

/// What a capture saw.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Packets, both directions.
    pub packets: u64,
    /// IP bytes: IP and TCP headers and payload, without the link layer.
    pub ip_bytes: u64,
}

impl Capture {
    /// Captures TCP `port` on `lo`; `None` when tcpdump cannot run here.
    pub fn start(port: u16) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let file = dir.path().join("capture.pcap");
        let mut child = Command::new("tcpdump")
            .args(["-i", "lo", "-U", "-s", "128", "-w"])
            .arg(&file)
            .arg(format!("tcp port {port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // tcpdump writes the file's header once it listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&file).map_or(0, |m| m.len()) < 24 {
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            file,
            _dir: dir,
        })
    }

    /// Stops and counts.
    pub fn stop(mut self) -> Seen {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let bytes = std::fs::read(&self.file).unwrap();
        // Loopback captures as Ethernet (link type 1): 14 bytes of link header per packet.
        let link = match u32::from_le_bytes(bytes[20..24].try_into().unwrap()) {
            1 => 14,
            _ => 0,
        };
        let mut seen = Seen {
            packets: 0,
            ip_bytes: 0,
        };
        let mut at = 24;
        while at + 16 <= bytes.len() {
            let captured = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
            let original = u32::from_le_bytes(bytes[at + 12..at + 16].try_into().unwrap()) as u64;
            seen.packets += 1;
            seen.ip_bytes += original - link;
            at += 16 + captured;
        }
        seen
    }
}
