//! The Snapshotter contract (containerd's `snapshots.Snapshotter`) and the snapshotter plugins
//! of type `io.containerd.snapshotter.v1`: `native`, `overlayfs`, `btrfs`, `devmapper`, `zfs`
//! and `aufs`, with containerd's ids, config keys, exports and skip rules. Keys here are the
//! backend's own: the metadata layer above namespaces them.

pub mod btrfs;
pub mod devmapper;
mod dirs;
mod error;
mod fsutil;
mod host;
mod local;
pub mod mount;
pub mod native;
pub mod overlayfs;
mod plugins;
pub mod storage;
pub mod wire;
pub mod zfs;

use std::collections::HashMap;

pub use error::SnapshotError;
pub use host::{filesystem_type, platform};
pub use local::{Driver, LocalSnapshotter};
pub use plugins::{open_snapshotter, registrations, SnapshotterKind};

/// Labels a snapshotter itself keeps and reports; the metadata layer hands it only these.
pub const INHERITED_LABEL_PREFIX: &str = "containerd.io/snapshot/";
pub const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// Set (to `true`) on an active snapshot by crated's own pull, the only writer of the snapshot
/// being crated's differ, which replaces entries rather than writing into them: a native
/// snapshot may then share its parent's files (hard links) instead of copying them. Clients
/// cannot set it (the snapshots service drops it from their labels): a client writing through
/// a snapshot it prepared would otherwise change the committed parent.
pub const LABEL_DIFFER_ONLY: &str = "crated.io/unpack.differ-only";

/// Whether labels mark an active snapshot as written by crated's differ alone
/// ([`LABEL_DIFFER_ONLY`]).
pub fn is_differ_only<'a>(mut labels: impl Iterator<Item = (&'a String, &'a String)>) -> bool {
    labels.any(|(k, v)| k == LABEL_DIFFER_ONLY && v == "true")
}

/// What a snapshot is: a read-only `View`, a writable `Active` one, or a `Committed` one that
/// can be a parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    /// containerd's name for the kind, as filters and `ctr` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A snapshot's information. Timestamps are nanoseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    /// The committed snapshot this one is built on; empty for none.
    pub parent: String,
    pub kind: Kind,
    pub labels: HashMap<String, String>,
    pub created: u64,
    pub updated: u64,
}

/// Disk use of a snapshot's own layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// A mount that makes a snapshot's filesystem appear, as containerd's `mount.Mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub r#type: String,
    pub source: String,
    pub target: String,
    pub options: Vec<String>,
}

/// containerd's snapshotter contract. A key names an active snapshot or a view, a name a
/// committed one; both share one namespace per snapshotter.
#[async_trait::async_trait]
pub trait Snapshotter: Send + Sync + 'static {
    async fn stat(&self, key: &str) -> Result<Info, SnapshotError>;
    /// Changes labels. Without field paths all labels are replaced; with them only `labels`
    /// (all) or `labels.<key>` (one) may be named. Returns the stored result.
    async fn update(&self, info: Info, field_paths: &[String]) -> Result<Info, SnapshotError>;
    async fn usage(&self, key: &str) -> Result<Usage, SnapshotError>;
    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError>;
    async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError>;
    async fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError>;
    async fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError>;
    /// Whether [`Snapshotter::commit_onto`] works: containerd's `rebase` capability.
    fn can_rebase(&self) -> bool {
        false
    }
    /// Commits the active `key`, prepared without a parent, as `name` on top of the committed
    /// `parent` (containerd's Commit with `WithParent`): layers of an image can then be
    /// unpacked side by side and stacked when committed.
    /// Refused (NotImplemented) unless [`Snapshotter::can_rebase`].
    async fn commit_onto(
        &self,
        name: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let _ = (name, labels);
        Err(rebase_unsupported(key, parent))
    }
    async fn remove(&self, key: &str) -> Result<(), SnapshotError>;
    /// Removes each of `keys` in turn (children before their parents), with a result for
    /// each one tried; it stops after a snapshotter that cannot be reached. Local snapshotters
    /// make all of it one durable commit, which is what the collector's sweeps use it for.
    async fn remove_each(&self, keys: &[String]) -> Vec<Result<(), SnapshotError>> {
        let mut results = Vec::with_capacity(keys.len());
        for key in keys {
            let result = self.remove(key).await;
            let unreachable = result.as_ref().is_err_and(|e| {
                matches!(
                    crated_errdefs::HasKind::kind(e),
                    crated_errdefs::Kind::Unavailable | crated_errdefs::Kind::DeadlineExceeded
                )
            });
            results.push(result);
            if unreachable {
                break;
            }
        }
        results
    }
    /// Every snapshot matching any of the filters (containerd's syntax; none: all).
    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, SnapshotError>;
    /// Frees whatever removed snapshots left behind.
    async fn cleanup(&self) -> Result<(), SnapshotError>;
    async fn close(&self) -> Result<(), SnapshotError>;
}

