//! Containers in a user namespace through Debian's `ctr run --uidmap/--gidmap` (containerd's
//! `WithUserNamespace` with a remapped snapshot): runc, as the remapped root, reaches the rootfs
//! through crated's bundle, `id` inside says root, and what the container creates is owned by
//! the mapped ids outside; with a writable and a read-only rootfs.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crated_testsupport::cmd::ok;

mod common;

use common::*;

const MAP: [&str; 4] = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];

/// Files named `name` in the snapshotter's snapshot directories.
fn find_in_snapshots(root: &Path, snapshotter: &str, name: &str) -> Vec<PathBuf> {
    let snapshots = root.join(format!(
        "io.containerd.snapshotter.v1.{snapshotter}/snapshots"
    ));
    std::fs::read_dir(snapshots)
        .unwrap()
        .flatten()
        .flat_map(|entry| {
            let dir = entry.path();
            [dir.join(name), dir.join("fs").join(name)]
        })
        .filter(|p| p.exists())
        .collect()
}

fn remapped_root(snapshotter: &str) {
    let Some((daemon, bin, _work)) = setup(snapshotter) else {
        return;
    };
    let id = format!("userns-{snapshotter}");
    let run = |extra: &[&str], id: &str, script: &str| {
        let args: Vec<&str> = ["run", "--snapshotter", snapshotter]
            .into_iter()
            .chain(MAP)
            .chain(extra.iter().copied())
            .chain([IMAGE, id, "/bin/sh", "-c", script])
            .collect();
        ctr(&daemon, &bin, &args)
    };
    let out = ok(run(
        &[],
        &id,
        "/bin/busybox id; /bin/busybox touch /made-inside",
    ));
    assert!(out.starts_with("uid=0 gid=0"), "{out}");
    let made = find_in_snapshots(&daemon.root, snapshotter, "made-inside");
    assert_eq!(made.len(), 1, "{made:?}");
    let meta = std::fs::metadata(&made[0]).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (100000, 100000));
    ok(ctr(&daemon, &bin, &["containers", "rm", &id]));

    // While it runs, the bundle lets the remapped root group through, and no one else.
    let running = format!("{id}-running");
    ok(run(&["-d"], &running, "exec /bin/busybox sleep 1000"));
    let bundle = daemon
        .state
        .join("io.containerd.runtime.v2.task/default")
        .join(&running);
    let meta = std::fs::metadata(&bundle).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o710, 100000));
    ok(ctr(&daemon, &bin, &["tasks", "rm", "-f", &running]));
    ok(ctr(&daemon, &bin, &["containers", "rm", &running]));

    let ro = format!("{id}-ro");
    let out = ok(run(
        &["--rm", "--read-only"],
        &ro,
        "/bin/busybox id; /bin/busybox touch /nope 2>&1; echo status $?",
    ));
    assert!(out.starts_with("uid=0 gid=0"), "{out}");
    assert!(
        out.contains("Read-only file system") && out.contains("status 1"),
        "{out}"
    );
}

#[test]
fn a_remapped_root_runs_with_overlayfs() {
    remapped_root("overlayfs");
}

#[test]
fn a_remapped_root_runs_with_native() {
    remapped_root("native");
}
