//! A lazily made, self-healing gRPC channel to a proxy plugin's socket, with deadlines.

use std::future::Future;
use std::time::Duration;

use crated_errdefs::Kind;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long dialing the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The deadline of each call, and of each message of a stream.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The deadline of a commit, which checks and syncs a whole blob on the other side.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct Connection {
    name: String,
    address: String,
    /// `address` without its optional `unix://` scheme.
    path: String,
    channel: Channel,
}

impl Connection {
    /// Nothing is dialed until the first call; a broken connection is dialed again by the
    /// next call, so a restarted plugin is picked up.
    pub fn new(name: &str, address: &str) -> Connection {
        let path = address
            .strip_prefix("unix://")
            .unwrap_or(address)
            .to_owned();
        let dial = path.clone();
        let channel =
            Endpoint::from_static("http://[::]:0")
                .connect_timeout(CONNECT_TIMEOUT)
                .initial_connection_window_size(8 << 20)
                .initial_stream_window_size(4 << 20)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = dial.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }));
        Connection {
            name: name.to_owned(),
            address: address.to_owned(),
            path,
            channel,
        }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Whether the socket takes connections now.
    pub async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&self.path)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "proxy plugin {:?} unavailable: cannot connect to {}: {e}",
                self.name, self.address
            )),
            Err(_) => Err(format!(
                "proxy plugin {:?} unavailable: connecting to {} timed out",
                self.name, self.address
            )),
        }
    }

    /// Runs one call (or one step of a stream) under the deadline; a status the plugin sent
    /// keeps its class, a dead socket is Unavailable naming the plugin.
    pub async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, (Kind, String)> {
        self.call_within(CALL_TIMEOUT, what, call).await
    }

    /// [`Connection::call`] with another deadline.
    pub async fn call_within<T>(
        &self,
        deadline: Duration,
        what: &str,
        call: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, (Kind, String)> {
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(status)) => Err(self.classify(what, &status)),
            Err(_) => Err((
                Kind::DeadlineExceeded,
                format!(
                    "proxy plugin {:?}: {what} got no answer within {deadline:?}",
                    self.name
                ),
            )),
        }
    }

    fn classify(&self, what: &str, status: &tonic::Status) -> (Kind, String) {
        let kind = kind_of(status.code());
        if kind == Kind::Unavailable
            || kind == Kind::Unknown && status.message().contains("transport")
        {
            return (
                Kind::Unavailable,
                format!(
                    "proxy plugin {:?} at {}: {what}: {}",
                    self.name,
                    self.address,
                    status.message()
                ),
            );
        }
        (kind, status.message().to_owned())
    }
}

/// The class of a gRPC status, as containerd's `errdefs.FromGRPC` reads it.
pub fn kind_of(code: tonic::Code) -> Kind {
    use tonic::Code;
    match code {
        Code::InvalidArgument => Kind::InvalidArgument,
        Code::NotFound => Kind::NotFound,
        Code::AlreadyExists => Kind::AlreadyExists,
        Code::FailedPrecondition => Kind::FailedPrecondition,
        Code::Unavailable => Kind::Unavailable,
        Code::Unimplemented => Kind::NotImplemented,
        Code::Cancelled => Kind::Canceled,
        Code::DeadlineExceeded => Kind::DeadlineExceeded,
        Code::ResourceExhausted => Kind::ResourceExhausted,
        Code::OutOfRange => Kind::OutOfRange,
        Code::DataLoss => Kind::DataLoss,
        _ => Kind::Unknown,
    }
}
