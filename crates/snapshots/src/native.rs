//! The `native` snapshotter: each snapshot is a full directory tree at `snapshots/<id>`, made
//! by copying its parent's. It works on any filesystem, at the cost of copies.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{copy_tree, disk_usage, make_dir, remove_tree};
use crate::local::{orphans, Driver};
use crate::storage::Snapshot;
use crate::{Kind, Mount, Usage};

pub struct Native {
    snapshots: PathBuf,
}

impl Native {
    pub fn new(root: &Path) -> io::Result<Self> {
        let snapshots = root.join("snapshots");
        if !snapshots.exists() {
            std::fs::create_dir_all(root)?;
            make_dir(&snapshots, 0o700)?;
        }
        Ok(Native { snapshots })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.snapshots.join(id)
    }
}

impl Driver for Native {
    fn create(&self, s: &Snapshot) -> io::Result<()> {
        // A view of a parent reads the parent's own tree: nothing to make.
        if s.kind == Kind::View && !s.parent_ids.is_empty() {
            return Ok(());
        }
        let staging = self.snapshots.join(format!("new-{}", s.id));
        remove_tree(&staging)?;
        make_dir(&staging, 0o755)?;
        let made = match s.parent_ids.first() {
            Some(parent) => copy_tree(&self.dir(parent), &staging),
            None => Ok(()),
        };
        let target = self.dir(&s.id);
        let made = made.and_then(|()| {
            // Left by a create whose record never got written (the id is free again).
            remove_tree(&target)?;
            std::fs::rename(&staging, &target)
        });
        if made.is_err() {
            let _ = remove_tree(&staging);
        }
        made
    }

    fn mounts(&self, s: &Snapshot) -> Vec<Mount> {
        let (source, access) = match (s.kind, s.parent_ids.first()) {
            (Kind::View, Some(parent)) => (self.dir(parent), "ro"),
            (Kind::View, None) => (self.dir(&s.id), "ro"),
            _ => (self.dir(&s.id), "rw"),
        };
        vec![Mount {
            r#type: "bind".into(),
            source: source.display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), access.into()],
        }]
    }

    fn commit(&self, id: &str) -> io::Result<Usage> {
        disk_usage(&self.dir(id))
    }

    fn detach(&self, id: &str, kind: Kind, has_parent: bool) -> io::Result<Option<PathBuf>> {
        if kind == Kind::View && has_parent {
            return Ok(None);
        }
        let staged = self.snapshots.join(format!("rm-{id}"));
        std::fs::rename(self.dir(id), &staged)?;
        Ok(Some(staged))
    }

    fn usage(&self, id: &str) -> io::Result<Usage> {
        disk_usage(&self.dir(id))
    }

    fn cleanup(&self, live: &HashMap<String, Kind>) -> io::Result<()> {
        for path in orphans(&self.snapshots, |id| live.contains_key(id))? {
            remove_tree(&path)?;
        }
        Ok(())
    }
}
