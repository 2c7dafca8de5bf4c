//! A small libcni: loads network configurations as containerd's CRI does (go-cni over
//! libcni), and will run the plugins of the CNI specification against a pod's network
//! namespace. No maintained Rust crate does the runtime side of CNI.

pub mod conf;

use std::path::PathBuf;

pub use conf::{load_dir, NetworkList};
use crated_errdefs::{HasKind, Kind};

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid CNI config {path}: {why}")]
    InvalidConfig { path: PathBuf, why: String },
}

impl HasKind for CniError {
    fn kind(&self) -> Kind {
        match self {
            CniError::Io { .. } => Kind::Unknown,
            CniError::InvalidConfig { .. } => Kind::InvalidArgument,
        }
    }
}
