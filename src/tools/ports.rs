//! `cairn ports`: the serial ports of this machine, with the names that survive a reboot.
//!
//! `/dev/ttyUSB0` and `/dev/ttyUSB1` swap when adapters enumerate in another order, so a config
//! should name `/dev/serial/by-id/...` (udev's name from the USB identity) or, for two identical
//! adapters without serial numbers, `/dev/serial/by-path/...`. This reads what the kernel and
//! udev publish (`/sys/class/tty`, `/dev/serial`); nothing is opened, so a port in use by the
//! running gateway is listed too.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One serial port.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Port {
    /// The kernel's device node, `/dev/ttyUSB0`.
    pub dev: PathBuf,
    /// The driver bound to it (`ftdi_sio`, `cp210x`, `pl011`, ...).
    pub driver: Option<String>,
    /// For USB adapters: who made it and which one it is.
    pub usb: Option<UsbIdentity>,
    /// udev's stable names by USB identity (`/dev/serial/by-id/...`).
    pub by_id: Vec<PathBuf>,
    /// udev's stable names by physical port (`/dev/serial/by-path/...`).
    pub by_path: Vec<PathBuf>,
    /// Other links to it in `/dev` (the Pi's `serial0`, `serial1`).
    pub aliases: Vec<PathBuf>,
}

/// What a USB serial adapter says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsbIdentity {
    /// `idVendor`, 4 hex digits.
    pub vendor_id: String,
    /// `idProduct`, 4 hex digits.
    pub product_id: String,
    /// The manufacturer string, if it has one.
    pub manufacturer: Option<String>,
    /// The product string, if it has one.
    pub product: Option<String>,
    /// The serial number, if it has one (cheap CH340 and PL2303 adapters have none).
    pub serial: Option<String>,
}

impl Port {
    /// The name a config should use: by id, else by path, else the Pi's alias, else the node.
    pub fn best_name(&self) -> &Path {
        self.by_id
            .first()
            .or(self.by_path.first())
            .or(self.aliases.first())
            .unwrap_or(&self.dev)
    }
}

/// The serial ports under `sys` (normally `/sys`) whose nodes are in `dev` (normally `/dev`).
pub fn list(sys: &Path, dev: &Path) -> Vec<Port> {
    let Ok(entries) = std::fs::read_dir(sys.join("class/tty")) else {
        return Vec::new();
    };
    let links = |dir: &Path| symlinks_to(&dev.join(dir));
    let by_id = links(Path::new("serial/by-id"));
    let by_path = links(Path::new("serial/by-path"));
    let aliases = links(Path::new(""));
    let mut ports: Vec<Port> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let class = entry.path();
            // Virtual terminals and ptys have no device behind them.
            let device = std::fs::canonicalize(class.join("device")).ok()?;
            // The 8250 driver registers ports it never found (ttyS0..31 on a PC): type 0.
            if name.starts_with("ttyS")
                && read_trimmed(&class.join("type")).is_some_and(|t| t == "0")
            {
                return None;
            }
            let node = dev.join(&name);
            let named = |links: &[(PathBuf, String)]| {
                links
                    .iter()
                    .filter(|(_, target)| *target == name)
                    .map(|(link, _)| link.clone())
                    .collect::<Vec<_>>()
            };
            Some(Port {
                driver: driver(&device),
                usb: usb_identity(&device),
                by_id: named(&by_id),
                by_path: named(&by_path),
                aliases: named(&aliases)
                    .into_iter()
                    .filter(|a| a.file_name().is_some_and(|n| n.to_string_lossy() != name))
                    .collect(),
                dev: node,
            })
        })
        .collect();
    ports.sort_by(|a, b| a.dev.cmp(&b.dev));
    ports
}

/// The driver of the hardware behind a tty: the first one up the device's path that is not
/// the kernel's generic `serial-base` layer (whose drivers are named `port` and `ctrl`).
fn driver(device: &Path) -> Option<String> {
    device.ancestors().take(4).find_map(|dir| {
        let link = std::fs::read_link(dir.join("driver")).ok()?;
        let bus = link
            .parent()?
            .parent()?
            .file_name()?
            .to_string_lossy()
            .into_owned();
        let name = link.file_name()?.to_string_lossy().into_owned();
        (bus != "serial-base").then_some(name)
    })
}

/// The symbolic links directly in `dir`, with the file name of what each points to.
fn symlinks_to(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut links: Vec<(PathBuf, String)> = entries
        .flatten()
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.path()).ok()?;
            let target = target.file_name()?.to_string_lossy().into_owned();
            Some((entry.path(), target))
        })
        .collect();
    links.sort();
    links
}

