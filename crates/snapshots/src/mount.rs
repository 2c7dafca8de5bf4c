//! Performing the mounts a snapshotter returns, as containerd's `mount.All` does on Linux:
//! options become mount flags or filesystem data, a read-only bind is remounted read-only,
//! and an overlay whose options would overflow the kernel's one-page limit is mounted from
//! inside the directory its layers share, with relative paths (a deep image needs this).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::Mount;

/// Mount data longer than this is shortened: the kernel copies at most one page of it.
const MAX_DATA: usize = 4096 - 512;

/// Flags named by mount options; the rest is data for the filesystem.
fn parse_options(options: &[String]) -> (MsFlags, MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "defaults" | "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
                propagation |= match o.as_str() {
                    "private" => MsFlags::MS_PRIVATE,
                    "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                    "shared" => MsFlags::MS_SHARED,
                    "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
                };
                continue;
            }
            _ => {
                data.push(o.clone());
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, propagation, data)
}

fn cstring(s: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(s.as_ref()).map_err(|_| io::Error::other("mount argument holds a NUL byte"))
}

/// Mounts each of `mounts` on `target`, in order.
pub fn mount_all(mounts: &[Mount], target: &Path) -> io::Result<()> {
    for m in mounts {
        mount_one(m, target)?;
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> io::Result<()> {
    let (flags, propagation, mut data) = parse_options(&m.options);
    let mut dir = None;
    if m.r#type == "overlay" && data.join(",").len() > MAX_DATA {
        let (common, relative) = compact_overlay(&data);
        dir = Some(common);
        data = relative;
    }
    let target_c = cstring(target.as_os_str().as_bytes())?;
    let source = cstring(&m.source)?;
    let fstype = cstring(&m.r#type)?;
    let data = cstring(data.join(","))?;
    match dir {
        None => nix::mount::mount(
            Some(source.as_c_str()),
            target_c.as_c_str(),
            Some(fstype.as_c_str()),
            flags,
            Some(data.as_c_str()),
        )?,
        Some(dir) => mount_from(&cstring(dir)?, &source, &target_c, &fstype, flags, &data)?,
    }
    if !propagation.is_empty() {
        nix::mount::mount(
            None::<&str>,
            target_c.as_c_str(),
            None::<&str>,
            propagation,
            None::<&str>,
        )?;
    }
    let read_only_bind = MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    if flags.contains(read_only_bind) {
        nix::mount::mount(
            None::<&str>,
            target_c.as_c_str(),
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// The directory every overlay layer path shares, and the options relative to it.
fn compact_overlay(data: &[String]) -> (String, Vec<String>) {
    let mut paths: Vec<&str> = Vec::new();
    for o in data {
        if let Some(lower) = o.strip_prefix("lowerdir=") {
            paths.extend(lower.split(':'));
        } else if let Some(p) = o
            .strip_prefix("upperdir=")
            .or_else(|| o.strip_prefix("workdir="))
        {
            paths.push(p);
        }
    }
    let mut common: Vec<&str> = paths
        .first()
        .map(|p| p.split('/').collect())
        .unwrap_or_default();
    // The last component is the layer itself: the common part is a directory above it.
    common.pop();
    for p in &paths {
        let parts: Vec<&str> = p.split('/').collect();
        let shared = common
            .iter()
            .zip(&parts[..parts.len().saturating_sub(1)])
            .take_while(|(a, b)| a == b)
            .count();
        common.truncate(shared);
    }
    let common = common.join("/");
    let prefix = format!("{common}/");
    let relative = |p: &str| p.strip_prefix(&prefix).unwrap_or(p).to_owned();
    let out = data
        .iter()
        .map(|o| {
            if let Some(lower) = o.strip_prefix("lowerdir=") {
                let parts: Vec<String> = lower.split(':').map(relative).collect();
                format!("lowerdir={}", parts.join(":"))
            } else if let Some(p) = o.strip_prefix("upperdir=") {
                format!("upperdir={}", relative(p))
            } else if let Some(p) = o.strip_prefix("workdir=") {
                format!("workdir={}", relative(p))
            } else {
                o.clone()
            }
        })
        .collect();
    (
        if common.is_empty() {
            "/".into()
        } else {
            common
        },
        out,
    )
}

/// Mounts from inside `dir` so relative paths in `data` resolve there. The working directory
/// is per process, so a child does it: it only makes system calls before it exits.
fn mount_from(
    dir: &CString,
    source: &CString,
    target: &CString,
    fstype: &CString,
    flags: MsFlags,
    data: &CString,
) -> io::Result<()> {
    // SAFETY: the child calls only chdir, mount and _exit, all async-signal-safe, on data
    // prepared before the fork.
    match unsafe { nix::unistd::fork() }? {
        // SAFETY: as above; the pointers are the CStrings this function borrows.
        nix::unistd::ForkResult::Child => unsafe {
            if libc::chdir(dir.as_ptr()) != 0 {
                libc::_exit(*libc::__errno_location());
            }
            let r = libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags.bits(),
                data.as_ptr().cast(),
            );
            libc::_exit(if r == 0 { 0 } else { *libc::__errno_location() });
        },
        nix::unistd::ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None)? {
            nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
            nix::sys::wait::WaitStatus::Exited(_, errno) => {
                Err(io::Error::from_raw_os_error(errno))
            }
            other => Err(io::Error::other(format!("mount helper ended: {other:?}"))),
        },
    }
}

/// Whether a mount of this process's mount namespace has one of the directories `dirs` as its
/// root, as a bind mount of that directory does. True when that cannot be told (the mount
/// table or a directory cannot be read): the caller then assumes the worst.
pub fn shown_by_a_mount(dirs: &[PathBuf]) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ids: Option<Vec<(u64, u64)>> = dirs
        .iter()
        .map(|d| {
            std::fs::symlink_metadata(d)
                .ok()
                .map(|m| (m.dev(), m.ino()))
        })
        .collect();
    let (Some(ids), Ok(table)) = (ids, mount_table()) else {
        return true;
    };
    let names: Vec<&[u8]> = dirs
        .iter()
        .filter_map(|d| d.file_name().map(|n| n.as_bytes()))
        .collect();
    table.split(|b| *b == b'\n').any(|line| {
        // Mount id, parent id, major:minor, root, mount point, ...
        let mut fields = line.split(|b| *b == b' ').skip(2);
        let (Some(device), Some(root), Some(point)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        let same_device = std::str::from_utf8(device)
            .ok()
            .and_then(|d| d.split_once(':'))
            .and_then(|(major, minor)| {
                Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
            })
            .is_some_and(|(major, minor)| {
                ids.iter()
                    .any(|(dev, _)| libc::major(*dev) == major && libc::minor(*dev) == minor)
            });
        // The root is the path of the directory shown, within its filesystem: a cheap sieve,
        // before the exact test, that the mount's point shows the same device and inode.
        let root = unescape(root);
        let named = root
            .rsplit(|b| *b == b'/')
            .next()
            .is_some_and(|last| names.contains(&last));
        same_device
            && named
            && std::fs::metadata(std::ffi::OsStr::from_bytes(&unescape(point)))
                .is_ok_and(|m| ids.contains(&(m.dev(), m.ino())))
    })
}

/// This process's mount table, as last read, and a watch on it.
struct KnownTable {
    /// `/proc/self/mountinfo`, opened before `text` was read through it: the kernel makes it
    /// poll with POLLPRI once a mount or unmount happened since its last poll. It stays on
    /// the namespace it was opened in: the daemon never moves to another.
    watch: std::fs::File,
    text: std::sync::Arc<[u8]>,
}

static MOUNT_TABLE: std::sync::Mutex<Option<KnownTable>> = std::sync::Mutex::new(None);

/// The text of `/proc/self/mountinfo`, read again only when the kernel tells of a change
/// since the last read. A snapshot's removal asks for it once per entry, and a busy node's
/// table holds hundreds of mounts.
fn mount_table() -> io::Result<std::sync::Arc<[u8]>> {
    use std::io::Read;
    let mut known = MOUNT_TABLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(k) = known.as_ref() {
        if !changed(&k.watch) {
            return Ok(k.text.clone());
        }
    }
    // Forgotten before the read: should it fail, the next call must read again, which a
    // watch whose change was already reported would not ask for.
    *known = None;
    let mut watch = std::fs::File::open("/proc/self/mountinfo")?;
    let mut text = Vec::new();
    watch.read_to_end(&mut text)?;
    let text: std::sync::Arc<[u8]> = text.into();
    *known = Some(KnownTable {
        watch,
        text: text.clone(),
    });
    Ok(text)
}

/// Whether the mount table changed since `watch` was last polled (or opened); true when the
/// poll fails, so that the table is read again.
fn changed(watch: &std::fs::File) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(watch.as_fd(), PollFlags::POLLPRI)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_none_or(|r| r.intersects(PollFlags::POLLPRI | PollFlags::POLLERR)),
        Err(_) => true,
    }
}

/// A path of the mount table, whose space, tab, newline and backslash are octal escapes.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|_| field[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Unmounts `target` (lazily when busy, as a last resort).
pub fn unmount(target: &Path) -> io::Result<()> {
    match nix::mount::umount2(target, nix::mount::MntFlags::empty()) {
        Err(nix::errno::Errno::EBUSY) => {
            nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)?;
            Ok(())
        }
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_paths_are_unescaped() {
        assert_eq!(unescape(br"/a\040b\134c\011"), b"/a b\\c\t");
        assert_eq!(unescape(br"/plain"), b"/plain");
        assert_eq!(unescape(br"/cut\04"), br"/cut\04");
    }

    /// A directory is found by the bind mount showing it, and not before.
    #[test]
    fn a_bind_mount_shows_its_source() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: bind mounts need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (source, target) = (dir.path().join("source"), dir.path().join("the target"));
        std::fs::create_dir_all(source.join("sub")).unwrap();
        std::fs::create_dir(&target).unwrap();
        let dirs = [source.clone(), source.join("sub")];
        assert!(!shown_by_a_mount(&dirs));
        nix::mount::mount(
            Some(&source.join("sub")),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let shown = shown_by_a_mount(&dirs);
        // Found under its new name once moved, as an entry moved aside for removal is.
        let moved = dir.path().join("moved");
        std::fs::rename(&source, &moved).unwrap();
        let shown_moved = shown_by_a_mount(&[moved.clone(), moved.join("sub")]);
        unmount(&target).unwrap();
        assert!(shown);
        assert!(shown_moved);
        assert!(!shown_by_a_mount(&[moved.clone(), moved.join("sub")]));
        // What cannot be looked at counts as shown.
        assert!(shown_by_a_mount(&[dir.path().join("missing")]));
    }

    /// An unchanged mount table is not read again, and what is kept is what a read gives (a
    /// mount made meanwhile by another test of this process is a change: tried a few times).
    /// `a_bind_mount_shows_its_source` checks that a change is seen.
    #[test]
    fn an_unchanged_mount_table_is_kept() {
        let kept = (0..10).any(|_| {
            let first = mount_table().unwrap();
            let read = std::fs::read("/proc/self/mountinfo").unwrap();
            let second = mount_table().unwrap();
            std::sync::Arc::ptr_eq(&first, &second) && *second == *read
        });
        assert!(kept);
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, prop, data) = parse_options(&[
            "ro".into(),
            "rbind".into(),
            "rprivate".into(),
            "lowerdir=/a".into(),
        ]);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert_eq!(prop, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(data, vec!["lowerdir=/a".to_string()]);
        let (flags, _, _) = parse_options(&["ro".into(), "rw".into()]);
        assert!(!flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn overlay_paths_become_relative_to_their_common_directory() {
        let (dir, data) = compact_overlay(&[
            "index=off".into(),
            "workdir=/r/snapshots/9/work".into(),
            "upperdir=/r/snapshots/9/fs".into(),
            "lowerdir=/r/snapshots/8/fs:/r/snapshots/10/fs".into(),
        ]);
        assert_eq!(dir, "/r/snapshots");
        assert_eq!(
            data,
            vec![
                "index=off".to_string(),
                "workdir=9/work".into(),
                "upperdir=9/fs".into(),
                "lowerdir=8/fs:10/fs".into()
            ]
        );
    }
}
