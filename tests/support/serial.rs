//! `socat` pty pairs standing in for serial ports: Cairn opens one end, the test writes to the
//! other as the sensor would. Killing socat is unplugging the device.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A virtual serial cable between `port` (for Cairn) and `sensor` (for the test).
pub struct SerialPair {
    pub port: PathBuf,
    pub sensor: PathBuf,
    child: Option<Child>,
}

impl SerialPair {
    pub fn start(dir: &Path) -> Self {
        let mut pair = Self {
            port: dir.join("ttyCAIRN"),
            sensor: dir.join("ttySENSOR"),
            child: None,
        };
        pair.plug();
        pair
    }

    /// Creates the pty pair (again), at the same paths.
    pub fn plug(&mut self) {
        assert!(self.child.is_none(), "already plugged");
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", self.port.display()))
            .arg(format!("pty,raw,echo=0,link={}", self.sensor.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(self.port.exists() && self.sensor.exists()) {
            assert!(Instant::now() < deadline, "socat did not create its ptys");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills socat: both ends vanish, as when a USB adapter is pulled out.
    pub fn unplug(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.port.exists() || self.sensor.exists() {
            assert!(Instant::now() < deadline, "socat left its links behind");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes `bytes` as the sensor.
    pub fn send(&self, bytes: &[u8]) {
        let mut sensor = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.sensor)
            .unwrap();
        sensor.write_all(bytes).unwrap();
        sensor.flush().unwrap();
    }
}

impl Drop for SerialPair {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A serial line with noise on it: Cairn opens `port`, the device opens `device`, and bytes
/// pass both ways between two pty pairs. While `set_noisy(true)`, one bit of every chunk the
/// device sends is flipped, so each answer fails its CRC (CRC-16 catches every single-bit error).
pub struct NoisyLine {
    pub port: PathBuf,
    pub device: PathBuf,
    noisy: Arc<AtomicBool>,
    _cairn_side: SerialPair,
    _device_side: SerialPair,
}

impl NoisyLine {
    pub fn start(dir: &Path) -> Self {
        let cairn_dir = dir.join("cairn-side");
        let device_dir = dir.join("device-side");
        std::fs::create_dir_all(&cairn_dir).unwrap();
        std::fs::create_dir_all(&device_dir).unwrap();
        let cairn_side = SerialPair::start(&cairn_dir);
        let device_side = SerialPair::start(&device_dir);
        let noisy = Arc::new(AtomicBool::new(false));
        let open = |path: &Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap()
        };
        let (to_device, to_cairn) = (open(&device_side.port), open(&cairn_side.sensor));
        relay(
            to_cairn.try_clone().unwrap(),
            to_device.try_clone().unwrap(),
            None,
        );
        relay(to_device, to_cairn, Some(noisy.clone()));
        Self {
            port: cairn_side.port.clone(),
            device: device_side.sensor.clone(),
            noisy,
            _cairn_side: cairn_side,
            _device_side: device_side,
        }
    }

    pub fn set_noisy(&self, on: bool) {
        self.noisy.store(on, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread of its own until either end closes (socat killed on drop).
fn relay(mut from: std::fs::File, mut to: std::fs::File, noise: Option<Arc<AtomicBool>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if noise.as_ref().is_some_and(|on| on.load(Ordering::SeqCst)) {
                buf[n - 1] ^= 0x01;
            }
            if to.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
}
