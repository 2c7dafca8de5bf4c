use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crated_errdefs::{HasKind, Kind};
use sha2::{Digest as _, Sha256};

use crate::{apply, compare, ApplyOptions, Whiteouts};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Tar entries written with raw names, so tests can write what a hostile tool would.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn raw(
        &mut self,
        kind: tar::EntryType,
        name: &str,
        link: &str,
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(tar::EntryType::Directory, name, "", mode, b"")
    }

    fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.raw(tar::EntryType::Regular, name, "", 0o644, data.as_bytes())
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(tar::EntryType::Symlink, name, target, 0o777, b"")
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(tar::EntryType::Link, name, target, 0o644, b"")
    }

    fn bytes(&mut self) -> Vec<u8> {
        self.0.finish().unwrap();
        self.0.get_ref().clone()
    }
}

fn delete() -> ApplyOptions {
    ApplyOptions {
        whiteouts: Whiteouts::Delete,
        parents: Vec::new(),
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn a_layer_lands_with_its_metadata_and_its_diff_id() {
    let root = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    layer
        .dir("etc/", 0o750)
        .file("etc/hosts", "127.0.0.1 localhost\n")
        .raw(tar::EntryType::Regular, "./bin/tool", "", 0o4755, b"#!")
        .symlink("etc/link", "/etc/hosts")
        .hardlink("etc/hosts2", "etc/hosts")
        .raw(tar::EntryType::Fifo, "run.fifo", "", 0o600, b"");
    let bytes = layer.bytes();
    let applied = apply(root.path(), &bytes[..], &delete()).unwrap();
    assert_eq!(
        applied.diff_id,
        format!("sha256:{:x}", Sha256::digest(&bytes))
    );
    assert_eq!(applied.size, bytes.len() as u64);

    let r = root.path();
    assert_eq!(read(&r.join("etc/hosts")), "127.0.0.1 localhost\n");
    let etc = std::fs::metadata(r.join("etc")).unwrap();
    assert_eq!(etc.permissions().mode() & 0o7777, 0o750);
    assert_eq!(
        etc.mtime(),
        1_000_000,
        "directory times are set after their contents"
    );
    let tool = std::fs::metadata(r.join("bin/tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(tool.mtime(), 1_000_000);
    assert_eq!(
        std::fs::metadata(r.join("bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755,
        "an unlisted parent is made 0755"
    );
    assert_eq!(
        std::fs::read_link(r.join("etc/link")).unwrap(),
        Path::new("/etc/hosts")
    );
    assert_eq!(
        std::fs::metadata(r.join("etc/hosts2")).unwrap().ino(),
        std::fs::metadata(r.join("etc/hosts")).unwrap().ino()
    );
    assert!(std::fs::symlink_metadata(r.join("run.fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn compressed_layers_unpack_to_the_same_tree_and_diff_id() {
    let mut layer = Layer::new();
    layer.file("a", "alpha");
    let tar = layer.bytes();
    for c in [crate::Compression::Gzip, crate::Compression::Zstd] {
        let mut e = c.encoder(Vec::new()).unwrap();
        std::io::Write::write_all(&mut e, &tar).unwrap();
        let packed = e.finish().unwrap();
        let root = tempfile::tempdir().unwrap();
        let applied = apply(
            root.path(),
            crate::decompress(&packed[..]).unwrap(),
            &delete(),
        )
        .unwrap();
        assert_eq!(
            applied.diff_id,
            format!("sha256:{:x}", Sha256::digest(&tar)),
            "{c:?}"
        );
        assert_eq!(read(&root.path().join("a")), "alpha");
    }
}

#[test]
fn whiteouts_delete_what_the_layers_below_had() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("keep/sub")).unwrap();
    std::fs::write(r.join("gone"), "x").unwrap();
    std::fs::write(r.join("keep/old"), "x").unwrap();
    std::fs::write(r.join("keep/sub/old"), "x").unwrap();
    std::fs::write(r.join("other"), "x").unwrap();
    let mut layer = Layer::new();
    layer
        .file(".wh.gone", "")
        .dir("keep/", 0o755)
        .file("keep/new", "new")
        .file("keep/.wh..wh..opq", "")
        .file(".wh.nothing-there", "");
    apply(r, &layer.bytes()[..], &delete()).unwrap();
    assert!(!r.join("gone").exists());
    assert!(r.join("other").exists());
    assert!(
        !r.join("keep/old").exists(),
        "opaque: the lower contents go"
    );
    assert!(!r.join("keep/sub").exists());
    assert_eq!(
        read(&r.join("keep/new")),
        "new",
        "opaque: this layer's own stay"
    );
}

#[test]
fn an_entry_replaces_what_has_its_name_unless_both_are_directories() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("was-dir/deep")).unwrap();
    std::fs::write(r.join("was-file"), "x").unwrap();
    std::fs::create_dir(r.join("merged")).unwrap();
    std::fs::write(r.join("merged/kept"), "x").unwrap();
    std::os::unix::fs::symlink("/etc", r.join("was-link")).unwrap();
    let mut layer = Layer::new();
    layer
        .file("was-dir", "now a file")
        .dir("was-file/", 0o700)
        .dir("merged/", 0o711)
        .file("was-link", "now a file");
    apply(r, &layer.bytes()[..], &delete()).unwrap();
    assert_eq!(read(&r.join("was-dir")), "now a file");
    assert!(r.join("was-file").is_dir());
    assert!(r.join("merged/kept").exists());
    assert_eq!(
        std::fs::metadata(r.join("merged"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o711
    );
    assert_eq!(read(&r.join("was-link")), "now a file");
    assert!(Path::new("/etc/hostname").exists() || !Path::new("/etc").join("was-link").exists());
}

/// Every entry under `root`: path, type and mode, size, mtime, contents or link target.
fn entries(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let what = if m.file_type().is_symlink() {
            std::fs::read_link(&p).unwrap().display().to_string()
        } else if m.is_file() {
            read(&p)
        } else {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            String::new()
        };
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        out.push(format!(
            "{rel} {:o} {} {} {what}",
            m.mode(),
            m.len(),
            m.mtime()
        ));
    }
    out.sort();
    out
}

/// Native unpacks a layer into a tree whose files are hard links of its committed parent's:
/// every kind of change a layer makes must replace entries, never write into them, so the
/// parent is left exactly as it was.
#[test]
fn a_layer_applied_over_hard_links_of_a_parent_leaves_the_parent_as_it_was() {
    let d = tempfile::tempdir().unwrap();
    let (parent, child) = (d.path().join("parent"), d.path().join("child"));
    for dir in ["dir/deep", "opaque/sub", "kept"] {
        std::fs::create_dir_all(parent.join(dir)).unwrap();
    }
    for (file, data) in [
        ("overwritten", "old"),
        ("dir/deep/overwritten", "old"),
        ("opaque/sub/f", "old"),
        ("opaque/f", "old"),
        ("whited-out", "old"),
        ("linked-to", "old"),
        ("kept/f", "old"),
        ("becomes-dir", "old"),
    ] {
        std::fs::write(parent.join(file), data).unwrap();
        std::fs::set_permissions(parent.join(file), std::fs::Permissions::from_mode(0o640))
            .unwrap();
    }
    std::fs::hard_link(parent.join("overwritten"), parent.join("second-name")).unwrap();
    std::os::unix::fs::symlink("kept/f", parent.join("was-link")).unwrap();
    // The child as native makes it for an unpack: directories anew, the rest linked.
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        std::fs::create_dir(child.join(&rel)).unwrap();
        for e in std::fs::read_dir(parent.join(&rel)).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(rel);
            } else {
                std::fs::hard_link(parent.join(&rel), child.join(&rel)).unwrap();
            }
        }
    }
    let before = entries(&parent);
    let mut layer = Layer::new();
    layer
        .file("overwritten", "new")
        .dir("dir/", 0o711)
        .file("dir/deep/overwritten", "new")
        .file(".wh.whited-out", "")
        .dir("opaque/", 0o755)
        .file("opaque/.wh..wh..opq", "")
        .file("opaque/new", "new")
        .hardlink("new-link", "linked-to")
        .file("was-link", "now a file")
        .dir("becomes-dir/", 0o755)
        .file("becomes-dir/f", "new");
    apply(&child, &layer.bytes()[..], &delete()).unwrap();

    assert_eq!(entries(&parent), before);
    assert_eq!(read(&child.join("overwritten")), "new");
    assert_eq!(read(&child.join("second-name")), "old");
    assert_eq!(read(&child.join("dir/deep/overwritten")), "new");
    assert!(!child.join("whited-out").exists() && parent.join("whited-out").exists());
    assert!(!child.join("opaque/sub").exists() && parent.join("opaque/sub/f").exists());
    assert_eq!(read(&child.join("new-link")), "old");
    assert_eq!(read(&child.join("was-link")), "now a file");
    assert_eq!(read(&child.join("becomes-dir/f")), "new");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(
        (mode(&child.join("dir")), mode(&parent.join("dir"))),
        (0o711, 0o755)
    );
}

/// Writes a hostile layer given the directory outside the root.
type BuildLayer = dyn Fn(&Path, &mut Layer);

/// Each hostile layer is refused with InvalidArgument naming the entry, and the canary next
/// to the root is untouched.
#[test]
fn layers_that_reach_outside_the_root_are_refused() {
    let cases: Vec<(&str, Box<BuildLayer>)> = vec![
        (
            "dotdot",
            Box::new(|_, l| {
                l.file("../canary", "owned");
            }),
        ),
        (
            "dotdot inside",
            Box::new(|_, l| {
                l.file("a/../../canary", "owned");
            }),
        ),
        (
            "absolute",
            Box::new(|outside, l| {
                l.file(&format!("{}/canary", outside.display()), "owned");
            }),
        ),
        (
            "absolute symlink then write",
            Box::new(|outside, l| {
                l.symlink("evil", &outside.display().to_string())
                    .file("evil/canary", "owned");
            }),
        ),
        (
            "relative symlink then write",
            Box::new(|_, l| {
                l.symlink("evil", "../..").file("evil/canary", "owned");
            }),
        ),
        (
            "symlink chain then write",
            Box::new(|_, l| {
                l.dir("d/", 0o755)
                    .symlink("d/up", "..")
                    .symlink("d/out", "up/..")
                    .file("d/out/canary", "owned");
            }),
        ),
        (
            "hard link outside",
            Box::new(|_, l| {
                l.hardlink("stolen", "../canary");
            }),
        ),
        (
            "hard link through a symlink",
            Box::new(|outside, l| {
                l.symlink("evil", &outside.display().to_string())
                    .hardlink("stolen", "evil/canary");
            }),
        ),
        (
            "whiteout through a symlink",
            Box::new(|outside, l| {
                l.symlink("evil", &outside.display().to_string())
                    .file("evil/.wh.canary", "");
            }),
        ),
    ];
    for (what, build) in cases {
        let outside = tempfile::tempdir().unwrap();
        let canary = outside.path().join("canary");
        std::fs::write(&canary, "canary").unwrap();
        let root = outside.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let mut layer = Layer::new();
        build(outside.path(), &mut layer);
        let err = apply(&root, &layer.bytes()[..], &delete()).expect_err(what);
        assert_eq!(err.kind(), Kind::InvalidArgument, "{what}: {err}");
        assert!(
            err.to_string().contains('"'),
            "{what}: names the entry: {err}"
        );
        assert_eq!(read(&canary), "canary", "{what}");
        let hard = std::fs::metadata(&canary).unwrap().nlink();
        assert_eq!(hard, 1, "{what}: no hard link to the canary");
    }
}

#[test]
fn overlay_whiteouts_become_overlay_markers() {
    if !is_root() {
        eprintln!("skipped: overlay whiteouts need root (mknod and trusted.* xattrs)");
        return;
    }
    let lower = tempfile::tempdir().unwrap();
    std::fs::create_dir(lower.path().join("usr")).unwrap();
    std::fs::set_permissions(
        lower.path().join("usr"),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let upper = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    layer
        .file(".wh.gone", "")
        .dir("opaque/", 0o755)
        .file("opaque/.wh..wh..opq", "")
        .file("usr/bin/new", "x");
    let options = ApplyOptions {
        whiteouts: Whiteouts::Overlay,
        parents: vec![lower.path().to_owned()],
    };
    apply(upper.path(), &layer.bytes()[..], &options).unwrap();
    let gone = std::fs::symlink_metadata(upper.path().join("gone")).unwrap();
    assert!(gone.file_type().is_char_device());
    assert_eq!(gone.rdev(), 0);
    assert_eq!(
        xattr_get(&upper.path().join("opaque"), "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );
    assert_eq!(
        std::fs::metadata(upper.path().join("usr"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o711,
        "a directory made for a file copies the lower one's mode"
    );
}

fn xattr_get(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[test]
fn a_computed_layer_turns_the_lower_tree_into_the_upper_one() {
    let lower = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    let (l, u) = (lower.path(), upper.path());
    for t in [l, u] {
        std::fs::create_dir_all(t.join("same/deep")).unwrap();
        std::fs::write(t.join("same/deep/unchanged"), "u").unwrap();
        std::fs::write(t.join("changed"), "before").unwrap();
        std::fs::write(t.join("deleted"), "d").unwrap();
        std::fs::create_dir(t.join("dir-gone")).unwrap();
        std::fs::write(t.join("dir-gone/f"), "f").unwrap();
    }
    // Same tree state both sides for the unchanged files: copy times.
    let same_times = |p: &str| {
        let m = std::fs::metadata(l.join(p)).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(u.join(p))
            .unwrap();
        f.set_modified(m.modified().unwrap()).unwrap();
    };
    same_times("same/deep/unchanged");
    std::fs::write(u.join("changed"), "after, and longer").unwrap();
    std::fs::remove_file(u.join("deleted")).unwrap();
    std::fs::remove_dir_all(u.join("dir-gone")).unwrap();
    std::fs::write(u.join("same/deep/added"), "new").unwrap();
    std::os::unix::fs::symlink("changed", u.join("link")).unwrap();
    std::fs::hard_link(u.join("same/deep/added"), u.join("added-again")).unwrap();

    let mut tar = Vec::new();
    let compared = compare(Some(l), u, &mut tar).unwrap();
    assert_eq!(
        compared.diff_id,
        format!("sha256:{:x}", Sha256::digest(&tar))
    );

    let mut names = Vec::new();
    let mut archive = tar::Archive::new(&tar[..]);
    for e in archive.entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    assert!(!names.iter().any(|n| n.contains("unchanged")), "{names:?}");
    assert!(names.contains(&".wh.deleted".to_string()), "{names:?}");
    assert!(names.contains(&".wh.dir-gone".to_string()), "{names:?}");
    assert!(
        names.contains(&"same/deep/".to_string()),
        "parents carried: {names:?}"
    );

    // Apply on a copy of the lower tree: the upper tree comes out.
    let target = tempfile::tempdir().unwrap();
    let mut copy = Vec::new();
    compare(None, l, &mut copy).unwrap();
    apply(target.path(), &copy[..], &delete()).unwrap();
    apply(target.path(), &tar[..], &delete()).unwrap();
    // Times travel in whole seconds, as in containerd's layers: compare what else there is.
    let t = target.path();
    assert_eq!(read(&t.join("changed")), "after, and longer");
    assert_eq!(read(&t.join("same/deep/unchanged")), "u");
    assert_eq!(read(&t.join("same/deep/added")), "new");
    assert!(!t.join("deleted").exists());
    assert!(!t.join("dir-gone").exists());
    assert_eq!(
        std::fs::read_link(t.join("link")).unwrap(),
        Path::new("changed")
    );
    assert_eq!(
        std::fs::metadata(t.join("added-again")).unwrap().ino(),
        std::fs::metadata(t.join("same/deep/added")).unwrap().ino()
    );
}

/// A tar of one sparse file made by GNU tar in `format` (`gnu`, or `posix` with a sparse
/// version): `size` bytes, "head" at 0 and "tail" at `size - 4`, holes between.
fn gnu_tar_sparse(format: &[&str], size: u64) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("big")).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"head", 0).unwrap();
    file.write_all_at(b"tail", size - 4).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .args(["-c", "--sparse", "-f", "-"])
        .args(format)
        .arg("big")
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}

/// GNU and PAX (0.0, 0.1, 1.0) sparse files unpack to their size with their data at its
/// offsets, as sparse files: a few kilobytes of tar do not become gigabytes on disk.
#[test]
fn sparse_files_unpack_as_sparse_files() {
    // The logical size counts against the free space, so it stays well under what any test
    // machine has free.
    let size = 2u64 << 30;
    for format in [
        &["--format=gnu"][..],
        &["--format=posix", "--sparse-version=0.0"],
        &["--format=posix", "--sparse-version=0.1"],
        &["--format=posix", "--sparse-version=1.0"],
    ] {
        let Some(layer) = gnu_tar_sparse(format, size) else {
            assert!(std::env::var_os("CI").is_none(), "GNU tar is missing");
            eprintln!("SKIPPED: GNU tar not found");
            return;
        };
        assert!(layer.len() < 64 << 10, "{format:?}: {} bytes", layer.len());
        let root = tempfile::tempdir().unwrap();
        apply(root.path(), &layer[..], &delete()).unwrap();
        let big = root.path().join("big");
        let meta = std::fs::metadata(&big).unwrap();
        assert_eq!(meta.len(), size, "{format:?}");
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "{format:?}: {} blocks",
            meta.blocks()
        );
        let file = std::fs::File::open(&big).unwrap();
        use std::os::unix::fs::FileExt;
        let mut four = [0u8; 4];
        file.read_exact_at(&mut four, 0).unwrap();
        assert_eq!(&four, b"head", "{format:?}");
        file.read_exact_at(&mut four, size - 4).unwrap();
        assert_eq!(&four, b"tail", "{format:?}");
        file.read_exact_at(&mut four, size / 2).unwrap();
        assert_eq!(four, [0; 4], "{format:?}");
        // No stray entry (the PAX name, GNUSparseFile.*) is left.
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["big"], "{format:?}");
    }
}

/// A sparse entry claiming more than the filesystem has free is refused before anything is
/// written.
#[test]
fn a_sparse_file_larger_than_the_free_space_is_refused() {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(1);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_pax_extensions([
            ("GNU.sparse.size", &b"1152921504606846976"[..]),
            ("GNU.sparse.map", b"0,1"),
            ("GNU.sparse.name", b"huge"),
        ])
        .unwrap();
    builder
        .append_data(&mut header, "GNUSparseFile.0/huge", &b"x"[..])
        .unwrap();
    let layer = builder.into_inner().unwrap();
    let root = tempfile::tempdir().unwrap();
    let err = apply(root.path(), &layer[..], &delete()).unwrap_err();
    assert_eq!(err.kind(), Kind::InvalidArgument);
    assert!(
        err.to_string()
            .contains("more than its filesystem has free"),
        "{err}"
    );
    assert!(!root.path().join("huge").exists());
}
