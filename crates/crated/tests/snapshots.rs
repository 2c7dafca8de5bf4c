//! Snapshots through Debian's `ctr` against crated: each built-in snapshotter that can run
//! here, data written through a mounted active snapshot, checked in a view of its commit, and
//! the backend's copy gone once the record is removed and a collection ran.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crated_testsupport::cmd::{fails, ok};
use crated_testsupport::{is_root, mount_snapshot, tool, unmount, wait_until, Daemon};

mod common;
use common::crated;

/// The entries of the backend's `snapshots` directory, but for spares (emptied entries of
/// removed snapshots kept for reuse, which belong to no snapshot).
fn backend_entries(daemon: &Daemon, snapshotter: &str) -> Vec<String> {
    let dir = daemon.root.join(format!(
        "io.containerd.snapshotter.v1.{snapshotter}/snapshots"
    ));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("spare-"))
        .collect();
    names.sort();
    names
}

pub fn ctr_round_trip(ctr: &Path, daemon: &Daemon, snapshotter: &str, work: &Path) {
    let run_in = |namespace: &str, args: &[&str]| {
        let mut all = vec!["-n", namespace, "snapshots", "--snapshotter", snapshotter];
        all.extend_from_slice(args);
        daemon.client(ctr, &all)
    };
    let run = |args: &[&str]| run_in("default", args);
    ok(run(&["prepare", "a", ""]));
    let err = fails(run(&["prepare", "a", ""]));
    assert!(err.contains("already exists"), "{err}");
    let mounted = is_root();
    if mounted {
        let at = work.join(format!("{snapshotter}-a"));
        mount_snapshot(ctr, daemon, snapshotter, "a", &at);
        std::fs::write(at.join("hello"), b"from a\n").unwrap();
        std::fs::create_dir(at.join("dir")).unwrap();
        unmount(&at);
    } else {
        eprintln!("not mounting snapshots: needs root");
    }
    ok(run(&["commit", "c", "a"]));
    ok(run(&["prepare", "b", "c"]));
    ok(run(&["view", "v", "c"]));
    if mounted {
        let at = work.join(format!("{snapshotter}-b"));
        mount_snapshot(ctr, daemon, snapshotter, "b", &at);
        assert_eq!(std::fs::read(at.join("hello")).unwrap(), b"from a\n");
        std::fs::write(at.join("second"), b"from b").unwrap();
        std::fs::remove_dir(at.join("dir")).unwrap();
        unmount(&at);
        ok(run(&["commit", "c2", "b"]));
        ok(run(&["view", "v2", "c2"]));
        let at = work.join(format!("{snapshotter}-v2"));
        mount_snapshot(ctr, daemon, snapshotter, "v2", &at);
        assert_eq!(std::fs::read(at.join("hello")).unwrap(), b"from a\n");
        assert_eq!(std::fs::read(at.join("second")).unwrap(), b"from b");
        assert!(!at.join("dir").exists());
        assert!(
            std::fs::write(at.join("x"), b"x").is_err(),
            "a view is read-only"
        );
        unmount(&at);
    } else {
        ok(run(&["commit", "c2", "b"]));
        ok(run(&["view", "v2", "c2"]));
    }

    let ls = ok(run(&["ls"]));
    let rows: Vec<Vec<&str>> = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(rows.contains(&vec!["c", "Committed"]), "{ls}");
    assert!(rows.contains(&vec!["c2", "c", "Committed"]), "{ls}");
    assert!(rows.contains(&vec!["v", "c", "View"]), "{ls}");
    assert!(rows.contains(&vec!["v2", "c2", "View"]), "{ls}");
    let tree = ok(run(&["tree"]));
    assert!(tree.contains(" c\n") && tree.contains("\\_ c2"), "{tree}");
    let usage = ok(run(&["usage", "c"]));
    assert!(
        usage.lines().nth(1).unwrap_or("").starts_with("c "),
        "{usage}"
    );
    let info = ok(run(&["info", "c2"]));
    assert!(
        info.contains("\"Kind\": \"Committed\"") && info.contains("\"Parent\": \"c\""),
        "{info}"
    );
    ok(run(&["label", "c2", "team=storage"]));
    assert!(ok(run(&["info", "c2"])).contains("\"team\": \"storage\""));

    let err = fails(run(&["rm", "c"]));
    assert!(err.contains("failed precondition"), "{err}");
    // Namespaces do not see each other's snapshots.
    let err = fails(run_in("other", &["prepare", "x", "c"]));
    assert!(err.contains("not found"), "{err}");
    assert!(ok(run_in("other", &["ls"])).lines().nth(1).is_none());

    ok(run(&["rm", "v", "v2", "c2"]));
    ok(run(&["rm", "c"]));
    assert_eq!(ok(run(&["ls"])).lines().count(), 1);
}

