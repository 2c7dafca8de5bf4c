//! `cratectl`: crated's client. Talks to any containerd-compatible socket (crated or containerd)
//! and prints what `ctr` prints.

mod client;
mod containers;
mod content;
mod events;
mod gc;
mod images;
mod inspect;
mod leases;
mod namespaces;
mod plugins;
mod run;
mod snapshots;
mod stdio;
mod tasks;
mod user;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cratectl",
    version,
    about = "Command-line client for crated (and containerd)"
)]
struct Cli {
    /// Address of the daemon's socket.
    #[arg(
        short,
        long,
        global = true,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/crated/crated.sock"
    )]
    address: String,
    /// Namespace to work in.
    #[arg(
        short,
        long,
        global = true,
        env = "CONTAINERD_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    /// Lease to put what this command creates under (the `containerd-lease` header).
    #[arg(long, global = true, env = "CONTAINERD_LEASE")]
    lease: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect the daemon's plugins.
    #[command(alias = "plugin")]
    Plugins {
        #[command(subcommand)]
        command: plugins::PluginsCommand,
    },
    /// Manage content (blobs).
    Content {
        #[command(subcommand)]
        command: content::ContentCommand,
    },
    /// Manage images: pull, list, remove, tag, mount.
    #[command(alias = "image", alias = "i")]
    Images {
        #[command(subcommand)]
        command: images::ImagesCommand,
    },
    /// Manage leases.
    #[command(alias = "lease")]
    Leases {
        #[command(subcommand)]
        command: leases::LeasesCommand,
    },
    /// Manage snapshots.
    #[command(alias = "snapshot")]
    Snapshots(snapshots::SnapshotsArgs),
    /// Run a garbage collection now and print what it removed and how long it held writers.
    Gc,
    /// Print client and server versions.
    Version,
    /// Run a container from an unpacked image; exits with the container's status.
    Run(run::RunArgs),
    /// Manage containers.
    #[command(alias = "container", alias = "c")]
    Containers {
        #[command(subcommand)]
        command: containers::ContainersCommand,
    },
    /// Manage tasks (a container's running process).
    #[command(alias = "task", alias = "t")]
    Tasks {
        #[command(subcommand)]
        command: tasks::TasksCommand,
    },
    /// Print the daemon's events as they happen (filters: topic, namespace).
    Events { filters: Vec<String> },
    /// Manage namespaces.
    #[command(alias = "namespace", alias = "ns")]
    Namespaces {
        #[command(subcommand)]
        command: namespaces::NamespacesCommand,
    },
}

/// A process's exit status becomes ours, as with ctr.
fn exit_with(status: i32) -> anyhow::Result<()> {
    if status != 0 {
        std::process::exit(status);
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let conn =
        client::Connection::connect(&cli.address, &cli.namespace, cli.lease.as_deref()).await?;
    match cli.command {
        Command::Plugins { command } => plugins::run(&conn, command).await,
        Command::Namespaces { command } => namespaces::run(&conn, command).await,
        Command::Content { command } => content::run(&conn, command).await,
        Command::Leases { command } => leases::run(&conn, command).await,
        Command::Images { command } => images::run(&conn, command).await,
        Command::Snapshots(args) => snapshots::run(&conn, args).await,
        Command::Gc => gc::run(&conn, gc::Show::Everything).await,
        Command::Containers { command } => containers::run(&conn, command).await,
        Command::Tasks { command } => exit_with(tasks::run(&conn, command).await?),
        Command::Events { filters } => events::run(&conn, filters).await,
        Command::Run(args) => exit_with(run::run(&conn, args).await?),
        Command::Version => {
            let mut version = conn.version();
            let server = version.version(conn.request(())).await?.into_inner();
            println!("Client:");
            println!("  Version:  {}", env!("CARGO_PKG_VERSION"));
            println!();
            println!("Server:");
            println!("  Version:  {}", server.version);
            println!("  Revision: {}", server.revision);
            if let Ok(info) = conn.introspection().server(conn.request(())).await {
                println!("  UUID: {}", info.into_inner().uuid);
            }
            Ok(())
        }
    }
}

fn main() -> std::process::ExitCode {
    // Output piped into `head` ends us quietly when the reader goes, as it does ctr (Rust
    // ignores SIGPIPE, and a print to the closed pipe would panic).
    // SAFETY: set before any thread starts; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cratectl: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A read of our stdin still blocked (a terminal with nothing typed) must not hold us.
    runtime.shutdown_background();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("cratectl: {}", status.message()),
                None => eprintln!("cratectl: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}
