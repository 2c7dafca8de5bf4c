//! containerd's metadata store (plugin `io.containerd.metadata.v1.bolt`, [`registration`]),
//! kept in redb at `<root>/io.containerd.metadata.v1.bolt/meta.db`: namespaces and every
//! namespaced record (images, containers, leases, content and snapshot references). Over it,
//! content and snapshotters as a namespace sees them ([`content_store`], [`snapshotter`]).
//! Store calls are blocking; async callers run them on a blocking thread.

mod containers;
mod content;
pub mod content_store;
mod db;
mod error;
pub mod gc;
mod images;
mod ingests;
mod leases;
mod namespaces;
mod plugin;
mod snapshots;
pub mod snapshotter;
pub mod validate;

pub use containers::{AnyValue, ContainerRecord, RuntimeInfo};
pub use content::ContentRecord;
pub use content_store::{BlobIngest, ContentStoreError, NamespacedContentStore, NamespacedIngest};
pub use db::{Backend, BackendWrite, MetadataStore, Mutation, SweepLock, SCHEMA_VERSION};
pub use error::MetadataError;
pub use gc::{format_expire, Collection, Resource, LABEL_EXPIRE};
pub use images::{Descriptor, ImageRecord};
pub use ingests::{IngestRecord, INGEST_RESOURCE, UNLEASED_INGEST_LIFETIME_NANOS};
pub use leases::{Lease, LeaseResource};
pub use namespaces::Namespace;
pub use plugin::{registration, BoltConfig, SharingPolicy};
pub use snapshots::{snapshot_resource, NewSnapshotCheck, SnapshotRecord};
pub use snapshotter::{
    NamespacedSnapshotter, Scope, ScopedSnapshotError, ScopedSnapshotter, Unscoped,
};

/// Nanoseconds since the epoch, the timestamps records keep.
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