/// ctr labels what it prepares and commits as GC roots, but not its views, which the
/// collector may take once ctr's own lease ends (containerd does the same): the round trip
/// runs without the collector.
const NO_GC: &str = "version = 2\ndisabled_plugins = [\"io.containerd.gc.v1.scheduler\"]\n";

/// Removed snapshots leave the backend once a collection ran.
fn backend_follows_removals(ctr: &Path, daemon: &Daemon, snapshotter: &str) {
    let run = |args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", snapshotter];
        all.extend_from_slice(args);
        daemon.client(ctr, &all)
    };
    ok(run(&["prepare", "a", ""]));
    ok(run(&["commit", "c", "a"]));
    ok(run(&["prepare", "b", "c"]));
    assert_eq!(backend_entries(daemon, snapshotter).len(), 2);
    ok(run(&["rm", "b"]));
    ok(run(&["rm", "c"]));
    wait_until(
        Duration::from_secs(10),
        || backend_entries(daemon, snapshotter).is_empty(),
        || {
            format!(
                "backend snapshots left: {:?}\n{}",
                backend_entries(daemon, snapshotter),
                daemon.log()
            )
        },
    );
}

#[test]
fn ctr_drives_native_and_overlayfs() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let daemon = Daemon::crated(&crated(), Some(NO_GC), &[]).unwrap();
    let work = daemon.dir.path().join("mnt");
    for snapshotter in ["native", "overlayfs"] {
        ctr_round_trip(&ctr, &daemon, snapshotter, &work);
    }
    let err = fails(daemon.client(&ctr, &["snapshots", "--snapshotter", "nope", "ls"]));
    assert!(err.contains("snapshotter not loaded: nope"), "{err}");
}

/// containerd 2's `rebase` through the snapshots API: overlayfs advertises it and stacks a
/// layer prepared alone onto the parent given on Commit; native, which copies its parent's
/// tree at prepare, neither advertises it nor accepts such a commit.
#[test]
fn overlayfs_rebases_on_commit_and_native_refuses() {
    use crated_testsupport::rebase::{capabilities, check_rebase, Snapshots};
    if !is_root() {
        eprintln!("skipped: overlayfs needs root to mount");
        return;
    }
    let daemon = Daemon::crated(&crated(), Some(NO_GC), &[]).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert!(capabilities(&daemon.socket, "overlayfs")
            .await
            .contains(&"rebase".to_owned()));
        assert!(!capabilities(&daemon.socket, "native")
            .await
            .contains(&"rebase".to_owned()));
        check_rebase(&daemon.socket, "overlayfs", daemon.dir.path()).await;

        let mut native = Snapshots::connect(&daemon.socket, "native").await;
        native.prepare("base-active", "").await;
        native.commit("base", "base-active", "").await.unwrap();
        native.prepare("alone", "").await;
        assert_eq!(
            native.commit("top", "alone", "base").await,
            Err(tonic::Code::Unimplemented)
        );
        assert_eq!(native.stat("alone").await.unwrap().parent, "");
        assert_eq!(native.stat("top").await, Err(tonic::Code::NotFound));
    });
}

