//! Events from outside the daemon: `crated publish` (the `-publish-binary` shims are given)
//! delivers an event to subscribers, and `ctr events` filters on the decoded event's fields.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crated_api::containerd::events as ev;
use crated_testsupport::{tool, wait_until, Daemon};
use prost::Message;

mod common;
use common::crated;

fn publish(daemon: &Daemon, topic: &str, type_url: &str, value: Vec<u8>) -> std::process::Output {
    let mut child = Command::new(crated())
        .arg("--address")
        .arg(&daemon.socket)
        .args(["publish", "--namespace", "default", "--topic", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let any = prost_types::Any {
        type_url: type_url.into(),
        value,
    };
    // A publish that refuses its arguments exits without reading: a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(&any.encode_to_vec());
    child.wait_with_output().unwrap()
}

/// `ctr events` with filters, in the background; its output so far on demand.
struct Subscriber {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Subscriber {
    fn start(ctr: &std::path::Path, daemon: &Daemon, filters: &[&str]) -> Subscriber {
        let mut child = Command::new(ctr)
            .arg("--address")
            .arg(&daemon.socket)
            .arg("events")
            .args(filters)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Subscriber { child, out }
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn published_events_reach_subscribers_through_their_event_filters() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    let all = Subscriber::start(&ctr, &daemon, &[]);
    let only_pub2 = Subscriber::start(&ctr, &daemon, &["event.id==pub2"]);
    let labelled = Subscriber::start(&ctr, &daemon, &["event.labels.tier==gold"]);
    std::thread::sleep(Duration::from_millis(500));

    let delete = |id: &str| ev::ContainerDelete { id: id.into() }.encode_to_vec();
    for id in ["pub1", "pub2"] {
        let out = publish(
            &daemon,
            "/containers/delete",
            "containerd.events.ContainerDelete",
            delete(id),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let update = ev::ContainerUpdate {
        id: "pub3".into(),
        labels: [("tier".to_string(), "gold".to_string())].into(),
        ..Default::default()
    };
    let out = publish(
        &daemon,
        "/containers/update",
        "containerd.events.ContainerUpdate",
        update.encode_to_vec(),
    );
    assert!(out.status.success());

    wait_until(
        Duration::from_secs(10),
        || {
            ["pub1", "pub2", "pub3"]
                .iter()
                .all(|id| all.text().contains(id))
        },
        || all.text(),
    );
    wait_until(
        Duration::from_secs(10),
        || only_pub2.text().contains("pub2") && labelled.text().contains("pub3"),
        || format!("{}\n--\n{}", only_pub2.text(), labelled.text()),
    );
    // Everything was delivered to `all` by now, so the filtered ones had their chance.
    let filtered = only_pub2.text();
    assert!(
        !filtered.contains("pub1") && !filtered.contains("pub3"),
        "{filtered}"
    );
    assert!(filtered.contains("/containers/delete"), "{filtered}");
    let gold = labelled.text();
    assert!(!gold.contains("pub1") && !gold.contains("pub2"), "{gold}");

    // containerd's checks on what is published: a topic is required and must be valid.
    let out = publish(
        &daemon,
        "",
        "containerd.events.ContainerDelete",
        delete("x"),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("topic required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = publish(
        &daemon,
        "no-slash",
        "containerd.events.ContainerDelete",
        delete("x"),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must start with '/'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn namespace_and_content_changes_publish_containerds_events() {
    let Some(ctr) = tool("ctr", "containerd") else {
        return;
    };
    let daemon = Daemon::crated(&crated(), None, &[]).unwrap();
    let all = Subscriber::start(&ctr, &daemon, &[]);
    std::thread::sleep(Duration::from_millis(500));
    let run = |args: &[&str]| {
        let out = daemon.client(&ctr, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["namespaces", "create", "evns"]);
    run(&["namespaces", "label", "evns", "tier=gold"]);
    run(&["namespaces", "rm", "evns"]);
    // One blob in, then removed.
    let blob = b"an event blob\n";
    let digest = format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(blob));
    let mut ingest = Command::new(&ctr)
        .arg("--address")
        .arg(&daemon.socket)
        .args(["content", "ingest", "--expected-digest", &digest, "evblob"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    ingest.stdin.take().unwrap().write_all(blob).unwrap();
    assert!(ingest.wait().unwrap().success());
    run(&["content", "rm", &digest]);
    for topic in [
        "/namespaces/create",
        "/namespaces/update",
        "/namespaces/delete",
        "/content/delete",
    ] {
        wait_until(
            Duration::from_secs(10),
            || all.text().contains(topic),
            || format!("no {topic} in {}", all.text()),
        );
    }
    let text = all.text();
    assert!(text.contains("evns") && text.contains(&digest), "{text}");
}
