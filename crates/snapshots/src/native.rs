//! The `native` snapshotter: each snapshot is a full directory tree at `snapshots/<id>`, made
//! by copying its parent's. It works on any filesystem, at the cost of copies. A snapshot a
//! layer is unpacked into links its parent's files instead (see `fsutil::link_tree`).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::dirs::{Layout, SnapshotDirs};
use crate::fsutil::{copy_tree, disk_usage, disk_usage_within, link_tree};
use crate::local::Driver;
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
                // crated's own unpack shares the parent's files: only its differ writes here,
                // and it replaces files rather than writing into them, so the committed
                // parent stays as it was; its copies would be most of a native pull. Any
                // other snapshot, a client's unpack included, gets copies.
                Some(parent) if s.extraction => link_tree(&self.dir(parent), entry),
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

    fn creates_in_constant_time(&self, kind: Kind, has_parent: bool) -> bool {
        // Anything else copies or links the parent's tree.
        !has_parent || kind == Kind::View
    }

    fn commit(&self, id: &str) -> io::Result<Usage> {
        disk_usage(&self.dir(id))
    }

    fn can_commit_within(&self) -> bool {
        true
    }

    fn commit_within(&self, id: &str, max_entries: usize) -> io::Result<Option<Usage>> {
        disk_usage_within(&self.dir(id), max_entries)
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
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;

    use crate::Snapshotter;

    /// The source directory of a native snapshot's bind mount.
    fn source(mounts: &[crate::Mount]) -> std::path::PathBuf {
        assert_eq!(mounts.len(), 1);
        mounts[0].source.clone().into()
    }

    #[tokio::test]
    async fn only_crateds_own_unpack_links_its_parents_files() {
        let d = tempfile::tempdir().unwrap();
        let driver = crate::native::Native::new(d.path()).unwrap();
        let sn = crate::LocalSnapshotter::open(d.path(), driver).unwrap();
        let base = source(&sn.prepare("a", "", HashMap::new()).await.unwrap());
        std::fs::write(base.join("f"), "data").unwrap();
        sn.commit("base", "a", HashMap::new()).await.unwrap();
        let differ_only =
            || HashMap::from([(crate::LABEL_DIFFER_ONLY.to_owned(), "true".to_owned())]);
        let ino = |dir: &std::path::Path| std::fs::metadata(dir.join("f")).unwrap().ino();
        let base_ino = ino(&base);
        let chain = format!("sha256:{}", "ab".repeat(32));
        let unpack = format!("default/7/extract-1-abc {chain}");
        let linked = source(&sn.prepare(&unpack, "base", differ_only()).await.unwrap());
        assert_eq!(ino(&linked), base_ino);
        // A client's unpack (containerd's key and target label, as ctr makes them), any other
        // key, and the label set to anything but true: copies, which a client may write into.
        let target = HashMap::from([(crate::LABEL_SNAPSHOT_REF.to_owned(), chain.clone())]);
        for (key, labels) in [
            (format!("default/8/extract-123-xyz {chain}"), HashMap::new()),
            (format!("default/9/extract-124-xyz {chain}"), target),
            (
                "container".to_owned(),
                HashMap::from([(crate::LABEL_DIFFER_ONLY.to_owned(), "yes".to_owned())]),
            ),
        ] {
            let copied = source(&sn.prepare(&key, "base", labels).await.unwrap());
            assert_ne!(ino(&copied), base_ino, "{key}");
            assert_eq!(std::fs::read_to_string(copied.join("f")).unwrap(), "data");
        }
        // The unpacked snapshot commits as any other, and copies of it are copies.
        sn.commit("top", &unpack, HashMap::new()).await.unwrap();
        let child = source(&sn.prepare("c", "top", HashMap::new()).await.unwrap());
        assert_ne!(ino(&child), base_ino);
    }

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