/// The USB device above a tty's device in sysfs: the first ancestor with `idVendor`.
fn usb_identity(device: &Path) -> Option<UsbIdentity> {
    let usb = device.ancestors().find(|d| d.join("idVendor").is_file())?;
    let read = |file: &str| read_trimmed(&usb.join(file)).filter(|s| !s.is_empty());
    Some(UsbIdentity {
        vendor_id: read("idVendor")?,
        product_id: read("idProduct")?,
        manufacturer: read("manufacturer"),
        product: read("product"),
        serial: read("serial"),
    })
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The listing as people read it: each port, what it is, and the name to put in the config.
pub fn render(ports: &[Port]) -> String {
    if ports.is_empty() {
        return "No serial ports found. Plug in the adapter (`dmesg | tail` shows it arrive), or \
                enable the Pi's UART (raspi-config, Interface Options, Serial Port).\n"
            .into();
    }
    let mut out = String::new();
    for port in ports {
        let mut what = Vec::new();
        if let Some(usb) = &port.usb {
            what.push(format!("USB {}:{}", usb.vendor_id, usb.product_id));
            what.extend(usb.manufacturer.clone());
            what.extend(usb.product.clone());
            what.push(match &usb.serial {
                Some(serial) => format!("serial {serial}"),
                None => "no serial number".into(),
            });
        }
        what.extend(port.driver.as_ref().map(|d| format!("driver {d}")));
        let _ = writeln!(out, "{}  {}", port.dev.display(), what.join(", "));
        for (label, names) in [
            ("by-id", &port.by_id),
            ("by-path", &port.by_path),
            ("alias", &port.aliases),
        ] {
            for name in names {
                let _ = writeln!(out, "    {label:<8} {}", name.display());
            }
        }
        let _ = writeln!(out, "    config:  port: {}", port.best_name().display());
        if port.usb.is_some() && port.by_id.is_empty() {
            out.push_str(
                "    (no by-id name: udev has not named it, or two adapters look alike; by-path \
                 follows the USB socket)\n",
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs and /dev as a Pi with one FTDI adapter, the on-board UART and a ghost 8250
    /// port shows them.
    fn machine() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let mk = |p: &str| std::fs::create_dir_all(r.join(p)).unwrap();
        let write = |p: &str, s: &str| std::fs::write(r.join(p), s).unwrap();
        let usb = "sys/devices/platform/usb1/1-1";
        mk(&format!("{usb}/1-1:1.0/ttyUSB0"));
        write(&format!("{usb}/idVendor"), "0403\n");
        write(&format!("{usb}/idProduct"), "6001\n");
        write(&format!("{usb}/manufacturer"), "FTDI\n");
        write(&format!("{usb}/product"), "FT232R USB UART\n");
        write(&format!("{usb}/serial"), "A50285BI\n");
        mk("sys/bus/usb-serial/drivers/ftdi_sio");
        symlink(
            r.join("sys/bus/usb-serial/drivers/ftdi_sio"),
            r.join(format!("{usb}/1-1:1.0/ttyUSB0/driver")),
        )
        .unwrap();
        mk("sys/devices/platform/uart0");
        mk("sys/devices/platform/serial8250");
        mk("sys/class/tty/ttyUSB0");
        mk("sys/class/tty/ttyAMA0");
        mk("sys/class/tty/ttyS3");
        mk("sys/class/tty/tty1");
        write("sys/class/tty/ttyS3/type", "0\n");
        symlink(
            r.join(format!("{usb}/1-1:1.0/ttyUSB0")),
            r.join("sys/class/tty/ttyUSB0/device"),
        )
        .unwrap();
        symlink(
            r.join("sys/devices/platform/uart0"),
            r.join("sys/class/tty/ttyAMA0/device"),
        )
        .unwrap();
        symlink(
            r.join("sys/devices/platform/serial8250"),
            r.join("sys/class/tty/ttyS3/device"),
        )
        .unwrap();
        mk("dev/serial/by-id");
        mk("dev/serial/by-path");
        symlink(
            "../../ttyUSB0",
            r.join("dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"),
        )
        .unwrap();
        symlink(
            "../../ttyUSB0",
            r.join("dev/serial/by-path/platform-usb-0:1:1.0-port0"),
        )
        .unwrap();
        symlink("ttyAMA0", r.join("dev/serial0")).unwrap();
        root
    }

    #[test]
    fn lists_real_ports_with_their_stable_names() {
        let root = machine();
        let ports = list(&root.path().join("sys"), &root.path().join("dev"));
        let names: Vec<_> = ports
            .iter()
            .map(|p| p.dev.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ttyAMA0", "ttyUSB0"], "no vt, no ghost 8250 port");
        let usb = &ports[1];
        assert_eq!(usb.driver.as_deref(), Some("ftdi_sio"));
        let id = usb.usb.as_ref().unwrap();
        assert_eq!(
            (id.vendor_id.as_str(), id.product_id.as_str()),
            ("0403", "6001")
        );
        assert_eq!(id.serial.as_deref(), Some("A50285BI"));
        assert!(
            usb.best_name()
                .ends_with("serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0")
        );
        assert_eq!(usb.by_path.len(), 1);
        assert!(
            ports[0].best_name().ends_with("dev/serial0"),
            "the Pi's alias"
        );
        let text = render(&ports);
        assert!(
            text.contains("USB 0403:6001, FTDI, FT232R USB UART, serial A50285BI"),
            "{text}"
        );
        assert!(text.contains("config:  port: "), "{text}");
    }

    #[test]
    fn says_what_to_do_when_there_are_none() {
        let root = tempfile::tempdir().unwrap();
        let ports = list(&root.path().join("sys"), &root.path().join("dev"));
        assert!(ports.is_empty());
        assert!(render(&ports).contains("No serial ports found"));
    }
}
