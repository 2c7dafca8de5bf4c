//! Images through Debian's `ctr` against crated: an OCI archive imported and unpacked (ctr's
//! client-side path through our content, leases, images, snapshots and diff services), listed,
//! checked, exported and removed, after which a collection frees its blobs and snapshots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crated_testsupport::blobs::{fails, ok};
use crated_testsupport::layered::Shape;
use crated_testsupport::registry::Registry;
use crated_testsupport::{
    assert_same_tree, is_root, mount_snapshot, tool, tree_listing, umoci_tree, unmount, wait_until,
    Daemon,
};

fn crated() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crated"))
}

const IMAGE: &str = "docker.io/library/busybox:crated";

/// Starts crated and finds ctr and busybox; None (after saying why) when a peer is missing
/// outside CI.
fn setup() -> Option<(Daemon, PathBuf, tempfile::TempDir)> {
    let ctr = tool("ctr", "containerd")?;
    tool("busybox", "busybox-static")?;
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    Some((daemon, ctr, tempfile::tempdir().unwrap()))
}

fn import_round_trip(snapshotter: &str) {
    let Some((daemon, ctr, work)) = setup() else {
        return;
    };
    let imported =
        crated_testsupport::oci::import_busybox(&daemon, &ctr, IMAGE, snapshotter, work.path())
            .unwrap();
    assert!(imported.stdout.contains(IMAGE), "{}", imported.stdout);
    let layer = imported.layer;
    check_export_remove(&daemon, &ctr, IMAGE, &layer, snapshotter, work.path());
}

fn pull_round_trip(snapshotter: &str) {
    let Some(registry) = Registry::start() else {
        return;
    };
    let Some((daemon, ctr, work)) = setup() else {
        return;
    };
    let (image, layer) = crated_testsupport::oci::busybox("busybox");
    registry.push(&image, "busybox:latest");
    let reference = format!("{}/busybox:latest", registry.addr);
    let out = ok(daemon.client(
        &ctr,
        &[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            snapshotter,
            &reference,
        ],
    ));
    assert!(out.contains("unpacking"), "{out}");
    check_export_remove(&daemon, &ctr, &reference, &layer, snapshotter, work.path());
}