/// Why a snapshotter without the `rebase` capability refuses a commit onto a parent.
pub fn rebase_unsupported(key: &str, parent: &str) -> SnapshotError {
    SnapshotError::NotImplemented(format!(
        "committing {key} onto {parent}: this snapshotter cannot rebase"
    ))
}

/// The fields containerd's snapshot filters know: `kind`, `name`, `parent`, `labels.<key>`.
pub fn filter_field(info: &Info, path: &[String]) -> Option<String> {
    match path.first().map(String::as_str) {
        Some("kind") => Some(info.kind.as_str().to_owned()),
        Some("name") => Some(info.name.clone()),
        Some("parent") => Some(info.parent.clone()),
        Some("labels") => crated_filters::label_field(&info.labels, &path[1..]),
        _ => None,
    }
}

/// Keeps the infos any of `filters` matches.
pub fn filter_infos(infos: Vec<Info>, filters: &[String]) -> Result<Vec<Info>, SnapshotError> {
    let filter = crated_filters::parse_all(filters)
        .map_err(|e| SnapshotError::InvalidArgument(format!("filters: parse error: {e}")))?;
    Ok(infos
        .into_iter()
        .filter(|i| filter.matches(&|p: &[String]| filter_field(i, p)))
        .collect())
}

/// Nanoseconds since the epoch.
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub mod testsuite;

#[cfg(test)]
mod suite_tests {
    mod native {
        use std::sync::Arc;

        fn make(root: &std::path::Path) -> Arc<dyn crate::Snapshotter> {
            let driver = crate::native::Native::new(root).unwrap();
            Arc::new(crate::LocalSnapshotter::open(root, driver).unwrap())
        }
        crate::snapshotter_suite!(make);
    }

    mod overlayfs {
        use std::sync::Arc;

        fn make(root: &std::path::Path) -> Arc<dyn crate::Snapshotter> {
            let config = crate::overlayfs::OverlayConfig::default();
            let driver = crate::overlayfs::Overlay::new(root, &config).unwrap();
            Arc::new(crate::LocalSnapshotter::open(root, driver).unwrap())
        }
        crate::snapshotter_suite!(make);
    }

    mod devmapper {
        use std::sync::Arc;

        fn make(root: &std::path::Path) -> Arc<dyn crate::Snapshotter> {
            // A pool of its own for each case: thin ids and device names start afresh.
            let case = root.parent().unwrap();
            let pool = format!("crated-{}", case.file_name().unwrap().to_string_lossy());
            crate::testsuite::make_thin_pool(&case.join("pool"), &pool);
            let settings =
                crate::devmapper::DevmapperSettings::parse(&pool, "64M", false, false, "ext4", "")
                    .unwrap();
            crate::open_snapshotter(root, crate::SnapshotterKind::Devmapper(settings), None)
                .unwrap()
        }
        crate::snapshotter_suite!(make, if crate::testsuite::in_devmapper_guest);
    }

    /// Boots a VM whose kernel has device-mapper and runs the devmapper cases above in it,
    /// from this very test executable. All but `deep_chain`: its 128 layers guard overlayfs's
    /// mount option page (a devmapper mount is one device at any depth) and take four minutes
    /// under emulation.
    mod devmapper_vm {
        use std::time::Duration;

        #[test]
        fn suite_passes_in_a_vm() {
            let Some(vm) = crated_testsupport::vm::Vm::find() else {
                return;
            };
            vm.run_this_test_executable(
                crated_testsupport::vm::DEVICE_MAPPER_MODULES,
                crate::testsuite::DEVMAPPER_GUEST_ENV,
                "--test-threads 1 suite_tests::devmapper:: --skip deep_chain",
                "test result: ok. 7 passed; 0 failed",
                Duration::from_secs(900),
            );
        }
    }

    mod btrfs {
        use std::sync::Arc;

        fn make(root: &std::path::Path) -> Arc<dyn crate::Snapshotter> {
            crate::testsuite::mount_loop_btrfs(root);
            crate::open_snapshotter(root, crate::SnapshotterKind::Btrfs, None).unwrap()
        }
        crate::snapshotter_suite!(make, if crate::testsuite::btrfs_available);
    }
}
