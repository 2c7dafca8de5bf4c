//! `crated`: a containerd-compatible daemon. Reads containerd's config, starts every plugin in
//! dependency order, and serves containerd's gRPC API on a unix socket until SIGTERM/SIGINT.

mod configcmd;
mod daemon;
mod lock;
mod metrics;
mod plugins;
mod publish;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "crated",
    version,
    about = "A containerd-compatible container daemon"
)]
pub struct Cli {
    /// Config file (default /etc/crated/config.toml when it exists).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// gRPC socket address (overrides `[grpc] address`).
    #[arg(short, long, global = true)]
    address: Option<String>,
    /// Root directory for persistent data (overrides `root`).
    #[arg(long, global = true)]
    root: Option<String>,
    /// State directory for runtime data (overrides `state`).
    #[arg(long, global = true)]
    state: Option<String>,
    /// Log level: trace, debug, info, warn, error.
    #[arg(short, long, global = true)]
    log_level: Option<String>,
    /// Warn about unknown config keys and plugin names instead of refusing to start.
    #[arg(long, global = true)]
    lenient: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print or inspect the configuration.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Publish an event (a protobuf Any on stdin) to the daemon at --address: what shims run.
    Publish {
        /// Namespace to publish to.
        #[arg(long, default_value = "")]
        namespace: String,
        /// Topic of the event.
        #[arg(long, default_value = "")]
        topic: String,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print a complete default config, with every plugin's section.
    Default,
    /// Print the effective config (file, imports and flags merged).
    Dump,
}

pub const DEFAULT_CONFIG: &str = "/etc/crated/config.toml";

fn main() -> std::process::ExitCode {
    // Two malloc arenas instead of one per thread: a daemon that mostly waits keeps little
    // memory per thread, and on few cores contention for an arena is rare.
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Config {
            what: ConfigCommand::Default,
        }) => configcmd::print_default(),
        Some(Command::Config {
            what: ConfigCommand::Dump,
        }) => configcmd::print_dump(&cli),
        Some(Command::Publish { namespace, topic }) => {
            // Without --address: the default `[grpc] address`.
            let address = cli
                .address
                .clone()
                .unwrap_or_else(|| crated_config::Config::default().grpc.address);
            publish::run(&address, namespace, topic)
        }
        None => daemon::run(&cli),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crated: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
