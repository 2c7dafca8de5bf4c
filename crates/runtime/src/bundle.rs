//! A task's bundle, laid out as containerd's runtime v2 does:
//! `<state>/<ns>/<id>` holds `config.json`, `rootfs/` (the shim mounts the snapshot there), the
//! `log` FIFO, `work` (a link to `<root>/<ns>/<id>`) and the files the shim writes (`address`,
//! `init.pid`, ...).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::RuntimeError;

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
}
