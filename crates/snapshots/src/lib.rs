//! Snapshotter plugins, type `io.containerd.snapshotter.v1`, with containerd's ids, config keys,
//! exports and skip rules. This version carries each snapshotter's host check: on a host where
//! a snapshotter cannot work it skips with containerd's reason; where it could work it fails
//! with "not implemented", never claiming `ok` for a store that does not exist yet.

mod host;

use std::path::Path;

use crated_plugin::{types, InitContext, Instance, PluginError, Registration};
use serde::{Deserialize, Serialize};

pub use host::{filesystem_type, platform};

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

fn not_implemented(id: &str) -> PluginError {
    PluginError::failed(format!(
        "the {id} snapshotter could run on this host but is not implemented in this version of crated"
    ))
}

fn fs_check(
    ctx: &InitContext,
    id: &str,
    want: &str,
    message: impl Fn(&str) -> String,
) -> Result<Instance, PluginError> {
    let root = ctx.root()?;
    advertise(ctx, &root);
    let found = filesystem_type(&root).map_err(|e| PluginError::failed(format!("{id}: {e}")))?;
    if found != want {
        return Err(PluginError::skip(message(&found)));
    }
    Err(not_implemented(id))
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
        Registration::new(types::SNAPSHOTTER, "btrfs", |ctx| async move {
            let root = ctx.root_path().display().to_string();
            fs_check(&ctx, "btrfs", "btrfs", |found| {
                format!("path {root} ({found}) must be a btrfs filesystem to be used with the btrfs snapshotter")
            })
        }),
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
            Err(not_implemented("devmapper"))
        })
        .with_config::<DevmapperConfig>(),
        Registration::new(types::SNAPSHOTTER, "zfs", |ctx| async move {
            let root = ctx.root_path().display().to_string();
            fs_check(&ctx, "zfs", "zfs", |_| {
                format!("path {root} must be a zfs filesystem to be used with the zfs snapshotter")
            })
        }),
    ]
}
