//! The error of a transfer: what failed, with containerd's error kind.

use std::sync::Arc;

use crated_diff::DiffError;
use crated_errdefs::{HasKind, Kind};
use crated_images::ImageError;
use crated_metadata::{ContentStoreError, MetadataError, ScopedSnapshotError};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Content(#[from] ContentStoreError),
    #[error(transparent)]
    Snapshot(#[from] ScopedSnapshotError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Diff(#[from] DiffError),
    /// A failure of a download that more than one waiter sees.
    #[error(transparent)]
    Shared(Arc<TransferError>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Work given up because other work of the same pull failed.
    #[error("{0}")]
    Aborted(String),
    /// A task of the pull that panicked.
    #[error("{0}")]
    Internal(String),
}

impl HasKind for TransferError {
    fn kind(&self) -> Kind {
        match self {
            TransferError::Image(e) => e.kind(),
            TransferError::Content(e) => e.kind(),
            TransferError::Snapshot(e) => e.kind(),
            TransferError::Metadata(e) => e.kind(),
            TransferError::Diff(e) => e.kind(),
            TransferError::Shared(e) => e.kind(),
            TransferError::NotFound(_) => Kind::NotFound,
            TransferError::InvalidArgument(_) => Kind::InvalidArgument,
            TransferError::FailedPrecondition(_) => Kind::FailedPrecondition,
            TransferError::Aborted(_) => Kind::Aborted,
            TransferError::Internal(_) => Kind::Internal,
        }
    }
}

pub type Result<T> = std::result::Result<T, TransferError>;
