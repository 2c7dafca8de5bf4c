use crated_errdefs::{HasKind, Kind};

/// A snapshotter's errors, each with containerd's class; the text ends with the class name
/// as containerd's wrapped errdefs errors do.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    #[error("{0}: not implemented")]
    NotImplemented(String),
    /// An error from elsewhere (a remote snapshotter), with its class.
    #[error("{message}")]
    Other { kind: Kind, message: String },
    #[error("snapshot metadata: {0}")]
    Database(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl SnapshotError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotError {
        let context = context.into();
        move |source| SnapshotError::Io { context, source }
    }
}

impl HasKind for SnapshotError {
    fn kind(&self) -> Kind {
        match self {
            SnapshotError::NotFound(_) => Kind::NotFound,
            SnapshotError::AlreadyExists(_) => Kind::AlreadyExists,
            SnapshotError::InvalidArgument(_) => Kind::InvalidArgument,
            SnapshotError::FailedPrecondition(_) => Kind::FailedPrecondition,
            SnapshotError::NotImplemented(_) => Kind::NotImplemented,
            SnapshotError::Other { kind, .. } => *kind,
            SnapshotError::Database(_) | SnapshotError::Io { .. } => Kind::Unknown,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for SnapshotError {
            fn from(e: $t) -> Self {
                SnapshotError::Database(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);
