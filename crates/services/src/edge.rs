//! The service edge: library errors become gRPC statuses here, and nowhere else.

use crated_errdefs::{HasKind, Kind};
use tonic::{Code, Status};

/// What server-streaming calls return.
pub type BoxStream<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The gRPC header carrying the namespace of a call.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The gRPC header carrying the lease new resources are put under.
pub const LEASE_HEADER: &str = "containerd-lease";

pub fn code(kind: Kind) -> Code {
    match kind {
        Kind::Unknown => Code::Unknown,
        Kind::InvalidArgument => Code::InvalidArgument,
        Kind::NotFound => Code::NotFound,
        Kind::AlreadyExists => Code::AlreadyExists,
        Kind::FailedPrecondition => Code::FailedPrecondition,
        Kind::Unavailable => Code::Unavailable,
        Kind::NotImplemented => Code::Unimplemented,
        Kind::Canceled => Code::Cancelled,
        Kind::DeadlineExceeded => Code::DeadlineExceeded,
        Kind::ResourceExhausted => Code::ResourceExhausted,
        Kind::OutOfRange => Code::OutOfRange,
        Kind::DataLoss => Code::DataLoss,
        Kind::Aborted => Code::Aborted,
        Kind::Internal => Code::Internal,
    }
}

/// A library error as containerd's `errdefs.ToGRPC` would send it: its code, and its text.
pub fn status<E: HasKind + ?Sized>(err: &E) -> Status {
    Status::new(code(err.kind()), err.to_string())
}

/// A filter that does not parse is InvalidArgument, with containerd's text shape.
pub fn filter_status(err: &crated_filters::ParseError) -> Status {
    Status::invalid_argument(format!("filters: parse error: {err}: invalid argument"))
}

/// The namespace a call is for. As containerd's `NamespaceRequired`: a call without one is
/// FailedPrecondition, an invalid one InvalidArgument.
pub fn namespace<T>(request: &tonic::Request<T>) -> Result<String, Status> {
    caller_namespace(request)?
        .ok_or_else(|| Status::failed_precondition("namespace is required: failed precondition"))
}

/// The namespace the caller sent, if any (for services that need none).
pub fn caller_namespace<T>(request: &tonic::Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = request.metadata().get(NAMESPACE_HEADER) else {
        return Ok(None);
    };
    let ns = value.to_str().map_err(|_| {
        Status::invalid_argument("namespace header is not valid text: invalid argument")
    })?;
    if ns.is_empty() {
        return Ok(None);
    }
    crated_metadata::validate::identifier(ns)
        .map_err(|e| Status::invalid_argument(format!("namespace validation: {e}")))?;
    Ok(Some(ns.to_owned()))
}

/// Runs blocking store work off the async threads.
pub async fn blocking<T, E, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: HasKind + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| status(&e)),
        Err(join) => Err(Status::internal(format!("blocking task failed: {join}"))),
    }
}

/// The lease a call's new resources go under, if the client named one.
pub fn lease<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .metadata()
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// A record timestamp (nanoseconds since the epoch) as protobuf's.
pub fn timestamp(nanos: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    }
}

/// Turns filter strings into one filter (none: everything matches).
pub fn filters(inputs: &[String]) -> Result<crated_filters::Filter, Status> {
    crated_filters::parse_all(inputs).map_err(|e| filter_status(&e))
}
