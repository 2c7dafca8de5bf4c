//! `crated-content SOCKET ROOT`: crated's local content store under ROOT, served bare (no
//! namespaces or labels; the daemon using it keeps those) over containerd's content gRPC API on
//! the unix socket SOCKET. Configure it in crated or containerd as
//! `[proxy_plugins.NAME] type = "content" address = "SOCKET"`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use crated_content::{ContentStore, LocalStore};
use crated_services::content::BareContentServer;
use crated_services::socket::serve as serve_unix;

#[derive(Parser, Debug)]
#[command(
    name = "crated-content",
    version,
    about = "Serve a content store over containerd's content API"
)]
struct Cli {
    /// Unix socket to listen on (created; a stale one is replaced).
    socket: PathBuf,
    /// Directory of the store (blobs/ and ingest/, containerd's layout).
    root: PathBuf,
    /// Log level: trace, debug, info, warn, error.
    #[arg(long, default_value = "info")]
    log_level: String,
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let root = cli.root.clone();
    let store = tokio::task::spawn_blocking(move || LocalStore::open(&root))
        .await?
        .with_context(|| format!("opening the store at {}", cli.root.display()))?;
    let store: Arc<dyn ContentStore> = Arc::new(store);
    tracing::info!(socket = %cli.socket.display(), root = %cli.root.display(), "serving content");
    let router = crated_services::socket::bulk_server()
        .add_service(BareContentServer::new(store).into_service());
    Ok(serve_unix(router, &cli.socket).await?)
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
