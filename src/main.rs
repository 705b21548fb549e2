//! The `cairn` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cairn::config::Config;
use cairn::{gateway, logging, shutdown, store};
use clap::{Parser, Subcommand};

/// Cairn: reads field devices, keeps every reading until the broker has it, shows it live on site.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, after_help = HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const HELP: &str = "\
Examples:
  cairn run --config config/demo.yaml      the demo: simulated devices, http://localhost:8080
  cairn check                              check /etc/cairn/cairn.yaml (or $CAIRN_CONFIG)
  cairn ports                              serial ports and their stable /dev/serial/by-id names
  cairn scan modbus --rtu /dev/ttyUSB0     which Modbus units answer, at which baud and parity
  cairn scan modbus --tcp 192.168.1.50:502 --units 1-32
  cairn tail pump-1                        one device's readings and errors, live (wiring check)
  cairn stats                              the outbox's backlog, drops and link bytes

Environment:
  CAIRN_CONFIG   the config file (default /etc/cairn/cairn.yaml)
  RUST_LOG       log detail: info (default), debug, or per module: cairn=debug,rumqttc=warn

Signals (cairn run):
  SIGHUP         re-read the config: devices whose settings changed restart, the rest keep
                 running (systemctl reload cairn); other sections need a restart
  SIGTERM/INT    commit what is buffered and leave the broker cleanly, within
                 gateway.shutdown_timeout

Docs: README.md, docs/install-raspberry-pi.md (/usr/share/doc/cairn/ when installed)";

/// The configuration file every command reads.
#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The configuration file.
    #[arg(
        short,
        long,
        env = "CAIRN_CONFIG",
        default_value = "/etc/cairn/cairn.yaml"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run(ConfigArg),
    /// Check a configuration file and print every problem found.
    Check(ConfigArg),
    /// Print the outbox's backlog and drop counters (works while the gateway runs).
    Stats(ConfigArg),
    /// Print the JSON Schema of the configuration file, for editors to complete and check it.
    Schema,
    /// Print the readings in MQTT payloads of either encoding, one JSON object per line.
    Decode(DecodeArgs),
    /// List serial ports with their stable names (/dev/serial/by-id) and USB identities.
    Ports {
        /// One JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Find devices: which Modbus units answer on a serial bus or behind a TCP gateway.
    #[command(subcommand)]
    Scan(ScanCommand),
    /// Run one device of the config by itself and print its readings and errors as they come
    /// (nothing goes to the outbox or the broker; stop the gateway first if it holds the port).
    Tail(TailArgs),
}

/// What `cairn scan` looks for.
#[derive(Debug, Subcommand)]
enum ScanCommand {
    /// Probe Modbus unit ids (reading holding register 0) and try the built-in profiles.
    #[command(
        after_help = "Examples:\n  cairn scan modbus --rtu /dev/serial/by-id/usb-FTDI_USB_RS485-if00-port0\n  cairn scan modbus --rtu /dev/ttyAMA0 --baud 9600 --parity even --units 1-247\n  cairn scan modbus --tcp 192.168.1.50:502 --units 1-32"
    )]
    Modbus(ScanModbusArgs),
}

