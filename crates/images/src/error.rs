use crated_errdefs::{HasKind, Kind};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: not implemented")]
    NotImplemented(String),
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    /// The registry refused the credentials, or asked for some and there were none.
    #[error("{0}: unauthorized")]
    Unauthorized(String),
    #[error("{0}: unavailable")]
    Unavailable(String),
    #[error("{context}: {source}")]
    Http {
        context: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ImageError {
    pub(crate) fn http(context: impl Into<String>) -> impl FnOnce(reqwest::Error) -> ImageError {
        let context = context.into();
        move |source| ImageError::Http { context, source }
    }
}

impl HasKind for ImageError {
    fn kind(&self) -> Kind {
        match self {
            ImageError::InvalidArgument(_) => Kind::InvalidArgument,
            ImageError::NotFound(_) => Kind::NotFound,
            ImageError::NotImplemented(_) => Kind::NotImplemented,
            ImageError::FailedPrecondition(_) | ImageError::Unauthorized(_) => {
                Kind::FailedPrecondition
            }
            ImageError::Unavailable(_) | ImageError::Http { .. } => Kind::Unavailable,
        }
    }
}
