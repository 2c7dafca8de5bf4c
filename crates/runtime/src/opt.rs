//! The opt plugin, `io.containerd.internal.v1.opt`: a directory (`path`, `/opt/containerd`)
//! whose `bin/` and `lib/` are searched first for runtime shims and the programs they run
//! (`PATH`, `LD_LIBRARY_PATH` of the shims), so runtimes can be installed without touching the
//! system. containerd changes its own environment; crated gives the shims the extended one
//! and keeps its own untouched (changing a running process's environment races with readers).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crated_plugin::{types, Instance, Registration};
use serde::{Deserialize, Serialize};

/// `[plugins."io.containerd.internal.v1.opt"]`, containerd's key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptConfig {
    pub path: String,
}

impl Default for OptConfig {
    fn default() -> Self {
        OptConfig {
            path: "/opt/containerd".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OptDirs {
    pub bin: PathBuf,
    pub lib: PathBuf,
}

impl OptDirs {
    /// `dir` prepended to the list in the variable `name` of this process's environment.
    fn prepended(dir: &Path, name: &str) -> OsString {
        let rest = std::env::var_os(name).unwrap_or_default();
        let mut all = vec![dir.to_path_buf()];
        all.extend(std::env::split_paths(&rest));
        std::env::join_paths(all).unwrap_or(rest)
    }

    /// The shims' `PATH`: `bin` first.
    pub fn path(&self) -> OsString {
        Self::prepended(&self.bin, "PATH")
    }

    /// The shims' `LD_LIBRARY_PATH`: `lib` first.
    pub fn library_path(&self) -> OsString {
        Self::prepended(&self.lib, "LD_LIBRARY_PATH")
    }
}

/// Registered before the runtime, which reads it: the plugin graph starts plugins with no
/// requirement between them in registration order.
pub fn registration() -> Registration {
    Registration::new(types::INTERNAL, "opt", |mut ctx| async move {
        let config: OptConfig = ctx.config()?;
        let root = PathBuf::from(&config.path);
        ctx.meta()
            .exports
            .insert("path".into(), config.path.clone());
        let dirs = OptDirs {
            bin: root.join("bin"),
            lib: root.join("lib"),
        };
        // containerd's mode for them.
        crated_plugin::make_dir(&dirs.bin, 0o711)?;
        crated_plugin::make_dir(&dirs.lib, 0o711)?;
        Ok(Instance::new(Arc::new(dirs)))
    })
    .with_config::<OptConfig>()
}
