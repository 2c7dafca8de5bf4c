//! Proxy snapshotters: `crated-snapshotter` serving one of our snapshotters on a socket, used
//! by crated and by Debian's containerd as `[proxy_plugins.custom] type = "snapshot"`, driven
//! by Debian's `ctr`.

use std::path::Path;
use std::time::{Duration, Instant};

use crated_testsupport::cmd::ok;
use crated_testsupport::{
    is_root, mount_snapshot, tool, unmount, wait_until, Daemon, SocketServer,
};

mod common;
use common::crated;

fn snapshotter_server(socket: &Path, root: &Path, which: &str) -> SocketServer {
    SocketServer::start(
        "crated-snapshotter",
        &[
            socket.as_os_str(),
            root.as_os_str(),
            "--snapshotter".as_ref(),
            which.as_ref(),
        ],
        socket,
    )
}

fn proxy_config(socket: &Path) -> String {
    format!(
        "version = 2\n[proxy_plugins.custom]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        socket.display()
    )
}

fn custom<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["snapshots", "--snapshotter", "custom"];
    all.extend_from_slice(args);
    all
}

/// The snapshots the proxy's own store holds (ids under `snapshots/`; spares, emptied
/// entries kept for reuse, belong to none).
fn served_snapshots(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("snapshots"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with("spare-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Mounts `key` of the proxy snapshotter, runs `check`, unmounts.
fn with_mounted(ctr: &Path, daemon: &Daemon, key: &str, at: &Path, check: impl FnOnce(&Path)) {
    mount_snapshot(ctr, daemon, "custom", key, at);
    check(at);
    unmount(at);
}

#[test]
fn crated_uses_a_proxy_snapshotter_and_survives_its_restarts() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (socket, root) = (dir.path().join("sn.sock"), dir.path().join("sn"));
    let mut server = Some(snapshotter_server(&socket, &root, "overlayfs"));
    let daemon = Daemon::crated(&crated(), Some(&proxy_config(&socket)), &[]).unwrap();
    let plugins = ok(daemon.client(&ctr, &["plugins", "ls", "id==custom"]));
    assert!(
        plugins.contains("io.containerd.snapshotter.v1") && plugins.trim_end().ends_with("ok"),
        "{plugins}"
    );

    ok(daemon.client(&ctr, &custom(&["prepare", "a", ""])));
    if is_root() {
        with_mounted(&ctr, &daemon, "a", &dir.path().join("m"), |m| {
            std::fs::write(m.join("file"), b"through the proxy").unwrap();
        });
    }
    ok(daemon.client(&ctr, &custom(&["commit", "c", "a"])));
    ok(daemon.client(&ctr, &custom(&["prepare", "b", "c"])));
    if is_root() {
        with_mounted(&ctr, &daemon, "b", &dir.path().join("m"), |m| {
            assert_eq!(std::fs::read(m.join("file")).unwrap(), b"through the proxy");
        });
    }
    let ls = ok(daemon.client(&ctr, &custom(&["ls"])));
    assert!(
        ls.contains("b   c      Active")
            || ls
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["b", "c", "Active"]),
        "{ls}"
    );
    assert_eq!(served_snapshots(&root).len(), 2);

    // The plugin dies: reported unavailable, calls fail within their deadline.
    server.take();
    let detail = ok(daemon.client(&ctr, &["plugins", "ls", "-d", "id==custom"]));
    assert!(
        detail.contains("Unavailable") && detail.contains(&socket.display().to_string()),
        "{detail}"
    );
    let started = Instant::now();
    let out = daemon.client(&ctr, &custom(&["prepare", "x", "c"]));
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(35),
        "a call to a dead plugin hung"
    );

    // It comes back on the same root: crated reconnects without a restart.
    let _server = snapshotter_server(&socket, &root, "overlayfs");
    let plugins = ok(daemon.client(&ctr, &["plugins", "ls", "id==custom"]));
    assert!(plugins.trim_end().ends_with("ok"), "{plugins}");
    ok(daemon.client(&ctr, &custom(&["prepare", "d", "c"])));
    let ls = ok(daemon.client(&ctr, &custom(&["ls"])));
    assert_eq!(ls.lines().count(), 4, "{ls}");

    // Removal forgets the records; the collector removes the proxy's snapshots.
    ok(daemon.client(&ctr, &custom(&["rm", "b", "d"])));
    ok(daemon.client(&ctr, &custom(&["rm", "c"])));
    wait_until(
        Duration::from_secs(10),
        || served_snapshots(&root).is_empty(),
        || {
            format!(
                "the proxy still holds {:?}\n{}",
                served_snapshots(&root),
                daemon.log()
            )
        },
    );
}

