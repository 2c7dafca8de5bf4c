//! Filesystem work the snapshotters share: a faithful tree copy (native's Prepare) and disk
//! usage as containerd counts it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::Usage;

/// Copies the tree at `src` into the existing directory `dst`, keeping ownership, modes,
/// timestamps, extended attributes, hard links (within the tree) and special files.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let mut links = HashMap::new();
    copy_dir_contents(src, dst, &mut links)?;
    copy_attributes(src, dst, &fs::symlink_metadata(src)?)
}

fn copy_dir_contents(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&from)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&to)?;
            copy_dir_contents(&from, &to, links)?;
        } else {
            if meta.nlink() > 1 {
                let inode = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&inode) {
                    fs::hard_link(first, &to)?;
                    continue;
                }
                links.insert(inode, to.clone());
            }
            if ft.is_symlink() {
                symlink(fs::read_link(&from)?, &to)?;
            } else if ft.is_file() {
                fs::copy(&from, &to)?;
            } else {
                let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
                mknod(
                    &to,
                    kind,
                    Mode::from_bits_truncate(meta.mode() & 0o7777),
                    meta.rdev(),
                )?;
            }
        }
        copy_attributes(&from, &to, &meta)?;
    }
    Ok(())
}

/// Owner first (a chown clears set-id bits), then mode, xattrs and times.
fn copy_attributes(from: &Path, to: &Path, meta: &fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    let is_link = meta.file_type().is_symlink();
    if !is_link {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    // xattrs the target filesystem refuses (security.* without privilege) are left out, as
    // containerd's copy does.
    if let Ok(names) = xattr::list(from) {
        for name in names {
            if let Ok(Some(value)) = xattr::get(from, &name) {
                if let Err(e) = xattr::set(to, &name, &value) {
                    tracing::debug!("copying xattr {name:?} of {}: {e}", from.display());
                }
            }
        }
    }
    utimensat(
        None,
        to,
        &TimeSpec::new(meta.atime(), meta.atime_nsec()),
        &TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Disk use of the trees under `root`: allocated bytes and inodes, each inode counted once.
pub fn disk_usage(root: &Path) -> io::Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path)?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += (meta.blocks() * 512) as i64;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(usage)
}

/// Creates `path` with exactly `mode`, whatever the umask.
pub fn make_dir(path: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Removes a directory tree; one already gone is fine.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copy_keeps_modes_links_and_special_files() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let dst = d.path().join("dst");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/f"), b"data").unwrap();
        fs::set_permissions(src.join("sub/f"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::hard_link(src.join("sub/f"), src.join("hl")).unwrap();
        symlink("sub/f", src.join("ln")).unwrap();
        mknod(
            &src.join("fifo"),
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o640),
            0,
        )
        .unwrap();
        fs::create_dir(&dst).unwrap();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(fs::read(dst.join("sub/f")).unwrap(), b"data");
        let m = fs::metadata(dst.join("sub/f")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4751);
        assert_eq!(m.ino(), fs::metadata(dst.join("hl")).unwrap().ino());
        assert_ne!(m.ino(), fs::metadata(src.join("hl")).unwrap().ino());
        assert_eq!(fs::read_link(dst.join("ln")).unwrap(), Path::new("sub/f"));
        assert!(fs::symlink_metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo_like());
        assert_eq!(
            fs::metadata(dst.join("sub")).unwrap().mtime(),
            fs::metadata(src.join("sub")).unwrap().mtime()
        );
        let u = disk_usage(&dst).unwrap();
        // dst, sub, f (= hl), ln, fifo
        assert_eq!(u.inodes, 5);
    }

    trait FifoLike {
        fn is_fifo_like(&self) -> bool;
    }
    impl FifoLike for fs::FileType {
        fn is_fifo_like(&self) -> bool {
            std::os::unix::fs::FileTypeExt::is_fifo(self)
        }
    }
}
