//! Applying a layer: an OCI changeset tar extracted onto a directory, whiteouts honoured, the
//! tar digested on the way (the diff ID). Entries are created relative to directory fds found
//! beneath the root (see [`crate::root`]): a layer cannot write outside, it is refused.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use tar::EntryType;

use crate::root::{clean, empty_dir_except, remove_at, resolve_error, Root};
use crate::stream::Digesting;
use crate::{sparse, DiffError};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
const XATTR_PAX_PREFIX: &str = "SCHILY.xattr.";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a whiteout becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Overlay's own markers, for a layer applied to an overlay upper directory: a `0:0`
    /// character device hides a name, `trusted.overlay.opaque=y` hides a directory's lower
    /// contents.
    Overlay,
    /// Deletions, for a layer applied to a full copy of the tree below (native, btrfs, ...).
    Delete,
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub whiteouts: Whiteouts,
    /// The trees of the layers below, topmost first (overlay's lowerdirs), for the metadata of
    /// directories an entry needs but the layer does not list.
    pub parents: Vec<PathBuf>,
}

/// A layer applied: the digest of its tar (the diff ID) and the tar's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub diff_id: String,
    pub size: u64,
}

/// Extracts the tar read from `layer` (already decompressed) onto `root`.
pub fn apply(root: &Path, layer: impl Read, options: &ApplyOptions) -> Result<Applied, DiffError> {
    let root_path = root;
    let root = Root::open(root)?;
    let parents = options
        .parents
        .iter()
        .filter_map(|p| Root::open(p).ok())
        .collect::<Vec<_>>();
    let mut tar_stream = Digesting::new(layer);
    {
        let mut archive = tar::Archive::new(&mut tar_stream);
        let mut extract = Extract {
            root: &root,
            parents: &parents,
            whiteouts: options.whiteouts,
            cached_parent: None,
            unpacked: HashSet::new(),
            dir_times: Vec::new(),
            buffer: vec![0; 1 << 20],
            budget: free_space(root_path),
        };
        for entry in archive
            .entries()
            .map_err(DiffError::io("reading the layer"))?
        {
            let mut entry = entry.map_err(DiffError::io("reading the layer"))?;
            extract.entry(&mut entry)?;
        }
        extract.set_dir_times();
    }
    // What follows the end-of-archive blocks is part of the diff ID too.
    io::copy(&mut tar_stream, &mut io::sink()).map_err(DiffError::io("reading the layer"))?;
    let (diff_id, size) = tar_stream.finish();
    Ok(Applied { diff_id, size })
}

struct Extract<'a> {
    root: &'a Root,
    parents: &'a [Root],
    whiteouts: Whiteouts,
    /// The directory of the last entry: entries come grouped by directory. Dropped whenever
    /// anything is removed, since the path could then lead elsewhere.
    cached_parent: Option<(PathBuf, Rc<OwnedFd>)>,
    /// Paths this layer created, which an opaque marker must not delete (Delete mode only).
    unpacked: HashSet<PathBuf>,
    /// Directories' times, set last: creating their entries would move them.
    dir_times: Vec<(PathBuf, Timestamps)>,
    buffer: Vec<u8>,
    /// What the layer's files may still add up to: the space free on the filesystem when the
    /// apply began. Sizes are declared before the data, so a layer claiming more is refused
    /// before it is written (a sparse file of a few bytes in the tar can claim terabytes).
    budget: u64,
}

/// The bytes free to an unprivileged writer on `path`'s filesystem; no bound when it cannot
/// be told.
fn free_space(path: &Path) -> u64 {
    rustix::fs::statvfs(path).map_or(u64::MAX, |st| st.f_bavail.saturating_mul(st.f_frsize))
}

