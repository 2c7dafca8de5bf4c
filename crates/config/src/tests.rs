use std::io::Write;

use serde::Deserialize;

use super::*;

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct OverlayConfig {
    root_path: String,
    sync_remove: bool,
}

fn err_of(text: &str) -> ConfigError {
    match parse_str("/etc/crated/config.toml", text, false) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

fn known() -> Vec<(String, String)> {
    vec![
        ("io.containerd.snapshotter.v1".into(), "overlayfs".into()),
        ("io.containerd.snapshotter.v1".into(), "btrfs".into()),
        ("io.containerd.content.v1".into(), "content".into()),
        ("io.containerd.grpc.v1".into(), "content".into()),
    ]
}

#[test]
fn defaults_and_values() {
    let c = parse_str(
        "c.toml",
        "version = 2\nroot = \"/r\"\n[grpc]\naddress = \"/s.sock\"\n",
        false,
    )
    .unwrap();
    assert_eq!(c.version, 2);
    assert_eq!(c.root, "/r");
    assert_eq!(c.state, "/run/crated");
    assert_eq!(c.grpc.address, "/s.sock");
    assert_eq!(c.grpc.max_recv_message_size, 16 << 20);
}

#[test]
fn unknown_top_level_key_names_key_and_line() {
    let e = err_of("version = 2\nroot = \"/r\"\nrooot = \"/x\"\n");
    let loc = e.location().expect("location");
    assert_eq!(loc.line, 3);
    assert_eq!(loc.key.as_deref(), Some("rooot"));
    let text = e.to_string();
    assert!(text.contains("/etc/crated/config.toml:3"), "{text}");
    assert!(text.contains("rooot"), "{text}");
}

#[test]
fn unknown_nested_key_names_line() {
    let e = err_of("version = 2\n\n[grpc]\naddress = \"/a\"\nadress = \"/b\"\n");
    let loc = e.location().expect("location");
    assert_eq!(loc.line, 5);
    assert!(e.to_string().contains("adress"), "{e}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let e = err_of("version = 2\n[grpc]\nuid = \"zero\"\n");
    let loc = e.location().expect("location");
    assert_eq!(loc.line, 3);
    assert_eq!(loc.key.as_deref(), Some("uid"));
    assert!(e.to_string().contains("invalid type"), "{e}");
}

#[test]
fn syntax_error_names_line() {
    let e = err_of("version = 2\nroot = \n");
    assert_eq!(e.location().expect("location").line, 2);
}

#[test]
fn version_above_two_is_refused() {
    let e = err_of("\n\nversion = 3\n");
    let loc = e.location().expect("location");
    assert_eq!(loc.line, 3);
    assert_eq!(loc.key.as_deref(), Some("version"));
    assert!(
        e.to_string().contains("unsupported config version 3"),
        "{e}"
    );
}

#[test]
fn lenient_turns_unknown_keys_into_warnings() {
    let c = parse_str(
        "c.toml",
        "version = 2\nrooot = 1\n[grpc]\nx = 1\naddress = \"/a\"\n",
        true,
    )
    .unwrap();
    assert_eq!(c.grpc.address, "/a");
}

#[test]
fn plugin_section_decodes_typed_and_reports_lines() {
    let text = "version = 2\n[plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\nroot_path = \"/x\"\nsync_remove = true\n";
    let c = parse_str("c.toml", text, false).unwrap();
    let section = &c.plugins["io.containerd.snapshotter.v1.overlayfs"];
    let cfg: OverlayConfig = section.decode().unwrap();
    assert_eq!(
        cfg,
        OverlayConfig {
            root_path: "/x".into(),
            sync_remove: true
        }
    );

    let bad = "version = 2\n[plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\nroot_path = \"/x\"\nsync_remov = true\n";
    let c = parse_str("c.toml", bad, false).unwrap();
    let e = c.plugins["io.containerd.snapshotter.v1.overlayfs"]
        .decode::<OverlayConfig>()
        .unwrap_err();
    let loc = e.location().expect("location");
    assert_eq!(loc.line, 4);
    assert_eq!(loc.key.as_deref(), Some("sync_remov"));

    let wrong = "version = 2\n[plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\nsync_remove = \"yes\"\n";
    let c = parse_str("c.toml", wrong, false).unwrap();
    let e = c.plugins["io.containerd.snapshotter.v1.overlayfs"]
        .decode::<OverlayConfig>()
        .unwrap_err();
    assert_eq!(e.location().expect("location").line, 3);
}

#[test]
fn unknown_plugin_section_is_an_error_with_line() {
    let text = "version = 2\n\n[plugins.\"io.containerd.snapshotter.v1.nope\"]\n";
    let mut c = parse_str("c.toml", text, false).unwrap();
    let e = c.resolve_plugins(&known(), false).unwrap_err();
    assert_eq!(e.location().expect("location").line, 3);
    assert!(e.to_string().contains("unknown plugin"), "{e}");
    let mut c = parse_str("c.toml", text, false).unwrap();
    let warnings = c.resolve_plugins(&known(), true).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(c.plugins.is_empty());
}

#[test]
fn malformed_disabled_plugin_uri_is_an_error_with_line() {
    let text = "version = 2\ndisabled_plugins = [\n  \"io.containerd.snapshotter.v1.btrfs\",\n  \"btrfs\",\n]\n";
    let mut c = parse_str("c.toml", text, false).unwrap();
    let e = c.resolve_plugins(&known(), false).unwrap_err();
    let loc = e.location().expect("location");
    assert_eq!(loc.line, 4);
    assert!(e.to_string().contains("disabled_plugins"), "{e}");
    let text = "version = 2\nrequired_plugins = [\"io.containerd\"]\n";
    let mut c = parse_str("c.toml", text, false).unwrap();
    let e = c.resolve_plugins(&known(), false).unwrap_err();
    assert!(e.to_string().contains("required_plugins"), "{e}");
}

#[test]
fn version_one_is_migrated_by_plugin_id() {
    let text = "disabled_plugins = [\"btrfs\"]\n[plugins.overlayfs]\nroot_path = \"/o\"\n[plugins.content]\n";
    let mut c = parse_str("c.toml", text, false).unwrap();
    assert_eq!(c.version, 1);
    c.resolve_plugins(&known(), false).unwrap();
    assert_eq!(c.version, 2);
    assert_eq!(
        c.disabled_plugins,
        vec!["io.containerd.snapshotter.v1.btrfs"]
    );
    let cfg: OverlayConfig = c.plugins["io.containerd.snapshotter.v1.overlayfs"]
        .decode()
        .unwrap();
    assert_eq!(cfg.root_path, "/o");
    // An id shared by several plugins configures each of them.
    assert!(c.plugins.contains_key("io.containerd.content.v1.content"));
    assert!(c.plugins.contains_key("io.containerd.grpc.v1.content"));
}

#[test]
fn imports_merge_and_cycles_end() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    let mut f = std::fs::File::create(&main).unwrap();
    writeln!(
        f,
        "version = 2\nimports = [\"conf.d/*.toml\"]\nroot = \"/main\"\ndisabled_plugins = [\"io.containerd.snapshotter.v1.btrfs\"]\n[plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\nroot_path = \"/main\"\nsync_remove = true"
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/a.toml"),
        "version = 2\nimports = [\"../config.toml\"]\nstate = \"/imported\"\ndisabled_plugins = [\"io.containerd.snapshotter.v1.zfs\"]\n[plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\nroot_path = \"/imported\"\n",
    )
    .unwrap();
    let c = load(&main, false).unwrap();
    assert_eq!(c.root, "/main");
    assert_eq!(c.state, "/imported");
    assert_eq!(
        c.disabled_plugins,
        vec![
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs"
        ]
    );
    // Sections are replaced whole, as containerd does.
    let cfg: OverlayConfig = c.plugins["io.containerd.snapshotter.v1.overlayfs"]
        .decode()
        .unwrap();
    assert_eq!(
        cfg,
        OverlayConfig {
            root_path: "/imported".into(),
            sync_remove: false
        }
    );
    assert_eq!(c.imports.len(), 1);
}

