//! The `zfs` snapshotter, with containerd's layout: the snapshotter's root is a mounted zfs
//! dataset, each snapshot a child dataset `<dataset>/<id>` (mountpoint `legacy`, mounted with
//! type `zfs`); a commit takes the zfs snapshot `<dataset>/<id>@snapshot`, and a child is a
//! clone of its parent's. Datasets are made and destroyed with the `zfs` command.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::local::Driver;
use crate::storage::Snapshot;
use crate::{Kind, Mount, Usage};

/// The name of the zfs snapshot a commit takes, as containerd's.
const SNAPSHOT_SUFFIX: &str = "snapshot";

fn zfs(args: &[&str]) -> io::Result<String> {
    crate::host::run_tool("zfs", "zfsutils-linux", args)?
        .map_err(|e| io::Error::other(format!("zfs {}: {e}", args.join(" "))))
}

/// What `zfs get -Hp -o value used` prints: bytes.
fn parse_used(text: &str) -> io::Result<u64> {
    text.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("zfs get used: unexpected output {text:?}")))
}

/// The direct children of `dataset` in `zfs list -H -o name -d 1` output (the dataset itself
/// is listed first), as their last name component.
fn child_ids(dataset: &str, listing: &str) -> Vec<String> {
    let prefix = format!("{dataset}/");
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .filter(|id| !id.is_empty() && !id.contains('/') && !id.contains('@'))
        .map(str::to_owned)
        .collect()
}

pub struct Zfs {
    /// The dataset mounted at the snapshotter's root.
    dataset: String,
}

impl Zfs {
    /// The snapshotter over the zfs dataset mounted at `root`.
    pub fn new(root: &Path) -> io::Result<Self> {
        let dataset = crate::host::mount_source(root)?;
        zfs(&["list", "-H", "-o", "name", &dataset])?;
        Ok(Zfs { dataset })
    }

    fn name(&self, id: &str) -> String {
        format!("{}/{id}", self.dataset)
    }

    fn snapshot_name(&self, id: &str) -> String {
        format!("{}@{SNAPSHOT_SUFFIX}", self.name(id))
    }

    fn exists(name: &str) -> bool {
        zfs(&["list", "-H", "-o", "name", name]).is_ok()
    }

    /// Destroys the dataset of `id` with its commit snapshot, whatever is there of them.
    fn destroy(&self, id: &str) -> io::Result<()> {
        let snapshot = self.snapshot_name(id);
        if Self::exists(&snapshot) {
            zfs(&["destroy", "-d", &snapshot])?;
        }
        let name = self.name(id);
        if Self::exists(&name) {
            zfs(&["destroy", &name])?;
        }
        Ok(())
    }
}

impl Driver for Zfs {
    fn create(&self, s: &Snapshot) -> io::Result<()> {
        let target = self.name(&s.id);
        if Self::exists(&target) {
            // Left by a create whose record never got written (the id is free again).
            self.destroy(&s.id)?;
        }
        match s.parent_ids.first() {
            None => zfs(&["create", "-o", "mountpoint=legacy", &target]),
            Some(parent) => zfs(&[
                "clone",
                "-o",
                "mountpoint=legacy",
                &self.snapshot_name(parent),
                &target,
            ]),
        }
        .map(drop)
    }

    fn mounts(&self, s: &Snapshot) -> Vec<Mount> {
        let options = if s.kind == Kind::Active { "rw" } else { "ro" };
        vec![Mount {
            r#type: "zfs".into(),
            source: self.name(&s.id),
            target: String::new(),
            options: vec![options.into()],
        }]
    }

    fn commit(&self, id: &str) -> io::Result<Usage> {
        let usage = self.usage(id)?;
        let snapshot = self.snapshot_name(id);
        if Self::exists(&snapshot) {
            // Taken by a commit whose record never got written.
            zfs(&["destroy", &snapshot])?;
        }
        zfs(&["snapshot", &snapshot])?;
        Ok(usage)
    }

    fn detach(&self, _id: &str, _kind: Kind, _has_parent: bool) -> io::Result<Option<PathBuf>> {
        Ok(None)
    }

    fn purge(&self, id: &str, _staged: Option<PathBuf>) -> io::Result<()> {
        self.destroy(id)
    }

    fn usage(&self, id: &str) -> io::Result<Usage> {
        let used = parse_used(&zfs(&[
            "get",
            "-Hp",
            "-o",
            "value",
            "used",
            &self.name(id),
        ])?)?;
        // zfs counts no inodes; containerd reports -1 for them.
        Ok(Usage {
            size: used as i64,
            inodes: -1,
        })
    }

    fn cleanup(&self, live: &HashMap<String, Kind>) -> io::Result<()> {
        let listing = zfs(&["list", "-H", "-o", "name", "-d", "1", &self.dataset])?;
        for id in child_ids(&self.dataset, &listing) {
            if !live.contains_key(&id) {
                self.destroy(&id)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_bytes_are_parsed() {
        assert_eq!(parse_used("123456\n").unwrap(), 123456);
        assert!(parse_used("-\n").is_err());
    }

    #[test]
    fn only_direct_children_are_snapshot_datasets() {
        let listing =
            "tank/ctd\ntank/ctd/1\ntank/ctd/2\ntank/ctd/2@snapshot\ntank/ctd/3/x\ntank/ctdx/9\n";
        assert_eq!(child_ids("tank/ctd", listing), ["1", "2"]);
    }
}
