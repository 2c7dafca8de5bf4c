//! The CRI plugin's errors, each of containerd's kinds; the gRPC code is chosen once, at
//! the service edge.

use crated_errdefs::{HasKind, Kind};

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("invalid image: {0}")]
    InvalidImage(String),
    #[error(transparent)]
    Content(#[from] crated_content::ContentError),
    #[error(transparent)]
    Image(#[from] crated_images::ImageError),
    #[error(transparent)]
    Metadata(#[from] crated_metadata::MetadataError),
    #[error("{0}")]
    Internal(String),
}

impl HasKind for CriError {
    fn kind(&self) -> Kind {
        match self {
            CriError::InvalidArgument(_) => Kind::InvalidArgument,
            CriError::NotFound(_) => Kind::NotFound,
            CriError::AlreadyExists(_) => Kind::AlreadyExists,
            CriError::FailedPrecondition(_) => Kind::FailedPrecondition,
            CriError::InvalidImage(_) => Kind::FailedPrecondition,
            CriError::Content(e) => e.kind(),
            CriError::Image(e) => e.kind(),
            CriError::Metadata(e) => e.kind(),
            CriError::Internal(_) => Kind::Unknown,
        }
    }
}
