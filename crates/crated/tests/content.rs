//! The content store and leases through Debian's `ctr`, with `cratectl` reading the same data,
//! and the faults a store must survive.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crated_testsupport::blobs::{data, digest};
use crated_testsupport::cmd::{ok, with_stdin};
use crated_testsupport::{tool, workspace_bin, Daemon};

mod common;
use common::crated;

/// These tests keep blobs that nothing references, which containerd's GC (and ours) takes at
/// its next pass; GC is off here and has tests of its own (`gc.rs`).
const NO_GC: &str = "version = 2\ndisabled_plugins = [\"io.containerd.gc.v1.scheduler\"]\n";

#[test]
fn ctr_ingests_lists_reads_labels_removes_and_cratectl_agrees() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let cratectl = workspace_bin("cratectl");
    let daemon = Daemon::crated(&crated(), Some(NO_GC), &[]).unwrap();
    let blob = data(3_000_000, 7);
    let d = digest(&blob);
    let size = blob.len().to_string();
    ok(with_stdin(
        &ctr,
        &daemon,
        &[
            "content",
            "ingest",
            "--expected-size",
            &size,
            "--expected-digest",
            &d,
            "ref-a",
        ],
        &blob,
    ));
    assert_eq!(daemon.blob_files(), [d[7..].to_string()]);

    let ls = ok(daemon.client(&ctr, &["content", "ls"]));
    assert!(ls.lines().any(|l| l.starts_with(&d)), "{ls}");
    let got = daemon.client(&ctr, &["content", "get", &d]);
    assert!(got.status.success());
    assert_eq!(digest(&got.stdout), d, "ctr read back other bytes");
    let got = daemon.client(&cratectl, &["content", "get", &d]);
    assert_eq!(digest(&got.stdout), d, "cratectl read back other bytes");

    ok(daemon.client(&ctr, &["content", "label", &d, "team=blue"]));
    let ls = ok(daemon.client(&cratectl, &["content", "ls"]));
    let row: Vec<&str> = ls
        .lines()
        .find(|l| l.starts_with(&d))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row, [d.as_str(), "3000000", "team=blue"]);
    let filtered = ok(daemon.client(&ctr, &["content", "ls", "-q", "labels.team==blue"]));
    assert_eq!(filtered.trim(), d);
    let none = ok(daemon.client(&ctr, &["content", "ls", "-q", "labels.team==red"]));
    assert_eq!(none.trim(), "");

    // Another namespace does not see it until it has it; with the shared policy, claiming it
    // by digest is instant.
    let other = ok(daemon.client(&ctr, &["-n", "other", "content", "ls", "-q"]));
    assert_eq!(other.trim(), "");
    ok(with_stdin(
        &ctr,
        &daemon,
        &[
            "-n",
            "other",
            "content",
            "ingest",
            "--expected-digest",
            &d,
            "ref-b",
        ],
        &[],
    ));
    assert_eq!(
        ok(daemon.client(&ctr, &["-n", "other", "content", "ls", "-q"])).trim(),
        d
    );

    ok(daemon.client(&ctr, &["content", "rm", &d]));
    assert_eq!(
        ok(daemon.client(&cratectl, &["content", "ls", "-q"])).trim(),
        ""
    );
    let gone = daemon.client(&cratectl, &["content", "get", &d]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not found"));
    // Still in the other namespace.
    assert_eq!(
        digest(
            &daemon
                .client(&ctr, &["-n", "other", "content", "get", &d])
                .stdout
        ),
        d
    );
}

#[test]
fn half_written_ingest_is_active_and_resumes() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let cratectl = workspace_bin("cratectl");
    let daemon = Daemon::crated(&crated(), Some(NO_GC), &[]).unwrap();
    let blob = data(5_000_000, 11);
    let d = digest(&blob);
    let size = blob.len().to_string();
    let args = [
        "content",
        "ingest",
        "--expected-size",
        &size,
        "--expected-digest",
        &d,
        "half",
    ];
    // The writer stops short: the commit fails, the ingest stays.
    let short = with_stdin(&ctr, &daemon, &args, &blob[..2_000_000]);
    assert!(!short.status.success());
    let active = ok(daemon.client(&ctr, &["content", "active"]));
    let row: Vec<&str> = active
        .lines()
        .find(|l| l.starts_with("half"))
        .unwrap_or_else(|| panic!("{active}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[0], "half");
    let mine = ok(daemon.client(&cratectl, &["content", "active"]));
    let row: Vec<&str> = mine
        .lines()
        .find(|l| l.starts_with("half"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row, ["half", "2000000", "5000000"]);
    // Both clients resume from the offset (ctr skips what is stored, as we do).
    ok(with_stdin(&ctr, &daemon, &args, &blob));
    assert_eq!(
        digest(&daemon.client(&ctr, &["content", "get", &d]).stdout),
        d
    );
    assert!(ok(daemon.client(&ctr, &["content", "active"]))
        .lines()
        .all(|l| !l.starts_with("half")));

    let blob2 = data(3_000_000, 12);
    let d2 = digest(&blob2);
    let args2 = [
        "content",
        "ingest",
        "--expected-size",
        "3000000",
        "--expected-digest",
        &d2,
        "half2",
    ];
    assert!(!with_stdin(&cratectl, &daemon, &args2, &blob2[..1_000_000])
        .status
        .success());
    ok(with_stdin(&cratectl, &daemon, &args2, &blob2));
    assert_eq!(
        digest(&daemon.client(&cratectl, &["content", "get", &d2]).stdout),
        d2
    );
}

#[test]
fn wrong_digest_or_size_commits_nothing() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let daemon = Daemon::crated(&crated(), Some(NO_GC), &[]).unwrap();
    let blob = data(100_000, 3);
    let wrong = digest(b"something else");
    let out = with_stdin(
        &ctr,
        &daemon,
        &["content", "ingest", "--expected-digest", &wrong, "w1"],
        &blob,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&wrong), "{err}");
    let out = with_stdin(
        &ctr,
        &daemon,
        &["content", "ingest", "--expected-size", "99999", "w2"],
        &blob,
    );
    assert!(!out.status.success());
    assert!(
        daemon.blob_files().is_empty(),
        "a failed commit left a blob"
    );
    assert_eq!(ok(daemon.client(&ctr, &["content", "ls", "-q"])).trim(), "");
}

