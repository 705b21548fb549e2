//! `socat` pty pairs standing in for serial ports: Cairn opens one end, the test writes to the
//! other as the sensor would. Killing socat is unplugging the device.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
