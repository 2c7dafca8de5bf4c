//! Debian's `ctr` (the reference client) and our `cratectl` against a running crated.

use std::path::Path;
use std::process::Output;

use crated_testsupport::cmd::fails;
use crated_testsupport::{tool, workspace_bin, Daemon};

mod common;
use common::crated;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(out: Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "client failed: {stderr}\n{stdout}");
    stdout
}

/// The row of `plugins ls` for one plugin, split into columns.
fn row<'a>(table: &'a str, plugin_type: &str, id: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.len() == 4 && cols[0] == plugin_type && cols[1] == id)
        .unwrap_or_else(|| panic!("no row for {plugin_type} {id} in:\n{table}"))
}

/// `is_ctr`: Debian's ctr ignores NotFound when removing a namespace (it prints the name and
/// succeeds), cratectl reports it.
fn check_client(client: &Path, daemon: &Daemon, is_ctr: bool) {
    let run = |args: &[&str]| daemon.client(client, args);

    let version = ok(run(&["version"]));
    assert!(version.contains("Server:"), "{version}");
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    let table = ok(run(&["plugins", "ls"]));
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["TYPE", "ID", "PLATFORMS", "STATUS"]);
    assert_eq!(
        row(&table, "io.containerd.grpc.v1", "introspection")[2..],
        ["-", "ok"]
    );
    assert_eq!(row(&table, "io.containerd.grpc.v1", "namespaces")[3], "ok");
    assert_eq!(row(&table, "io.containerd.metadata.v1", "bolt")[3], "ok");
    assert_eq!(row(&table, "io.containerd.monitor.v1", "cgroups")[3], "ok");
    assert_eq!(row(&table, "io.containerd.internal.v1", "restart")[3], "ok");
    if crated_testsupport::is_root() {
        // It makes /opt/containerd/{bin,lib}, which needs root.
        assert_eq!(row(&table, "io.containerd.internal.v1", "opt")[3], "ok");
    }
    let btrfs = row(&table, "io.containerd.snapshotter.v1", "btrfs");
    assert_eq!(btrfs[2], crated_snapshots_platform());
    assert_eq!(btrfs[3], "skip");
    assert_eq!(
        row(&table, "io.containerd.snapshotter.v1", "devmapper")[3],
        "skip"
    );

    let detail = ok(run(&["plugins", "ls", "-d", "id==btrfs"]));
    assert!(detail.contains("io.containerd.snapshotter.v1"), "{detail}");
    assert!(
        detail.contains(
            "must be a btrfs filesystem to be used with the btrfs snapshotter: skip plugin"
        ),
        "{detail}"
    );
    assert!(
        detail.contains("Exports:") && detail.contains("root"),
        "{detail}"
    );
    assert!(
        !detail.contains("devmapper"),
        "filter leaked other plugins: {detail}"
    );

    // overlayfs advertises containerd 2's `rebase` where it can make whiteout devices (root).
    let overlay = ok(run(&["plugins", "ls", "-d", "id==overlayfs"]));
    assert!(overlay.contains("overlayfs"), "{overlay}");
    let rebase = overlay
        .lines()
        .any(|l| l.starts_with("Capabilities:") && l.contains("rebase"));
    assert_eq!(rebase, crated_testsupport::is_root(), "{overlay}");

    let grpc = ok(run(&["plugins", "ls", "type==io.containerd.grpc.v1"]));
    let rows: Vec<&str> = grpc.lines().skip(1).collect();
    assert!(rows.len() >= 4, "{grpc}");
    assert!(
        rows.iter().all(|r| r.starts_with("io.containerd.grpc.v1 ")),
        "{grpc}"
    );

    // Two filter arguments are OR-ed.
    let either = ok(run(&["plugins", "ls", "-q", "id==btrfs", "id==version"]));
    assert_eq!(either.lines().collect::<Vec<_>>(), ["btrfs", "version"]);

    let bad = fails(run(&["plugins", "ls", "id=="]));
    assert!(
        bad.contains("[id==]: expected value or quoted: invalid argument"),
        "{bad}"
    );
    let bad = fails(run(&["plugins", "ls", "id=btrfs"]));
    assert!(bad.contains("[id >|=|< btrfs]"), "no position in: {bad}");
    assert!(bad.contains("invalid argument"), "{bad}");

    ok(run(&["namespaces", "create", "alpha", "team=a"]));
    ok(run(&["namespaces", "label", "alpha", "tier=gold"]));
    let exists = fails(run(&["namespaces", "create", "alpha"]));
    assert!(exists.contains("already exists"), "{exists}");
    let list = ok(run(&["namespaces", "ls"]));
    let alpha: Vec<&str> = list
        .lines()
        .find(|l| l.starts_with("alpha"))
        .unwrap_or_else(|| panic!("alpha not listed: {list}"))
        .split_whitespace()
        .collect();
    assert_eq!(alpha, ["alpha", "team=a,tier=gold"]);
    ok(run(&["namespaces", "label", "alpha", "team="]));
    let list = ok(run(&["namespaces", "ls"]));
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["alpha", "tier=gold"]),
        "{list}"
    );
    let invalid = fails(run(&["namespaces", "create", "bad/name"]));
    assert!(
        invalid.contains("invalid argument") || invalid.contains("must match"),
        "{invalid}"
    );
    ok(run(&["namespaces", "rm", "alpha"]));
    let gone = ok(run(&["namespaces", "ls", "-q"]));
    assert!(!gone.lines().any(|l| l == "alpha"), "{gone}");
    if is_ctr {
        assert_eq!(ok(run(&["namespaces", "rm", "alpha"])), "alpha\n");
    } else {
        let missing = fails(run(&["namespaces", "rm", "alpha"]));
        assert!(
            missing.contains("namespace \"alpha\": not found"),
            "{missing}"
        );
    }
}

fn crated_snapshots_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        other => panic!("add the platform name for {other}"),
    }
}

#[test]
fn debian_ctr_drives_crated() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    check_client(&ctr, &daemon, true);
}

#[test]
fn cratectl_drives_crated() {
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    check_client(&workspace_bin("cratectl"), &daemon, false);
}

/// `cratectl plugins ls | head -1`: a reader that went away ends cratectl by SIGPIPE, as it
/// does ctr, not by a panic about a broken pipe.
#[test]
fn cratectl_ends_quietly_when_its_reader_is_gone() {
    use std::os::unix::process::ExitStatusExt;
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(workspace_bin("cratectl"))
        .arg("--address")
        .arg(&daemon.socket)
        .args(["plugins", "ls"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn cratectl_sees_what_ctr_wrote() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    ok(daemon.client(&ctr, &["namespaces", "create", "shared", "by=ctr"]));
    let list = ok(daemon.client(&workspace_bin("cratectl"), &["namespaces", "ls"]));
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["shared", "by=ctr"]),
        "{list}"
    );
    // Server identity is stable across calls and restarts of the client.
    let a = ok(daemon.client(&ctr, &["version"]));
    let b = ok(daemon.client(&workspace_bin("cratectl"), &["version"]));
    let uuid = |s: &str| {
        s.lines()
            .find(|l| l.contains("UUID:"))
            .map(|l| l.trim().to_owned())
    };
    assert!(uuid(&a).is_some(), "{a}");
    assert_eq!(uuid(&a), uuid(&b));
}
