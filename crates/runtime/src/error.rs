use crated_errdefs::{HasKind, Kind};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// A status the shim answered with, passed on with its code.
    #[error("{message}")]
    Shim { kind: Kind, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let what = what.into();
        move |source| RuntimeError::Io { what, source }
    }
}

impl HasKind for RuntimeError {
    fn kind(&self) -> Kind {
        match self {
            RuntimeError::NotFound(_) => Kind::NotFound,
            RuntimeError::AlreadyExists(_) => Kind::AlreadyExists,
            RuntimeError::InvalidArgument(_) => Kind::InvalidArgument,
            RuntimeError::FailedPrecondition(_) => Kind::FailedPrecondition,
            RuntimeError::Unavailable(_) => Kind::Unavailable,
            RuntimeError::Shim { kind, .. } => *kind,
            RuntimeError::Io { .. } => Kind::Unknown,
        }
    }
}

/// A ttrpc failure: a status keeps its code; a broken connection means the shim is gone.
impl From<ttrpc::Error> for RuntimeError {
    fn from(e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(status) => {
                let kind = match status.code.value() {
                    3 => Kind::InvalidArgument,
                    4 => Kind::DeadlineExceeded,
                    5 => Kind::NotFound,
                    6 => Kind::AlreadyExists,
                    9 => Kind::FailedPrecondition,
                    12 => Kind::NotImplemented,
                    14 => Kind::Unavailable,
                    1 => Kind::Canceled,
                    _ => Kind::Unknown,
                };
                RuntimeError::Shim {
                    kind,
                    message: status.message,
                }
            }
            other => RuntimeError::Unavailable(format!("ttrpc: closed: {other}")),
        }
    }
}
