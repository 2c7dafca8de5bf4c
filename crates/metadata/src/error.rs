use crated_errdefs::{HasKind, Kind};

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
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
    #[error("metadata database: {0}")]
    Database(String),
}

impl HasKind for MetadataError {
    fn kind(&self) -> Kind {
        match self {
            MetadataError::NotFound(_) => Kind::NotFound,
            MetadataError::AlreadyExists(_) => Kind::AlreadyExists,
            MetadataError::InvalidArgument(_) => Kind::InvalidArgument,
            MetadataError::FailedPrecondition(_) => Kind::FailedPrecondition,
            MetadataError::NotImplemented(_) => Kind::NotImplemented,
            MetadataError::Database(_) => Kind::Unknown,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for MetadataError {
            fn from(e: $t) -> Self {
                MetadataError::Database(e.to_string())
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
