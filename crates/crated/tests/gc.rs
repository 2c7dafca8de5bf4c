//! Garbage collection end to end: Debian's `ctr` and `cratectl` against crated, checked on the
//! store's disk.

use std::time::Duration;

use crated_testsupport::blobs::{data, digest};
use crated_testsupport::cmd::{ok, with_stdin};
use crated_testsupport::{tool, wait_until, workspace_bin, Daemon};

mod common;
use common::crated;

fn hex(d: &str) -> String {
    d.trim_start_matches("sha256:").to_owned()
}

/// Writes a blob through cratectl, under `lease` when given; its digest.
fn ingest(daemon: &Daemon, lease: Option<&str>, seed: u64) -> String {
    let blob = data(10_000 + seed as usize, seed);
    let d = digest(&blob);
    let cratectl = workspace_bin("cratectl");
    let mut args = Vec::new();
    if let Some(l) = lease {
        args.extend(["--lease", l]);
    }
    let reference = format!("ref-{seed}");
    args.extend(["content", "ingest", "--expected-digest", &d, &reference]);
    ok(with_stdin(&cratectl, daemon, &args, &blob));
    d
}

#[test]
fn a_blob_of_an_expired_lease_goes_on_an_idle_daemon() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    // Past the start-up collection, so only the expiry can remove anything.
    std::thread::sleep(Duration::from_millis(300));
    ok(daemon.client(
        &ctr,
        &["leases", "create", "--id", "brief", "--expires", "2s"],
    ));
    ok(daemon.client(&ctr, &["leases", "create", "--id", "lasting"]));
    let brief = ingest(&daemon, Some("brief"), 1);
    let lasting = ingest(&daemon, Some("lasting"), 2);
    assert_eq!(daemon.blob_files(), {
        let mut v = vec![hex(&brief), hex(&lasting)];
        v.sort();
        v
    });
    // No call at all from here: only the disk is watched.
    wait_until(
        Duration::from_secs(10),
        || !daemon.blob_files().contains(&hex(&brief)),
        || format!("the expired lease's blob is still there\n{}", daemon.log()),
    );
    assert_eq!(daemon.blob_files(), [hex(&lasting)]);
    let leases = ok(daemon.client(&ctr, &["leases", "ls", "-q"]));
    assert_eq!(leases.trim(), "lasting");
    let listed = ok(daemon.client(&ctr, &["content", "ls", "-q"]));
    assert_eq!(listed.trim(), lasting);
}

#[test]
fn references_roots_and_flat_leases_decide_what_stays() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let cratectl = workspace_bin("cratectl");
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    ok(daemon.client(&ctr, &["leases", "create", "--id", "hold"]));
    ok(daemon.client(
        &ctr,
        &[
            "leases",
            "create",
            "--id",
            "flat",
            "containerd.io/gc.flat=1",
        ],
    ));
    let root = ingest(&daemon, Some("hold"), 1);
    let child = ingest(&daemon, Some("hold"), 2);
    let grandchild = ingest(&daemon, Some("hold"), 3);
    let stray = ingest(&daemon, Some("hold"), 4);
    let behind_flat = ingest(&daemon, Some("hold"), 5);
    let flat_held = ingest(&daemon, Some("flat"), 6);
    ok(daemon.client(
        &ctr,
        &[
            "content",
            "label",
            &root,
            "containerd.io/gc.root=yes",
            &format!("containerd.io/gc.ref.content.l.0={child}"),
        ],
    ));
    ok(daemon.client(
        &ctr,
        &[
            "content",
            "label",
            &child,
            &format!("containerd.io/gc.ref.content.m={grandchild}"),
        ],
    ));
    ok(daemon.client(
        &ctr,
        &[
            "content",
            "label",
            &flat_held,
            &format!("containerd.io/gc.ref.content={behind_flat}"),
        ],
    ));
    // Real ctr's synchronous delete returns once the collection ran.
    ok(daemon.client(&ctr, &["leases", "rm", "--sync", "hold"]));
    let mut kept = vec![hex(&root), hex(&child), hex(&grandchild), hex(&flat_held)];
    kept.sort();
    assert_eq!(daemon.blob_files(), kept);
    let listed = ok(daemon.client(&ctr, &["content", "ls", "-q"]));
    assert!(!listed.contains(&stray) && !listed.contains(&behind_flat));

    // Without the root label the chain is garbage: prune names what it removed.
    ok(daemon.client(&ctr, &["content", "label", &root, "containerd.io/gc.root="]));
    let pruned = ok(daemon.client(&cratectl, &["content", "prune"]));
    let mut pruned: Vec<&str> = pruned.lines().collect();
    pruned.sort();
    let mut chain = vec![root.as_str(), child.as_str(), grandchild.as_str()];
    chain.sort();
    assert_eq!(pruned, chain);
    assert_eq!(daemon.blob_files(), [hex(&flat_held)]);

    // `cratectl gc` reports removals, the pause and how long writers were held.
    ok(daemon.client(&ctr, &["leases", "rm", "flat"]));
    let report = ok(daemon.client(&cratectl, &["gc"]));
    assert!(
        report.contains(&format!("removed content default/{flat_held}"))
            && report.contains(&format!("removed blob {flat_held}"))
            && report.contains("writers held for")
            && report.contains("pause (mark and sweep)"),
        "{report}"
    );
    assert!(daemon.blob_files().is_empty());
}

