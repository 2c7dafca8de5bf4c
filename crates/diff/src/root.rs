//! A directory tree reached only beneath its root: every lookup goes through `openat2` with
//! `RESOLVE_BENEATH`, so neither `..` nor a symlink (absolute, or relative and climbing out)
//! can lead outside, whatever earlier entries of a layer planted.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::DiffError;

pub(crate) struct Root {
    fd: OwnedFd,
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

impl Root {
    pub(crate) fn open(path: &Path) -> Result<Root, DiffError> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| DiffError::Io {
            context: format!("opening {}", path.display()),
            source: e.into(),
        })?;
        Ok(Root { fd })
    }

    /// The directory at `rel` (a clean relative path; empty is the root itself).
    pub(crate) fn dir(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        let rel: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            BENEATH,
        )
    }

    /// The status of what is at `rel`, not following a final symlink.
    pub(crate) fn stat(&self, rel: &Path) -> Result<rustix::fs::Stat, Errno> {
        let fd = rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            BENEATH,
        )?;
        rustix::fs::fstat(&fd)
    }

    /// The directory at `rel`, made (with each missing parent) when absent. A directory that
    /// exists at the same place in one of `parents` (the layers below, first match wins) lends
    /// its mode, owner and times, so an overlay upper directory made only to hold a file does
    /// not change how the merged directory looks.
    pub(crate) fn make_dirs(
        &self,
        rel: &Path,
        parents: &[Root],
        entry: &str,
    ) -> Result<OwnedFd, DiffError> {
        match self.dir(rel) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(resolve_error(entry, e)),
        }
        let mut at = self
            .dir(Path::new(""))
            .map_err(|e| resolve_error(entry, e))?;
        let mut sofar = PathBuf::new();
        for part in rel.components() {
            sofar.push(part);
            match self.dir(&sofar) {
                Ok(fd) => at = fd,
                Err(Errno::NOENT) => {
                    let name = part.as_os_str();
                    match rustix::fs::mkdirat(&at, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(resolve_error(entry, e)),
                    }
                    if let Some(stat) = parents.iter().find_map(|p| {
                        p.stat(&sofar)
                            .ok()
                            .filter(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR)
                    }) {
                        copy_dir_info(at.as_fd(), name, &stat)
                            .map_err(|e| resolve_error(entry, e))?;
                    }
                    at = self.dir(&sofar).map_err(|e| resolve_error(entry, e))?;
                }
                Err(e) => return Err(resolve_error(entry, e)),
            }
        }
        Ok(at)
    }
}

// stat's field types differ between architectures; the casts are not no-ops everywhere.
#[allow(clippy::unnecessary_cast)]
fn copy_dir_info(dir: BorrowedFd<'_>, name: &OsStr, stat: &rustix::fs::Stat) -> Result<(), Errno> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(stat.st_uid)),
        Some(rustix::fs::Gid::from_raw(stat.st_gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    rustix::fs::chmodat(
        dir,
        name,
        Mode::from_raw_mode(stat.st_mode & 0o7777),
        AtFlags::empty(),
    )?;
    let time = |s: i64, ns: u64| rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    rustix::fs::utimensat(
        dir,
        name,
        &rustix::fs::Timestamps {
            last_access: time(stat.st_atime as i64, stat.st_atime_nsec as u64),
            last_modification: time(stat.st_mtime as i64, stat.st_mtime_nsec as u64),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

/// Turns a failed lookup of `entry`'s place into the error a user should see: an escape is
/// the layer's fault (InvalidArgument, naming the entry), anything else an I/O error.
pub(crate) fn resolve_error(entry: &str, e: Errno) -> DiffError {
    match e {
        Errno::XDEV | Errno::LOOP => {
            DiffError::invalid(entry, "path escapes the root through a symlink or \"..\"")
        }
        Errno::NOTDIR => DiffError::invalid(entry, "a parent is not a directory"),
        e => DiffError::Io {
            context: format!("layer entry {entry:?}"),
            source: e.into(),
        },
    }
}

/// A tar entry's name as a clean relative path: `.` and empty parts dropped; `..` and
/// absolute names refused. `None` is the root itself.
pub(crate) fn clean(raw: &Path, display: &str) -> Result<Option<PathBuf>, DiffError> {
    let mut out = PathBuf::new();
    for part in raw.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(DiffError::invalid(display, "\"..\" in a path")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(DiffError::invalid(display, "absolute path"))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Removes `name` in `dir` and, for a directory, everything in it, never following a symlink.
/// Absent is fine.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e),
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    empty_dir(sub.as_fd())?;
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes what `dir` (opened for reading) holds, except the names `keep` says to keep.
pub(crate) fn empty_dir_except(
    dir: BorrowedFd<'_>,
    keep: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<(), Errno> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(std::ffi::OsString::from(
                <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name),
            ));
        }
    }
    for name in names {
        if !keep(&name) {
            remove_at(dir, &name)?;
        }
    }
    Ok(())
}

fn empty_dir(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    empty_dir_except(dir, &mut |_| false)
}
