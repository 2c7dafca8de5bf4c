//! The `overlayfs` snapshotter, with containerd's layout: `snapshots/<id>/fs` holds a
//! snapshot's own layer and `snapshots/<id>/work` overlayfs's work directory (active ones
//! only). An active snapshot mounts as an overlay on its parents' layers; a snapshot without
//! parents, and a view of a single layer, are bind mounts.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dirs::{Layout, SnapshotDirs};
use crate::fsutil::{disk_usage, disk_usage_within};
use crate::local::Driver;
use crate::storage::Snapshot;
use crate::{Info, Kind, Mount, Usage};

/// The label `upperdir_label` adds: where a snapshot's upper directory is.
pub const UPPERDIR_LABEL: &str = "containerd.io/snapshot/overlay.upperdir";

/// `[plugins."io.containerd.snapshotter.v1.overlayfs"]`, containerd's keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayConfig {
    pub root_path: String,
    pub upperdir_label: bool,
    pub sync_remove: bool,
    pub slow_chown: bool,
    pub mount_options: Vec<String>,
}

/// An active snapshot's entry: its layer (`fs`) and overlayfs's work directory.
const ACTIVE: Layout = Layout {
    mode: 0o700,
    subdirs: &[("fs", 0o755), ("work", 0o711)],
};
/// A view's entry: its (empty) layer only.
const VIEW: Layout = Layout {
    mode: 0o700,
    subdirs: &[("fs", 0o755)],
};

pub struct Overlay {
    snapshots: SnapshotDirs,
    upperdir_label: bool,
    sync_remove: bool,
    /// Options every overlay mount carries: the configured ones, and `index=off` where the
    /// kernel has the index feature and the config does not choose.
    options: Vec<String>,
    /// Whether whiteouts (`c 0 0` devices) can be made here, which a layer unpacked without
    /// its parents needs: not so in a user namespace.
    rebase: bool,
}

impl Overlay {
    pub fn new(root: &Path, config: &OverlayConfig) -> io::Result<Self> {
        let snapshots = SnapshotDirs::open(root, ACTIVE)?;
        let mut options = config.mount_options.clone();
        if !options.iter().any(|o| o.starts_with("index="))
            && Path::new("/sys/module/overlay/parameters/index").exists()
        {
            // Layers are shared between overlays: an index would tie each to one of them.
            options.push("index=off".into());
        }
        let rebase = can_make_whiteouts(root);
        Ok(Overlay {
            snapshots,
            upperdir_label: config.upperdir_label,
            sync_remove: config.sync_remove,
            options,
            rebase,
        })
    }

    fn upper(&self, id: &str) -> PathBuf {
        self.snapshots.path(id).join("fs")
    }

    fn path(p: PathBuf) -> String {
        p.display().to_string()
    }
}

/// Tries to make (and removes) an overlay whiteout under `root`.
fn can_make_whiteouts(root: &Path) -> bool {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let probe = root.join(format!(".whiteout-probe-{}", std::process::id()));
    let made = mknod(&probe, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), 0).is_ok();
    if made {
        let _ = std::fs::remove_file(&probe);
    }
    made
}

impl Driver for Overlay {
    fn can_rebase(&self) -> bool {
        self.rebase
    }

    fn create(&self, s: &Snapshot) -> io::Result<()> {
        let layout = if s.kind == Kind::Active { ACTIVE } else { VIEW };
        self.snapshots.build(&s.id, layout, |entry| {
            if let Some(parent) = s.parent_ids.first() {
                // The new layer belongs to whoever owns the parent's root.
                let owner = std::fs::metadata(self.upper(parent))?;
                let fs = entry.join("fs");
                std::os::unix::fs::lchown(&fs, Some(owner.uid()), Some(owner.gid()))?;
            }
            Ok(())
        })
    }

