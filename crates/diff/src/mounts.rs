//! Where a layer goes for a set of mounts, and how a set of mounts is read: containerd's
//! shortcuts first (an overlay's upper directory, a writable bind mount's source), a temporary
//! mount otherwise.

use std::io::Read;
use std::path::{Path, PathBuf};

use crated_snapshots::mount::{mount_all, unmount};
use crated_snapshots::Mount;

use crate::apply::{apply, Applied, ApplyOptions, Whiteouts};
use crate::DiffError;

fn option<'a>(m: &'a Mount, key: &str) -> Option<&'a str> {
    m.options.iter().find_map(|o| o.strip_prefix(key))
}

fn read_only(m: &Mount) -> bool {
    m.options.iter().any(|o| o == "ro")
}

/// Applies the (decompressed) layer onto what `mounts` describe. `scratch` is a directory for
/// temporary mount points.
pub fn apply_to_mounts(
    mounts: &[Mount],
    scratch: &Path,
    layer: impl Read,
) -> Result<Applied, DiffError> {
    if let [m] = mounts {
        if m.r#type == "overlay" {
            if let Some(upper) = option(m, "upperdir=") {
                let parents = option(m, "lowerdir=")
                    .map(|l| l.split(':').map(PathBuf::from).collect())
                    .unwrap_or_default();
                let options = ApplyOptions {
                    whiteouts: Whiteouts::Overlay,
                    parents,
                };
                return apply(Path::new(upper), layer, &options);
            }
        }
        if m.r#type == "bind" && !read_only(m) {
            return apply(Path::new(&m.source), layer, &delete_whiteouts());
        }
    }
    with_temp_mount(mounts, scratch, |root| {
        apply(root, layer, &delete_whiteouts())
    })
}

fn delete_whiteouts() -> ApplyOptions {
    ApplyOptions {
        whiteouts: Whiteouts::Delete,
        parents: Vec::new(),
    }
}

/// Runs `f` on the tree `mounts` describe, read-only, and unmounts after. No mounts is an
/// empty tree (`None`); one bind mount is read from its source, without mounting.
pub fn with_read_only<T>(
    mounts: &[Mount],
    scratch: &Path,
    f: impl FnOnce(Option<&Path>) -> Result<T, DiffError>,
) -> Result<T, DiffError> {
    match mounts {
        [] => f(None),
        [m] if m.r#type == "bind" => f(Some(Path::new(&m.source))),
        _ => {
            let ro: Vec<Mount> = mounts.iter().map(read_only_mount).collect();
            with_temp_mount(&ro, scratch, |root| f(Some(root)))
        }
    }
}

/// The mount as a read-only one; an overlay's upper directory becomes its top lower one, as
/// containerd's read-only temporary mounts do (a read-only overlay needs no work directory).
fn read_only_mount(m: &Mount) -> Mount {
    let mut options: Vec<String> = Vec::new();
    if m.r#type == "overlay" {
        let upper = option(m, "upperdir=");
        for o in &m.options {
            if o.starts_with("upperdir=") || o.starts_with("workdir=") {
                continue;
            }
            match (o.strip_prefix("lowerdir="), upper) {
                (Some(lower), Some(upper)) => options.push(format!("lowerdir={upper}:{lower}")),
                _ => options.push(o.clone()),
            }
        }
    } else {
        options.extend(m.options.iter().filter(|o| *o != "rw").cloned());
    }
    if !options.iter().any(|o| o == "ro") {
        options.push("ro".into());
    }
    Mount {
        options,
        ..m.clone()
    }
}

fn with_temp_mount<T>(
    mounts: &[Mount],
    scratch: &Path,
    f: impl FnOnce(&Path) -> Result<T, DiffError>,
) -> Result<T, DiffError> {
    std::fs::create_dir_all(scratch)
        .map_err(DiffError::io(format!("creating {}", scratch.display())))?;
    let point = tempdir_in(scratch)?;
    if let Err(e) = mount_all(mounts, &point) {
        let _ = std::fs::remove_dir(&point);
        return Err(DiffError::Io {
            context: format!("mounting {mounts:?}"),
            source: e,
        });
    }
    let result = f(&point);
    let unmounted = unmount(&point);
    let _ = std::fs::remove_dir(&point);
    match (result, unmounted) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(DiffError::Io {
            context: format!("unmounting {}", point.display()),
            source: e,
        }),
        (Ok(t), Ok(())) => Ok(t),
    }
}

/// A fresh, empty mount point. Not a `tempfile::TempDir`: its drop removes recursively, which
/// on a mount point whose unmount failed would delete the snapshot's contents.
fn tempdir_in(scratch: &Path) -> Result<PathBuf, DiffError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let point = scratch.join(format!(
            "mount-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::create_dir(&point) {
            Ok(()) => return Ok(point),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(DiffError::Io {
                    context: format!("creating {}", point.display()),
                    source: e,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_overlay_stacks_its_upper_on_its_lowers() {
        let m = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "index=off".into(),
                "workdir=/s/2/work".into(),
                "upperdir=/s/2/fs".into(),
                "lowerdir=/s/1/fs".into(),
            ],
        };
        assert_eq!(
            read_only_mount(&m).options,
            vec!["index=off", "lowerdir=/s/2/fs:/s/1/fs", "ro"]
        );
    }
}
