//! A pymodbus server (tests/peers/modbus_server.py) as the Modbus device under test, over TCP
//! or as RTU on a serial device.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{PYTHON, free_port};

/// The simulated device; stopped on drop.
pub struct ModbusServer {
    pub port: u16,
    rtu: Option<PathBuf>,
    args: Vec<String>,
    child: Option<Child>,
}

impl ModbusServer {
    /// A Modbus TCP server on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A Modbus TCP server on a free port, with more arguments for the script (e.g. the
    /// many-unit gateway of `--units`).
    pub fn start_with(args: &[&str]) -> Self {
        let mut server = Self {
            port: free_port(),
            rtu: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        server.restart();
        server
    }

    /// A Modbus RTU server (19200 8N1) on the serial device `tty`.
    pub fn start_rtu(tty: &Path) -> Self {
        Self::start_rtu_with(tty, &[])
    }

    /// [`ModbusServer::start_rtu`] with more arguments for the script (`--silent`).
    pub fn start_rtu_with(tty: &Path, args: &[&str]) -> Self {
        let mut server = Self {
            port: 0,
            rtu: Some(tty.to_path_buf()),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        server.restart();
        server
    }

    /// Starts the server (again) where it was.
    pub fn restart(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/modbus_server.py");
        let mut command = Command::new(PYTHON);
        command.arg(script);
        match &self.rtu {
            Some(tty) => command.arg("--rtu").arg(tty).args(&self.args),
            None => command.arg(self.port.to_string()).args(&self.args),
        };
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the test venv with pymodbus exists (scripts/test creates it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "pymodbus server did not start");
        if self.rtu.is_none() {
            super::wait_for_port(self.port, true);
        }
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.rtu.is_none() {
            super::wait_for_port(self.port, false);
        }
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