    fn mounts(&self, s: &Snapshot) -> Vec<Mount> {
        let access = if s.kind == Kind::Active { "rw" } else { "ro" };
        let bind = |source: PathBuf, access: &str| Mount {
            r#type: "bind".into(),
            source: Self::path(source),
            target: String::new(),
            options: vec![access.into(), "rbind".into()],
        };
        if s.parent_ids.is_empty() {
            return vec![bind(self.upper(&s.id), access)];
        }
        let mut options = self.options.clone();
        if s.kind == Kind::Active {
            options.push(format!(
                "workdir={}",
                Self::path(self.snapshots.path(&s.id).join("work"))
            ));
            options.push(format!("upperdir={}", Self::path(self.upper(&s.id))));
        } else if s.parent_ids.len() == 1 {
            return vec![bind(self.upper(&s.parent_ids[0]), "ro")];
        }
        let lower: Vec<String> = s
            .parent_ids
            .iter()
            .map(|p| Self::path(self.upper(p)))
            .collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }]
    }

    fn creates_in_constant_time(&self, _kind: Kind, _has_parent: bool) -> bool {
        // A new layer is empty directories, whatever is below it.
        true
    }

    fn commit(&self, id: &str) -> io::Result<Usage> {
        disk_usage(&self.upper(id))
    }

    fn can_commit_within(&self) -> bool {
        true
    }

    fn commit_within(&self, id: &str, max_entries: usize) -> io::Result<Option<Usage>> {
        disk_usage_within(&self.upper(id), max_entries)
    }

    fn detach(&self, id: &str, _kind: Kind, _has_parent: bool) -> io::Result<Option<PathBuf>> {
        if !self.sync_remove {
            // containerd's default: the directory goes at the next Cleanup.
            return Ok(None);
        }
        self.snapshots.stage_removal(id).map(Some)
    }

    fn purge(&self, _id: &str, staged: Option<PathBuf>) -> io::Result<()> {
        self.snapshots.purge(staged)
    }

    fn usage(&self, id: &str) -> io::Result<Usage> {
        disk_usage(&self.upper(id))
    }

    fn cleanup(&self, live: &HashMap<String, Kind>) -> io::Result<()> {
        self.snapshots.remove_orphans(live)
    }

    fn computed_labels(&self, id: &str, info: &mut Info) {
        if self.upperdir_label {
            info.labels
                .insert(UPPERDIR_LABEL.into(), Self::path(self.upper(id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalSnapshotter, Snapshotter};

    fn open(root: &Path, config: OverlayConfig) -> LocalSnapshotter<Overlay> {
        LocalSnapshotter::open(root, Overlay::new(root, &config).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn mounts_follow_containerds_layout() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let sn = open(root, OverlayConfig::default());
        let snaps = root.join("snapshots").display().to_string();
        let m = sn.prepare("a", "", Default::default()).await.unwrap();
        assert_eq!(m[0].r#type, "bind");
        assert_eq!(m[0].source, format!("{snaps}/1/fs"));
        assert_eq!(m[0].options, vec!["rw", "rbind"]);
        sn.commit("c1", "a", Default::default()).await.unwrap();
        let m = sn.view("v1", "c1", Default::default()).await.unwrap();
        assert_eq!(m[0].r#type, "bind");
        assert_eq!(m[0].options, vec!["ro", "rbind"]);
        assert_eq!(m[0].source, format!("{snaps}/1/fs"));
        let m = sn.prepare("b", "c1", Default::default()).await.unwrap();
        assert_eq!(m[0].r#type, "overlay");
        let opts = &m[0].options;
        assert!(
            opts.contains(&format!("workdir={snaps}/3/work")),
            "{opts:?}"
        );
        assert!(opts.contains(&format!("upperdir={snaps}/3/fs")), "{opts:?}");
        assert_eq!(opts.last().unwrap(), &format!("lowerdir={snaps}/1/fs"));
        sn.commit("c2", "b", Default::default()).await.unwrap();
        let m = sn.view("v2", "c2", Default::default()).await.unwrap();
        assert_eq!(m[0].r#type, "overlay");
        assert_eq!(
            m[0].options.last().unwrap(),
            &format!("lowerdir={snaps}/3/fs:{snaps}/1/fs")
        );
        assert!(!m[0].options.iter().any(|o| o.starts_with("upperdir=")));
        // Async removal: the directory stays until Cleanup.
        sn.remove("v2").await.unwrap();
        sn.remove("c2").await.unwrap();
        assert!(root.join("snapshots/3").exists());
        sn.cleanup().await.unwrap();
        assert!(!root.join("snapshots/3").exists());
        assert!(root.join("snapshots/1").exists());
    }

    #[tokio::test]
    async fn a_layer_made_without_parents_is_committed_onto_one() {
        if !crate::testsuite::can_mount("overlay rebase") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let sn = open(root, OverlayConfig::default());
        assert!(sn.can_rebase());
        let base = sn
            .prepare("base-key", "", Default::default())
            .await
            .unwrap();
        std::fs::write(Path::new(&base[0].source).join("gone"), "lower").unwrap();
        std::fs::write(Path::new(&base[0].source).join("kept"), "lower").unwrap();
        sn.commit("base", "base-key", Default::default())
            .await
            .unwrap();
        // The upper layer, unpacked on its own: its whiteout is an overlay one.
        let top = sn.prepare("top-key", "", Default::default()).await.unwrap();
        assert_eq!(top[0].r#type, "bind");
        let upper = Path::new(&top[0].source);
        std::fs::write(upper.join("new"), "upper").unwrap();
        nix::sys::stat::mknod(
            &upper.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        let wrong = sn
            .commit_onto("top", "top-key", "nope", Default::default())
            .await;
        assert!(
            matches!(wrong, Err(crate::SnapshotError::NotFound(_))),
            "{wrong:?}"
        );
        sn.commit_onto("top", "top-key", "base", Default::default())
            .await
            .unwrap();
        assert_eq!(sn.stat("top").await.unwrap().parent, "base");
        let view = sn.view("v", "top", Default::default()).await.unwrap();
        let target = tempfile::tempdir().unwrap();
        crate::mount::mount_all(&view, target.path()).unwrap();
        let seen = |name: &str| std::fs::read_to_string(target.path().join(name)).ok();
        let (gone, kept, new) = (seen("gone"), seen("kept"), seen("new"));
        crate::mount::unmount(target.path()).unwrap();
        assert_eq!(gone, None);
        assert_eq!(kept.as_deref(), Some("lower"));
        assert_eq!(new.as_deref(), Some("upper"));
        let removal = sn.remove("base").await;
        assert!(removal.is_err(), "a parent with a child was removed");
    }

    #[tokio::test]
    async fn upperdir_label_and_sync_remove() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let sn = open(
            root,
            OverlayConfig {
                upperdir_label: true,
                sync_remove: true,
                ..Default::default()
            },
        );
        sn.prepare("a", "", Default::default()).await.unwrap();
        let upper = root.join("snapshots/1/fs").display().to_string();
        assert_eq!(
            sn.stat("a").await.unwrap().labels.get(UPPERDIR_LABEL),
            Some(&upper)
        );
        let walked = sn.walk(&[]).await.unwrap();
        assert_eq!(walked[0].labels.get(UPPERDIR_LABEL), Some(&upper));
        sn.remove("a").await.unwrap();
        assert!(!root.join("snapshots/1").exists());
    }

    #[tokio::test]
    async fn crash_leftovers_are_removed_on_open() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        {
            let sn = open(root, OverlayConfig::default());
            sn.prepare("a", "", Default::default()).await.unwrap();
        }
        // A create that died before its record was written, and one that died mid-way in an
        // earlier version, which built entries aside.
        std::fs::create_dir_all(root.join("snapshots/2/fs")).unwrap();
        std::fs::create_dir_all(root.join("snapshots/new-3/fs")).unwrap();
        let sn = open(root, OverlayConfig::default());
        assert!(!root.join("snapshots/2").exists());
        assert!(!root.join("snapshots/new-3").exists());
        assert!(root.join("snapshots/1/fs").exists());
        // The next id is 2 again: the record was never written, so its id was never used.
        sn.prepare("b", "", Default::default()).await.unwrap();
        assert!(root.join("snapshots/2/fs").exists());
    }

    /// A removed snapshot's emptied `fs` and `work` are reused whole by the next prepare, but
    /// not once overlayfs (or anyone) left something in them: an xattr here.
    #[tokio::test]
    async fn emptied_layers_are_reused_unless_marked() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let sn = open(root, OverlayConfig::default());
        sn.prepare("a", "", Default::default()).await.unwrap();
        let fs_inode = |id: &str| {
            std::fs::metadata(root.join(format!("snapshots/{id}/fs")))
                .unwrap()
                .ino()
        };
        let work_inode = std::fs::metadata(root.join("snapshots/1/work"))
            .unwrap()
            .ino();
        let first = fs_inode("1");
        sn.remove("a").await.unwrap();
        sn.cleanup().await.unwrap();
        assert!(!root.join("snapshots/1").exists());
        sn.prepare("b", "", Default::default()).await.unwrap();
        assert_eq!(fs_inode("2"), first, "the spare was not taken");
        let work = std::fs::metadata(root.join("snapshots/2/work")).unwrap();
        assert_eq!(work.ino(), work_inode);
        assert_eq!(work.mode() & 0o7777, 0o711);

        if xattr::set(root.join("snapshots/2/fs"), "user.mark", b"1").is_err() {
            eprintln!("skipping the xattr half: user xattrs are not supported here");
            return;
        }
        sn.remove("b").await.unwrap();
        sn.cleanup().await.unwrap();
        let spares = std::fs::read_dir(root.join("snapshots"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("spare-")
            })
            .count();
        assert_eq!(spares, 0, "a marked entry was kept");
        sn.prepare("c", "", Default::default()).await.unwrap();
        assert!(xattr::list(root.join("snapshots/3/fs"))
            .unwrap()
            .next()
            .is_none());
    }
}
