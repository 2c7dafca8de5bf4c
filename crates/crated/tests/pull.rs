//! crated's own, daemon-side pull (containerd's Transfer API) driven by `cratectl images pull`,
//! from Debian's docker-registry: unpacked into native and overlayfs, verified by Debian's
//! `ctr` (images check, snapshots), mounted, removed with its blobs and snapshots; behind a gate
//! asking for basic or bearer-token credentials and cutting each blob's first download, which
//! the pull resumes; two pulls of one image at once; a five-layer image equal to umoci's
//! unpack; a registry over https trusted through a hosts directory, reached past a dead host
//! with a client certificate; an index inside an index.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crated_testsupport::cmd::{fails, ok};
use crated_testsupport::gate::{Auth, Gate};
use crated_testsupport::layered::Shape;
use crated_testsupport::registry::Registry;
use crated_testsupport::{
    assert_same_tree, assert_same_view, is_root, tool, tree_listing, umoci_tree, wait_until,
    workspace_bin, Daemon,
};

mod common;

struct Setup {
    daemon: Daemon,
    ctr: PathBuf,
    cratectl: PathBuf,
    registry: Registry,
    work: tempfile::TempDir,
}

/// A daemon, a registry and the clients; None (after saying why) when a peer is missing
/// outside CI.
fn setup() -> Option<Setup> {
    let ctr = tool("ctr", "containerd")?;
    tool("busybox", "busybox-static")?;
    let registry = Registry::start()?;
    let daemon = common::start(None);
    Some(Setup {
        daemon,
        ctr,
        cratectl: workspace_bin("cratectl"),
        registry,
        work: tempfile::tempdir().unwrap(),
    })
}

impl Setup {
    fn cratectl(&self, args: &[&str]) -> std::process::Output {
        self.daemon.client(&self.cratectl, args)
    }
    fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.daemon.client(&self.ctr, args)
    }

    /// `read` of image `reference` mounted by `cratectl images mount`, a view or (`rw`) a
    /// writable snapshot as a container gets (unmounted after).
    fn mounted<T>(
        &self,
        snapshotter: &str,
        reference: &str,
        rw: bool,
        read: impl FnOnce(&Path) -> T,
    ) -> T {
        let at = self.work.path().join("mounted");
        std::fs::create_dir_all(&at).unwrap();
        let target = at.to_str().unwrap();
        let mut args = vec!["images", "mount", "--snapshotter", snapshotter];
        if rw {
            args.push("--rw");
        }
        ok(self.cratectl(&[&args[..], &[target, reference]].concat()));
        let got = read(&at);
        ok(self.cratectl(&["images", "unmount", "--snapshotter", snapshotter, target]));
        got
    }
}

fn pull_mount_remove(snapshotter: &str) {
    let Some(s) = setup() else { return };
    let (image, layer) = crated_testsupport::oci::busybox("busybox");
    s.registry.push(&image, "busybox:latest");
    let reference = format!("{}/busybox:latest", s.registry.addr);
    let out = ok(s.cratectl(&["images", "pull", "--snapshotter", snapshotter, &reference]));
    assert!(out.contains(&format!("saved {reference}")), "{out}");
    assert!(out.contains("Completed pull"), "{out}");

    let ls = ok(s.cratectl(&["images", "ls"]));
    assert!(ls.contains(&reference) && ls.contains("linux/"), "{ls}");
    // Debian's ctr finds everything the pull wrote.
    let check = ok(s.ctr(&["images", "check"]));
    assert!(check.contains(" complete ("), "{check}");
    let info = ok(s.ctr(&["snapshots", "--snapshotter", snapshotter, "info", &layer]));
    assert!(info.contains("Committed"), "{info}");
    let blobs = ok(s.ctr(&["content", "ls"]));
    assert!(
        blobs.contains(&format!(
            "containerd.io/distribution.source.{}=busybox",
            s.registry.addr
        )),
        "{blobs}"
    );
    assert!(blobs.contains("containerd.io/uncompressed="), "{blobs}");
    assert!(
        blobs.contains(&format!(
            "containerd.io/gc.ref.snapshot.{snapshotter}={layer}"
        )),
        "{blobs}"
    );
    // The pull's own lease is gone; the image keeps everything.
    let leases = ok(s.ctr(&["leases", "ls", "-q"]));
    assert!(leases.trim().is_empty(), "{leases}");
    ok(s.cratectl(&["images", "tag", &reference, "busybox:copy"]));
    let tagged = ok(s.cratectl(&["images", "ls", "-q"]));
    assert!(tagged.contains("busybox:copy"), "{tagged}");
    ok(s.cratectl(&["images", "rm", "busybox:copy"]));

    if is_root() {
        let busybox = s.mounted(snapshotter, &reference, false, |at| {
            std::fs::read(at.join("bin/busybox"))
        });
        assert_eq!(busybox.unwrap(), std::fs::read("/bin/busybox").unwrap());
    } else {
        eprintln!("not mounting the pulled image: needs root");
    }

    ok(s.cratectl(&["images", "rm", "--sync", &reference]));
    wait_until(
        Duration::from_secs(10),
        || s.daemon.blob_files().is_empty(),
        || format!("blobs left: {:?}", s.daemon.blob_files()),
    );
    let left = ok(s.ctr(&["snapshots", "--snapshotter", snapshotter, "ls"]));
    assert_eq!(left.lines().count(), 1, "snapshots left: {left}");
}

