//! The `btrfs` snapshotter, with containerd's layout: subvolumes `active/<id>`, `view/<id>`
//! and read-only `snapshots/<id>` for committed ones. A child is a snapshot of its parent's
//! subvolume, so nothing is copied; mounts are the filesystem's device with `subvolid=`.
//! Subvolumes are made with the kernel's btrfs ioctls.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::dirs::orphans;
use crate::fsutil::{disk_usage, make_dir};
use crate::local::Driver;
use crate::storage::Snapshot;
use crate::{Kind, Mount, Usage};

mod ioctl {
    /// `struct btrfs_ioctl_vol_args`.
    #[repr(C)]
    pub struct VolArgs {
        pub fd: i64,
        pub name: [u8; 4088],
    }

    /// `struct btrfs_ioctl_vol_args_v2`.
    #[repr(C)]
    pub struct VolArgsV2 {
        pub fd: i64,
        pub transid: u64,
        pub flags: u64,
        pub unused: [u64; 4],
        pub name: [u8; 4040],
    }

    /// `struct btrfs_ioctl_ino_lookup_args`.
    #[repr(C)]
    pub struct InoLookupArgs {
        pub treeid: u64,
        pub objectid: u64,
        pub name: [u8; 4080],
    }

    pub const SUBVOL_RDONLY: u64 = 1 << 1;
    /// The inode number of every subvolume's root directory.
    pub const FIRST_FREE_OBJECTID: u64 = 256;

    nix::ioctl_write_ptr!(subvol_create, 0x94, 14, VolArgs);
    nix::ioctl_write_ptr!(snap_destroy, 0x94, 15, VolArgs);
    nix::ioctl_readwrite!(ino_lookup, 0x94, 18, InoLookupArgs);
    nix::ioctl_write_ptr!(snap_create_v2, 0x94, 23, VolArgsV2);
}

fn name_bytes<const N: usize>(name: &OsStr) -> io::Result<[u8; N]> {
    let bytes = name.as_bytes();
    if bytes.len() >= N || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("subvolume name {name:?} is not usable"),
        ));
    }
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

fn split(path: &Path) -> io::Result<(File, &OsStr)> {
    let parent = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "subvolume has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "subvolume has no name"))?;
    Ok((File::open(parent)?, name))
}

/// Creates an empty subvolume at `path`.
pub fn subvolume_create(path: &Path) -> io::Result<()> {
    let (dir, name) = split(path)?;
    let args = ioctl::VolArgs {
        fd: 0,
        name: name_bytes(name)?,
    };
    // SAFETY: `args` is a valid, fully initialised btrfs_ioctl_vol_args.
    unsafe { ioctl::subvol_create(dir.as_raw_fd(), &args) }?;
    Ok(())
}

