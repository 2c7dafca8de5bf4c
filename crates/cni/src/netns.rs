//! Named network namespaces as containerd makes them for pods: an empty file
//! `<dir>/cni-<uuid>` with a new netns bind-mounted onto it (so it outlives every process in
//! it), removed by a lazy unmount and an unlink; and running code on a thread inside one.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::CniError;

/// Where containerd pins pod network namespaces (and `ip netns` looks).
pub const DEFAULT_NETNS_DIR: &str = "/var/run/netns";

fn netns_error(path: &Path, op: &'static str) -> impl FnOnce(nix::Error) -> CniError {
    let path = path.to_path_buf();
    move |source| CniError::Netns { path, op, source }
}

/// Creates a new network namespace pinned at `<dir>/cni-<random uuid>` and returns that path.
/// Needs CAP_SYS_ADMIN.
pub fn create_netns(dir: &Path) -> Result<PathBuf, CniError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| CniError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    // containerd's name: 16 random bytes as cni-%x-%x-%x-%x-%x, a UUID's layout.
    let path = dir.join(format!("cni-{}", uuid::Uuid::new_v4().hyphenated()));
    // The mount point; O_EXCL so that a clash with an existing namespace fails, never joins it.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
        .map_err(|source| CniError::Io {
            path: path.clone(),
            source,
        })?;
    if let Err(e) = pin_new_netns(&path) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    tracing::debug!(netns = %path.display(), "created a network namespace");
    Ok(path)
}

/// unshare(CLONE_NEWNET) moves only the calling thread, so a thread of its own does it, binds
/// its new netns onto `path` and exits: no other thread of the daemon changes namespace, and
/// the thread is never reused.
fn pin_new_netns(path: &Path) -> Result<(), CniError> {
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET).map_err(netns_error(path, "unshare"))?;
                let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
                mount(
                    Some(own.as_str()),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(netns_error(path, "bind mount"))
            })
            .join()
    });
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Unmounts and deletes a namespace made by [`create_netns`]. Removing one that is already
/// gone, or a leftover file that is no longer a mount, succeeds: teardown is retried.
pub fn remove_netns(path: &Path) -> Result<(), CniError> {
    match path.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CniError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(_) => {}
    }
    // Lazy: a process still holding the namespace keeps it, but the path is freed now.
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-made or already unmounted namespace).
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(netns_error(path, "unmount")(e)),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CniError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => {
            tracing::debug!(netns = %path.display(), "removed a network namespace");
            Ok(())
        }
    }
}

/// Runs `f` on a new thread that has entered the network namespace at `path`, and returns
/// what it returns. Sockets opened there stay in that namespace, so they can be handed back
/// and used from anywhere (port forwarding into a pod). Blocks until `f` is done.
pub fn run_in_netns<T, F>(path: &Path, f: F) -> Result<T, CniError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let file = File::open(path).map_err(|source| CniError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // Only this thread moves, and it ends with `f`: nothing runs in the wrong
                // namespace afterwards.
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(netns_error(path, "setns"))?;
                Ok(f())
            })
            .join()
    });
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root, or a skip (a failure on CI, which runs as root).
    fn root() -> bool {
        if crated_testsupport::is_root() {
            return true;
        }
        assert!(
            !crated_testsupport::on_ci(),
            "network namespace tests need root on CI"
        );
        eprintln!("SKIPPED: creating network namespaces needs root");
        false
    }

    /// Removes the netns even when an assertion fails first.
    struct Guard(PathBuf);

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = remove_netns(&self.0);
        }
    }

    fn netns_inode(path: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    fn mounted(path: &Path) -> bool {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let path = path.to_str().unwrap();
        mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(path))
    }

    #[test]
    fn a_netns_is_created_entered_and_removed() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = create_netns(&dir.path().join("netns")).unwrap();
        let _guard = Guard(path.clone());
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("cni-"));
        let groups: Vec<usize> = name[4..].split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(mounted(&path));

        let host = netns_inode("/proc/self/ns/net");
        let pinned = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&path).unwrap().ino()
        };
        assert_ne!(pinned, host, "a new namespace, not the host's");
        let inside = run_in_netns(&path, || netns_inode("/proc/thread-self/ns/net")).unwrap();
        assert_eq!(inside, pinned);
        // The caller's thread never moved.
        assert_eq!(netns_inode("/proc/thread-self/ns/net"), host);
        // Sockets made there live there: the host's loopback listener is out of reach.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(std::net::TcpStream::connect(addr).is_ok());
        let reached = run_in_netns(&path, || std::net::TcpStream::connect(addr).is_ok()).unwrap();
        assert!(!reached, "a connection from inside stays inside");

        remove_netns(&path).unwrap();
        assert!(!path.exists());
        assert!(!mounted(&path));
        remove_netns(&path).unwrap();
        assert!(run_in_netns(&path, || ()).is_err());
    }

    #[test]
    fn removing_a_plain_file_or_nothing_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni-leftover");
        std::fs::write(&path, "").unwrap();
        if root() {
            remove_netns(&path).unwrap();
            assert!(!path.exists());
        }
        remove_netns(&dir.path().join("absent")).unwrap();
    }

    #[test]
    fn a_panic_inside_the_netns_thread_reaches_the_caller() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = create_netns(dir.path()).unwrap();
        let _guard = Guard(path.clone());
        let caught = std::panic::catch_unwind(|| run_in_netns(&path, || panic!("inside")));
        assert!(caught.is_err());
        remove_netns(&path).unwrap();
    }
}
