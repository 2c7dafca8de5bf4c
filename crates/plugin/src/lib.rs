//! The plugin system the daemon is made of: a [`Registration`] names a plugin's type and id, the
//! types it requires, its typed config and its init function; [`graph`] orders registrations so
//! that every plugin starts after what it requires; [`init_all`] runs each init with its own
//! [`InitContext`] and records the outcome (ok, skipped with a reason, failed with an error) in a
//! [`PluginSet`] that introspection reports.

mod context;
mod graph;
mod registration;
mod set;
mod shared;

pub use context::{make_dir, InitContext, LookupError, Meta};
pub use graph::{graph, GraphError};
pub use registration::{Instance, PluginError, Registration};
pub use set::{init_all, Environment, InitError, PluginRecord, PluginSet, Status};
pub use shared::Shared;

/// containerd's plugin types, as strings on the wire and in configs.
pub mod types {
    pub const CONTENT: &str = "io.containerd.content.v1";
    pub const SNAPSHOTTER: &str = "io.containerd.snapshotter.v1";
    pub const METADATA: &str = "io.containerd.metadata.v1";
    pub const DIFF: &str = "io.containerd.differ.v1";
    pub const GC: &str = "io.containerd.gc.v1";
    pub const SERVICE: &str = "io.containerd.service.v1";
    pub const GRPC: &str = "io.containerd.grpc.v1";
    pub const RUNTIME_V1: &str = "io.containerd.runtime.v1";
    pub const RUNTIME_V2: &str = "io.containerd.runtime.v2";
    pub const MONITOR: &str = "io.containerd.monitor.v1";
    pub const INTERNAL: &str = "io.containerd.internal.v1";
    pub const EVENT: &str = "io.containerd.event.v1";
    pub const LEASE: &str = "io.containerd.lease.v1";
    pub const TRANSFER: &str = "io.containerd.transfer.v1";
    pub const STREAMING: &str = "io.containerd.streaming.v1";
}
