//! The monitors with Debian's `ctr`, `containerd-shim-runc-v2` and `runc`: the Prometheus
//! endpoint showing a running task's cgroup counters and its OOM kills, the restart monitor
//! keeping labelled containers in their status, and the opt plugin's `bin` searched for shims.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crated_testsupport::cmd::ok;
use crated_testsupport::{wait_until, Daemon};

mod common;

use common::*;

/// A free port on loopback, for the metrics endpoint.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn scrape(address: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /v1/metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the sample `name{container_id="id",namespace="default"...}`.
fn sample(text: &str, name: &str, id: &str) -> Option<f64> {
    let prefix = format!("{name}{{container_id=\"{id}\",namespace=\"default\"");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_metrics_endpoint_shows_running_tasks_cgroup_counters_and_oom_kills() {
    let address = free_address();
    let config = format!("version = 2\n[metrics]\n  address = \"{address}\"\n");
    let Some((daemon, bin, _work)) = setup_with("overlayfs", Some(&config)) else {
        return;
    };
    clear_stale_runc_state(&["m1", "oom1"]);
    let events = Events::start(&daemon, &bin);
    std::thread::sleep(Duration::from_millis(300));
    ok(ctr(
        &daemon,
        &bin,
        &["run", "-d", IMAGE, "m1", "/bin/sh", "-c", "sleep 1000"],
    ));
    // A child that eats memory past the limit is killed by the kernel; the task runs on.
    ok(ctr(
        &daemon,
        &bin,
        &[
            "run",
            "-d",
            "--memory-limit",
            "33554432",
            IMAGE,
            "oom1",
            "/bin/sh",
            "-c",
            "tail /dev/zero; sleep 1000",
        ],
    ));
    events.wait_for("/tasks/oom", "oom1");

    let text = scrape(&address);
    let usage = sample(&text, "container_memory_usage_usage_bytes", "m1");
    assert!(usage.is_some_and(|v| v > 0.0), "{text}");
    let pids = sample(&text, "container_pids_current", "m1");
    assert!(pids.is_some_and(|v| v >= 1.0), "{text}");
    assert!(
        sample(&text, "container_cpu_total_nanoseconds", "m1").is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(text.contains("# TYPE container_memory_usage_usage_bytes gauge"));
    assert!(
        // Labels in name order, as Prometheus clients write them.
        text.contains(
            "container_per_cpu_nanoseconds{container_id=\"m1\",cpu=\"0\",namespace=\"default\"}"
        ),
        "{text}"
    );
    assert_eq!(sample(&text, "container_memory_oom_total", "m1"), Some(0.0));
    let limit = sample(&text, "container_memory_usage_limit_bytes", "oom1");
    assert_eq!(limit, Some(33554432.0), "{text}");
    assert!(
        sample(&text, "container_memory_oom_total", "oom1").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");

    for id in ["m1", "oom1"] {
        ok(ctr(&daemon, &bin, &["tasks", "rm", "-f", id]));
        ok(ctr(&daemon, &bin, &["containers", "rm", id]));
    }
    // A task that is gone is gone from the metrics.
    let text = scrape(&address);
    assert!(
        sample(&text, "container_pids_current", "m1").is_none(),
        "{text}"
    );
}

fn label(daemon: &Daemon, bin: &Path, id: &str, key: &str) -> Option<String> {
    let info = ok(ctr(daemon, bin, &["containers", "info", id]));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    info["Labels"][key].as_str().map(str::to_owned)
}

fn task_pid(daemon: &Daemon, bin: &Path, id: &str) -> Option<String> {
    task_column(daemon, bin, id, 1)
}

#[test]
fn the_restart_monitor_keeps_labelled_containers_in_their_status() {
    let config =
        "version = 2\n[plugins.\"io.containerd.internal.v1.restart\"]\n  interval = \"500ms\"\n";
    let Some((daemon, bin, work)) = setup_with("overlayfs", Some(config)) else {
        return;
    };
    clear_stale_runc_state(&["r1", "r2"]);
    let log = work.path().join("r1.log");
    let log_label = format!("containerd.io/restart.loguri=file://{}", log.display());
    // The restart labels go on once `ctr run -d` has started the task: a monitor pass that
    // sees a labelled container whose task is only created replaces that task (containerd's
    // monitor does the same), racing ctr's own start.
    let run_then_label = |id: &str, labels: &[&str], script: &str| {
        ok(ctr(
            &daemon,
            &bin,
            &["run", "-d", IMAGE, id, "/bin/sh", "-c", script],
        ));
        ok(ctr(
            &daemon,
            &bin,
            &["containers", "label", id]
                .into_iter()
                .chain(labels.iter().copied())
                .collect::<Vec<_>>(),
        ));
    };
    // Always restarted, its output in the log.
    run_then_label(
        "r1",
        &["containerd.io/restart.status=running", &log_label],
        "echo started; sleep 1000",
    );
    let first = task_pid(&daemon, &bin, "r1").unwrap();
    ok(ctr(
        &daemon,
        &bin,
        &["tasks", "kill", "-s", "SIGKILL", "r1"],
    ));
    wait_until(
        Duration::from_secs(20),
        || {
            task_status(&daemon, &bin, "r1") == "RUNNING"
                && task_pid(&daemon, &bin, "r1").is_some_and(|p| p != first)
        },
        || ok(ctr(&daemon, &bin, &["tasks", "ls"])),
    );
    assert_eq!(
        label(&daemon, &bin, "r1", "containerd.io/restart.count").as_deref(),
        Some("1")
    );
    wait_until(
        Duration::from_secs(10),
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("started")),
        || format!("log: {:?}", std::fs::read_to_string(&log)),
    );

    // on-failure:1: one restart after a failure, then no more.
    run_then_label(
        "r2",
        &[
            "containerd.io/restart.status=running",
            "containerd.io/restart.policy=on-failure:1",
        ],
        "sleep 2; exit 3",
    );
    wait_until(
        Duration::from_secs(20),
        || label(&daemon, &bin, "r2", "containerd.io/restart.count").as_deref() == Some("1"),
        || ok(ctr(&daemon, &bin, &["containers", "info", "r2"])),
    );
    // The count is written before the old task is replaced (as containerd's monitor does):
    // the restarted one runs for two seconds, then stops for good.
    wait_until(
        Duration::from_secs(20),
        || task_status(&daemon, &bin, "r2") == "RUNNING",
        || ok(ctr(&daemon, &bin, &["tasks", "ls"])),
    );
    wait_until(
        Duration::from_secs(20),
        || task_status(&daemon, &bin, "r2") == "STOPPED",
        || ok(ctr(&daemon, &bin, &["tasks", "ls"])),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(task_status(&daemon, &bin, "r2"), "STOPPED");
    assert_eq!(
        label(&daemon, &bin, "r2", "containerd.io/restart.count").as_deref(),
        Some("1")
    );

    // Desired stopped: the running task is killed and removed.
    ok(ctr(
        &daemon,
        &bin,
        &[
            "containers",
            "label",
            "r1",
            "containerd.io/restart.status=stopped",
        ],
    ));
    wait_until(
        Duration::from_secs(20),
        || task_status(&daemon, &bin, "r1") == "none",
        || ok(ctr(&daemon, &bin, &["tasks", "ls"])),
    );
    for id in ["r1", "r2"] {
        let _ = ctr(&daemon, &bin, &["tasks", "rm", "-f", id]);
        ok(ctr(&daemon, &bin, &["containers", "rm", id]));
    }
}

#[test]
fn shims_are_found_in_the_opt_plugins_bin_first() {
    let opt = tempfile::tempdir().unwrap();
    let config = format!(
        "version = 2\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{}\"\n",
        opt.path().display()
    );
    let Some((daemon, bin, _work)) = setup_with("overlayfs", Some(&config)) else {
        return;
    };
    assert!(opt.path().join("bin").is_dir() && opt.path().join("lib").is_dir());
    let detail = ok(ctr(&daemon, &bin, &["plugins", "ls", "-d", "id==opt"]));
    assert!(
        detail.contains(&opt.path().display().to_string()),
        "{detail}"
    );
    // A runtime only the opt directory has: the runc shim under another name.
    let shim = crated_testsupport::tool("containerd-shim-runc-v2", "containerd").unwrap();
    std::os::unix::fs::symlink(&shim, opt.path().join("bin/containerd-shim-optonly-v2")).unwrap();
    let out = ctr(
        &daemon,
        &bin,
        &[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.optonly.v2",
            IMAGE,
            "opt1",
            "/bin/sh",
            "-c",
            "echo via-opt",
        ],
    );
    assert_eq!(ok(out), "via-opt\n");
}