#[test]
fn cratectl_drives_native_and_overlayfs_as_ctr_does() {
    let cratectl = crated_testsupport::workspace_bin("cratectl");
    let daemon = Daemon::crated(&crated(), Some(NO_GC), &[]).unwrap();
    let work = daemon.dir.path().join("mnt");
    for snapshotter in ["native", "overlayfs"] {
        ctr_round_trip(&cratectl, &daemon, snapshotter, &work);
    }
    // Filters, which ctr 1.6 has no flag for.
    let run = |args: &[&str]| daemon.client(&cratectl, args);
    ok(run(&[
        "snapshots",
        "--snapshotter",
        "native",
        "prepare",
        "p",
        "",
    ]));
    ok(run(&[
        "snapshots",
        "--snapshotter",
        "native",
        "commit",
        "pc",
        "p",
    ]));
    ok(run(&[
        "snapshots",
        "--snapshotter",
        "native",
        "prepare",
        "q",
        "pc",
    ]));
    ok(run(&[
        "snapshots",
        "--snapshotter",
        "native",
        "label",
        "q",
        "team=x",
    ]));
    let ls = ok(run(&[
        "snapshots",
        "--snapshotter",
        "native",
        "ls",
        "labels.team==x",
    ]));
    assert_eq!(ls.lines().skip(1).collect::<Vec<_>>().len(), 1, "{ls}");
    assert!(ls.lines().nth(1).unwrap().starts_with("q "), "{ls}");
    let ls = ok(run(&[
        "snapshots",
        "--snapshotter",
        "native",
        "ls",
        "kind==committed",
    ]));
    assert!(ls.lines().nth(1).unwrap().starts_with("pc "), "{ls}");
    let err = fails(run(&[
        "snapshots",
        "--snapshotter",
        "native",
        "ls",
        "labels.==",
    ]));
    assert!(
        err.contains("invalid argument") || err.contains("parse"),
        "{err}"
    );
}

#[test]
fn the_collector_removes_what_records_no_longer_keep() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    for snapshotter in ["native", "overlayfs"] {
        backend_follows_removals(&ctr, &daemon, snapshotter);
    }
}

#[test]
fn plugins_ls_shows_every_snapshotter_with_this_hosts_status() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    let table = ok(daemon.client(&ctr, &["plugins", "ls"]));
    let status = |id: &str| -> String {
        table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|c| c.len() == 4 && c[0] == "io.containerd.snapshotter.v1" && c[1] == id)
            .unwrap_or_else(|| panic!("no {id} in {table}"))[3]
            .to_owned()
    };
    assert_eq!(status("native"), "ok");
    assert_eq!(status("overlayfs"), "ok");
    // The daemon root here is not on btrfs or zfs, no pool is configured, no aufs.
    for id in ["aufs", "btrfs", "devmapper", "zfs"] {
        assert_eq!(status(id), "skip", "{id}");
    }
    let detail = ok(daemon.client(&ctr, &["plugins", "ls", "-d", "id==btrfs"]));
    assert!(
        detail.contains("must be a btrfs filesystem to be used with the btrfs snapshotter"),
        "{detail}"
    );
    let detail = ok(daemon.client(&ctr, &["plugins", "ls", "-d", "id==devmapper"]));
    assert!(detail.contains("devmapper not configured"), "{detail}");
}

/// A mount, unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = crated_snapshots::mount::unmount(&self.0);
    }
}

#[test]
fn ctr_drives_btrfs_on_a_loop_file() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    if !crated_snapshots::testsuite::btrfs_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let plugin_root = root.join("io.containerd.snapshotter.v1.btrfs");
    std::fs::create_dir_all(&plugin_root).unwrap();
    crated_snapshots::testsuite::mount_loop_btrfs(&plugin_root);
    let _mounted = Mounted(plugin_root.clone());
    let work = dir.path().join("mnt");
    let daemon = Daemon::crated_on_root(
        &crated(),
        tempfile::tempdir().unwrap(),
        root,
        Some(NO_GC),
        &[],
    )
    .unwrap();
    let table = ok(daemon.client(&ctr, &["plugins", "ls", "id==btrfs"]));
    assert!(table.trim_end().ends_with("ok"), "{table}");
    ctr_round_trip(&ctr, &daemon, "btrfs", &work);
    let mounts = ok(daemon.client(
        &ctr,
        &[
            "snapshots",
            "--snapshotter",
            "btrfs",
            "prepare",
            "--mounts",
            "m",
            "",
        ],
    ));
    assert!(
        mounts.contains("\"btrfs\"") && mounts.contains("subvolid="),
        "{mounts}"
    );
    drop(daemon);
}