#[test]
fn cratectl_pull_with_native() {
    pull_mount_remove("native");
}

#[test]
fn cratectl_pull_with_overlayfs() {
    if !is_root() {
        eprintln!("skipped: overlayfs needs root");
        return;
    }
    pull_mount_remove("overlayfs");
}

/// A pull through a gate asking for `auth`, each blob's first download cut after 64 KiB.
fn gated_pull(auth: Auth) {
    let Some(s) = setup() else { return };
    let (image, layer) = crated_testsupport::oci::busybox("busybox");
    s.registry.push(&image, "team/busybox:1");
    let gate = Gate::start(&s.registry.addr, auth, "alice", "s3cret", Some(64 << 10));
    let reference = format!("{}/team/busybox:1", gate.addr);
    let pull = |extra: &[&str]| {
        let mut args = vec!["images", "pull", "--snapshotter", "native"];
        args.extend_from_slice(extra);
        args.push(&reference);
        s.cratectl(&args)
    };
    let refused = fails(pull(&[]));
    assert!(refused.contains("unauthorized"), "{refused}");
    let wrong = fails(pull(&["--user", "alice:wrong"]));
    assert!(
        wrong.contains("refused the credentials") || wrong.contains("token server"),
        "{wrong}"
    );
    ok(pull(&["--user", "alice:s3cret"]));
    if auth == Auth::Token {
        assert!(gate.tokens_issued() >= 1, "a token was fetched");
    }
    assert!(gate.cuts() >= 1, "the layer's first download was cut");
    assert!(
        gate.ranged_requests() >= 1,
        "the download resumed with a range"
    );
    let check = ok(s.ctr(&["images", "check"]));
    assert!(check.contains(" complete ("), "{check}");
    let info = ok(s.ctr(&["snapshots", "--snapshotter", "native", "info", &layer]));
    assert!(info.contains("Committed"), "{info}");
}

#[test]
fn pull_with_bearer_token_auth_resumes_a_cut_download() {
    gated_pull(Auth::Token);
}

#[test]
fn pull_with_basic_auth_resumes_a_cut_download() {
    gated_pull(Auth::Basic);
}

#[test]
fn two_pulls_of_one_image_at_once_both_succeed() {
    let Some(s) = setup() else { return };
    let image = crated_testsupport::layered::build("layered", Shape::test_large_layers());
    s.registry.push(&image, "layered:latest");
    let reference = format!("{}/layered:latest", s.registry.addr);
    let spawn = || {
        std::process::Command::new(&s.cratectl)
            .arg("--address")
            .arg(&s.daemon.socket)
            .args(["images", "pull", "--snapshotter", "native", &reference])
            .output()
    };
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(spawn);
        let b = scope.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    ok(a);
    ok(b);
    let snapshots = ok(s.ctr(&["snapshots", "--snapshotter", "native", "ls"]));
    let committed = snapshots
        .lines()
        .filter(|l| l.contains("Committed"))
        .count();
    assert_eq!(committed, 5, "one snapshot per layer: {snapshots}");
    let check = ok(s.ctr(&["images", "check"]));
    assert!(check.contains(" complete ("), "{check}");
}

