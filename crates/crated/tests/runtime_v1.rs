//! Runtime v1 (`io.containerd.runtime.v1.linux`) with Debian's `containerd-shim` (shim v1) and
//! `runc`, driven by Debian's `ctr`: run in the foreground and detached, exec, pause, kill,
//! delete with their events; a crated restarted under a running v1 task finds its shim again;
//! `containerd.linux.runc.RuncOptions` name the runtime binary and root, and one that does not
//! exist fails the task's creation with containerd's error.

use std::path::Path;
use std::time::Duration;

use crated_testsupport::cmd::{fails, ok};
use crated_testsupport::{tool, wait_until, Daemon};

mod common;

use common::*;

const V1: &str = "io.containerd.runtime.v1.linux";

fn shim_v1() -> bool {
    tool("containerd-shim", "containerd").is_some()
}

fn v1_bundles(daemon: &Daemon) -> Vec<String> {
    std::fs::read_dir(daemon.state.join("io.containerd.runtime.v1.linux/default"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn task_status(daemon: &Daemon, bin: &Path, id: &str) -> String {
    ok(ctr(daemon, bin, &["tasks", "ls"]))
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_owned()
}

#[test]
fn ctr_runs_execs_pauses_kills_and_deletes_with_runtime_v1() {
    let Some((mut daemon, bin, _work)) = setup("overlayfs") else {
        return;
    };
    if !shim_v1() {
        return;
    }
    let plugins = ok(ctr(&daemon, &bin, &["plugins", "ls"]));
    assert!(
        plugins.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&"io.containerd.runtime.v1")
                && f.get(1) == Some(&"linux")
                && f.last() == Some(&"ok")
        }),
        "{plugins}"
    );

    let args: Vec<&str> = ["run", "--rm", "--runtime", V1, IMAGE, "v1-rm"]
        .into_iter()
        .chain(HI_ERR_EXIT_3)
        .collect();
    assert_hi_err_exit_3(&ctr(&daemon, &bin, &args));
    assert!(v1_bundles(&daemon).is_empty(), "{:?}", v1_bundles(&daemon));

    let events = Events::start(&daemon, &bin);
    let id = "v1-detached";
    ok(ctr(
        &daemon,
        &bin,
        &[
            "run",
            "-d",
            "--runtime",
            V1,
            IMAGE,
            id,
            "/bin/busybox",
            "sleep",
            "1000",
        ],
    ));
    events.wait_for("/tasks/create", id);
    events.wait_for("/tasks/start", id);
    assert_eq!(task_status(&daemon, &bin, id), "RUNNING");
    let exec = ctr(
        &daemon,
        &bin,
        &[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            id,
            "/bin/sh",
            "-c",
            "echo in-exec; exit 2",
        ],
    );
    assert_eq!(exec.status.code(), Some(2), "{exec:?}");
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "in-exec\n");
    ok(ctr(&daemon, &bin, &["tasks", "pause", id]));
    events.wait_for("/tasks/paused", id);
    assert_eq!(task_status(&daemon, &bin, id), "PAUSED");
    ok(ctr(&daemon, &bin, &["tasks", "resume", id]));
    assert_eq!(task_status(&daemon, &bin, id), "RUNNING");

    // SIGKILL of crated under the running task: the restarted daemon dials its shim again.
    daemon.restart_after_sigkill(&crated()).unwrap();
    assert_eq!(task_status(&daemon, &bin, id), "RUNNING");
    let events = Events::start(&daemon, &bin);
    let exec = ok(ctr(
        &daemon,
        &bin,
        &[
            "tasks",
            "exec",
            "--exec-id",
            "e2",
            id,
            "/bin/sh",
            "-c",
            "echo after-restart",
        ],
    ));
    assert_eq!(exec, "after-restart\n");

    ok(ctr(
        &daemon,
        &bin,
        &["tasks", "kill", "--signal", "SIGKILL", id],
    ));
    // The shim publishes the exit through `crated publish`.
    events.wait_for("/tasks/exit", id);
    wait_until(
        Duration::from_secs(10),
        || task_status(&daemon, &bin, id) == "STOPPED",
        || task_status(&daemon, &bin, id),
    );
    ok(ctr(&daemon, &bin, &["tasks", "rm", id]));
    events.wait_for("/tasks/delete", id);
    ok(ctr(&daemon, &bin, &["containers", "rm", id]));
    assert!(v1_bundles(&daemon).is_empty(), "{:?}", v1_bundles(&daemon));
}

