//! A small libcni and go-cni: loads network configurations as containerd's CRI does, runs the
//! plugins of the CNI specification against a pod's network namespace (ADD, DEL, CHECK,
//! VERSION), keeps libcni's result cache, and makes and removes the named network namespaces
//! pods live in. No maintained Rust crate does the runtime side of CNI.

mod cache;
mod chain;
pub mod conf;
mod exec;
mod netns;
mod network;
mod result;
#[cfg(test)]
mod testing;

use std::path::PathBuf;
use std::time::Duration;

pub use cache::DEFAULT_CACHE_DIR;
pub use conf::{load_dir, NetworkList};
use crated_errdefs::{HasKind, Kind};
pub use netns::{create_netns, remove_netns, run_in_netns, DEFAULT_NETNS_DIR};
pub use network::{
    BandWidth, Cni, CniOptions, DnsConfig, InterfaceConfig, InterfaceIp, IpPreference,
    NetworkResult, PodNetworkArgs, PortMapping, SetupResult,
};
pub use result::{CniResult, Dns, Interface, IpConfig, IpNet, Route};

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid CNI config {path}: {why}")]
    InvalidConfig { path: PathBuf, why: String },
    /// No network besides loopback is configured yet (go-cni's wording, which the CRI shows).
    #[error("cni plugin not initialized")]
    NotInitialized,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("failed to find plugin {plugin:?} in path {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    /// The error a plugin reported (`{code,msg,details}` on its stdout), or what its exit
    /// said when it printed none.
    #[error("{msg}{}", details_suffix(.details))]
    PluginFailed {
        code: u32,
        msg: String,
        details: String,
    },
    #[error("running {path}: {source}")]
    Exec {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} did not finish within {after:?} and was killed")]
    Timeout { path: PathBuf, after: Duration },
    #[error("invalid CNI result: {why}")]
    InvalidResult { why: String },
    /// Which plugin of a network failed, and in which operation (libcni's wording).
    #[error("plugin {plugin} failed ({op}): {source}")]
    Plugin {
        plugin: String,
        op: &'static str,
        source: Box<CniError>,
    },
    #[error("failed to find network info for sandbox {id:?}: {if_name} has no IP address")]
    NoPodIp { id: String, if_name: String },
    #[error("network namespace {path}: {op}: {source}")]
    Netns {
        path: PathBuf,
        op: &'static str,
        source: nix::Error,
    },
    #[error("CNI cache {path}: {why}")]
    Cache { path: PathBuf, why: String },
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!("; {details}")
    }
}

impl HasKind for CniError {
    fn kind(&self) -> Kind {
        match self {
            CniError::Io { .. }
            | CniError::PluginFailed { .. }
            | CniError::Exec { .. }
            | CniError::InvalidResult { .. }
            | CniError::NoPodIp { .. }
            | CniError::Netns { .. }
            | CniError::Cache { .. } => Kind::Unknown,
            CniError::InvalidConfig { .. } | CniError::InvalidArgument(_) => Kind::InvalidArgument,
            CniError::NotInitialized => Kind::FailedPrecondition,
            CniError::PluginNotFound { .. } => Kind::NotFound,
            CniError::Timeout { .. } => Kind::DeadlineExceeded,
            CniError::Plugin { source, .. } => source.kind(),
        }
    }
}