/// The five-layer image (every kind of change, with layers of several MiB, so later layers
/// are read back from the store) pulled by cratectl equals umoci's unpack.
fn layered_matches_umoci(snapshotter: &str) {
    if !is_root() {
        eprintln!("skipped: mounting the image and umoci unpack need root");
        return;
    }
    let Some(umoci) = tool("umoci", "umoci") else {
        return;
    };
    let Some(s) = setup() else { return };
    let image = crated_testsupport::layered::build("layered", Shape::test_large_layers());
    s.registry.push(&image, "layered:latest");
    let reference = format!("{}/layered:latest", s.registry.addr);
    ok(s.cratectl(&["images", "pull", "--snapshotter", snapshotter, &reference]));

    let expected = umoci_tree(&umoci, &image, s.work.path());

    // What a container gets: a writable snapshot of the image.
    let rootfs = s.mounted(snapshotter, &reference, true, tree_listing);
    assert_same_tree(&expected, &rootfs, 400);
    let view = s.mounted(snapshotter, &reference, false, tree_listing);
    assert_same_view(snapshotter, &expected, &view, 400);
    if snapshotter == "native" {
        // crated's own unpack shares what a layer leaves alone with the layer below.
        let snapshots = s
            .daemon
            .root
            .join("io.containerd.snapshotter.v1.native/snapshots");
        let shared = walk_files(&snapshots)
            .iter()
            // A view's entry may go while this walks.
            .filter(|p| {
                std::fs::symlink_metadata(p)
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::nlink(&m) > 1)
            })
            .count();
        assert!(
            shared > 0,
            "no file of the pulled image is shared between its snapshots"
        );
    }
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let t = entry.file_type().unwrap();
        if t.is_dir() {
            out.extend(walk_files(&entry.path()));
        } else if t.is_file() {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn cratectl_pull_of_a_layered_image_equals_umoci_with_overlayfs() {
    layered_matches_umoci("overlayfs");
}

#[test]
fn cratectl_pull_of_a_layered_image_equals_umoci_with_native() {
    layered_matches_umoci("native");
}

/// A TLS registry with busybox pushed, a daemon, and a hosts directory for the registry:
/// `cratectl images pull --skip-unpack --hosts-dir`, Debian's ctr to see what it got.
struct HostsDirPull {
    registry: Registry,
    daemon: Daemon,
    ctr: PathBuf,
    cratectl: PathBuf,
    hosts: tempfile::TempDir,
    reference: String,
}

impl HostsDirPull {
    /// None (after saying why) when a peer is missing outside CI.
    fn start(registry: impl FnOnce() -> Option<Registry>) -> Option<HostsDirPull> {
        let ctr = tool("ctr", "containerd")?;
        let registry = registry()?;
        let daemon = common::start(None);
        let (image, _) = crated_testsupport::oci::busybox("busybox");
        registry.push(&image, "busybox:latest");
        let hosts = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(hosts.path().join(&registry.addr)).unwrap();
        Some(HostsDirPull {
            reference: format!("{}/busybox:latest", registry.addr),
            registry,
            daemon,
            ctr,
            cratectl: workspace_bin("cratectl"),
            hosts,
        })
    }

    /// The registry's directory in the hosts directory.
    fn host_dir(&self) -> PathBuf {
        self.hosts.path().join(&self.registry.addr)
    }

    fn write_hosts(&self, text: &str) {
        std::fs::write(self.host_dir().join("hosts.toml"), text).unwrap()
    }

    fn pull(&self) -> std::process::Output {
        self.daemon.client(
            &self.cratectl,
            &[
                "images",
                "pull",
                "--skip-unpack",
                "--hosts-dir",
                self.hosts.path().to_str().unwrap(),
                &self.reference,
            ],
        )
    }

    fn pulled(&self) -> bool {
        let listed = ok(self.daemon.client(&self.ctr, &["images", "ls", "-q"]));
        listed.lines().any(|l| l == self.reference)
    }

    fn remove(&self) {
        ok(self
            .daemon
            .client(&self.ctr, &["images", "rm", "--sync", &self.reference]));
        assert!(!self.pulled());
    }

    fn check(&self) {
        let check = ok(self.daemon.client(&self.ctr, &["images", "check"]));
        assert!(check.contains("complete"), "{check}");
    }
}

/// A registry served over https with a certificate from a private authority, reached through
/// a hosts directory as containerd's: without the authority the pull fails on the certificate;
/// with `ca`, or with `skip_verify`, in `hosts.toml` it succeeds.
#[test]
fn pull_over_https_trusts_what_the_hosts_directory_says() {
    let Some(p) = HostsDirPull::start(Registry::start_tls) else {
        return;
    };
    let ca = p
        .registry
        .ca
        .clone()
        .expect("a TLS registry has an authority");
    let server = format!("server = \"https://{}\"\n", p.registry.addr);

    // https, but the authority is not trusted.
    p.write_hosts(&server);
    let refused = fails(p.pull());
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    assert!(!p.pulled());

    p.write_hosts(&format!("{server}ca = \"{}\"\n", ca.display()));
    ok(p.pull());
    assert!(p.pulled());
    p.remove();

    p.write_hosts(&format!("{server}skip_verify = true\n"));
    ok(p.pull());
    assert!(p.pulled());
    p.check();
}

/// An index whose entry is another index (as some tools push multi-platform images): the pull
/// walks into it, unpacks the host's manifest, and stores both indexes with the GC labels that
/// keep the whole tree through a collection.
#[test]
fn pull_of_an_index_inside_an_index() {
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let Some(s) = setup() else { return };
    let (image, layer) = crated_testsupport::oci::busybox("nested");
    s.registry.push(&image, "nested:only-the-manifest");
    let manifest_size = image
        .blobs
        .iter()
        .find(|(d, _)| *d == image.manifest)
        .map(|(_, b)| b.len())
        .unwrap();
    let inner = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{manifest_size},"platform":{{"architecture":"{}","os":"linux"}}}}]}}"#,
        image.manifest,
        crated_testsupport::oci::host_arch()
    );
    let inner_digest = s
        .registry
        .put_manifest("nested", "inner", INDEX, inner.as_bytes());
    let outer = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{INDEX}","digest":"{inner_digest}","size":{}}}]}}"#,
        inner.len()
    );
    let outer_digest = s
        .registry
        .put_manifest("nested", "1", INDEX, outer.as_bytes());
    let reference = format!("{}/nested:1", s.registry.addr);
    ok(s.cratectl(&["images", "pull", "--snapshotter", "native", &reference]));

    let ls = ok(s.ctr(&["images", "ls"]));
    assert!(ls.contains(&outer_digest), "{ls}");
    let info = ok(s.ctr(&["snapshots", "--snapshotter", "native", "info", &layer]));
    assert!(info.contains("Committed"), "{info}");
    let blobs = ok(s.ctr(&["content", "ls"]));
    let line = |digest: &str| {
        blobs
            .lines()
            .find(|l| l.starts_with(digest))
            .unwrap_or_else(|| panic!("{digest} not stored: {blobs}"))
            .to_owned()
    };
    assert!(
        line(&outer_digest).contains(&format!("containerd.io/gc.ref.content.m.0={inner_digest}")),
        "{blobs}"
    );
    assert!(
        line(&inner_digest).contains(&format!(
            "containerd.io/gc.ref.content.m.0={}",
            image.manifest
        )),
        "{blobs}"
    );
    // A collection keeps the whole tree: the image is still complete and runs from its snapshot.
    ok(s.cratectl(&["gc"]));
    let check = ok(s.ctr(&["images", "check"]));
    assert!(check.contains(" complete ("), "{check}");
    let info = ok(s.ctr(&["snapshots", "--snapshotter", "native", "info", &layer]));
    assert!(info.contains("Committed"), "{info}");
}

