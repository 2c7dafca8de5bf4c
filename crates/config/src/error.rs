use std::fmt;
use std::path::PathBuf;

/// Where in which file a config mistake is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The key written on that line, when there is one.
    pub key: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, " (key `{key}`)")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Syntax errors, unknown keys and wrong types, wherever they are found.
    #[error("config {location}: {message}")]
    Invalid { location: Location, message: String },
    /// A mistake that has no single line (an import glob, a missing file).
    #[error("config {}: {message}", file.display())]
    File { file: PathBuf, message: String },
}

impl ConfigError {
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Invalid { location, .. } => Some(location),
            _ => None,
        }
    }
}