/// A container's `containerd.linux.runc.RuncOptions` (made here with a raw client: ctr sends
/// none for v1) choose the runtime binary and its root.
#[test]
fn runc_options_name_the_runtime_binary_and_root() {
    use crated_api::containerd::services::containers::v1::containers_client::ContainersClient;
    use crated_api::containerd::services::containers::v1::{
        CreateContainerRequest, GetContainerRequest,
    };
    use crated_runtime::v1::proto::{RuncOptions, RUNC_OPTIONS};

    let Some((daemon, bin, work)) = setup("overlayfs") else {
        return;
    };
    if !shim_v1() {
        return;
    }
    // A runc that says it was called.
    let calls = work.path().join("calls");
    let wrapper = work.path().join("runc-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec runc \"$@\"\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let runtime_root = work.path().join("runc-root");

    ok(ctr(
        &daemon,
        &bin,
        &[
            "containers",
            "create",
            "--runtime",
            V1,
            IMAGE,
            "base",
            "/bin/busybox",
            "echo",
            "from-wrapper",
        ],
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let make = |id: &str, options: RuncOptions| {
        runtime.block_on(async {
            let mut client =
                ContainersClient::new(crated_testsupport::channel(&daemon.socket).await.unwrap());
            let base = client
                .get(crated_testsupport::in_namespace(
                    GetContainerRequest { id: "base".into() },
                    "default",
                    None,
                ))
                .await
                .unwrap()
                .into_inner()
                .container
                .unwrap();
            let mut container = base.clone();
            container.id = id.to_owned();
            let mut r = container.runtime.unwrap_or_default();
            r.options = Some(prost_types::Any {
                type_url: RUNC_OPTIONS.into(),
                value: prost::Message::encode_to_vec(&options),
            });
            container.runtime = Some(r);
            client
                .create(crated_testsupport::in_namespace(
                    CreateContainerRequest {
                        container: Some(container),
                    },
                    "default",
                    None,
                ))
                .await
                .unwrap();
        })
    };

    make(
        "wrapped",
        RuncOptions {
            runtime: wrapper.to_string_lossy().into_owned(),
            runtime_root: runtime_root.to_string_lossy().into_owned(),
            ..Default::default()
        },
    );
    let out = ok(ctr(&daemon, &bin, &["tasks", "start", "wrapped"]));
    assert_eq!(out, "from-wrapper\n");
    let called = std::fs::read_to_string(&calls).unwrap();
    assert!(
        called.contains("create")
            && called.contains(&runtime_root.join("default").display().to_string()),
        "{called}"
    );
    // ctr deleted the task when it ended.
    assert!(!ok(ctr(&daemon, &bin, &["tasks", "ls", "-q"])).contains("wrapped"));

    make(
        "missing",
        RuncOptions {
            runtime: "/nonexistent/runc".into(),
            ..Default::default()
        },
    );
    let err = fails(ctr(&daemon, &bin, &["tasks", "start", "missing"]));
    assert!(
        err.contains("OCI runtime create failed") && err.contains("/nonexistent/runc"),
        "{err}"
    );
    // Nothing of the failed task is left.
    assert!(!ok(ctr(&daemon, &bin, &["tasks", "ls", "-q"])).contains("missing"));
    assert!(v1_bundles(&daemon).is_empty(), "{:?}", v1_bundles(&daemon));
    for id in ["wrapped", "missing", "base"] {
        ok(ctr(&daemon, &bin, &["containers", "rm", id]));
    }
}