/// The GNU.sparse.* PAX records of an entry.
fn sparse_records<R: Read>(entry: &mut tar::Entry<R>) -> Result<Vec<(String, String)>, DiffError> {
    let mut out = Vec::new();
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(DiffError::io("reading PAX records"))?
    {
        for record in pax {
            let record = record.map_err(DiffError::io("reading PAX records"))?;
            if let (Ok(key), Ok(value)) = (record.key(), record.value()) {
                if key.starts_with("GNU.sparse.") {
                    out.push((key.to_owned(), value.to_owned()));
                }
            }
        }
    }
    Ok(out)
}

/// The metadata of one entry, as the tar header (and its PAX records) give it.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Extract<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), DiffError> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let records = sparse_records(entry)?;
        let (layout, sparse_name) = sparse::layout(&records, kind == EntryType::GNUSparse)
            .map_err(|why| {
                DiffError::invalid(&String::from_utf8_lossy(&entry.path_bytes()), &why)
            })?;
        let raw = match sparse_name {
            Some(name) => std::borrow::Cow::Owned(PathBuf::from(name)),
            None => entry.path().map_err(DiffError::io("reading a tar path"))?,
        };
        let display = raw.display().to_string();
        let Some(rel) = clean(&raw, &display)? else {
            return Ok(()); // the root itself keeps its own metadata, as in containerd
        };
        let (dir_rel, name) = match (rel.parent(), rel.file_name()) {
            (Some(d), Some(n)) => (d.to_owned(), n.to_owned()),
            _ => return Err(DiffError::invalid(&display, "no file name")),
        };
        let name_bytes = name.as_bytes();
        if name_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&dir_rel, &name, entry, &display);
        }
        let meta = self.meta(entry)?;
        let dir = self.parent(&dir_rel, &display)?;
        let dir = dir.as_fd();
        let fail = |e: Errno| DiffError::Io {
            context: format!("layer entry {display:?}"),
            source: e.into(),
        };
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = sparse::declared_size(&layout, entry.size());
                self.budget = self.budget.checked_sub(size).ok_or_else(|| {
                    DiffError::invalid(
                        &display,
                        "the layer unpacks to more than its filesystem has free",
                    )
                })?;
                let fd = self.create(dir, &name, |dir| {
                    rustix::fs::openat(
                        dir,
                        &name,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                })?;
                let file = std::fs::File::from(fd);
                sparse::write(&file, entry, &layout, &mut self.buffer, &display)?;
                set_fd_meta(file.as_fd(), &meta).map_err(fail)?;
            }
            EntryType::Directory => {
                match rustix::fs::mkdirat(dir, &name, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        let st = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(fail)?;
                        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                            self.remove(dir, &name, &display)?;
                            rustix::fs::mkdirat(dir, &name, Mode::from_raw_mode(0o700))
                                .map_err(fail)?;
                        }
                    }
                    Err(e) => return Err(fail(e)),
                }
                let fd = rustix::fs::openat(
                    dir,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(fail)?;
                set_owner_mode_xattrs(fd.as_fd(), &meta).map_err(fail)?;
                self.dir_times.push((rel.clone(), times(meta.mtime)));
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(DiffError::io("reading a link name"))?
                    .ok_or_else(|| DiffError::invalid(&display, "symlink without a target"))?
                    .into_owned();
                self.create(dir, &name, |dir| rustix::fs::symlinkat(&target, dir, &name))?;
                set_at_meta(dir, &name, &meta, false).map_err(fail)?;
            }
            EntryType::Link => {
                let raw_target = entry
                    .link_name()
                    .map_err(DiffError::io("reading a link name"))?
                    .ok_or_else(|| DiffError::invalid(&display, "hard link without a target"))?
                    .into_owned();
                let target = clean(&raw_target, &display)?
                    .ok_or_else(|| DiffError::invalid(&display, "hard link to the root"))?;
                let target_dir = self
                    .root
                    .dir(target.parent().unwrap_or(Path::new("")))
                    .map_err(|e| resolve_error(&display, e))?;
                let target_name = target.file_name().unwrap_or_default().to_owned();
                self.create(dir, &name, |dir| {
                    rustix::fs::linkat(&target_dir, &target_name, dir, &name, AtFlags::empty())
                })?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let file_type = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = rustix::fs::makedev(major, minor);
                self.create(dir, &name, |dir| {
                    rustix::fs::mknodat(dir, &name, file_type, Mode::from_raw_mode(0o600), dev)
                })?;
                set_at_meta(dir, &name, &meta, true).map_err(fail)?;
            }
            other => {
                return Err(DiffError::invalid(
                    &display,
                    &format!("unhandled tar entry type {:?}", other.as_byte() as char),
                ))
            }
        }
        if self.whiteouts == Whiteouts::Delete {
            self.unpacked.insert(rel);
        }
        Ok(())
    }

    /// Runs `make` for a new entry; when the name is taken (by anything but a directory the
    /// layer also lists as a directory), what is there goes first, as containerd replaces it.
    fn create<T>(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        make: impl Fn(BorrowedFd<'_>) -> Result<T, Errno>,
    ) -> Result<T, DiffError> {
        let display = name.to_string_lossy();
        let fail = |e: Errno| DiffError::Io {
            context: format!("creating {display:?}"),
            source: e.into(),
        };
        match make(dir) {
            Ok(t) => Ok(t),
            Err(Errno::EXIST) => {
                self.remove(dir, name, &display)?;
                make(dir).map_err(fail)
            }
            Err(e) => Err(fail(e)),
        }
    }

    fn remove(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        display: &str,
    ) -> Result<(), DiffError> {
        self.cached_parent = None;
        remove_at(dir, name).map_err(|e| DiffError::Io {
            context: format!("removing {display:?}"),
            source: e.into(),
        })
    }

    /// The directory an entry goes in, made when the layer did not list it.
    fn parent(&mut self, rel: &Path, display: &str) -> Result<Rc<OwnedFd>, DiffError> {
        if let Some((path, fd)) = &self.cached_parent {
            if path == rel {
                return Ok(Rc::clone(fd));
            }
        }
        let fd = Rc::new(self.root.make_dirs(rel, self.parents, display)?);
        self.cached_parent = Some((rel.to_owned(), Rc::clone(&fd)));
        Ok(fd)
    }

    fn whiteout<R: Read>(
        &mut self,
        dir_rel: &Path,
        name: &OsStr,
        entry: &tar::Entry<R>,
        display: &str,
    ) -> Result<(), DiffError> {
        let name = name.as_bytes();
        let dir = self.parent(dir_rel, display)?;
        let fail = |e: Errno| DiffError::Io {
            context: format!("whiteout {display:?}"),
            source: e.into(),
        };
        if name == WHITEOUT_OPAQUE.as_bytes() {
            let opened = rustix::fs::openat(
                dir.as_fd(),
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(fail)?;
            return match self.whiteouts {
                Whiteouts::Overlay => rustix::fs::fsetxattr(
                    &opened,
                    OVERLAY_OPAQUE_XATTR,
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(fail),
                Whiteouts::Delete => {
                    self.cached_parent = None;
                    let unpacked = &self.unpacked;
                    empty_dir_except(opened.as_fd(), &mut |child| {
                        unpacked.contains(&dir_rel.join(child))
                    })
                    .map_err(fail)
                }
            };
        }
        if name.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            // Other AUFS metadata (`.wh..wh.plnk`, ...) means nothing here.
            let ignored = display;
            tracing::debug!("AUFS metadata entry {ignored} ignored");
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
            return Err(DiffError::invalid(display, "invalid whiteout name"));
        }
        let hidden = OsStr::from_bytes(hidden);
        self.remove(dir.as_fd(), hidden, display)?;
        if self.whiteouts == Whiteouts::Overlay {
            rustix::fs::mknodat(
                dir.as_fd(),
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(fail)?;
            let header = entry.header();
            let uid = header.uid().unwrap_or(0) as u32;
            let gid = header.gid().unwrap_or(0) as u32;
            rustix::fs::chownat(
                dir.as_fd(),
                hidden,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(fail)?;
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<R>) -> Result<Meta, DiffError> {
        let header = entry.header();
        let bad =
            |what: &str| DiffError::invalid(&String::from_utf8_lossy(&header.path_bytes()), what);
        let raw = header.as_old();
        let mut meta = Meta {
            mode: numeric(header.mode().map(u64::from), &raw.mode).ok_or_else(|| bad("bad mode"))?
                as u32
                & 0o7777,
            uid: numeric(header.uid(), &raw.uid).ok_or_else(|| bad("bad uid"))? as u32,
            gid: numeric(header.gid(), &raw.gid).ok_or_else(|| bad("bad gid"))? as u32,
            mtime: Timespec {
                tv_sec: numeric(header.mtime(), &raw.mtime).ok_or_else(|| bad("bad mtime"))? as i64,
                tv_nsec: 0,
            },
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(DiffError::io("reading PAX records"))?
        {
            for record in pax {
                let record = record.map_err(DiffError::io("reading PAX records"))?;
                let Ok(key) = record.key() else { continue };
                if let Some(name) = key.strip_prefix(XATTR_PAX_PREFIX) {
                    meta.xattrs
                        .push((name.to_owned(), record.value_bytes().to_vec()));
                } else if key == "mtime" {
                    if let Some(t) = record.value().ok().and_then(parse_pax_time) {
                        meta.mtime = t;
                    }
                } else if key == "uid" {
                    if let Some(v) = record.value().ok().and_then(|v| v.parse().ok()) {
                        meta.uid = v;
                    }
                } else if key == "gid" {
                    if let Some(v) = record.value().ok().and_then(|v| v.parse().ok()) {
                        meta.gid = v;
                    }
                }
            }
        }
        Ok(meta)
    }

    fn set_dir_times(&mut self) {
        for (rel, t) in std::mem::take(&mut self.dir_times) {
            let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                continue;
            };
            // A directory removed later in the layer has no times to set.
            if let Ok(dir) = self.root.dir(parent) {
                let _ = rustix::fs::utimensat(&dir, name, &t, AtFlags::SYMLINK_NOFOLLOW);
            }
        }
    }
}

/// A numeric header field; one left empty (all NUL or spaces, as some writers leave them)
/// is zero, as Go's archive/tar reads it.
fn numeric(parsed: io::Result<u64>, raw: &[u8]) -> Option<u64> {
    match parsed {
        Ok(v) => Some(v),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Some(0),
        Err(_) => None,
    }
}

fn parse_pax_time(v: &str) -> Option<Timespec> {
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let tv_sec = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let tv_nsec = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(Timespec { tv_sec, tv_nsec })
}

fn times(mtime: Timespec) -> Timestamps {
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

fn set_owner_mode_xattrs(fd: BorrowedFd<'_>, meta: &Meta) -> Result<(), Errno> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(meta.uid)),
        Some(rustix::fs::Gid::from_raw(meta.gid)),
    )?;
    for (name, value) in &meta.xattrs {
        match rustix::fs::fsetxattr(fd, name.as_str(), value, rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            Err(Errno::NOTSUP) => tracing::warn!("xattr {name} not supported here: ignored"),
            Err(e) => return Err(e),
        }
    }
    // After chown, which clears set-id bits.
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
}

fn set_fd_meta(fd: BorrowedFd<'_>, meta: &Meta) -> Result<(), Errno> {
    set_owner_mode_xattrs(fd, meta)?;
    rustix::fs::futimens(fd, &times(meta.mtime))
}

/// Owner, mode (not for symlinks, which have none) and times of `name` in `dir`.
fn set_at_meta(dir: BorrowedFd<'_>, name: &OsStr, meta: &Meta, chmod: bool) -> Result<(), Errno> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(meta.uid)),
        Some(rustix::fs::Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if chmod {
        rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())?;
    }
    rustix::fs::utimensat(dir, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
}
