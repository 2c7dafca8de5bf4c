//! Library errors become gRPC statuses here, and nowhere else: each error kind has its
//! code, and blocking store work returns its error as a status.

use crated_errdefs::{HasKind, Kind};
use tonic::{Code, Status};

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

/// Turns filter strings into one filter (none: everything matches).
pub fn filters(inputs: &[String]) -> Result<crated_filters::Filter, Status> {
    crated_filters::parse_all(inputs).map_err(|e| filter_status(&e))
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
