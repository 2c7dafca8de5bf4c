//! The error kinds containerd's API distinguishes (its `errdefs`). Library errors say which kind
//! they are through [`HasKind`]; the service edge maps a kind to a gRPC code, once.

use std::fmt;

/// containerd's error classes, each of which maps to one gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Unknown,
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unavailable,
    NotImplemented,
    Canceled,
    DeadlineExceeded,
    ResourceExhausted,
    OutOfRange,
    DataLoss,
    /// An operation given up because another part of it failed.
    Aborted,
    /// A failure of the daemon itself, such as a task that panicked.
    Internal,
}

impl Kind {
    /// The text containerd's errdefs use for the class (`not found`, `already exists`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unknown => "unknown",
            Kind::InvalidArgument => "invalid argument",
            Kind::NotFound => "not found",
            Kind::AlreadyExists => "already exists",
            Kind::FailedPrecondition => "failed precondition",
            Kind::Unavailable => "unavailable",
            Kind::NotImplemented => "not implemented",
            Kind::Canceled => "context canceled",
            Kind::DeadlineExceeded => "context deadline exceeded",
            Kind::ResourceExhausted => "resource exhausted",
            Kind::OutOfRange => "out of range",
            Kind::DataLoss => "data loss",
            Kind::Aborted => "aborted",
            Kind::Internal => "internal",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every library error so the service edge can choose the status code.
pub trait HasKind: std::error::Error {
    fn kind(&self) -> Kind;
}
