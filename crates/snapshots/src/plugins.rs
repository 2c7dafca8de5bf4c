//! The snapshotter registrations, with containerd's ids, config keys, exports and skip rules.
//! Each ready plugin's instance is an `Arc<dyn Snapshotter>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crated_plugin::{types, InitContext, Instance, PluginError, Registration};
use serde::{Deserialize, Serialize};

use crate::btrfs::Btrfs;
use crate::devmapper::{Devmapper, DevmapperSettings};
use crate::host::{self, filesystem_type, platform};
use crate::native::Native;
use crate::overlayfs::{Overlay, OverlayConfig};
use crate::zfs::Zfs;
use crate::{LocalSnapshotter, Snapshotter};

/// `[plugins."io.containerd.snapshotter.v1.native"]` (and btrfs): containerd's key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RootConfig {
    pub root_path: String,
}

/// `[plugins."io.containerd.snapshotter.v1.devmapper"]`, containerd's keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DevmapperConfig {
    pub root_path: String,
    pub pool_name: String,
    pub base_image_size: String,
    pub async_remove: bool,
    pub discard_blocks: bool,
    pub fs_type: String,
    pub fs_options: String,
}

fn advertise(ctx: &InitContext, root: &Path) {
    let mut meta = ctx.meta();
    meta.platforms = vec![platform()];
    meta.exports
        .insert("root".into(), root.display().to_string());
}

/// The configured `root_path`, or the plugin's own root directory.
fn root_dir(ctx: &InitContext, root_path: &str) -> Result<PathBuf, PluginError> {
    if root_path.is_empty() {
        ctx.root()
    } else {
        std::fs::create_dir_all(root_path)
            .map_err(|e| PluginError::failed(format!("creating {root_path}: {e}")))?;
        Ok(root_path.into())
    }
}

/// The plugin instance of a ready snapshotter; closing the daemon closes it.
pub fn instance(snapshotter: Arc<dyn Snapshotter>) -> Instance {
    let closing = snapshotter.clone();
    Instance::new(Arc::new(snapshotter)).with_close(move || async move {
        if let Err(e) = closing.close().await {
            tracing::warn!("closing snapshotter: {e}");
        }
    })
}

/// One of the local snapshotters, for [`open_snapshotter`].
#[derive(Debug, Clone)]
pub enum SnapshotterKind {
    Native,
    Overlayfs(OverlayConfig),
    /// `root` must be on a btrfs filesystem.
    Btrfs,
    /// `root` must be a mounted zfs dataset.
    Zfs,
    /// Thin devices of an existing device-mapper thin pool.
    Devmapper(DevmapperSettings),
}

/// Opens a local snapshotter on `root` (blocking): what a plugin's init and
/// `crated-snapshotter` do. With a `journal`, its store's commits are deferred to it (see
/// [`LocalSnapshotter::open_in`]); the devmapper snapshotter, whose removals also act on
/// devices, keeps its own.
pub fn open_snapshotter(
    root: &Path,
    kind: SnapshotterKind,
    journal: Option<&crated_wal::Journal>,
) -> Result<Arc<dyn Snapshotter>, crate::SnapshotError> {
    let io = |e| crate::SnapshotError::io(root.display().to_string())(e);
    Ok(match kind {
        SnapshotterKind::Native => Arc::new(LocalSnapshotter::open_in(
            root,
            Native::new(root).map_err(io)?,
            journal,
        )?),
        SnapshotterKind::Overlayfs(config) => Arc::new(LocalSnapshotter::open_in(
            root,
            Overlay::new(root, &config).map_err(io)?,
            journal,
        )?),
        SnapshotterKind::Btrfs => {
            let found = filesystem_type(root).map_err(io)?;
            if found != "btrfs" {
                return Err(crate::SnapshotError::FailedPrecondition(btrfs_message(
                    root, &found,
                )));
            }
            Arc::new(LocalSnapshotter::open_in(
                root,
                Btrfs::new(root).map_err(io)?,
                journal,
            )?)
        }
        SnapshotterKind::Zfs => {
            let found = filesystem_type(root).map_err(io)?;
            if found != "zfs" {
                return Err(crate::SnapshotError::FailedPrecondition(zfs_message(root)));
            }
            Arc::new(LocalSnapshotter::open_in(
                root,
                Zfs::new(root).map_err(io)?,
                journal,
            )?)
        }
        SnapshotterKind::Devmapper(settings) => {
            std::fs::create_dir_all(root).map_err(io)?;
            Arc::new(LocalSnapshotter::open(
                root,
                Devmapper::new(root, settings)?,
            )?)
        }
    })
}