/// The devmapper snapshotter driven by Debian's ctr through crated, in a VM whose kernel has
/// device-mapper (this host's has not): this test executable runs
/// `devmapper_through_ctr_in_the_guest` there.
#[test]
fn devmapper_through_ctr_in_a_vm() {
    let Some(vm) = crated_testsupport::vm::Vm::find() else {
        return;
    };
    if tool("ctr", "containerd").is_none() {
        return;
    }
    vm.run_this_test_executable(
        crated_testsupport::vm::DEVICE_MAPPER_MODULES,
        crated_snapshots::testsuite::DEVMAPPER_GUEST_ENV,
        "--exact devmapper_through_ctr_in_the_guest --test-threads 1",
        "test result: ok. 1 passed; 0 failed",
        Duration::from_secs(600),
    );
}

/// Run by `devmapper_through_ctr_in_a_vm` inside its VM: a thin pool on loop files, crated
/// configured with it, ctr's round trip, an image imported and unpacked into devmapper, and
/// all of it still there after a `kill -9` of the daemon.
#[test]
fn devmapper_through_ctr_in_the_guest() {
    if !crated_snapshots::testsuite::in_devmapper_guest() {
        return;
    }
    let ctr = tool("ctr", "containerd").unwrap();
    let dir = tempfile::tempdir().unwrap();
    crated_snapshots::testsuite::make_thin_pool(&dir.path().join("pool"), "crated-pool");
    let config = format!(
        "{NO_GC}[plugins.\"io.containerd.snapshotter.v1.devmapper\"]\npool_name = \"crated-pool\"\nbase_image_size = \"64MB\"\n"
    );
    let mut daemon = Daemon::crated(&crated(), Some(&config), &[]).unwrap();
    let table = ok(daemon.client(&ctr, &["plugins", "ls", "id==devmapper"]));
    assert!(table.trim_end().ends_with("ok"), "{table}");

    let work = dir.path().join("mnt");
    ctr_round_trip(&ctr, &daemon, "devmapper", &work);
    let run = |daemon: &Daemon, args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", "devmapper"];
        all.extend_from_slice(args);
        daemon.client(&ctr, &all)
    };
    let mounts = ok(run(&daemon, &["prepare", "--mounts", "m", ""]));
    assert!(
        mounts.contains("\"ext4\"") && mounts.contains("/dev/mapper/crated-pool-snap-"),
        "{mounts}"
    );
    let info = ok(run(&daemon, &["info", "m"]));
    assert!(
        info.contains("\"containerd.io/snapshot/devmapper/fstype\": \"ext4\""),
        "{info}"
    );

    // An image unpacked into thin devices, its one layer's chain id being the layer digest.
    let imported = crated_testsupport::oci::import_busybox(
        &daemon,
        &ctr,
        "docker.io/library/busybox:devmapper",
        "devmapper",
        dir.path(),
    )
    .unwrap();
    let check_image = |daemon: &Daemon, view: &str| {
        let ls = ok(run(daemon, &["ls"]));
        assert!(
            ls.lines()
                .any(|l| l.starts_with(&imported.layer) && l.trim_end().ends_with("Committed")),
            "{ls}"
        );
        ok(run(daemon, &["view", view, &imported.layer]));
        let at = work.join(view);
        mount_snapshot(&ctr, daemon, "devmapper", view, &at);
        let unpacked = std::fs::metadata(at.join("bin/busybox")).map(|m| m.len());
        unmount(&at);
        let expected = std::fs::metadata("/bin/busybox").unwrap().len();
        assert_eq!(unpacked.ok(), Some(expected));
    };
    check_image(&daemon, "image-view");

    // Killed, and the active snapshot's device unloaded as a reboot would: started again,
    // crated finds records, thin devices and data, and loads that device again.
    let device = mounts
        .split('"')
        .find(|s| s.starts_with("/dev/mapper/crated-pool-snap-"))
        .unwrap()
        .trim_start_matches("/dev/mapper/")
        .to_owned();
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    let unloaded = std::process::Command::new("dmsetup")
        .args(["remove", &device])
        .status()
        .unwrap();
    assert!(unloaded.success());
    assert!(!std::path::Path::new("/dev/mapper").join(&device).exists());
    daemon.restart_after_sigkill(&crated()).unwrap();
    assert!(std::path::Path::new("/dev/mapper").join(&device).exists());
    check_image(&daemon, "image-view-2");
    let at = work.join("m-again");
    mount_snapshot(&ctr, &daemon, "devmapper", "m", &at);
    std::fs::write(at.join("still-writable"), b"yes").unwrap();
    unmount(&at);
    ok(run(&daemon, &["rm", "m", "image-view", "image-view-2"]));
}

