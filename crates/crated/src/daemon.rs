//! Start-up, serving and shutdown.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use crated_config::Config;
use crated_plugin::{graph, init_all, types, Environment, Registration, Shared, Status};
use crated_services::GrpcService;

use crate::{lock, plugins, Cli, DEFAULT_CONFIG};

type Decoded = HashMap<String, Box<dyn Any + Send + Sync>>;

/// Reads the config (file, imports, flags), checks every plugin name and decodes every plugin
/// section, so that any mistake stops the daemon before a single plugin starts.
pub fn load_config(cli: &Cli) -> anyhow::Result<(Config, Vec<Registration>, Decoded)> {
    let mut config = match &cli.config {
        Some(path) => crated_config::load(path, cli.lenient)?,
        None if Path::new(DEFAULT_CONFIG).exists() => {
            crated_config::load(Path::new(DEFAULT_CONFIG), cli.lenient)?
        }
        None => Config::default(),
    };
    if let Some(root) = &cli.root {
        config.root = root.clone();
    }
    if let Some(state) = &cli.state {
        config.state = state.clone();
    }
    if let Some(address) = &cli.address {
        config.grpc.address = address.clone();
    }
    if let Some(level) = &cli.log_level {
        config.debug.level = level.clone();
    }
    let mut regs = plugins::registrations();
    config.resolve_plugins(&plugins::known(&regs), cli.lenient)?;
    let mut decoded = HashMap::new();
    for reg in &regs {
        if let Some(value) = reg.decode_config(config.plugins.get(&reg.uri()))? {
            decoded.insert(reg.uri(), value);
        }
    }
    for (name, proxy) in &config.proxy_plugins {
        if !matches!(proxy.plugin_type.as_str(), "snapshot" | "content" | "diff") {
            bail!(
                "proxy_plugins.{name}: unsupported type {:?} (snapshot, content or diff)",
                proxy.plugin_type
            );
        }
        if proxy.address.is_empty() {
            bail!("proxy_plugins.{name}: address is required");
        }
    }
    // After the built-in plugins, as containerd registers them: a store that is first of its
    // type (the local content store) is the one the metadata store wraps unless disabled.
    let (proxies, unserved) = crated_proxy::registrations(&config.proxy_plugins);
    regs.extend(proxies);
    for name in unserved {
        tracing::warn!(
            "proxy_plugins.{name}: proxy plugins of type {:?} are not served by this version",
            config.proxy_plugins[&name].plugin_type
        );
    }
    Ok((config, regs, decoded))
}

type LevelHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

fn filter(level: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    let level = if level.is_empty() { "info" } else { level };
    tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("invalid log level {level:?}"))
}

/// Logging starts before the config is read (so config warnings are seen); the config's
/// `[debug] level` is applied once known.
fn init_logging(level: &str) -> anyhow::Result<LevelHandle> {
    use tracing_subscriber::prelude::*;
    let (layer, handle) = tracing_subscriber::reload::Layer::new(filter(level)?);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init();
    Ok(handle)
}

pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let started = Instant::now();
    let logging = init_logging(cli.log_level.as_deref().unwrap_or("info"))?;
    let (config, regs, decoded) = load_config(cli)?;
    logging.reload(filter(&config.debug.level)?)?;
    let ordered = graph(regs, &config.disabled_plugins)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // tokio reads TOKIO_WORKER_THREADS itself when no count is set.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(async_workers());
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, ordered, decoded, started))
}

