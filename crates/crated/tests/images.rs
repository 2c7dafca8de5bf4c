//! Images through Debian's `ctr` against crated: an OCI archive imported and unpacked (ctr's
//! client-side path through our content, leases, images, snapshots and diff services), listed,
//! checked, exported and removed, after which a collection frees its blobs and snapshots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crated_testsupport::cmd::{fails, ok};
use crated_testsupport::layered::Shape;
use crated_testsupport::registry::Registry;
use crated_testsupport::{
    assert_same_tree, is_root, mount_snapshot, tool, tree_listing, umoci_tree, unmount, wait_until,
    Daemon,
};

mod common;
use common::crated;

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
    assert!(check.contains(" complete ("), "{check}");
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

    // ctr 1.6's `images mount` ignores its --snapshotter (it reads a global flag that ctr
    // does not have) and mounts from overlayfs: the image's top snapshot is found and mounted
    // with ctr's `snapshots` commands instead.
    let snapshots = |args: &[&str]| {
        ok(daemon.client(
            &ctr,
            &[&["snapshots", "--snapshotter", snapshotter][..], args].concat(),
        ))
    };
    let listed = snapshots(&["ls"]);
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let parents: Vec<&str> = rows.iter().filter_map(|r| r.get(1).copied()).collect();
    let tops: Vec<&str> = rows
        .iter()
        .filter(|r| r.last() == Some(&"Committed") && !parents.contains(&r[0]))
        .map(|r| r[0])
        .collect();
    assert_eq!(tops.len(), 1, "one image, one top snapshot: {listed}");
    // What a container gets: a writable snapshot of the image (ctr labels it a GC root; its
    // views have neither label nor lease, so a collection may take one at any time). Views
    // are compared in the pull tests, under a lease.
    let at = work.path().join("mounted");
    snapshots(&["prepare", "mounted", tops[0]]);
    mount_snapshot(&ctr, &daemon, snapshotter, "mounted", &at);
    let got = tree_listing(&at);
    unmount(&at);
    snapshots(&["rm", "mounted"]);
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

/// The snapshot of chain `chain` is committed in `snapshotter`.
fn unpacked(daemon: &Daemon, ctr: &Path, snapshotter: &str, chain: &str) -> bool {
    let ls = ok(daemon.client(ctr, &["snapshots", "--snapshotter", snapshotter, "ls"]));
    ls.lines()
        .any(|l| l.starts_with(chain) && l.contains("Committed"))
}

#[test]
fn cratectl_images_export_and_import_round_trip_with_ctr_and_docker_archives() {
    let Some((first, ctr, work)) = setup() else {
        return;
    };
    let cratectl = crated_testsupport::workspace_bin("cratectl");
    let layer = crated_testsupport::oci::import_busybox(&first, &ctr, IMAGE, "native", work.path())
        .unwrap()
        .layer;
    let ours = work.path().join("ours.tar");
    let theirs = work.path().join("theirs.tar");
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    ok(first.client(&cratectl, &["images", "export", &path(&ours), IMAGE]));
    ok(first.client(&ctr, &["images", "export", &path(&theirs), IMAGE]));

    // Our export, read by Debian's ctr into another daemon, unpacked and complete.
    let (second, _, _) = setup().unwrap();
    let out = ok(second.client(
        &ctr,
        &["images", "import", "--snapshotter", "native", &path(&ours)],
    ));
    assert!(out.contains(IMAGE), "{out}");
    assert!(unpacked(&second, &ctr, "native", &layer));
    let check = ok(second.client(&ctr, &["images", "check"]));
    assert!(check.contains(" complete ("), "{check}");

    // ctr's export and ours, imported by cratectl: the image, its blobs and its snapshot.
    for archive in [&theirs, &ours] {
        let (third, _, _) = setup().unwrap();
        let out = ok(third.client(
            &cratectl,
            &[
                "images",
                "import",
                "--snapshotter",
                "native",
                &path(archive),
            ],
        ));
        assert!(out.contains(IMAGE), "{out}");
        assert!(unpacked(&third, &ctr, "native", &layer), "{out}");
        let check = ok(third.client(&ctr, &["images", "check"]));
        assert!(check.contains(" complete ("), "{check}");
        let ours = ok(third.client(&cratectl, &["images", "check", "--snapshotter", "native"]));
        let row = ours
            .lines()
            .find(|l| l.starts_with(IMAGE))
            .unwrap_or_default();
        assert!(
            row.contains("complete (3/3)") && row.trim_end().ends_with("true"),
            "{ours}"
        );
        let usage = ok(third.client(
            &cratectl,
            &["images", "usage", "--snapshotter", "native", IMAGE],
        ));
        assert!(
            usage
                .lines()
                .any(|l| l.starts_with(&layer) && !l.contains("not unpacked")),
            "{usage}"
        );
        // The image record holds the blobs after the import's lease is gone.
        // The import's lease is gone: only the image record holds what was imported.
        let leases = ok(third.client(&ctr, &["leases", "ls", "-q"]));
        assert!(leases.trim().is_empty(), "{leases}");
        let collected = ok(third.client(&cratectl, &["gc"]));
        let content = ok(third.client(&ctr, &["content", "ls", "-q"]));
        assert!(content.contains(&layer), "{collected}\n{content}");
        let labels = ok(third.client(&ctr, &["content", "ls"]));
        assert!(
            labels.contains("containerd.io/gc.ref.snapshot.native="),
            "{labels}"
        );
    }

    // A Docker `save` archive made by skopeo from our export.
    if let Some(skopeo) = tool("skopeo", "skopeo") {
        let docker = work.path().join("docker.tar");
        let out = std::process::Command::new(skopeo)
            .args(["copy", "--quiet"])
            .arg(format!("oci-archive:{}:crated", ours.display()))
            .arg(format!("docker-archive:{}:busybox:dock", docker.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (fourth, _, _) = setup().unwrap();
        let out = ok(fourth.client(
            &cratectl,
            &[
                "images",
                "import",
                "--snapshotter",
                "native",
                &path(&docker),
            ],
        ));
        assert!(out.contains("docker.io/library/busybox:dock"), "{out}");
        assert!(unpacked(&fourth, &ctr, "native", &layer), "{out}");
        let ls = ok(fourth.client(&ctr, &["images", "ls"]));
        assert!(
            ls.contains("application/vnd.docker.distribution.manifest.v2+json"),
            "{ls}"
        );
    }

    // A blob that does not match its name is refused, and nothing is imported.
    let bad = work.path().join("bad.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&bad).unwrap());
    let mut original = tar::Archive::new(std::fs::File::open(&ours).unwrap());
    for entry in original.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if name.ends_with(layer.trim_start_matches("sha256:")) {
            let last = data.len() - 1;
            data[last] ^= 1;
        }
        let mut header = entry.header().clone();
        builder.append_data(&mut header, &name, &data[..]).unwrap();
    }
    builder.finish().unwrap();
    drop(builder);
    let (fifth, _, _) = setup().unwrap();
    let err = fails(fifth.client(&cratectl, &["images", "import", &path(&bad)]));
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(ok(fifth.client(&ctr, &["images", "ls", "-q"]))
        .trim()
        .is_empty());
}
