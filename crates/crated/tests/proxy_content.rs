//! Proxy content plugins: `crated-content` serving our store on a socket, used by crated and
//! by Debian's containerd as `[proxy_plugins.x] type = "content"`, driven by Debian's `ctr`.

use std::path::Path;
use std::time::{Duration, Instant};

use crated_testsupport::blobs::{blob_files, data, digest};
use crated_testsupport::cmd::{ok, with_stdin};
use crated_testsupport::{tool, workspace_bin, Daemon, SocketServer};

mod common;
use common::crated;

/// A running `crated-content`, stopped on drop.
fn content_server(socket: &Path, root: &Path) -> SocketServer {
    SocketServer::start(
        "crated-content",
        &[socket.as_os_str(), root.as_os_str()],
        socket,
    )
}

fn proxy_config(socket: &Path) -> String {
    format!(
        "version = 2\ndisabled_plugins = [\"io.containerd.content.v1.content\"]\n\
         [proxy_plugins.remote]\n  type = \"content\"\n  address = \"{}\"\n",
        socket.display()
    )
}

/// Ingests and reads back a blob through `daemon` with ctr; its digest.
fn round_trip(ctr: &Path, daemon: &Daemon, seed: u64) -> String {
    let blob = data(3_000_000 + seed as usize, seed);
    let d = digest(&blob);
    let reference = format!("proxy-{seed}");
    ok(with_stdin(
        ctr,
        daemon,
        &["content", "ingest", "--expected-digest", &d, &reference],
        &blob,
    ));
    let out = daemon.client(ctr, &["content", "get", &d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == blob, "read back different bytes");
    d
}

#[test]
fn crated_uses_a_proxy_store_and_survives_its_restarts() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (socket, store) = (dir.path().join("content.sock"), dir.path().join("store"));
    let mut server = Some(content_server(&socket, &store));
    let daemon = Daemon::crated(&crated(), Some(&proxy_config(&socket)), &[]).unwrap();
    ok(daemon.client(&ctr, &["leases", "create", "--id", "keep"]));
    let d = {
        // Under a lease, so GC leaves it (the daemon keeps labels and leases, the proxy the bytes).
        let cratectl = workspace_bin("cratectl");
        let blob = data(3_000_000, 7);
        let d = digest(&blob);
        ok(with_stdin(
            &cratectl,
            &daemon,
            &[
                "--lease",
                "keep",
                "content",
                "ingest",
                "--expected-digest",
                &d,
                "p",
            ],
            &blob,
        ));
        d
    };
    assert_eq!(blob_files(&store), [d.trim_start_matches("sha256:")]);
    assert!(!daemon
        .root
        .join("io.containerd.content.v1.content")
        .exists());
    ok(daemon.client(&ctr, &["content", "label", &d, "a=b"]));
    let listed = ok(daemon.client(&ctr, &["content", "ls"]));
    assert!(listed.contains(&d) && listed.contains("a=b"), "{listed}");
    let plugins = ok(daemon.client(&ctr, &["plugins", "ls"]));
    assert!(
        plugins.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"io.containerd.content.v1")
                && w.get(1) == Some(&"remote")
                && w.last() == Some(&"ok")
        }),
        "{plugins}"
    );

    // The store goes away: reported, and calls fail fast instead of hanging.
    server.take();
    let detail = ok(daemon.client(&ctr, &["plugins", "ls", "-d", "id==remote"]));
    assert!(
        detail.contains("Unavailable") && detail.contains(&socket.display().to_string()),
        "{detail}"
    );
    let status = ok(daemon.client(&ctr, &["plugins", "ls", "id==remote"]));
    assert!(!status.contains(" ok"), "{status}");
    let started = Instant::now();
    let out = daemon.client(&ctr, &["content", "get", &d]);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a call to a dead store hung"
    );

    // It comes back: reconnected, same data.
    let _server = content_server(&socket, &store);
    let status = ok(daemon.client(&ctr, &["plugins", "ls", "id==remote"]));
    assert!(status.trim_end().ends_with("ok"), "{status}");
    let out = daemon.client(&ctr, &["content", "get", &d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(digest(&out.stdout), d);
    round_trip(&ctr, &daemon, 8);

    // GC reaches through the proxy: the lease goes, the bytes go from the remote store.
    ok(daemon.client(&ctr, &["leases", "rm", "--sync", "keep"]));
    assert!(
        !blob_files(&store).contains(&d.trim_start_matches("sha256:").to_owned()),
        "GC left the blob in the proxy store"
    );
}

#[test]
fn debian_containerd_uses_crated_content_as_its_proxy_store() {
    let (Some(ctr), Some(containerd)) =
        (tool("ctr", "containerd"), tool("containerd", "containerd"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (socket, store) = (dir.path().join("content.sock"), dir.path().join("store"));
    let _server = content_server(&socket, &store);
    // `ctr content ingest` takes no lease: containerd's first collection (100ms after start)
    // would take a blob ingested before it. It is put off; what is tested here is the proxy.
    let config = format!(
        "{}[plugins.\"io.containerd.gc.v1.scheduler\"]\n  startup_delay = \"1h\"\n",
        proxy_config(&socket)
    );
    let daemon = Daemon::containerd(&containerd, Some(&config)).unwrap();
    let d = round_trip(&ctr, &daemon, 9);
    assert_eq!(blob_files(&store), [d.trim_start_matches("sha256:")]);
    let listed = ok(daemon.client(&ctr, &["content", "ls", "-q"]));
    assert_eq!(listed.trim(), d);
    // A corrupt blob in our store is refused to containerd too.
    let path = store
        .join("blobs/sha256")
        .join(d.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 1;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let out = daemon.client(&ctr, &["content", "get", &d]);
    assert!(!out.status.success(), "containerd served a corrupt blob");
}