/// A registry that asks for a client certificate, reached through a hosts directory whose first
/// host answers nothing: the pull goes on to the next host, as containerd's resolver does, and
/// presents the certificate `client` names. A certs.d directory (no `hosts.toml`) does the same
/// with its `*.crt`, `*.cert` and `*.key` files.
#[test]
fn pull_goes_past_a_dead_host_and_presents_a_client_certificate() {
    let Some(p) = HostsDirPull::start(Registry::start_mutual_tls) else {
        return;
    };
    let ca = p.registry.ca.clone().unwrap();
    let certs = p.registry.client_certs.clone().unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let write_hosts = |client: &str| {
        p.write_hosts(&format!(
            "server = \"https://{}\"\nca = \"{}\"\n{client}\n\
             [host.\"http://{dead}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            p.registry.addr,
            ca.display()
        ))
    };

    // The registry refuses a client without a certificate.
    write_hosts("");
    fails(p.pull());
    assert!(!p.pulled());

    write_hosts(&format!(
        "client = [[\"{}\", \"{}\"]]",
        certs.join("client.cert").display(),
        certs.join("client.key").display()
    ));
    ok(p.pull());
    assert!(p.pulled());
    let log = p.daemon.log();
    assert!(
        log.contains("trying next host") && log.contains(&dead),
        "the dead host was not tried first: {log}"
    );
    p.remove();

    // Docker's certs.d layout: the loopback registry is then reached over https.
    let host_dir = p.host_dir();
    std::fs::remove_file(host_dir.join("hosts.toml")).unwrap();
    std::fs::copy(&ca, host_dir.join("ca.crt")).unwrap();
    for f in ["client.cert", "client.key"] {
        std::fs::copy(certs.join(f), host_dir.join(f)).unwrap();
    }
    ok(p.pull());
    assert!(p.pulled());
    p.check();
}
