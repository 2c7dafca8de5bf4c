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
    /// The text carries the whole chain of causes (a refused certificate is two levels
    /// below reqwest's "error sending request"), as containerd's wrapped errors do.
    #[error("{context}: {}", causes(cause))]
    Http {
        context: String,
        cause: reqwest::Error,
    },
}

fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let line = cause.to_string();
        // Layers often repeat the message below them.
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        next = cause.source();
    }
    text
}

impl ImageError {
    pub(crate) fn http(context: impl Into<String>) -> impl FnOnce(reqwest::Error) -> ImageError {
        let context = context.into();
        move |cause| ImageError::Http { context, cause }
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