#[test]
fn corrupt_blob_is_reported_not_served() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let daemon = Daemon::crated(&crated(), Some(NO_GC), &[]).unwrap();
    let blob = data(2_500_000, 5);
    let d = digest(&blob);
    ok(with_stdin(
        &ctr,
        &daemon,
        &["content", "ingest", "--expected-digest", &d, "c"],
        &blob,
    ));
    let path = daemon
        .root
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(&d[7..]);
    let mut bad = blob.clone();
    bad[1_234_567] ^= 0xff;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bad).unwrap();
    let out = daemon.client(&ctr, &["content", "get", &d]);
    assert!(!out.status.success(), "corrupt blob served as valid");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.stdout, bad, "the whole corrupt blob was handed out");
}

#[test]
fn leases_through_ctr_and_cratectl() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let cratectl = workspace_bin("cratectl");
    let daemon = Daemon::crated(&crated(), Some(NO_GC), &[]).unwrap();
    ok(daemon.client(&ctr, &["leases", "create", "--id", "hold-1", "owner=test"]));
    let ls = ok(daemon.client(&ctr, &["leases", "ls"]));
    assert!(
        ls.lines()
            .any(|l| l.starts_with("hold-1") && l.contains("owner=test")),
        "{ls}"
    );
    assert_eq!(
        ok(daemon.client(&cratectl, &["leases", "ls", "-q"])).trim(),
        "hold-1"
    );
    let dup = daemon.client(&ctr, &["leases", "create", "--id", "hold-1"]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    ok(daemon.client(&ctr, &["leases", "rm", "hold-1"]));
    assert_eq!(ok(daemon.client(&ctr, &["leases", "ls", "-q"])).trim(), "");
    let created = ok(daemon.client(&cratectl, &["leases", "create", "--id", "hold-2"]));
    assert_eq!(created.trim(), "hold-2");
    ok(daemon.client(&cratectl, &["leases", "rm", "hold-2"]));
}

/// crated killed with SIGKILL in the middle of a 200 MiB ingest: after a restart on the same
/// root the ingest is still there at its offset, resumes, and commits the right digest.
#[test]
fn kill_9_mid_ingest_then_resume() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let mut daemon = Daemon::crated(&crated(), Some(NO_GC), &[]).unwrap();
    let blob = data(200 << 20, 99);
    let d = digest(&blob);
    let size = blob.len().to_string();
    let args = [
        "content",
        "ingest",
        "--expected-size",
        size.as_str(),
        "--expected-digest",
        d.as_str(),
        "big",
    ];
    let mut writer = Command::new(&ctr)
        .arg("--address")
        .arg(&daemon.socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    stdin.write_all(&blob[..100 << 20]).unwrap();
    stdin.flush().unwrap();
    // Wait until the daemon has most of the first half.
    let started = Instant::now();
    let offset_of = |daemon: &Daemon| -> u64 {
        let out = daemon.client(&workspace_bin("cratectl"), &["content", "active"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("big"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    while offset_of(&daemon) < 90 << 20 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ingest made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.child.wait().unwrap();
    drop(stdin);
    let _ = writer.kill();
    let _ = writer.wait();

    let root = daemon.root.clone();
    let restarted = Daemon::crated_on_root(
        &crated(),
        tempfile::tempdir().unwrap(),
        root,
        Some(NO_GC),
        &[],
    )
    .unwrap();
    let resumed_at = offset_of(&restarted);
    assert!(
        resumed_at >= 90 << 20,
        "the ingest lost its data: offset {resumed_at}"
    );
    let out = with_stdin(&ctr, &restarted, &args, &blob);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = restarted.client(&ctr, &["content", "get", &d]);
    assert_eq!(digest(&got.stdout), d);
    drop(daemon);
}