/// The image `name` (one busybox layer, `layer`) is listed, complete, unpacked in
/// `snapshotter`, exportable; removed with `--sync`, its blobs and snapshots go.
fn check_export_remove(
    daemon: &Daemon,
    ctr: &Path,
    name: &str,
    layer: &str,
    snapshotter: &str,
    work: &Path,
) {
    let run = |args: &[&str]| daemon.client(ctr, args);
    let ls = ok(run(&["images", "ls"]));
    assert!(ls.contains(name), "{ls}");
    let check = ok(run(&["images", "check"]));
    assert!(check.contains("complete"), "{check}");
    let quiet = ok(run(&["images", "ls", "-q", &format!("name=={name}")]));
    assert_eq!(quiet.trim(), name);
    let none = ok(run(&["images", "ls", "-q", "name==nothing"]));
    assert!(none.trim().is_empty(), "{none}");

    // One layer: the unpacked snapshot is named by its diff id (its chain id).
    let snapshots = |args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", snapshotter];
        all.extend_from_slice(args);
        run(&all)
    };
    let info = ok(snapshots(&["info", layer]));
    assert!(info.contains("Committed"), "{info}");
    if is_root() {
        ok(snapshots(&["prepare", "rootfs", layer]));
        let at = work.join("rootfs");
        mount_snapshot(ctr, daemon, snapshotter, "rootfs", &at);
        let busybox = std::fs::read(at.join("bin/busybox")).unwrap();
        assert_eq!(busybox, std::fs::read("/bin/busybox").unwrap());
        assert_eq!(
            std::fs::read_link(at.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        unmount(&at);
        ok(snapshots(&["rm", "rootfs"]));
    } else {
        eprintln!("not mounting the unpacked image: needs root");
    }

    let exported = work.join("exported.tar");
    ok(run(&["images", "export", exported.to_str().unwrap(), name]));
    let mut names = Vec::new();
    let mut tar = tar::Archive::new(std::fs::File::open(&exported).unwrap());
    for e in tar.entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    assert!(names.iter().any(|n| n == "index.json"), "{names:?}");
    let layer_hex = layer.trim_start_matches("sha256:");
    assert!(
        names.iter().any(|n| n.ends_with(layer_hex)),
        "the layer is exported: {names:?}"
    );

    // ctr warns about a missing image and goes on, as it does against containerd.
    let missing = run(&["images", "rm", "docker.io/library/none:latest"]);
    let warning = String::from_utf8_lossy(&missing.stderr);
    assert!(warning.contains("not found"), "{warning}");
    ok(run(&["images", "rm", "--sync", name]));
    wait_until(
        Duration::from_secs(10),
        || daemon.blob_files().is_empty(),
        || format!("blobs left: {:?}", daemon.blob_files()),
    );
    let left = ok(snapshots(&["ls"]));
    assert_eq!(left.lines().count(), 1, "snapshots left: {left}");
}

#[test]
fn ctr_import_with_native() {
    import_round_trip("native");
}

#[test]
fn ctr_import_with_overlayfs() {
    if overlay_mounts_allowed() {
        import_round_trip("overlayfs");
    }
}

/// Overlay needs root to mount; says so when it is not there.
fn overlay_mounts_allowed() -> bool {
    if !is_root() {
        eprintln!("skipped: overlayfs needs root");
    }
    is_root()
}

#[test]
fn ctr_pull_from_a_registry_with_native() {
    pull_round_trip("native");
}

#[test]
fn ctr_pull_from_a_registry_with_overlayfs() {
    if overlay_mounts_allowed() {
        pull_round_trip("overlayfs");
    }
}

/// A five-layer gzip image with every kind of change (whiteouts of files and directories, an
/// opaque directory, overwrites, type changes, links) pulled by ctr through crated: the
/// mounted image equals what umoci unpacks from the same layout.
fn layered_matches_umoci(snapshotter: &str) {
    if !is_root() {
        eprintln!("skipped: mounting the image and umoci unpack need root");
        return;
    }
    let Some(umoci) = tool("umoci", "umoci") else {
        return;
    };
    let Some(registry) = Registry::start() else {
        return;
    };
    let Some((daemon, ctr, work)) = setup() else {
        return;
    };
    let image = crated_testsupport::layered::build("layered", Shape::test());
    registry.push(&image, "layered:latest");
    let reference = format!("{}/layered:latest", registry.addr);
    ok(daemon.client(
        &ctr,
        &[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            snapshotter,
            &reference,
        ],
    ));

    let expected = umoci_tree(&umoci, &image, work.path());

    let at = work.path().join("mounted");
    std::fs::create_dir(&at).unwrap();
    ok(daemon.client(
        &ctr,
        &[
            "images",
            "mount",
            "--snapshotter",
            snapshotter,
            &reference,
            at.to_str().unwrap(),
        ],
    ));
    let got = tree_listing(&at);
    ok(daemon.client(&ctr, &["images", "unmount", at.to_str().unwrap()]));
    assert_same_tree(&expected, &got, 400);
}

#[test]
fn layered_image_unpacks_like_umoci_with_native() {
    layered_matches_umoci("native");
}

#[test]
fn layered_image_unpacks_like_umoci_with_overlayfs() {
    layered_matches_umoci("overlayfs");
}

/// A layer that plants a symlink to a directory outside and writes through it: the import
/// fails naming the entry, and the file outside is untouched.
#[test]
fn a_layer_writing_through_a_symlink_outside_is_refused() {
    let Some((daemon, ctr, work)) = setup() else {
        return;
    };
    let outside = work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let canary = outside.join("canary");
    std::fs::write(&canary, "canary").unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    let mut link = tar::Header::new_ustar();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_mode(0o777);
    link.set_size(0);
    layer.append_link(&mut link, "evil", &outside).unwrap();
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o644);
    file.set_size(5);
    layer
        .append_data(&mut file, "evil/canary", &b"owned"[..])
        .unwrap();
    let tar = layer.into_inner().unwrap();
    let image = crated_testsupport::oci::image(
        "docker.io/library/evil:latest",
        &[(tar.clone(), tar, "application/vnd.oci.image.layer.v1.tar")],
        r#"["/bin/sh"]"#,
    );
    let archive = work.path().join("evil.tar");
    image.write_archive(&archive);
    let err = fails(daemon.client(
        &ctr,
        &[
            "images",
            "import",
            "--snapshotter",
            "native",
            archive.to_str().unwrap(),
        ],
    ));
    assert!(
        err.contains("evil/canary") && err.contains("escapes the root"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "canary");
}