/// Makes `target` a snapshot of the subvolume `source`.
pub fn subvolume_snapshot(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    let src = File::open(source)?;
    let (dir, name) = split(target)?;
    let args = ioctl::VolArgsV2 {
        fd: src.as_raw_fd() as i64,
        transid: 0,
        flags: if read_only { ioctl::SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: name_bytes(name)?,
    };
    // SAFETY: `args` is a valid, fully initialised btrfs_ioctl_vol_args_v2.
    unsafe { ioctl::snap_create_v2(dir.as_raw_fd(), &args) }?;
    Ok(())
}

/// Deletes the subvolume at `path` (read-only ones too).
pub fn subvolume_delete(path: &Path) -> io::Result<()> {
    let (dir, name) = split(path)?;
    let args = ioctl::VolArgs {
        fd: 0,
        name: name_bytes(name)?,
    };
    // SAFETY: `args` is a valid, fully initialised btrfs_ioctl_vol_args.
    unsafe { ioctl::snap_destroy(dir.as_raw_fd(), &args) }?;
    Ok(())
}

/// The id of the subvolume `path` is the root of.
pub fn subvolume_id(path: &Path) -> io::Result<u64> {
    let f = File::open(path)?;
    let mut args = ioctl::InoLookupArgs {
        treeid: 0,
        objectid: ioctl::FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    // SAFETY: `args` is a valid btrfs_ioctl_ino_lookup_args the kernel fills in.
    unsafe { ioctl::ino_lookup(f.as_raw_fd(), &mut args) }?;
    Ok(args.treeid)
}

/// Whether `path` is the root of a subvolume (its inode is a subvolume root's).
fn is_subvolume(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_dir() && m.ino() == ioctl::FIRST_FREE_OBJECTID)
}

pub struct Btrfs {
    root: PathBuf,
    /// The block device of the filesystem, the source of every mount.
    device: String,
}

impl Btrfs {
    pub fn new(root: &Path) -> io::Result<Self> {
        for dir in ["active", "view", "snapshots"] {
            let d = root.join(dir);
            if !d.exists() {
                make_dir(&d, 0o700)?;
            }
        }
        Ok(Btrfs {
            root: root.to_path_buf(),
            device: crate::host::mount_source(root)?,
        })
    }

    fn dir(&self, kind: Kind, id: &str) -> PathBuf {
        let sub = match kind {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "snapshots",
        };
        self.root.join(sub).join(id)
    }

    fn remove_any(path: &Path) -> io::Result<()> {
        if is_subvolume(path) {
            subvolume_delete(path)
        } else {
            crate::fsutil::remove_tree(path)
        }
    }
}

impl Driver for Btrfs {
    fn create(&self, s: &Snapshot) -> io::Result<()> {
        let target = self.dir(s.kind, &s.id);
        if target.exists() {
            // Left by a create whose record never got written (the id is free again).
            Self::remove_any(&target)?;
        }
        match s.parent_ids.first() {
            Some(parent) => subvolume_snapshot(&self.dir(Kind::Committed, parent), &target, false),
            None => subvolume_create(&target),
        }
    }

    fn mounts(&self, s: &Snapshot) -> Vec<Mount> {
        let dir = self.dir(s.kind, &s.id);
        let mut options = match subvolume_id(&dir) {
            Ok(id) => vec![format!("subvolid={id}")],
            Err(e) => {
                tracing::warn!("btrfs: subvolume id of {}: {e}", dir.display());
                vec![format!("subvol={}", dir.display())]
            }
        };
        if s.kind != Kind::Active {
            options.push("ro".into());
        }
        vec![Mount {
            r#type: "btrfs".into(),
            source: self.device.clone(),
            target: String::new(),
            options,
        }]
    }

    fn commit(&self, id: &str) -> io::Result<Usage> {
        let active = self.dir(Kind::Active, id);
        let usage = disk_usage(&active)?;
        let committed = self.dir(Kind::Committed, id);
        if committed.exists() {
            Self::remove_any(&committed)?;
        }
        subvolume_snapshot(&active, &committed, true)?;
        if let Err(e) = subvolume_delete(&active) {
            // The committed copy exists; the active one is an orphan for Cleanup.
            tracing::warn!("btrfs: deleting {}: {e}", active.display());
        }
        Ok(usage)
    }

    fn detach(&self, id: &str, kind: Kind, _has_parent: bool) -> io::Result<Option<PathBuf>> {
        Self::remove_any(&self.dir(kind, id))?;
        Ok(None)
    }

    fn usage(&self, id: &str) -> io::Result<Usage> {
        disk_usage(&self.dir(Kind::Active, id))
    }

    fn cleanup(&self, live: &HashMap<String, Kind>) -> io::Result<()> {
        // An id is live only in the directory of its kind: a commit that could not delete
        // its active subvolume leaves it in active/, an orphan there.
        for kind in [Kind::Active, Kind::View, Kind::Committed] {
            let dir = self.dir(kind, "");
            for path in orphans(&dir, |id| live.get(id) == Some(&kind))? {
                Self::remove_any(&path)?;
            }
        }
        Ok(())
    }
}