#[test]
fn debian_containerd_uses_crated_snapshotter_as_its_proxy() {
    let (Some(ctr), Some(containerd)) =
        (tool("ctr", "containerd"), tool("containerd", "containerd"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (socket, root) = (dir.path().join("sn.sock"), dir.path().join("sn"));
    let _server = snapshotter_server(&socket, &root, "overlayfs");
    let daemon = Daemon::containerd(&containerd, Some(&proxy_config(&socket))).unwrap();
    ok(daemon.client(&ctr, &custom(&["prepare", "a", ""])));
    ok(daemon.client(&ctr, &custom(&["commit", "c", "a"])));
    // ctr labels what it prepares as a GC root, but not its views, which containerd's
    // collector may take as soon as ctr's own lease ends: prepared snapshots are checked.
    ok(daemon.client(&ctr, &custom(&["prepare", "b", "c"])));
    let ls = ok(daemon.client(&ctr, &custom(&["ls"])));
    assert!(ls.contains("Committed") && ls.contains("Active"), "{ls}");
    let info = ok(daemon.client(&ctr, &custom(&["info", "b"])));
    assert!(info.contains("\"Parent\": \"c\""), "{info}");
    ok(daemon.client(&ctr, &custom(&["rm", "b"])));

    if !is_root() {
        eprintln!("not importing an image: unpacking needs root");
        return;
    }
    if tool("busybox", "busybox-static").is_none() {
        return;
    }
    let layer = crated_testsupport::oci::import_busybox(
        &daemon,
        &ctr,
        "docker.io/library/busybox:crated",
        "custom",
        dir.path(),
    )
    .unwrap()
    .layer;
    // One layer: the unpacked snapshot is named by its diff id (its chain id).
    let ls = ok(daemon.client(&ctr, &custom(&["ls"])));
    assert!(ls.contains(&layer), "{ls}");
    ok(daemon.client(&ctr, &custom(&["prepare", "rootfs", &layer])));
    with_mounted(&ctr, &daemon, "rootfs", &dir.path().join("rootfs"), |m| {
        let busybox = std::fs::read(m.join("bin/busybox")).unwrap();
        assert_eq!(busybox, std::fs::read("/bin/busybox").unwrap());
        assert_eq!(
            std::fs::read_link(m.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
    });
}

/// A proxy snapshotter configured with the `rebase` capability: crated advertises it and
/// passes the parent given on Commit through to `crated-snapshotter`, which stacks the layer.
#[test]
fn a_proxy_with_the_rebase_capability_commits_onto_the_parent_given() {
    use crated_testsupport::rebase::{capabilities, check_rebase};
    if !is_root() {
        eprintln!("skipped: overlayfs needs root to mount");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (socket, root) = (dir.path().join("sn.sock"), dir.path().join("sn"));
    let _server = snapshotter_server(&socket, &root, "overlayfs");
    let config = format!("{}  capabilities = [\"rebase\"]\n", proxy_config(&socket));
    let daemon = Daemon::crated(&crated(), Some(&config), &[]).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(capabilities(&daemon.socket, "custom").await, ["rebase"]);
        check_rebase(&daemon.socket, "custom", dir.path()).await;
    });
}
