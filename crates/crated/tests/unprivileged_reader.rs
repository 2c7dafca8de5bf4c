//! An unprivileged local user (`nobody`) tries to read every file and list every directory
//! under crated's root and state while an image is stored and a container runs: as with the
//! reference containerd, nothing is readable (the root is 0700, bundles 0700).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crated_testsupport::cmd::ok;

mod common;

use common::*;

fn every_path(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => every_path(&path, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}

/// The paths of `paths` that uid and gid 65534 can open (files) or list (directories).
fn readable_by_nobody(paths: &[PathBuf]) -> Vec<String> {
    let script = r#"while IFS= read -r p; do
        if ls -- "$p" >/dev/null 2>&1 && [ -d "$p" ]; then echo "$p";
        elif [ -f "$p" ] && cat -- "$p" >/dev/null 2>&1; then echo "$p"; fi
    done"#;
    // setpriv (util-linux) drops the supplementary groups too.
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/bin/busybox", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    for p in paths {
        writeln!(input, "{}", p.display()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn nobody_reads_nothing_under_the_root_and_state() {
    let Some((daemon, bin, _work)) = setup("overlayfs") else {
        return;
    };
    // The test's own directory is 0700: open it, so that only crated's modes stand between
    // nobody and the files.
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(ctr(
        &daemon,
        &bin,
        &[
            "run",
            "-d",
            "--env",
            "SECRET=hunter2",
            IMAGE,
            "modes",
            "/bin/busybox",
            "sleep",
            "1000",
        ],
    ));
    let mut paths = Vec::new();
    every_path(&daemon.root, &mut paths);
    every_path(&daemon.state, &mut paths);
    assert!(
        paths.iter().any(|p| p.ends_with("stores.wal"))
            && paths.iter().any(|p| p.ends_with("config.json")),
        "{paths:?}"
    );
    let readable = readable_by_nobody(&paths);
    ok(ctr(&daemon, &bin, &["tasks", "rm", "-f", "modes"]));
    ok(ctr(&daemon, &bin, &["containers", "rm", "modes"]));
    // The state itself may be listed by none but traversed by all (0711), as containerd's.
    assert!(readable.is_empty(), "readable by nobody: {readable:?}");
    let root_mode = std::fs::metadata(&daemon.root)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(root_mode, 0o700);
    let journal_mode = std::fs::metadata(daemon.root.join("stores.wal"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(journal_mode, 0o600);
}
