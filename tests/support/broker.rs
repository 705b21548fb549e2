//! A broker of the test's own on an ephemeral port, with persistence so that a restart keeps
//! the subscriber's session and what the broker had already acknowledged: mosquitto by default,
//! or for interop RabbitMQ's MQTT plugin or NATS server's MQTT, as Debian packages them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, signal, wait_for_port_within};

/// Which broker program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Mosquitto,
    /// `rabbitmq-server` with `rabbitmq_mqtt`: a private node (own name, ports, mnesia).
    RabbitMq,
    /// `nats-server` with its MQTT listener, on JetStream's file store.
    Nats,
}

impl BrokerKind {
    /// How long the broker may take to start: RabbitMQ boots an Erlang node (10 s on an idle
    /// machine).
    fn patience(self) -> Duration {
        match self {
            BrokerKind::RabbitMq => Duration::from_secs(120),
            _ => Duration::from_secs(20),
        }
    }
}

pub struct Broker {
    pub port: u16,
    pub kind: BrokerKind,
    dir: tempfile::TempDir,
    child: Option<Child>,
    listener_extra: String,
    /// The broker's other ports (AMQP and Erlang distribution; NATS clients).
    other_ports: [u16; 2],
}

impl Broker {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, "")
    }

    /// A mosquitto with extra configuration lines (another listener with TLS, say).
    pub fn start_with(port: u16, extra: &str) -> Self {
        Self::launch(BrokerKind::Mosquitto, port, extra)
    }

    /// A broker of `kind` on a free port.
    pub fn start_kind(kind: BrokerKind) -> Self {
        Self::launch(kind, free_port(), "")
    }

    fn launch(kind: BrokerKind, port: u16, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // mosquitto started as root drops to its own user, which must be able to write here.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let mut broker = Self {
            port,
            kind,
            dir,
            child: None,
            listener_extra: extra.to_string(),
            other_ports: [free_port(), free_port()],
        };
        broker.restart();
        broker
    }

    /// Starts the broker again on the same port with the same persistence.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let dir = self.dir.path();
        let mut command = match self.kind {
            BrokerKind::Mosquitto => self.mosquitto(dir),
            BrokerKind::RabbitMq => self.rabbitmq(dir),
            BrokerKind::Nats => self.nats(dir),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{:?} is installed (scripts/test installs it): {e}",
                    self.kind
                )
            });
        self.child = Some(child);
        wait_for_port_within(self.port, true, self.kind.patience());
    }

    fn mosquitto(&self, dir: &Path) -> Command {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{extra}allow_anonymous true\npersistence true\npersistence_location {dir}/\n\
                 max_queued_messages 0\nmax_inflight_messages 100\nlog_dest file {dir}/mosquitto.log\n",
                port = self.port,
                extra = self.listener_extra,
                dir = dir.display()
            ),
        )
        .unwrap();
        let mut command = Command::new("mosquitto");
        command.arg("-c").arg(conf);
        command
    }

    fn rabbitmq(&self, dir: &Path) -> Command {
        let [amqp, dist] = self.other_ports;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\nmqtt.listeners.tcp.default = 127.0.0.1:{port}\n\
                 mqtt.allow_anonymous = true\nloopback_users = none\n",
                port = self.port
            ),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_mqtt].\n").unwrap();
        let mut command = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        command
            // The Erlang cookie lives in $HOME.
            .env("HOME", dir)
            .env(
                "RABBITMQ_NODENAME",
                format!("cairn-test-{}@localhost", self.port),
            )
            .env("RABBITMQ_NODE_PORT", amqp.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            // `exec erl` instead of a shell that forwards signals: the child is the node.
            .env("RUNNING_UNDER_SYSTEMD", "1");
        command
    }

    fn nats(&self, dir: &Path) -> Command {
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{client}\nserver_name: cairn_test_{port}\n\
                 jetstream {{ store_dir: \"{dir}/jetstream\" }}\nmqtt {{ listen: 127.0.0.1:{port} }}\n",
                client = self.other_ports[0],
                port = self.port,
                dir = dir.display()
            ),
        )
        .unwrap();
        let mut command = Command::new("nats-server");
        command
            .arg("-c")
            .arg(conf)
            .arg("--log")
            .arg(dir.join("nats.log"));
        command
    }

    /// Stops the broker abruptly for its clients (sockets closed, nothing said) while the
    /// broker itself saves what it acknowledged: SIGTERM, not SIGKILL, so that a lost message
    /// can only be Cairn's fault.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            child.wait().unwrap();
            wait_for_port_within(self.port, false, self.kind.patience());
        }
    }

    /// The broker's log.
    pub fn log(&self) -> String {
        let file = match self.kind {
            BrokerKind::Mosquitto => "mosquitto.log".to_string(),
            BrokerKind::RabbitMq => format!("log/cairn-test-{}@localhost.log", self.port),
            BrokerKind::Nats => "nats.log".to_string(),
        };
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }

    /// Publishes one message at QoS 1 with `mosquitto_pub`, as an independent client would.
    pub fn publish(&self, topic: &str, payload: &str, retain: bool) {
        let mut pub_ = Command::new("mosquitto_pub");
        pub_.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q", "1"])
            .args(["-t", topic, "-m", payload]);
        if retain {
            pub_.arg("-r");
        }
        let status = pub_.status().expect("mosquitto_pub is installed");
        assert!(status.success(), "mosquitto_pub {topic} {payload}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
