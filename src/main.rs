//! The `cairn` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cairn::config::Config;
use cairn::{gateway, logging, shutdown, store};
use clap::{Parser, Subcommand};

/// Cairn: reads field devices, keeps every reading until the broker has it, shows it live on site.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
        Command::Check(ConfigArg { config }) => match load(&config) {
            Ok(c) => {
                let n = c.devices.len();
                let devices = if n == 1 { "device" } else { "devices" };
                println!(
                    "{}: ok ({n} {devices}, gateway `{}`)",
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