/// What `cairn scan modbus` probes.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("link").required(true).args(["rtu", "tcp"]))]
struct ScanModbusArgs {
    /// A serial port (RS-485 adapter or HAT); the common baud rates and parities are tried.
    #[arg(long)]
    rtu: Option<PathBuf>,
    /// A Modbus TCP server or TCP-to-RTU gateway, host:port.
    #[arg(long)]
    tcp: Option<String>,
    /// Unit ids: 1-247, 1,2,5 or 7.
    #[arg(long, default_value = "1-247")]
    units: String,
    /// With --rtu: only these baud rates (repeat or separate with commas).
    #[arg(long, value_delimiter = ',')]
    baud: Vec<u32>,
    /// With --rtu: only these parities (none, even, odd).
    #[arg(long, value_delimiter = ',', value_parser = parse_parity)]
    parity: Vec<cairn_adapters::serial::Parity>,
    /// How long to wait for each unit's answer.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

fn parse_parity(text: &str) -> Result<cairn_adapters::serial::Parity, String> {
    use cairn_adapters::serial::Parity;
    match text {
        "none" | "n" | "N" => Ok(Parity::None),
        "even" | "e" | "E" => Ok(Parity::Even),
        "odd" | "o" | "O" => Ok(Parity::Odd),
        _ => Err(format!("`{text}`: none, even or odd")),
    }
}

/// What `cairn tail` follows.
#[derive(Debug, clap::Args)]
struct TailArgs {
    /// The device's name in the config.
    device: String,
    #[command(flatten)]
    config: ConfigArg,
    /// Stop after this many readings.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

/// What `cairn decode` reads.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cairn decode --mqtt mqtt://broker:1883 --topic 'cairn/site-1/#'\n  cairn decode --topic cairn/site-1/pump message.bin\n  mosquitto_sub -t 'cairn/#' -F '%t %x' | cairn decode --hex-lines"
)]
struct DecodeArgs {
    /// Files, each holding one message's payload as received.
    files: Vec<PathBuf>,
    /// Subscribe to this broker (`mqtt://host:port`) and decode what arrives.
    #[arg(long, conflicts_with = "files")]
    mqtt: Option<String>,
    /// With `--mqtt`, the topic filter; with files, the topic they came from (a `json`
    /// payload's device is its last level).
    #[arg(long)]
    topic: Option<String>,
    /// With `--mqtt`, stop after this many messages.
    #[arg(long)]
    count: Option<usize>,
    /// Read `topic hex-payload` lines on stdin, as `mosquitto_sub -F '%t %x'` prints them.
    #[arg(long, conflicts_with_all = ["files", "mqtt"])]
    hex_lines: bool,
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|report| {
        eprintln!("{report}");
        ExitCode::FAILURE
    })
}

/// The lanes as the running gateway reports them, or why they cannot be shown.
fn print_lanes(feed: &cairn::config::FeedConfig) {
    let Some(status) = cairn::feed::running_status(feed) else {
        println!("lanes: not shown (the gateway is not running, or its feed is off)");
        return;
    };
    for lane in cairn::uplink::lanes::Lane::ALL {
        let name = lane.as_str();
        let lane = &status["lanes"][name];
        if lane.is_null() {
            continue;
        }
        let mut line = format!(
            "lane {name}: {} readings, {} bytes",
            lane["readings"], lane["bytes"]
        );
        if let Some(oldest) = lane["oldest"].as_str() {
            line += &format!(", oldest {oldest}");
        }
        if let Some(eta) = lane["eta_s"].as_f64() {
            line += &format!(
                ", draining {:.1}/s, empty in {eta:.0} s",
                lane["drain_per_s"].as_f64().unwrap_or_default()
            );
        }
        println!("{line}");
    }
}

