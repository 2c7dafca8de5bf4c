//! Computing a layer: walks a lower and an upper tree side by side and writes what differs as
//! an OCI changeset tar (added and changed entries, `.wh.` markers for what is gone), the way
//! containerd's walking differ does. Both trees are only read.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::stream::Digesting;
use crate::DiffError;

/// The tar written: its digest (the diff ID) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compared {
    pub diff_id: String,
    pub size: u64,
}

/// Writes the changes from `lower` (None: an empty tree) to `upper` as a tar into `out`.
pub fn compare(lower: Option<&Path>, upper: &Path, out: impl Write) -> Result<Compared, DiffError> {
    let mut writer = Changes {
        tar: tar::Builder::new(Digesting::new(out)),
        pending_dirs: Vec::new(),
        links: HashMap::new(),
    };
    writer.tar.mode(tar::HeaderMode::Complete);
    writer.walk(lower, upper, Path::new(""))?;
    let mut digesting = writer
        .tar
        .into_inner()
        .map_err(DiffError::io("finishing the layer"))?;
    digesting
        .flush()
        .map_err(DiffError::io("finishing the layer"))?;
    let (diff_id, size) = digesting.finish();
    Ok(Compared { diff_id, size })
}

struct Changes<W: Write> {
    tar: tar::Builder<Digesting<W>>,
    /// Directories entered whose own entry is not written yet: written (parents first) once
    /// something inside them is, so a layer carries the metadata of the directories it fills.
    pending_dirs: Vec<(PathBuf, PathBuf)>,
    /// (device, inode) of multiply linked files written, to write later names as hard links.
    links: HashMap<(u64, u64), PathBuf>,
}

fn sorted_names(dir: &Path) -> Result<Vec<std::ffi::OsString>, DiffError> {
    let mut names = fs::read_dir(dir)
        .map_err(DiffError::io(format!("reading {}", dir.display())))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(DiffError::io(format!("reading {}", dir.display())))?;
    names.sort();
    Ok(names)
}

fn lstat(path: &Path) -> Result<Metadata, DiffError> {
    fs::symlink_metadata(path).map_err(DiffError::io(format!("stat {}", path.display())))
}

impl<W: Write> Changes<W> {
    fn walk(&mut self, lower: Option<&Path>, upper: &Path, rel: &Path) -> Result<(), DiffError> {
        let upper_names = sorted_names(upper)?;
        let lower_names = match lower {
            Some(l) => sorted_names(l)?,
            None => Vec::new(),
        };
        let (mut u, mut l) = (0, 0);
        while u < upper_names.len() || l < lower_names.len() {
            let take_upper = l >= lower_names.len()
                || (u < upper_names.len() && upper_names[u] <= lower_names[l]);
            let take_lower = u >= upper_names.len()
                || (l < lower_names.len() && lower_names[l] <= upper_names[u]);
            if take_upper && take_lower {
                let name = &upper_names[u];
                let lower_dir = lower.expect("a lower name comes from a lower tree");
                self.both(&lower_dir.join(name), &upper.join(name), &rel.join(name))?;
                u += 1;
                l += 1;
            } else if take_upper {
                let name = &upper_names[u];
                self.added(&upper.join(name), &rel.join(name))?;
                u += 1;
            } else {
                let mut marker = std::ffi::OsString::from(".wh.");
                marker.push(&lower_names[l]);
                self.whiteout(&rel.join(marker))?;
                l += 1;
            }
        }
        Ok(())
    }

    fn both(&mut self, lower: &Path, upper: &Path, rel: &Path) -> Result<(), DiffError> {
        let (lm, um) = (lstat(lower)?, lstat(upper)?);
        if um.is_dir() && lm.is_dir() {
            if meta_differs(&lm, &um) || xattrs(lower) != xattrs(upper) {
                self.entry(upper, rel, &um)?;
                self.walk(Some(lower), upper, rel)
            } else {
                self.pending_dirs.push((upper.to_owned(), rel.to_owned()));
                self.walk(Some(lower), upper, rel)?;
                if self.pending_dirs.last().is_some_and(|(_, r)| r == rel) {
                    self.pending_dirs.pop();
                }
                Ok(())
            }
        } else if um.is_dir() {
            self.added(upper, rel)
        } else if lm.file_type() != um.file_type()
            || meta_differs(&lm, &um)
            || content_differs(lower, upper, &lm, &um)?
            || xattrs(lower) != xattrs(upper)
        {
            self.entry(upper, rel, &um)
        } else {
            Ok(())
        }
    }

