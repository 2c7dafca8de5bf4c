//! A task's bundle, laid out as containerd's runtime v2 does:
//! `<state>/<ns>/<id>` holds `config.json`, `rootfs/` (the shim mounts the snapshot there), the
//! `log` FIFO, `work` (a link to `<root>/<ns>/<id>`) and the files the shim writes (`address`,
//! `init.pid`, ...).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::RuntimeError;

/// The host gid that a spec's user namespace maps its root group to, if it remaps it.
fn remapped_root_gid(spec: &[u8]) -> Result<Option<u32>, RuntimeError> {
    #[derive(serde::Deserialize)]
    struct Spec {
        linux: Option<Linux>,
    }
    #[derive(serde::Deserialize)]
    struct Linux {
        #[serde(rename = "gidMappings", default)]
        gid_mappings: Vec<Mapping>,
    }
    #[derive(serde::Deserialize)]
    struct Mapping {
        #[serde(rename = "containerID")]
        container_id: u32,
        #[serde(rename = "hostID")]
        host_id: u32,
    }
    let spec: Spec = serde_json::from_slice(spec)
        .map_err(|e| RuntimeError::InvalidArgument(format!("reading the spec: {e}")))?;
    Ok(spec
        .linux
        .into_iter()
        .flat_map(|l| l.gid_mappings)
        .find(|m| m.container_id == 0)
        .map(|m| m.host_id)
        .filter(|&gid| gid != 0))
}

/// A container whose root group is remapped must reach its rootfs through the bundle, as
/// containerd lets it: the bundle's group becomes that gid, with search permission (0710).
fn open_to_remapped_root(bundle: &Path, spec: &[u8]) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(gid) = remapped_root_gid(spec)? else {
        return Ok(());
    };
    let what = || format!("opening {} to gid {gid}", bundle.display());
    std::os::unix::fs::chown(bundle, None, Some(gid)).map_err(RuntimeError::io(what()))?;
    fs::set_permissions(bundle, fs::Permissions::from_mode(0o710)).map_err(RuntimeError::io(what()))
}

#[derive(Debug, Clone)]
pub struct Bundle {
    pub id: String,
    pub namespace: String,
    /// `<state>/<ns>/<id>`
    pub path: PathBuf,
    /// `<root>/<ns>/<id>`
    pub work: PathBuf,
}

fn mkdir(path: &Path, mode: u32) -> Result<(), RuntimeError> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(RuntimeError::io(format!("creating {}", path.display()))(e)),
    }
}

impl Bundle {
    /// Where the bundle of `ns`/`id` is, whether or not it exists.
    pub fn at(state: &Path, root: &Path, namespace: &str, id: &str) -> Bundle {
        Bundle {
            id: id.to_owned(),
            namespace: namespace.to_owned(),
            path: state.join(namespace).join(id),
            work: root.join(namespace).join(id),
        }
    }

    /// Creates the bundle with the container's OCI spec (its JSON bytes, as given).
    pub fn create(
        state: &Path,
        root: &Path,
        namespace: &str,
        id: &str,
        spec: &[u8],
    ) -> Result<Bundle, RuntimeError> {
        let b = Bundle::at(state, root, namespace, id);
        mkdir(&state.join(namespace), 0o711)?;
        // Made exclusively: while a bundle exists, no other task of that id can be created.
        match fs::DirBuilder::new().mode(0o700).create(&b.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists(format!(
                    "bundle {}",
                    b.path.display()
                )))
            }
            Err(e) => {
                return Err(RuntimeError::io(format!("creating {}", b.path.display()))(
                    e,
                ))
            }
        }
        let made = (|| {
            open_to_remapped_root(&b.path, spec)?;
            mkdir(&b.path.join("rootfs"), 0o711)?;
            mkdir(&root.join(namespace), 0o711)?;
            if b.work.exists() {
                fs::remove_dir_all(&b.work)
                    .map_err(RuntimeError::io(format!("removing {}", b.work.display())))?;
            }
            mkdir(&b.work, 0o711)?;
            std::os::unix::fs::symlink(&b.work, b.path.join("work"))
                .map_err(RuntimeError::io("linking the work directory"))?;
            fs::write(b.path.join("config.json"), spec)
                .map_err(RuntimeError::io("writing config.json"))
        })();
        if let Err(e) = made {
            b.delete();
            return Err(e);
        }
        Ok(b)
    }

    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    /// Unmounts what is left on the rootfs and removes the bundle and its work directory
    /// (renamed first, so a half-removed bundle is never loaded as a live one). Best effort:
    /// failures are logged.
    pub fn delete(&self) {
        let rootfs = self.rootfs();
        // Layered mounts come off one at a time; EINVAL means nothing is mounted there.
        for _ in 0..16 {
            if nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
        for dir in [&self.path, &self.work] {
            let Some(name) = dir.file_name() else {
                continue;
            };
            let hidden = dir.with_file_name(format!(".{}", name.to_string_lossy()));
            let target = if fs::rename(dir, &hidden).is_ok() {
                hidden
            } else {
                dir.clone()
            };
            if let Err(e) = fs::remove_dir_all(&target) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("removing {}: {e}", target.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_have_containerd_layout_and_go_away_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (state, root) = (dir.path().join("state"), dir.path().join("root"));
        fs::create_dir_all(&state).unwrap();
        fs::create_dir_all(&root).unwrap();
        let b = Bundle::create(&state, &root, "ns", "c1", b"{}").unwrap();
        assert_eq!(fs::read(b.path.join("config.json")).unwrap(), b"{}");
        assert!(b.rootfs().is_dir());
        assert_eq!(
            fs::read_link(b.path.join("work")).unwrap(),
            root.join("ns/c1")
        );
        assert!(matches!(
            Bundle::create(&state, &root, "ns", "c1", b"{}"),
            Err(RuntimeError::AlreadyExists(_))
        ));
        b.delete();
        assert!(!b.path.exists() && !b.work.exists());
        assert_eq!(
            fs::read_dir(state.join("ns")).unwrap().count(),
            0,
            "no hidden leftovers"
        );
    }

    #[test]
    fn the_remapped_root_gid_is_the_host_id_of_container_gid_0() {
        let spec = br#"{"linux":{"gidMappings":[{"containerID":1,"hostID":7,"size":1},{"containerID":0,"hostID":100000,"size":65536}]}}"#;
        assert_eq!(remapped_root_gid(spec).unwrap(), Some(100000));
        assert_eq!(remapped_root_gid(br#"{"linux":{}}"#).unwrap(), None);
        assert_eq!(remapped_root_gid(br#"{}"#).unwrap(), None);
        let identity = br#"{"linux":{"gidMappings":[{"containerID":0,"hostID":0,"size":1}]}}"#;
        assert_eq!(remapped_root_gid(identity).unwrap(), None);
        assert!(remapped_root_gid(b"not json").is_err());
    }
}
