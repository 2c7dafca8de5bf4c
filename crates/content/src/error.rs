use crated_errdefs::{HasKind, Kind};

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    /// A writer on the ref is in use.
    #[error("{0}: unavailable")]
    Unavailable(String),
    /// A write at an offset other than the current one.
    #[error("{0}")]
    OutOfRange(String),
    /// Stored data that no longer matches what was committed.
    #[error("{0}")]
    DataLoss(String),
    /// An error from elsewhere (a remote store), with its class.
    #[error("{message}")]
    Other { kind: Kind, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl ContentError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContentError {
        let context = context.into();
        move |source| ContentError::Io { context, source }
    }
}

impl HasKind for ContentError {
    fn kind(&self) -> Kind {
        match self {
            ContentError::NotFound(_) => Kind::NotFound,
            ContentError::AlreadyExists(_) => Kind::AlreadyExists,
            ContentError::InvalidArgument(_) => Kind::InvalidArgument,
            ContentError::FailedPrecondition(_) => Kind::FailedPrecondition,
            ContentError::Unavailable(_) => Kind::Unavailable,
            ContentError::OutOfRange(_) => Kind::OutOfRange,
            ContentError::DataLoss(_) => Kind::DataLoss,
            ContentError::Other { kind, .. } => *kind,
            ContentError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Kind::NotFound
            }
            ContentError::Io { .. } => Kind::Unknown,
        }
    }
}
