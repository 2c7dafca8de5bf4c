use crated_errdefs::{HasKind, Kind};

/// What can go wrong applying or computing a layer, each with containerd's class.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The layer is malformed or tries to write outside its root: the path is named.
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    #[error("unsupported diff media type: {0}: not implemented")]
    UnsupportedMediaType(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl DiffError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiffError {
        let context = context.into();
        move |source| DiffError::Io { context, source }
    }

    pub(crate) fn invalid(path: &str, why: &str) -> DiffError {
        DiffError::InvalidArgument(format!("{path:?}: {why}"))
    }
}

impl From<rustix::io::Errno> for DiffError {
    fn from(e: rustix::io::Errno) -> Self {
        DiffError::Io {
            context: "layer".into(),
            source: e.into(),
        }
    }
}

impl HasKind for DiffError {
    fn kind(&self) -> Kind {
        match self {
            DiffError::InvalidArgument(_) => Kind::InvalidArgument,
            DiffError::UnsupportedMediaType(_) => Kind::NotImplemented,
            // A reader that failed the digest check says so through its io error's text; the
            // class stays unknown unless the source carried one.
            DiffError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::InvalidData => Kind::InvalidArgument,
                std::io::ErrorKind::NotFound => Kind::NotFound,
                _ => Kind::Unknown,
            },
        }
    }
}
