//! One daemon per root: an exclusive lock on `<root>/crated.lock`, holding the owner's pid.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};

pub struct RootLock {
    _file: Flock<File>,
}

pub fn lock_root(root: &Path) -> anyhow::Result<RootLock> {
    let path = root.join("crated.lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            locked.set_len(0)?;
            locked.rewind()?;
            // The pid only helps the message of a refused second daemon; the flock is the lock,
            // so this needs no fsync.
            write!(locked, "{}", std::process::id())?;
            Ok(RootLock { _file: locked })
        }
        Err((mut file, errno)) => {
            let mut owner = String::new();
            let _ = file.read_to_string(&mut owner);
            let owner = owner.trim();
            if errno == nix::errno::Errno::EWOULDBLOCK {
                bail!(
                    "another crated (pid {}) is already running on root {}",
                    if owner.is_empty() { "unknown" } else { owner },
                    root.display()
                );
            }
            bail!("locking {}: {errno}", path.display())
        }
    }
}