    /// `upper` and, for a directory, everything under it.
    fn added(&mut self, upper: &Path, rel: &Path) -> Result<(), DiffError> {
        let meta = lstat(upper)?;
        self.entry(upper, rel, &meta)?;
        if meta.is_dir() {
            self.walk(None, upper, rel)?;
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<(), DiffError> {
        for (path, rel) in std::mem::take(&mut self.pending_dirs) {
            let meta = lstat(&path)?;
            self.write_entry(&path, &rel, &meta)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &Path, meta: &Metadata) -> Result<(), DiffError> {
        self.flush_pending()?;
        self.write_entry(path, rel, meta)
    }

    fn whiteout(&mut self, rel: &Path) -> Result<(), DiffError> {
        self.flush_pending()?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(0);
        header.set_mode(0);
        header.set_mtime(0);
        self.tar
            .append_data(&mut header, rel, io::empty())
            .map_err(DiffError::io("writing the layer"))
    }

    fn write_entry(&mut self, path: &Path, rel: &Path, meta: &Metadata) -> Result<(), DiffError> {
        let fail = DiffError::io(format!("adding {} to the layer", path.display()));
        let attrs = xattrs(path);
        if !attrs.is_empty() {
            let records: Vec<(String, Vec<u8>)> = attrs
                .into_iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{}", k.to_string_lossy()), v))
                .collect();
            self.tar
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(DiffError::io("writing the layer"))?;
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(meta.uid() as u64);
        header.set_gid(meta.gid() as u64);
        header.set_mtime(meta.mtime().max(0) as u64);
        header.set_size(0);
        let ft = meta.file_type();
        if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            let mut name = rel.to_owned().into_os_string();
            name.push("/");
            return self
                .tar
                .append_data(&mut header, name, io::empty())
                .map_err(fail);
        }
        if ft.is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            let target = fs::read_link(path).map_err(DiffError::io("reading a symlink"))?;
            return self.tar.append_link(&mut header, rel, target).map_err(fail);
        }
        if meta.nlink() > 1 {
            let id = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&id) {
                header.set_entry_type(tar::EntryType::Link);
                let first = first.clone();
                return self.tar.append_link(&mut header, rel, first).map_err(fail);
            }
            self.links.insert(id, rel.to_owned());
        }
        if ft.is_file() {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let file = fs::File::open(path)
                .map_err(DiffError::io(format!("opening {}", path.display())))?;
            // The size in the header is what is copied; a file that changed meanwhile is cut or
            // padded by the builder's reader contract failing loudly.
            return self
                .tar
                .append_data(&mut header, rel, file.take(meta.len()))
                .map_err(fail);
        }
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else if ft.is_fifo() {
            tar::EntryType::Fifo
        } else {
            tracing::debug!("{} is a socket: not part of a layer", path.display());
            return Ok(());
        };
        header.set_entry_type(kind);
        let rdev = meta.rdev();
        header
            .set_device_major(rustix::fs::major(rdev))
            .map_err(DiffError::io("device number"))?;
        header
            .set_device_minor(rustix::fs::minor(rdev))
            .map_err(DiffError::io("device number"))?;
        self.tar
            .append_data(&mut header, rel, io::empty())
            .map_err(fail)
    }
}

fn meta_differs(a: &Metadata, b: &Metadata) -> bool {
    a.mode() != b.mode()
        || a.uid() != b.uid()
        || a.gid() != b.gid()
        || a.rdev() != b.rdev()
        || (!a.is_dir()
            && (a.size() != b.size() || a.mtime() != b.mtime() || a.mtime_nsec() != b.mtime_nsec()))
}

/// Same size and times say little when the times have no sub-second part (copied from a
/// tar, say): then the bytes decide. Symlinks compare by target.
fn content_differs(
    lower: &Path,
    upper: &Path,
    lm: &Metadata,
    um: &Metadata,
) -> Result<bool, DiffError> {
    if um.file_type().is_symlink() {
        return Ok(fs::read_link(lower).ok() != fs::read_link(upper).ok());
    }
    if !um.is_file() || lm.mtime_nsec() != 0 || um.mtime_nsec() != 0 {
        return Ok(false);
    }
    let read =
        |p: &Path| fs::File::open(p).map_err(DiffError::io(format!("opening {}", p.display())));
    let (mut a, mut b) = (read(lower)?, read(upper)?);
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let na = read_full(&mut a, &mut ba).map_err(DiffError::io("reading"))?;
        let nb = read_full(&mut b, &mut bb).map_err(DiffError::io("reading"))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(true);
        }
        if na == 0 {
            return Ok(false);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A file's extended attributes, sorted; none when it cannot have or list any.
fn xattrs(path: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names) else {
        return Vec::new();
    };
    let mut out: Vec<(std::ffi::OsString, Vec<u8>)> = names[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|name| {
            let name = std::ffi::CStr::from_bytes_with_nul(&[name, b"\0"].concat())
                .ok()?
                .to_owned();
            let mut value = vec![0u8; 64 << 10];
            let len = rustix::fs::lgetxattr(path, name.as_c_str(), &mut value).ok()?;
            value.truncate(len);
            Some((
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes())
                    .to_owned(),
                value,
            ))
        })
        .collect();
    out.sort();
    out
}