#[test]
fn an_import_setting_a_default_value_still_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(
        &main,
        "version = 2\nimports = [\"b.toml\"]\nroot = \"/custom\"\n[grpc]\nuid = 5\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        "version = 2\nroot = \"/var/lib/crated\"\n[grpc]\nuid = 0\n",
    )
    .unwrap();
    let c = load(&main, false).unwrap();
    assert_eq!(c.root, "/var/lib/crated");
    assert_eq!(c.grpc.uid, 0);
}

#[test]
fn version_one_lists_accept_ids_we_do_not_have() {
    // Docker's stock containerd config.
    let mut c = parse_str("c.toml", "disabled_plugins = [\"cri\"]\n", false).unwrap();
    c.resolve_plugins(&known(), false).unwrap();
    assert!(c.disabled_plugins.is_empty());
}

#[test]
fn error_in_an_import_names_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(&main, "version = 2\nimports = [\"b.toml\"]\n").unwrap();
    std::fs::write(dir.path().join("b.toml"), "version = 2\n\nbogus = 1\n").unwrap();
    let e = load(&main, false).unwrap_err();
    let loc = e.location().expect("location");
    assert!(loc.file.ends_with("b.toml"));
    assert_eq!(loc.line, 3);
}

#[test]
fn split_uri_shapes() {
    assert_eq!(
        split_uri("io.containerd.snapshotter.v1.overlayfs"),
        Some(("io.containerd.snapshotter.v1", "overlayfs"))
    );
    assert_eq!(
        split_uri("io.containerd.grpc.v1.cri"),
        Some(("io.containerd.grpc.v1", "cri"))
    );
    assert_eq!(split_uri("btrfs"), None);
    assert_eq!(split_uri("io.containerd.snapshotter.v1"), None);
    assert_eq!(split_uri("io.containerd.snapshotter.v1."), None);
    assert_eq!(split_uri("io..x.v1.a"), None);
}

#[test]
fn lenient_plugin_section_drops_unknown_keys_and_keeps_the_rest() {
    let text = "version = 2\n[plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\nroot_pth = \"/typo\"\nroot_path = \"/x\"\n";
    let c = parse_str("c.toml", text, true).unwrap();
    let cfg: OverlayConfig = c.plugins["io.containerd.snapshotter.v1.overlayfs"]
        .decode()
        .unwrap();
    assert_eq!(cfg.root_path, "/x");
    let wrong = "version = 2\n[plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\nsync_remove = \"yes\"\n";
    let c = parse_str("c.toml", wrong, true).unwrap();
    // Lenient forgives unknown keys, never wrong types.
    assert!(c.plugins["io.containerd.snapshotter.v1.overlayfs"]
        .decode::<OverlayConfig>()
        .is_err());
}

#[test]
fn imports_of_devices_fifos_and_huge_files_are_refused_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    mkfifo(&fifo);
    let big = dir.path().join("big.toml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(5 << 20).unwrap();
    for import in ["/dev/zero", fifo.to_str().unwrap(), big.to_str().unwrap()] {
        let main = dir.path().join("config.toml");
        std::fs::write(&main, format!("version = 2\nimports = [{import:?}]\n")).unwrap();
        let err = load(&main, false).unwrap_err().to_string();
        assert!(err.contains(import), "{err}");
        assert!(
            err.contains("not a regular file") || err.contains("more than a config file may have"),
            "{err}"
        );
    }
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}
