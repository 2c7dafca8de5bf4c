//! Filesystem work the snapshotters share: a faithful tree copy (native's Prepare) and disk
//! usage as containerd counts it.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use nix::fcntl::OFlag;
use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::Usage;

/// Copies the tree at `src` into the existing directory `dst`, keeping ownership, modes,
/// timestamps, extended attributes, hard links (within the tree) and special files.
///
/// A native Prepare copies whole parent trees, so this is most of a native unpack's time: the
/// directories are shared among a few threads, each file is copied and given its attributes
/// through open descriptors (no path walk per call), in-kernel (`copy_file_range`). A file with
/// several links is copied at the first of its names the walk meets, and its other names are
/// linked to that copy once the walk is done (the files of an unpacked native image all have
/// several: see [`link_tree`]); directories get their attributes last, deepest first, so that
/// nothing written into them later moves their times.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fill_tree(src, dst, Files::Copy)
}

/// [`copy_tree`], but everything that is not a directory is hard-linked, not copied: the two
/// trees share those inodes. Only for a tree whose writer replaces entries and never writes
/// into one (a differ unpacking a layer), on top of a tree nobody writes (a committed
/// snapshot): then neither sees the other's changes. Directories are made anew, as
/// `copy_tree` makes them. A file that can take no more links (`EMLINK`) is copied.
pub fn link_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fill_tree(src, dst, Files::Link)
}

/// How [`fill_tree`] gives the new tree what is not a directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Files {
    Copy,
    Link,
}

fn fill_tree(src: &Path, dst: &Path, files: Files) -> io::Result<()> {
    let walk = Walk {
        files,
        state: Mutex::new(WalkState {
            jobs: vec![(src.to_path_buf(), dst.to_path_buf())],
            active: 0,
            failed: None,
        }),
        wake: Condvar::new(),
        first_names: Mutex::new(HashMap::new()),
        later_names: Mutex::new(Vec::new()),
        dirs: Mutex::new(Vec::new()),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(COPY_THREADS));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| walk.work());
        }
    });
    let state = walk.state.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = state.failed {
        return Err(e);
    }
    // Every first name is copied now.
    for (first, to) in walk
        .later_names
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        fs::hard_link(first, to)?;
    }
    let mut dirs = walk.dirs.into_inner().unwrap_or_else(|p| p.into_inner());
    // Deepest first: a parent's times are set after its children's are.
    dirs.sort_by_key(|(_, to, _)| std::cmp::Reverse(to.components().count()));
    for (from, to, meta) in dirs {
        copy_attributes(&from, &to, &meta)?;
    }
    copy_attributes(src, dst, &fs::symlink_metadata(src)?)
}

/// Threads sharing one tree copy.
const COPY_THREADS: usize = 4;

type Entry = (PathBuf, PathBuf, fs::Metadata);

struct WalkState {
    /// Directories to copy the contents of: (source, target).
    jobs: Vec<(PathBuf, PathBuf)>,
    /// Threads copying a directory now (each may add jobs).
    active: usize,
    failed: Option<io::Error>,
}

struct Walk {
    files: Files,
    state: Mutex<WalkState>,
    wake: Condvar,
    /// The name in the new tree of each inode with several links met so far: copied there.
    first_names: Mutex<HashMap<(u64, u64), PathBuf>>,
    /// Other names of those inodes, (first name, name): linked after the walk.
    later_names: Mutex<Vec<(PathBuf, PathBuf)>>,
    /// Directories made, given their attributes after the walk.
    dirs: Mutex<Vec<Entry>>,
}

impl Walk {
    fn work(&self) {
        loop {
            let job = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if state.failed.is_some() {
                        return;
                    }
                    if let Some(job) = state.jobs.pop() {
                        state.active += 1;
                        break job;
                    }
                    if state.active == 0 {
                        self.wake.notify_all();
                        return;
                    }
                    state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                }
            };
            let result = self.copy_dir_contents(&job.0, &job.1);
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.active -= 1;
            if let Err(e) = result {
                state.failed.get_or_insert(e);
            }
            self.wake.notify_all();
        }
    }

    /// Whether `to` is the first name met of `meta`'s inode, which is then copied there;
    /// a later name is kept to be linked to that copy once the walk is done.
    fn is_first_name(&self, meta: &fs::Metadata, to: &Path) -> bool {
        let mut firsts = self.first_names.lock().unwrap_or_else(|p| p.into_inner());
        match firsts.get(&(meta.dev(), meta.ino())) {
            Some(first) => {
                self.later_names
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((first.clone(), to.to_path_buf()));
                false
            }
            None => {
                firsts.insert((meta.dev(), meta.ino()), to.to_path_buf());
                true
            }
        }
    }

    fn copy_dir_contents(&self, src: &Path, dst: &Path) -> io::Result<()> {
        let src_dir = open_dir(src)?;
        let dst_dir = open_dir(dst)?;
        let mut subdirs = Vec::new();
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            let name = entry.file_name();
            let from = entry.path();
            let to = dst.join(&name);
            // Read relative to the directory, not following a symlink.
            let meta = entry.metadata()?;
            let ft = meta.file_type();
            if ft.is_dir() {
                nix::sys::stat::mkdirat(
                    Some(dst_dir.as_raw_fd()),
                    name.as_os_str(),
                    Mode::from_bits_truncate(0o700),
                )?;
                subdirs.push((from.clone(), to.clone()));
                self.dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((from, to, meta));
            } else if self.files == Files::Link && link_at(&src_dir, &dst_dir, &name)? {
                // Shared with the source tree.
            } else if meta.nlink() > 1 && !self.is_first_name(&meta, &to) {
                // Linked to the inode's first copy after the walk.
            } else if ft.is_file() {
                let source = open_at(&src_dir, &name, OFlag::O_RDONLY, Mode::empty())?;
                let target = open_at(
                    &dst_dir,
                    &name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
                    Mode::from_bits_truncate(0o600),
                )?;
                copy_file_contents(&source, &target, meta.len())?;
                file_attributes(&source, &target, &meta)?;
            } else {
                copy_other(&from, &to, &meta)?;
                copy_attributes(&from, &to, &meta)?;
            }
        }
        if !subdirs.is_empty() {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.jobs.extend(subdirs);
            self.wake.notify_all();
        }
        Ok(())
    }
}