fn decode(runtime: &tokio::runtime::Runtime, args: DecodeArgs) -> ExitCode {
    if let Some(url) = &args.mqtt {
        let filter = args.topic.as_deref().unwrap_or("cairn/#");
        return match runtime.block_on(cairn::decode::subscribe(url, filter, args.count)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut stdout = std::io::stdout().lock();
    if args.hex_lines {
        let failed = cairn::decode::print_hex_lines(std::io::stdin().lock(), &mut stdout);
        return if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let mut failed = false;
    for file in &args.files {
        let outcome = std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|payload| {
                cairn::decode::print(args.topic.as_deref(), &payload, &mut stdout)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = outcome {
            eprintln!("error: {}: {e}", file.display());
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn scan_modbus(runtime: &tokio::runtime::Runtime, args: ScanModbusArgs) -> ExitCode {
    use cairn::tools::scan;
    let units = match scan::parse_units(&args.units) {
        Ok(units) if !units.is_empty() => units,
        Ok(_) => {
            eprintln!("error: --units names no unit");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: --units: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = match (args.rtu, args.tcp) {
        (Some(port), _) => scan::Target::rtu(port, args.baud, args.parity),
        (None, Some(endpoint)) if endpoint.contains(':') => scan::Target::Tcp(endpoint),
        (None, Some(host)) => scan::Target::Tcp(format!("{host}:502")),
        (None, None) => {
            eprintln!("error: give --rtu PORT or --tcp HOST:PORT");
            return ExitCode::FAILURE;
        }
    };
    let progress = |step: &str| eprintln!("scanning {step}");
    match runtime.block_on(scan::run(&target, &units, args.timeout, progress)) {
        Ok(outcome) => {
            print!("{}", scan::render(&outcome, &units));
            if outcome.found.is_empty() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tail(runtime: &tokio::runtime::Runtime, args: TailArgs) -> ExitCode {
    use cairn::tools::tail;
    // The adapter's own lines (why a port did not open, each restart) go to stderr.
    logging::init();
    let config = match load(&args.config.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cairn::feed::running_status(&config.feed).is_some() {
        eprintln!(
            "note: the gateway is running; it holds its serial ports and the LoRa UDP port. If \
             the device cannot open, stop it first (sudo systemctl stop cairn), or watch the \
             dashboard."
        );
    }
    let format = if args.json {
        tail::Format::Json
    } else {
        tail::Format::Text
    };
    let outcome = runtime.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        let mut stdout = std::io::stdout();
        tail::run(
            &config,
            &args.device,
            args.count,
            format,
            cancel,
            &mut stdout,
        )
        .await
    });
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Schema => {
            println!("{}", Config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Decode(args) => decode(&runtime, args),
        Command::Ports { json } => {
            let ports = cairn::tools::ports::list(Path::new("/sys"), Path::new("/dev"));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&ports).unwrap_or_default()
                );
            } else {
                print!("{}", cairn::tools::ports::render(&ports));
            }
            ExitCode::SUCCESS
        }
        Command::Scan(ScanCommand::Modbus(args)) => scan_modbus(&runtime, args),
        Command::Tail(args) => tail(&runtime, args),
        Command::Check(ConfigArg { config }) => match load(&config) {
            Ok(c) => {
                let n = c.devices.len();
                let devices = if n == 1 { "device" } else { "devices" };
                let broker = if c.mqtt.enabled {
                    let endpoint = c.mqtt.endpoint();
                    format!("broker {}:{}", endpoint.host, endpoint.port)
                } else {
                    "no broker: readings wait in the outbox".into()
                };
                println!(
                    "{}: ok ({n} {devices}, gateway `{}`, {broker})",
                    config.display(),
                    c.gateway.id
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Stats(ConfigArg { config }) => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let path = config.buffer.path_in(&config.gateway.data_dir);
            match runtime.block_on(store::inspect(&path)) {
                Ok((stats, oldest, counters)) => {
                    println!("outbox: {}", path.display());
                    println!("backlog: {} readings, {} bytes", stats.backlog, stats.bytes);
                    if let Some(ms) = oldest {
                        let ts =
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
                        println!("oldest unsent: {}", humantime::format_rfc3339_millis(ts));
                    }
                    println!("next seq: {}", stats.next_seq);
                    for (reason, n) in &stats.dropped {
                        println!("dropped ({}): {n}", reason.as_str());
                    }
                    let link = cairn::uplink::meter::Meter::resume(
                        cairn::uplink::meter::Meter::from_saved(&counters),
                    )
                    .counts();
                    println!("link up: {} bytes", link.total.up);
                    println!("link down: {} bytes", link.total.down);
                    println!("link connects: {}", link.connects);
                    println!("link today: {} bytes", link.day.bytes.total());
                    println!("link this month: {} bytes", link.month.bytes.total());
                    print_lanes(&config.feed);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(ConfigArg { config: path }) => {
            logging::init();
            let config = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let result = runtime.block_on(async {
                let shutdown = shutdown::on_signals()?;
                let hangups = shutdown::hangups()?;
                gateway::run(config, &path, shutdown, hangups).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "Cairn stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
