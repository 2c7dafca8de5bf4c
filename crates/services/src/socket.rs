//! The unix socket a gRPC server listens on, made the same way by the daemon and by the
//! standalone plugin servers.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

use crate::message_limits::GrpcGoLimitStatus;
use crate::uds_authority::AuthorityRewriter;

type Layers = tower::layer::util::Stack<GrpcGoLimitStatus, tower::layer::util::Identity>;
/// The gRPC server every socket of ours is served by.
pub type Server = tonic::transport::Server<Layers>;
pub type Router = tonic::transport::server::Router<Layers>;

/// A gRPC server for bulk streams (content writes and reads move megabytes per message):
/// wide windows and large frames keep HTTP/2 bookkeeping off the hot path. A message over a
/// limit is answered as grpc-go answers it.
pub fn bulk_server() -> Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .layer(GrpcGoLimitStatus)
}

fn context(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Binds `address` (mode 0660, owned by `uid`:`gid` unless both are 0), creating its
/// directory, and removing a stale socket left by a process that died, but never one in use
/// and never a file that is not a socket.
pub fn bind_unix(address: &Path, uid: u32, gid: u32) -> io::Result<UnixListener> {
    if let Some(parent) = address.parent() {
        std::fs::create_dir_all(parent)
            .map_err(context(format!("creating {}", parent.display())))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(address) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", address.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(address).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", address.display()),
            ));
        }
        std::fs::remove_file(address)
            .map_err(context(format!("removing stale {}", address.display())))?;
    }
    let listener = UnixListener::bind(address)
        .map_err(context(format!("listening on {}", address.display())))?;
    let owned =
        std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660)).and_then(|_| {
            if uid != 0 || gid != 0 {
                std::os::unix::fs::chown(address, Some(uid), Some(gid))
            } else {
                Ok(())
            }
        });
    if let Err(e) = owned {
        let _ = std::fs::remove_file(address);
        return Err(context(format!(
            "setting owner and mode of {}",
            address.display()
        ))(e));
    }
    Ok(listener)
}

/// Installs the handlers at once (so a signal during start-up is not the default kill) and
/// resolves on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(context("installing the SIGTERM handler".into()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(context("installing the SIGINT handler".into()))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
            _ = int.recv() => tracing::info!("received SIGINT, shutting down"),
        }
    })
}

/// The connections of `listener`, each read through [`AuthorityRewriter`] so that clients
/// sending their socket's path as `:authority` (gRPC's C core) are served, as grpc-go serves
/// them.
pub fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = io::Result<AuthorityRewriter<tokio::net::UnixStream>>> {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        |accepted| accepted.map(AuthorityRewriter::new),
    )
}

/// Serves `router` on the unix socket `socket` (see [`bind_unix`]) until SIGTERM or SIGINT,
/// then removes the socket: the standalone plugin servers' whole life.
pub async fn serve(router: Router, socket: &Path) -> io::Result<()> {
    let listener = bind_unix(socket, 0, 0)?;
    let stop = shutdown_signal()?;
    let result = router
        .serve_with_incoming_shutdown(incoming(listener), stop)
        .await;
    let _ = std::fs::remove_file(socket);
    result.map_err(|e| io::Error::other(format!("serving gRPC: {e}")))
}
