//! The `native` snapshotter: each snapshot is a full directory tree at `snapshots/<id>`, made
//! by copying its parent's. It works on any filesystem, at the cost of copies.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{copy_tree, disk_usage};
use crate::local::{Driver, Layout, SnapshotDirs};
use crate::storage::Snapshot;
use crate::{Kind, Mount, Usage};

/// A native snapshot's entry is its tree: fresh, an empty directory.
const LAYOUT: Layout = Layout {
    mode: 0o755,
    subdirs: &[],
};

pub struct Native {
    snapshots: SnapshotDirs,
}

impl Native {
    pub fn new(root: &Path) -> io::Result<Self> {
        Ok(Native {
            snapshots: SnapshotDirs::open(root, LAYOUT)?,
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.snapshots.path(id)
    }
}

impl Driver for Native {
    fn create(&self, s: &Snapshot) -> io::Result<()> {
        // A view of a parent reads the parent's own tree: nothing to make.
        if s.kind == Kind::View && !s.parent_ids.is_empty() {
            return Ok(());
        }
        self.snapshots
            .build(&s.id, LAYOUT, |entry| match s.parent_ids.first() {
                Some(parent) => copy_tree(&self.dir(parent), entry),
                None => Ok(()),
            })
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
        self.snapshots.stage_removal(id).map(Some)
    }

    fn purge(&self, _id: &str, staged: Option<PathBuf>) -> io::Result<()> {
        self.snapshots.purge(staged)
    }

    fn usage(&self, id: &str) -> io::Result<Usage> {
        disk_usage(&self.dir(id))
    }

    fn cleanup(&self, live: &HashMap<String, Kind>) -> io::Result<()> {
        self.snapshots.remove_orphans(live)
    }
}

#[cfg(test)]
mod tests {
    use crate::Snapshotter;

    #[tokio::test]
    async fn native_cannot_rebase() {
        let d = tempfile::tempdir().unwrap();
        let driver = crate::native::Native::new(d.path()).unwrap();
        let sn = crate::LocalSnapshotter::open(d.path(), driver).unwrap();
        assert!(!sn.can_rebase());
        sn.prepare("a", "", Default::default()).await.unwrap();
        sn.commit("base", "a", Default::default()).await.unwrap();
        sn.prepare("b", "", Default::default()).await.unwrap();
        let refused = sn.commit_onto("top", "b", "base", Default::default()).await;
        assert!(
            matches!(refused, Err(crate::SnapshotError::NotImplemented(_))),
            "{refused:?}"
        );
        // Nothing changed: the active snapshot is still there to be committed plainly.
        sn.commit("top", "b", Default::default()).await.unwrap();
    }
}