/// Threads for async work: half the cores, at least one. The async side only moves requests
/// and streams; what blocks or computes at length (unpacking, copies, digests, flushes of
/// long transactions) runs on the blocking pool, which the other cores are left to. Idle
/// workers woken to look for work would cost each call more than they help.
fn async_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Creates a daemon directory with `mode` when missing; an existing one keeps its mode.
fn make_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// The root is 0700, as the reference containerd's: nothing under it is any other user's
/// business. Set at every start, so a root made beforehand gets it too.
fn make_root(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    make_dir(path, 0o700)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// How long open calls (streams) may run on after SIGTERM before they are cut.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Keys containerd has that this version reads but does not act on yet: said, not ignored silently.
fn warn_unapplied(config: &Config) {
    let unapplied = [
        ("oom_score", config.oom_score != 0),
        ("debug.format", !config.debug.format.is_empty()),
        ("debug.address", !config.debug.address.is_empty()),
        ("grpc.tcp_address", !config.grpc.tcp_address.is_empty()),
        ("cgroup.path", !config.cgroup.path.is_empty()),
    ];
    for (key, set) in unapplied {
        if set {
            tracing::warn!("config key {key} is set but not applied by this version of crated");
        }
    }
}

/// The log the metadata store and the snapshotters' stores share, under the root.
const JOURNAL_FILE: &str = "stores.wal";

async fn serve(
    config: Config,
    ordered: Vec<Registration>,
    decoded: Decoded,
    started: Instant,
) -> anyhow::Result<()> {
    let shutdown = crated_services::socket::shutdown_signal()?;
    warn_unapplied(&config);
    let root = PathBuf::from(&config.root);
    let state = PathBuf::from(&config.state);
    make_root(&root)?;
    let _lock = lock::lock_root(&root)?;
    // 0711, as containerd's: remapped container roots reach their bundles through it.
    make_dir(&state, 0o711)?;
    let address = PathBuf::from(&config.grpc.address);
    let ttrpc_address = if config.ttrpc.address.is_empty() {
        format!("{}.ttrpc", config.grpc.address)
    } else {
        config.ttrpc.address.clone()
    };
    // Opened (and replayed) before any store that writes to it.
    let journal_path = root.join(JOURNAL_FILE);
    let journal = tokio::task::spawn_blocking(move || crated_wal::Journal::open(&journal_path))
        .await?
        .with_context(|| format!("opening {}", root.join(JOURNAL_FILE).display()))?;
    let mut shared = Shared::default();
    shared.insert(journal);
    let env = Environment {
        root: &root,
        state: &state,
        grpc_address: &config.grpc.address,
        ttrpc_address: &ttrpc_address,
        shared,
    };
    let set = init_all(ordered, decoded, config.disabled_plugins.clone(), &env).await;

    for required in &config.required_plugins {
        match set.get(required).map(|r| r.status.clone()) {
            Some(Status::Ok) => {}
            Some(status) => {
                set.close_all().await;
                bail!(
                    "required plugin {required} is not ok: {}",
                    status.error_message().unwrap_or_default()
                );
            }
            None => {
                set.close_all().await;
                bail!("required plugin {required} not included");
            }
        }
    }

    let signalled = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = signalled.clone();
    let services = set.instances::<GrpcService>(types::GRPC);
    let mut routes = tonic::service::RoutesBuilder::default();
    let limits = crated_services::message_limits::MessageLimits::from_config(
        config.grpc.max_recv_message_size,
        config.grpc.max_send_message_size,
    );
    for (_, service) in &services {
        service.register(&mut routes, limits);
    }
    let listener =
        match crated_services::socket::bind_unix(&address, config.grpc.uid, config.grpc.gid) {
            Ok(l) => l,
            Err(e) => {
                set.close_all().await;
                return Err(e.into());
            }
        };
    // Shims call back on the ttrpc socket (events they forward).
    let mut ttrpc_services = crated_services::grpc::TtrpcServices::new();
    for (_, service) in &services {
        ttrpc_services.extend(service.ttrpc_services());
    }
    let ttrpc_path = PathBuf::from(ttrpc_address.trim_start_matches("unix://"));
    let mut ttrpc_server =
        match crated_services::socket::bind_unix(&ttrpc_path, config.grpc.uid, config.grpc.gid) {
            Ok(l) => ttrpc::asynchronous::Server::new()
                .add_listener(ttrpc::asynchronous::transport::Listener::from(l))
                .register_service(ttrpc_services),
            Err(e) => {
                let _ = std::fs::remove_file(&address);
                set.close_all().await;
                return Err(e.into());
            }
        };
    if let Err(e) = ttrpc_server.start().await {
        let _ = std::fs::remove_file(&address);
        let _ = std::fs::remove_file(&ttrpc_path);
        set.close_all().await;
        return Err(anyhow::anyhow!(
            "serving ttrpc on {}: {e}",
            ttrpc_path.display()
        ));
    }
    let metrics = if config.metrics.address.is_empty() {
        None
    } else {
        let monitors = set
            .instances::<crated_metrics::CgroupsMonitor>(types::MONITOR)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        match crate::metrics::serve(&config.metrics.address, monitors).await {
            Ok(task) => Some(task),
            Err(e) => {
                let _ = ttrpc_server.shutdown().await;
                let _ = std::fs::remove_file(&address);
                let _ = std::fs::remove_file(&ttrpc_path);
                set.close_all().await;
                return Err(e);
            }
        }
    };
    let server = crated_services::socket::bulk_server()
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(crated_services::socket::incoming(listener), async move {
            shutdown.await;
            notify.notify_one();
        });
    let mut server = tokio::spawn(server);
    for (_, service) in &services {
        service.serving().await;
    }
    tracing::info!(
        address = %address.display(),
        "crated successfully booted in {:.3}s",
        started.elapsed().as_secs_f64()
    );
    // Serve until a signal; then let open calls finish, within a deadline.
    let result = tokio::select! {
        result = &mut server => result,
        _ = async {
            signalled.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("open calls still running {SHUTDOWN_GRACE:?} after the signal; cutting them");
            server.abort();
            Ok(Ok(()))
        }
    };
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    let _ = ttrpc_server.shutdown().await;
    let _ = std::fs::remove_file(&address);
    let _ = std::fs::remove_file(&ttrpc_path);
    set.close_all().await;
    tracing::info!("crated stopped");
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("serving gRPC"),
        Err(e) => Err(e).context("gRPC server task"),
    }
}