/// Links `name` in `src_dir` as `name` in `dst_dir` (a symlink itself, not what it points
/// to); false when the inode can take no more links.
fn link_at(src_dir: &fs::File, dst_dir: &fs::File, name: &OsStr) -> io::Result<bool> {
    match nix::unistd::linkat(
        Some(src_dir.as_raw_fd()),
        name,
        Some(dst_dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::empty(),
    ) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EMLINK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn open_dir(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

fn open_at(dir: &fs::File, name: &OsStr, flags: OFlag, mode: Mode) -> io::Result<fs::File> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        mode,
    )?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { fs::File::from_raw_fd(fd) })
}

/// The bytes of `source` into the new `target`, in the kernel where it can.
fn copy_file_contents(source: &fs::File, target: &fs::File, len: u64) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        match nix::fcntl::copy_file_range(source.as_fd(), None, target.as_fd(), None, chunk) {
            Ok(0) => break,
            Ok(n) => left -= n as u64,
            // Filesystems without it: a plain copy of the rest.
            Err(
                nix::errno::Errno::EXDEV | nix::errno::Errno::ENOSYS | nix::errno::Errno::EINVAL,
            ) if left == len => {
                let mut reader = source;
                let mut writer = target;
                io::copy(&mut reader, &mut writer)?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A symlink, device or FIFO at `to` like the one at `from`.
fn copy_other(from: &Path, to: &Path, meta: &fs::Metadata) -> io::Result<()> {
    if meta.file_type().is_symlink() {
        symlink(fs::read_link(from)?, to)
    } else {
        let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
        mknod(
            to,
            kind,
            Mode::from_bits_truncate(meta.mode() & 0o7777),
            meta.rdev(),
        )?;
        Ok(())
    }
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

/// [`copy_attributes`] for a regular file, through its open descriptors.
fn file_attributes(source: &fs::File, target: &fs::File, meta: &fs::Metadata) -> io::Result<()> {
    use xattr::FileExt as _;
    std::os::unix::fs::fchown(target, Some(meta.uid()), Some(meta.gid()))?;
    target.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    if let Ok(names) = source.list_xattr() {
        for name in names {
            if let Ok(Some(value)) = source.get_xattr(&name) {
                if let Err(e) = target.set_xattr(&name, &value) {
                    tracing::debug!("copying xattr {name:?}: {e}");
                }
            }
        }
    }
    nix::sys::stat::futimens(
        target.as_raw_fd(),
        &TimeSpec::new(meta.atime(), meta.atime_nsec()),
        &TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
    )?;
    Ok(())
}

/// Disk use of the trees under `root`: allocated bytes and inodes, each inode counted once.
pub fn disk_usage(root: &Path) -> io::Result<Usage> {
    Ok(disk_usage_within(root, usize::MAX)?.unwrap_or_default())
}

/// [`disk_usage`], or None if the tree has more than `max_entries` entries (`root` included).
pub fn disk_usage_within(root: &Path, max_entries: usize) -> io::Result<Option<Usage>> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    let mut entries = 0usize;
    while let Some(path) = stack.pop() {
        entries += 1;
        if entries > max_entries {
            return Ok(None);
        }
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
    Ok(Some(usage))
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

    /// `src` holding a set-uid file `sub/f`, a second name `hl` of it, a symlink `ln` to it
    /// and a FIFO.
    fn small_tree(src: &Path) {
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
    }

    /// A walk with a limit gives up past it, and within it counts what the unlimited one does.
    #[test]
    fn disk_usage_within_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        small_tree(dir.path());
        let all = disk_usage(dir.path()).unwrap();
        let entries = 6; // the root, sub, sub/f, hl (the same inode), ln and the FIFO
        assert_eq!(all.inodes, 5);
        let within = disk_usage_within(dir.path(), entries).unwrap().unwrap();
        assert_eq!((within.inodes, within.size), (all.inodes, all.size));
        assert!(disk_usage_within(dir.path(), entries - 1)
            .unwrap()
            .is_none());
    }

    #[test]
    fn copy_keeps_modes_links_and_special_files() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let dst = d.path().join("dst");
        small_tree(&src);
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

    #[test]
    fn a_linked_tree_shares_all_but_directories() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let dst = d.path().join("dst");
        small_tree(&src);
        fs::create_dir(src.join("sub/deeper")).unwrap();
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o711)).unwrap();
        let old = TimeSpec::new(1_000_000, 0);
        utimensat(
            None,
            &src.join("sub"),
            &old,
            &old,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        fs::create_dir(&dst).unwrap();
        link_tree(&src, &dst).unwrap();
        assert_eq!(listing(&dst).0, listing(&src).0);
        let ino = |p: PathBuf| fs::symlink_metadata(p).unwrap().ino();
        for shared in ["sub/f", "hl", "ln", "fifo"] {
            assert_eq!(ino(src.join(shared)), ino(dst.join(shared)), "{shared}");
        }
        for made in ["", "sub", "sub/deeper"] {
            assert_ne!(ino(src.join(made)), ino(dst.join(made)), "{made:?}");
        }
        // A copy of the linked tree, whose files all have links outside it, is a copy: each
        // inode once, the tree's own hard links kept.
        let again = d.path().join("again");
        fs::create_dir(&again).unwrap();
        copy_tree(&dst, &again).unwrap();
        assert_eq!(listing(&again).0, listing(&src).0);
        assert_eq!(
            listing(&again).1,
            vec![vec!["hl".to_owned(), "sub/f".to_owned()]]
        );
        assert_ne!(ino(again.join("sub/f")), ino(src.join("sub/f")));
        // A name replaced in the linked tree leaves the source's as it was.
        fs::remove_file(dst.join("sub/f")).unwrap();
        fs::write(dst.join("sub/f"), b"new").unwrap();
        assert_eq!(fs::read(src.join("sub/f")).unwrap(), b"data");
        assert_eq!(fs::read(dst.join("hl")).unwrap(), b"data");
    }

    /// Every entry under `root` with what a copy must keep (type, mode, owner, size, mtime,
    /// link target, contents), and which entries share an inode.
    fn listing(root: &Path) -> (Vec<String>, Vec<Vec<String>>) {
        let mut out = Vec::new();
        let mut inodes: HashMap<u64, Vec<String>> = HashMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let extra = if m.file_type().is_symlink() {
                fs::read_link(&p).unwrap().display().to_string()
            } else if m.is_file() {
                String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned()
            } else {
                String::new()
            };
            out.push(format!(
                "{rel} {:o} {}:{} {} {} {extra}",
                m.mode(),
                m.uid(),
                m.gid(),
                if m.is_dir() { 0 } else { m.len() },
                m.mtime()
            ));
            if !m.is_dir() && m.nlink() > 1 {
                inodes.entry(m.ino()).or_default().push(rel);
            }
            if m.is_dir() {
                for e in fs::read_dir(&p).unwrap() {
                    stack.push(e.unwrap().path());
                }
            }
        }
        out.sort();
        let mut groups: Vec<Vec<String>> = inodes
            .into_values()
            .map(|mut g| {
                g.sort();
                g
            })
            .collect();
        groups.sort();
        (out, groups)
    }

    #[test]
    fn a_wide_tree_copies_exactly_with_links_across_directories() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        for i in 0..40 {
            let dir = src.join(format!("d{i}/e{}", i % 3));
            fs::create_dir_all(&dir).unwrap();
            for j in 0..15 {
                let f = dir.join(format!("f{j}"));
                fs::write(&f, format!("{i}/{j}").repeat(j + 1)).unwrap();
                fs::set_permissions(&f, fs::Permissions::from_mode(0o600 + j as u32)).unwrap();
            }
            symlink(format!("../d{}/e0/f1", (i + 1) % 40), dir.join("up")).unwrap();
        }
        for i in 0..40 {
            // A link in another directory to the first file of each directory.
            let first = src.join(format!("d{i}/e{}/f0", i % 3));
            fs::hard_link(first, src.join(format!("d{}/hl{i}", (i + 7) % 40))).unwrap();
        }
        for i in 0..40 {
            let old = TimeSpec::new(1_000_000 + i as i64, 0);
            for dir in [format!("d{i}/e{}", i % 3), format!("d{i}")] {
                utimensat(
                    None,
                    &src.join(dir),
                    &old,
                    &old,
                    UtimensatFlags::NoFollowSymlink,
                )
                .unwrap();
            }
        }
        let dst = d.path().join("dst");
        fs::create_dir(&dst).unwrap();
        copy_tree(&src, &dst).unwrap();
        let (want, want_links) = listing(&src);
        let (got, got_links) = listing(&dst);
        assert_eq!(got, want);
        assert_eq!(got_links, want_links);
        assert_eq!(got_links.len(), 40);
        // A second copy into a tree that has an entry fails and says so.
        let again = d.path().join("again");
        fs::create_dir_all(again.join("d3")).unwrap();
        let e = copy_tree(&src, &again).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
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
