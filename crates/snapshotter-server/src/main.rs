//! `crated-snapshotter SOCKET ROOT [--snapshotter native|overlayfs|btrfs]`: one of crated's
//! snapshotters under ROOT, served bare (keys as the caller gives them; the daemon using it
//! keeps namespaces and labels) over containerd's snapshots gRPC API on the unix socket
//! SOCKET. Configure it in crated or containerd as
//! `[proxy_plugins.NAME] type = "snapshot" address = "SOCKET"`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use crated_services::snapshots::SnapshotsService;
use crated_services::socket::serve as serve_unix;
use crated_snapshots::{open_snapshotter, Snapshotter, SnapshotterKind};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Which {
    Native,
    Overlayfs,
    Btrfs,
}

#[derive(Parser, Debug)]
#[command(
    name = "crated-snapshotter",
    version,
    about = "Serve a snapshotter over containerd's snapshots API"
)]
struct Cli {
    /// Unix socket to listen on (created; a stale one is replaced).
    socket: PathBuf,
    /// Directory of the snapshotter (its metadata.db and snapshots).
    root: PathBuf,
    /// Which snapshotter to serve.
    #[arg(long, value_enum, default_value = "overlayfs")]
    snapshotter: Which,
    /// Log level: trace, debug, info, warn, error.
    #[arg(long, default_value = "info")]
    log_level: String,
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let kind = match cli.snapshotter {
        Which::Native => SnapshotterKind::Native,
        Which::Overlayfs => SnapshotterKind::Overlayfs(Default::default()),
        Which::Btrfs => SnapshotterKind::Btrfs,
    };
    std::fs::create_dir_all(&cli.root)
        .with_context(|| format!("creating {}", cli.root.display()))?;
    let root = cli.root.clone();
    let snapshotter: Arc<dyn Snapshotter> =
        tokio::task::spawn_blocking(move || open_snapshotter(&root, kind, None))
            .await?
            .with_context(|| format!("opening the snapshotter at {}", cli.root.display()))?;
    tracing::info!(
        socket = %cli.socket.display(),
        root = %cli.root.display(),
        snapshotter = ?cli.snapshotter,
        "serving snapshots"
    );
    let router = crated_services::socket::bulk_server()
        .add_service(SnapshotsService::bare(snapshotter.clone()).into_service());
    let result = serve_unix(router, &cli.socket).await;
    let _ = snapshotter.close().await;
    Ok(result?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .with_context(|| format!("--log-level {:?}", cli.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(cli))
}
