//! containerd's metadata store (plugin `io.containerd.metadata.v1.bolt`), kept in redb at
//! `<root>/io.containerd.metadata.v1.bolt/meta.db`: namespaces and their labels now, and every
//! namespaced record (images, containers, leases, content and snapshot references) as they come.
//! Calls are blocking; async callers run them on a blocking thread.

mod db;
mod error;
mod namespaces;
pub mod validate;

pub use db::{MetadataStore, SCHEMA_VERSION};
pub use error::MetadataError;
pub use namespaces::Namespace;
