//! A pymodbus TCP server (tests/peers/modbus_server.py) as the Modbus device under test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use super::free_port;

/// The simulated device; stopped on drop.
pub struct ModbusServer {
    pub port: u16,
    child: Option<Child>,
}

impl ModbusServer {
    pub fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
        };
        server.restart();
        server
    }

    /// Starts the server (again) on the same port.
    pub fn restart(&mut self) {
        let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/modbus_server.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(self.port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the test venv with pymodbus exists (scripts/test creates it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "pymodbus server did not start");
        super::wait_for_port(self.port, true);
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        super::wait_for_port(self.port, false);
    }
}

impl Drop for ModbusServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
