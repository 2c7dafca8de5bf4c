//! A small libcni: loads network configurations as containerd's CRI does (go-cni over
//! libcni), makes and removes the named network namespaces pods live in, and will run the
//! plugins of the CNI specification against them. No maintained Rust crate does the runtime
//! side of CNI.

pub mod conf;
mod netns;

use std::path::PathBuf;

pub use conf::{load_dir, NetworkList};
use crated_errdefs::{HasKind, Kind};
pub use netns::{create_netns, remove_netns, run_in_netns, DEFAULT_NETNS_DIR};

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid CNI config {path}: {why}")]
    InvalidConfig { path: PathBuf, why: String },
    #[error("network namespace {path}: {op}: {source}")]
    Netns {
        path: PathBuf,
        op: &'static str,
        source: nix::Error,
    },
}

impl HasKind for CniError {
    fn kind(&self) -> Kind {
        match self {
            CniError::Io { .. } | CniError::Netns { .. } => Kind::Unknown,
            CniError::InvalidConfig { .. } => Kind::InvalidArgument,
        }
    }
}