/// A client writing through a native snapshot it prepared as containerd 1.6's unpackers name
/// them (`extract-<n> <chain ID>`), or labelled as crated's own unpack labels its snapshots
/// (a label clients cannot set), changes that snapshot alone: the committed parent, which
/// every image and container on it shares, stays as it was.
#[test]
fn writing_through_a_clients_extract_snapshot_leaves_the_parent_as_it_was() {
    use crated_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
    use crated_api::containerd::services::snapshots::v1::PrepareSnapshotRequest;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    if !is_root() {
        eprintln!("skipped: mounting snapshots needs root");
        return;
    }
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    let work = tempfile::tempdir().unwrap();
    let chain = crated_testsupport::oci::import_busybox(
        &daemon,
        &ctr,
        "docker.io/library/busybox:parent",
        "native",
        work.path(),
    )
    .unwrap()
    .layer;
    let snapshots = |args: &[&str]| {
        let all: Vec<&str> = ["snapshots", "--snapshotter", "native"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        daemon.client(&ctr, &all)
    };
    let by_ctr = format!("extract-1 {chain}");
    ok(snapshots(&["prepare", &by_ctr, &chain]));
    let labelled = "extract-2-labelled";
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut client =
                SnapshotsClient::new(crated_testsupport::channel(&daemon.socket).await.unwrap());
            let request = PrepareSnapshotRequest {
                snapshotter: "native".into(),
                key: labelled.into(),
                parent: chain.clone(),
                labels: [(
                    crated_snapshots::LABEL_DIFFER_ONLY.to_string(),
                    "true".to_string(),
                )]
                .into(),
            };
            client
                .prepare(crated_testsupport::in_namespace(request, "default", None))
                .await
                .unwrap();
        });
    for key in [by_ctr.as_str(), labelled] {
        let at = work.path().join("through");
        mount_snapshot(&ctr, &daemon, "native", key, &at);
        let busybox = at.join("bin/busybox");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&busybox)
            .unwrap()
            .write_all(b"appended")
            .unwrap();
        std::fs::set_permissions(&busybox, std::fs::Permissions::from_mode(0o700)).unwrap();
        unmount(&at);
    }
    ok(snapshots(&["view", "check", &chain]));
    let at = work.path().join("parent");
    mount_snapshot(&ctr, &daemon, "native", "check", &at);
    let parent = std::fs::read(at.join("bin/busybox")).unwrap();
    let mode = std::fs::metadata(at.join("bin/busybox"))
        .unwrap()
        .permissions()
        .mode();
    unmount(&at);
    assert!(
        parent == std::fs::read("/bin/busybox").unwrap(),
        "the parent changed"
    );
    assert_eq!(mode & 0o777, 0o755);
}
