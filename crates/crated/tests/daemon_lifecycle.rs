//! The daemon's own behaviour: one per root, clean shutdown, strict config, required plugins.

use std::process::Command;

use std::time::Duration;

use crated_testsupport::{output_within, Daemon};

mod common;
use common::crated;

#[test]
fn second_daemon_on_same_root_is_refused_and_sigterm_cleans_up() {
    let mut first = Daemon::crated(&crated(), None, &[]).unwrap();
    let other_socket = first.dir.path().join("second.sock");
    let second = Command::new(crated())
        .arg("--root")
        .arg(&first.root)
        .arg("--state")
        .arg(first.dir.path().join("state2"))
        .arg("--address")
        .arg(&other_socket)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already running on root"), "{err}");
    assert!(
        err.contains(&first.pid().to_string()),
        "owner pid not named: {err}"
    );
    assert!(!other_socket.exists());
    // The first one is unharmed.
    assert!(first.socket.exists());

    let status = first.stop();
    assert!(status.success(), "SIGTERM exit: {status}\n{}", first.log());
    assert!(!first.socket.exists(), "socket left behind");
    assert!(first.log().contains("crated stopped"), "{}", first.log());

    // The root is free again, and the metadata survived.
    let again = Daemon::crated_on_root(
        &crated(),
        tempfile::tempdir().unwrap(),
        first.root.clone(),
        None,
        &[],
    );
    assert!(again.is_ok(), "{:?}", again.err());
}

fn start_fails(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = output_within(
        Command::new(crated())
            .arg("--config")
            .arg(&path)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(dir.path().join("s.sock")),
        Duration::from_secs(20),
    );
    assert!(!out.status.success(), "daemon started with a bad config");
    assert!(!dir.path().join("s.sock").exists());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_configs_stop_the_daemon_naming_file_key_and_line() {
    let err = start_fails("version = 2\n[grpc]\nadress = \"/x\"\n");
    assert!(err.contains("config.toml:3"), "{err}");
    assert!(err.contains("adress"), "{err}");

    let err =
        start_fails("version = 2\n\n[plugins.\"io.containerd.snapshotter.v1.nope\"]\nx = 1\n");
    assert!(
        err.contains("config.toml:3") && err.contains("unknown plugin"),
        "{err}"
    );

    let err = start_fails("version = 2\n[plugins.\"io.containerd.snapshotter.v1.devmapper\"]\npool_name = \"p\"\nbase_image_size = 10\n");
    assert!(
        err.contains("config.toml:4") && err.contains("base_image_size"),
        "{err}"
    );

    let err = start_fails("version = 3\n");
    assert!(
        err.contains("config.toml:1") && err.contains("unsupported config version 3"),
        "{err}"
    );

    let err = start_fails("version = 2\ndisabled_plugins = [\"btrfs\"]\n");
    assert!(
        err.contains("config.toml:2") && err.contains("disabled_plugins"),
        "{err}"
    );

    let err =
        start_fails("version = 2\nrequired_plugins = [\"io.containerd.snapshotter.v1.btrfs\"]\n");
    assert!(
        err.contains("required plugin io.containerd.snapshotter.v1.btrfs"),
        "{err}"
    );
}

#[test]
fn lenient_warns_and_starts() {
    let daemon = Daemon::crated(
        &crated(),
        Some("version = 2\nbogus_key = 1\n"),
        &["--lenient"],
    )
    .unwrap();
    assert!(daemon.log().contains("bogus_key"), "{}", daemon.log());
}

#[test]
fn disabled_plugins_vanish_and_dependents_name_the_cause() {
    let cfg = "version = 2\ndisabled_plugins = [\"io.containerd.metadata.v1.bolt\", \"io.containerd.snapshotter.v1.aufs\"]\n";
    let daemon = Daemon::crated(&crated(), Some(cfg), &[]).unwrap();
    let out = daemon.client(
        &crated_testsupport::workspace_bin("cratectl"),
        &["plugins", "ls", "-d"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        !text.contains("bolt\n") && !text.contains(" aufs"),
        "{text}"
    );
    assert!(
        text.contains("requires io.containerd.metadata.v1.bolt, which is disabled"),
        "{text}"
    );
}

#[test]
fn version_one_config_is_migrated() {
    let cfg = "disabled_plugins = [\"aufs\"]\n[plugins.devmapper]\npool_name = \"\"\n";
    let daemon = Daemon::crated(&crated(), Some(cfg), &[]).unwrap();
    let out = daemon.client(
        &crated_testsupport::workspace_bin("cratectl"),
        &["plugins", "ls", "-q"],
    );
    let ids = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(ids.lines().any(|l| l == "devmapper"), "{ids}");
    assert!(!ids.lines().any(|l| l == "aufs"), "{ids}");
}

#[test]
fn config_default_lists_every_plugin_section_and_round_trips() {
    let out = Command::new(crated())
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("version = 2"), "{text}");
    assert!(
        text.contains("[plugins.\"io.containerd.metadata.v1.bolt\"]"),
        "{text}"
    );
    assert!(
        text.contains("content_sharing_policy = \"shared\""),
        "{text}"
    );
    assert!(
        text.contains("[plugins.\"io.containerd.snapshotter.v1.devmapper\"]"),
        "{text}"
    );
    // The default config is itself a valid config.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &text).unwrap();
    let dump = Command::new(crated())
        .arg("--config")
        .arg(&path)
        .args(["--root", "/tmp/x-root", "config", "dump"])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dumped = String::from_utf8_lossy(&dump.stdout);
    assert!(dumped.contains("root = \"/tmp/x-root\""), "{dumped}");
}

#[test]
fn config_dump_shows_imports_merged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "version = 2\nimports = [\"conf.d/*.toml\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("conf.d/10-metadata.toml"),
        "version = 2\n[plugins.\"io.containerd.metadata.v1.bolt\"]\ncontent_sharing_policy = \"isolated\"\n",
    )
    .unwrap();
    let out = Command::new(crated())
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .args(["config", "dump"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("content_sharing_policy = \"isolated\""),
        "{text}"
    );
    assert!(
        text.contains("10-metadata.toml"),
        "imports not listed: {text}"
    );
}