fn btrfs_message(root: &Path, found: &str) -> String {
    format!(
        "path {} ({found}) must be a btrfs filesystem to be used with the btrfs snapshotter",
        root.display()
    )
}

fn zfs_message(root: &Path) -> String {
    format!(
        "path {} must be a zfs filesystem to be used with the zfs snapshotter",
        root.display()
    )
}

/// Opens the snapshotter. One that can commit a snapshot prepared without a parent onto one
/// advertises containerd 2's `rebase` capability: clients then unpack layers side by side and
/// give the parent on Commit.
async fn open_kind(
    ctx: &InitContext,
    root: PathBuf,
    kind: SnapshotterKind,
) -> Result<Instance, PluginError> {
    let journal = ctx.shared::<crated_wal::Journal>().cloned();
    let sn = tokio::task::spawn_blocking(move || open_snapshotter(&root, kind, journal.as_ref()))
        .await
        .map_err(PluginError::failed)?
        .map_err(PluginError::failed)?;
    if sn.can_rebase() {
        ctx.meta().capabilities.push(REBASE_CAPABILITY.into());
    }
    Ok(instance(sn))
}

/// containerd 2's capability for a Commit that gives the parent.
pub const REBASE_CAPABILITY: &str = "rebase";

fn not_implemented(id: &str) -> PluginError {
    PluginError::failed(format!(
        "the {id} snapshotter could run on this host but is not implemented in this version of crated"
    ))
}

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(types::SNAPSHOTTER, "aufs", |ctx| async move {
            advertise(&ctx, ctx.root_path());
            if !host::kernel_has_filesystem("aufs") {
                return Err(PluginError::skip(
                    "aufs is not supported (the kernel lists no aufs in /proc/filesystems)",
                ));
            }
            Err(not_implemented("aufs"))
        }),
        Registration::new(types::SNAPSHOTTER, "btrfs", |mut ctx| async move {
            let config: RootConfig = ctx.config()?;
            let root = root_dir(&ctx, &config.root_path)?;
            advertise(&ctx, &root);
            let found =
                filesystem_type(&root).map_err(|e| PluginError::failed(format!("btrfs: {e}")))?;
            if found != "btrfs" {
                return Err(PluginError::skip(btrfs_message(&root, &found)));
            }
            open_kind(&ctx, root, SnapshotterKind::Btrfs).await
        })
        .with_config::<RootConfig>(),
        Registration::new(types::SNAPSHOTTER, "devmapper", |mut ctx| async move {
            let config: DevmapperConfig = ctx.config()?;
            let root = if config.root_path.is_empty() {
                ctx.root_path().to_path_buf()
            } else {
                config.root_path.clone().into()
            };
            advertise(&ctx, &root);
            if config.pool_name.is_empty() {
                return Err(PluginError::skip("devmapper not configured"));
            }
            if !Path::new("/dev/mapper/control").exists() {
                return Err(PluginError::skip(
                    "device-mapper is not available on this host (/dev/mapper/control is missing)",
                ));
            }
            let settings = DevmapperSettings::parse(
                &config.pool_name,
                &config.base_image_size,
                config.async_remove,
                config.discard_blocks,
                &config.fs_type,
                &config.fs_options,
            )
            .map_err(PluginError::failed)?;
            open_kind(&ctx, root, SnapshotterKind::Devmapper(settings)).await
        })
        .with_config::<DevmapperConfig>(),
        Registration::new(types::SNAPSHOTTER, "native", |mut ctx| async move {
            let config: RootConfig = ctx.config()?;
            let root = root_dir(&ctx, &config.root_path)?;
            advertise(&ctx, &root);
            open_kind(&ctx, root, SnapshotterKind::Native).await
        })
        .with_config::<RootConfig>(),
        Registration::new(types::SNAPSHOTTER, "overlayfs", |mut ctx| async move {
            let config: OverlayConfig = ctx.config()?;
            let root = root_dir(&ctx, &config.root_path)?;
            advertise(&ctx, &root);
            if !host::kernel_has_filesystem("overlay") {
                return Err(PluginError::skip(
                    "overlayfs is not supported (the kernel lists no overlay in /proc/filesystems)",
                ));
            }
            open_kind(&ctx, root, SnapshotterKind::Overlayfs(config)).await
        })
        .with_config::<OverlayConfig>(),
        Registration::new(types::SNAPSHOTTER, "zfs", |ctx| async move {
            let root = ctx.root()?;
            advertise(&ctx, &root);
            let found =
                filesystem_type(&root).map_err(|e| PluginError::failed(format!("zfs: {e}")))?;
            if found != "zfs" {
                return Err(PluginError::skip(zfs_message(&root)));
            }
            open_kind(&ctx, root, SnapshotterKind::Zfs).await
        }),
    ]
}