#[test]
fn gc_config_keys_are_containerd_s_and_exported() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let cfg = r#"
version = 2
[plugins."io.containerd.gc.v1.scheduler"]
  pause_threshold = 0.1
  deletion_threshold = 5
  mutation_threshold = 50
  schedule_delay = "10ms"
  startup_delay = "1s"
"#;
    let daemon = Daemon::crated(&crated(), Some(cfg), &[]).unwrap();
    let out = ok(daemon.client(&ctr, &["plugins", "ls", "-d", "id==scheduler"]));
    for want in [
        "PauseThreshold        0.1",
        "DeletionThreshold     5",
        "MutationThreshold     50",
        "ScheduleDelay         10ms",
    ] {
        let squeezed: String = out.split_whitespace().collect::<Vec<_>>().join(" ");
        let want: String = want.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(squeezed.contains(&want), "{want:?} not in:\n{out}");
    }
    let bad =
        "version = 2\n[plugins.\"io.containerd.gc.v1.scheduler\"]\n  schedule_delay = \"soon\"\n";
    let err = Daemon::crated(&crated(), Some(bad), &[])
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("schedule_delay") && err.contains(":3"),
        "the error names neither the key nor its line: {err}"
    );
}

#[test]
fn a_removed_blob_leaves_the_disk_at_the_next_collection() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    // No collection at start-up: one that came after the removal would take the file first.
    let config = "version = 2\n\
                  [plugins.\"io.containerd.gc.v1.scheduler\"]\n\
                  startup_delay = \"1h\"\n";
    let daemon = Daemon::crated(&crated(), Some(config), &[]).unwrap();
    ok(daemon.client(&ctr, &["leases", "create", "--id", "keep"]));
    let d = ingest(&daemon, Some("keep"), 1);
    ok(daemon.client(&ctr, &["content", "rm", &d]));
    assert_eq!(
        daemon.blob_files().len(),
        1,
        "the file goes only at a collection"
    );
    let report = ok(daemon.client(&workspace_bin("cratectl"), &["gc"]));
    assert!(report.contains(&format!("removed blob {d}")), "{report}");
    assert!(daemon.blob_files().is_empty());
}

#[test]
fn an_expired_ingest_is_aborted_on_an_idle_daemon() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    let cratectl = workspace_bin("cratectl");
    let blob = data(3_000_000, 21);
    let d = digest(&blob);
    let size = blob.len().to_string();
    let common = ["--expected-size", &size, "--expected-digest", &d];
    // Two writes stop short: one may last a day, the other 2 seconds.
    for (reference, expires) in [("lasting", "24h"), ("brief", "2s")] {
        let mut args = vec!["content", "ingest", "--expires", expires];
        args.extend(common);
        args.push(reference);
        let out = with_stdin(&cratectl, &daemon, &args, &blob[..1_000_000]);
        assert!(!out.status.success(), "a short write committed");
    }
    let active = ok(daemon.client(&ctr, &["content", "active"]));
    assert!(
        active.contains("brief") && active.contains("lasting"),
        "{active}"
    );
    let ingests = daemon.root.join("io.containerd.content.v1.content/ingest");
    let count = || std::fs::read_dir(&ingests).map_or(0, |d| d.count());
    assert_eq!(count(), 2);
    // No call from here: only the disk is watched.
    wait_until(
        Duration::from_secs(10),
        || count() <= 1,
        || "the expired ingest is still there".into(),
    );
    let active = ok(daemon.client(&ctr, &["content", "active"]));
    assert!(
        !active.contains("brief") && active.contains("lasting"),
        "{active}"
    );
}
