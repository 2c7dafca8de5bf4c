//! The CRI plugin (`io.containerd.grpc.v1.cri`) through Kubernetes' own client stubs, on
//! crated and, side by side with the same client, on Debian's containerd 1.6.

use std::path::Path;
use std::time::Duration;

use crated_testsupport::cmd::ok;
use crated_testsupport::registry::Registry;
use crated_testsupport::{channel, tool, wait_until, Daemon};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

mod common;

/// The sandbox image the tests import: Debian's catatonit as the pause process.
const PAUSE: &str = "registry.k8s.io/pause:crated";

/// A CRI section whose networks come from `net_d` only.
fn cri_config(net_d: &Path) -> String {
    format!(
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n  sandbox_image = \"{PAUSE}\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{}\"\n",
        net_d.display()
    )
}

/// crated, or Debian's containerd (None, after saying why, when it is missing), with the
/// tests' CRI section; beside it the directory its CNI configs come from.
fn daemon_with_cri(containerd: bool) -> Option<(Daemon, tempfile::TempDir)> {
    let net_d = tempfile::tempdir().unwrap();
    let config = cri_config(net_d.path());
    let daemon = if containerd {
        Daemon::containerd(&tool("containerd", "containerd")?, Some(&config)).unwrap()
    } else {
        common::start(Some(&config))
    };
    Some((daemon, net_d))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn runtime_client(socket: &Path) -> RuntimeServiceClient<tonic::transport::Channel> {
    RuntimeServiceClient::new(channel(socket).await.unwrap())
}

async fn network_ready(socket: &Path) -> (bool, String) {
    let status = runtime_client(socket)
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let conditions = status.status.unwrap().conditions;
    let runtime = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap();
    assert!(runtime.status, "{conditions:?}");
    let network = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    (network.status, network.reason.clone())
}

/// What the kubelet checks first: `Version` and `Status`, the network not ready until a CNI
/// config is there.
fn version_and_status_as_the_kubelet_reads_them(daemon: &Daemon, net_d: &Path) {
    runtime().block_on(async {
        let version = runtime_client(&daemon.socket)
            .await
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(version.version, "0.1.0");
        assert_eq!(version.runtime_api_version, "v1");
        assert_eq!(version.runtime_name, "containerd");
        assert!(version.runtime_version.contains("1.6"), "{version:?}");

        assert_eq!(
            network_ready(&daemon.socket).await,
            (false, "NetworkPluginNotReady".to_owned())
        );
    });
    std::fs::write(
        net_d.join("10-test.conflist"),
        r#"{"cniVersion":"0.4.0","name":"test-net","plugins":[{"type":"bridge","bridge":"cri-test0","ipam":{"type":"host-local","ranges":[[{"subnet":"10.233.78.0/24"}]]}}]}"#,
    )
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        || runtime().block_on(network_ready(&daemon.socket)).0,
        || "the network never became ready".into(),
    );
}

#[test]
fn crated_answers_version_and_status_as_containerd() {
    let (daemon, net_d) = daemon_with_cri(false).unwrap();
    version_and_status_as_the_kubelet_reads_them(&daemon, net_d.path());

    // Beyond containerd 1.6: the cgroup driver, which kubelets from 1.36 require.
    let config = runtime().block_on(async {
        runtime_client(&daemon.socket)
            .await
            .runtime_config(cri::RuntimeConfigRequest {})
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(
        config.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );
}

#[test]
fn containerd_answers_version_and_status_the_same() {
    let Some(containerd) = tool("containerd", "containerd") else {
        return;
    };
    if !crated_testsupport::is_root() {
        eprintln!("skipped: containerd's CRI plugin needs root");
        return;
    }
    let net_d = tempfile::tempdir().unwrap();
    let daemon = Daemon::containerd(&containerd, Some(&cri_config(net_d.path()))).unwrap();
    version_and_status_as_the_kubelet_reads_them(&daemon, net_d.path());
}

async fn image_client(socket: &Path) -> ImageServiceClient<tonic::transport::Channel> {
    ImageServiceClient::new(channel(socket).await.unwrap())
}

fn image_status(daemon: &Daemon, name: &str) -> Option<cri::Image> {
    runtime().block_on(async {
        image_client(&daemon.socket)
            .await
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: name.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image
    })
}

/// An image `ctr -n k8s.io` imports is a CRI image at once (tag, id, user, size); found by
/// name, id or id prefix; RemoveImage removes every record of it, and again is no error.
fn images_imported_with_ctr_show_in_cri_and_go_whole(daemon: &Daemon, ctr: &Path) {
    const NAME: &str = "docker.io/library/busybox:cri-user";
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("busybox.tar");
    crated_testsupport::oci::busybox_as_user(NAME, "1002:1004").write_archive(&archive);
    ok(daemon.client(
        ctr,
        &[
            "-n",
            "k8s.io",
            "images",
            "import",
            archive.to_str().unwrap(),
        ],
    ));
    wait_until(
        Duration::from_secs(10),
        || image_status(daemon, "busybox:cri-user").is_some(),
        || "the imported image never showed in CRI".into(),
    );
    let image = image_status(daemon, "busybox:cri-user").unwrap();
    assert_eq!(image.repo_tags, [NAME]);
    assert!(
        image.id.starts_with("sha256:") && image.id.len() == 71,
        "{image:?}"
    );
    assert_eq!(image.uid, Some(cri::Int64Value { value: 1002 }));
    assert_eq!(image.username, "");
    assert!(image.size > 0, "{image:?}");
    assert!(!image.pinned);
    assert_eq!(image_status(daemon, &image.id).as_ref(), Some(&image));
    assert_eq!(
        image_status(daemon, &image.id[7..19]).as_ref(),
        Some(&image)
    );
    assert_eq!(image_status(daemon, "busybox:other"), None);

    let (listed, fs) = runtime().block_on(async {
        let mut images = image_client(&daemon.socket).await;
        let listed = images
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images;
        let fs = images
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .image_filesystems;
        (listed, fs)
    });
    assert!(listed.contains(&image), "{listed:?}");
    let mountpoint = fs[0].fs_id.as_ref().unwrap().mountpoint.clone();
    assert!(
        mountpoint.ends_with("io.containerd.snapshotter.v1.overlayfs")
            && Path::new(&mountpoint).is_dir(),
        "{mountpoint}"
    );

    for _ in 0..2 {
        runtime().block_on(async {
            image_client(&daemon.socket)
                .await
                .remove_image(cri::RemoveImageRequest {
                    image: Some(cri::ImageSpec {
                        image: image.id.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
        });
    }
    assert_eq!(image_status(daemon, &image.id), None);
    let left = ok(daemon.client(ctr, &["-n", "k8s.io", "images", "ls", "-q"]));
    assert_eq!(left.trim(), "", "records left: {left}");
}

fn root_and_ctr() -> Option<std::path::PathBuf> {
    if !crated_testsupport::is_root() {
        eprintln!("skipped: images unpack into overlayfs, which needs root");
        return None;
    }
    tool("ctr", "containerd")
}

#[test]
fn crated_shows_ctr_images_in_cri_as_containerd() {
    let Some(ctr) = root_and_ctr() else {
        return;
    };
    let (daemon, _net_d) = daemon_with_cri(false).unwrap();
    images_imported_with_ctr_show_in_cri_and_go_whole(&daemon, &ctr);
}

#[test]
fn containerd_shows_ctr_images_in_cri_the_same() {
    let Some(ctr) = root_and_ctr() else {
        return;
    };
    let Some((daemon, _net_d)) = daemon_with_cri(true) else {
        return;
    };
    images_imported_with_ctr_show_in_cri_and_go_whole(&daemon, &ctr);
}

/// Kubernetes' own CLI, crictl, reads crated: the runtime's version and conditions, and the
/// images of `k8s.io`, which it removes.
#[test]
fn crictl_reads_crated() {
    let Some(crictl) = crated_testsupport::cri_tool("crictl") else {
        return;
    };
    let Some(ctr) = root_and_ctr() else {
        return;
    };
    let (daemon, _net_d) = daemon_with_cri(false).unwrap();
    let endpoint = format!("unix://{}", daemon.socket.display());
    let crictl = |args: &[&str]| {
        let out = std::process::Command::new(&crictl)
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
            ])
            .args(args)
            .output()
            .unwrap();
        ok(out)
    };
    let version = crictl(&["version"]);
    assert!(version.contains("RuntimeName:  containerd"), "{version}");
    assert!(version.contains("RuntimeApiVersion:  v1"), "{version}");
    let info: serde_json::Value = serde_json::from_str(&crictl(&["info"])).unwrap();
    let conditions = info["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "RuntimeReady" && c["status"] == true),
        "{info}"
    );

    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("busybox.tar");
    crated_testsupport::oci::busybox_as_user("docker.io/library/busybox:crictl", "www-data")
        .write_archive(&archive);
    ok(daemon.client(
        &ctr,
        &[
            "-n",
            "k8s.io",
            "images",
            "import",
            archive.to_str().unwrap(),
        ],
    ));
    let images = crictl(&["images"]);
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("docker.io/library/busybox") && l.contains("crictl")),
        "{images}"
    );
    let inspected: serde_json::Value =
        serde_json::from_str(&crictl(&["inspecti", "busybox:crictl"])).unwrap();
    assert_eq!(inspected["status"]["username"], "www-data", "{inspected}");
    crictl(&["rmi", "busybox:crictl"]);
    assert_eq!(crictl(&["images", "-q"]).trim(), "");
}

fn pull(daemon: &Daemon, image: &str) -> Result<String, tonic::Status> {
    runtime().block_on(async {
        image_client(&daemon.socket)
            .await
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .map(|r| r.into_inner().image_ref)
    })
}

/// PullImage from a registry on this host (plain http, as containerd's CRI speaks to it):
/// containerd's three records (id, repo tag, repo digest), labelled managed; a second pull
/// is the same image; an absent image is NotFound; RemoveImage removes all three.
fn pulls_make_containerds_three_records(daemon: &Daemon, ctr: &Path, registry: &Registry) {
    let reference = format!("{}/busybox:cri", registry.addr);
    let id = pull(daemon, &reference).unwrap();
    let image = image_status(daemon, &reference).unwrap();
    assert_eq!(image.id, id);
    assert_eq!(image.repo_tags, std::slice::from_ref(&reference));
    assert_eq!(image.repo_digests.len(), 1, "{image:?}");
    let repo_digest = &image.repo_digests[0];
    assert!(
        repo_digest.starts_with(&format!("{}/busybox@sha256:", registry.addr)),
        "{repo_digest}"
    );
    let mut records: Vec<String> = ok(daemon.client(ctr, &["-n", "k8s.io", "images", "ls", "-q"]))
        .lines()
        .map(str::to_owned)
        .collect();
    records.sort();
    let mut expected = vec![id.clone(), reference.clone(), repo_digest.clone()];
    expected.sort();
    assert_eq!(records, expected);
    let listing = ok(daemon.client(ctr, &["-n", "k8s.io", "images", "ls"]));
    assert_eq!(
        listing.matches("io.cri-containerd.image=managed").count(),
        3,
        "{listing}"
    );

    assert_eq!(pull(daemon, &reference).unwrap(), id);
    let absent = pull(daemon, &format!("{}/busybox:absent", registry.addr)).unwrap_err();
    assert_eq!(absent.code(), tonic::Code::NotFound, "{absent:?}");

    runtime().block_on(async {
        image_client(&daemon.socket)
            .await
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: reference.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
    });
    let left = ok(daemon.client(ctr, &["-n", "k8s.io", "images", "ls", "-q"]));
    assert_eq!(left.trim(), "", "records left: {left}");
}

fn registry_with_busybox() -> Option<Registry> {
    let registry = Registry::start()?;
    let (image, _) = crated_testsupport::oci::busybox("busybox");
    registry.push(&image, "busybox:cri");
    Some(registry)
}

#[test]
fn crated_pulls_for_cri_as_containerd() {
    let Some(ctr) = root_and_ctr() else {
        return;
    };
    let Some(registry) = registry_with_busybox() else {
        return;
    };
    let (daemon, _net_d) = daemon_with_cri(false).unwrap();
    pulls_make_containerds_three_records(&daemon, &ctr, &registry);
}

#[test]
fn containerd_pulls_for_cri_the_same() {
    let Some(ctr) = root_and_ctr() else {
        return;
    };
    let Some(registry) = registry_with_busybox() else {
        return;
    };
    let Some((daemon, _net_d)) = daemon_with_cri(true) else {
        return;
    };
    pulls_make_containerds_three_records(&daemon, &ctr, &registry);
}

fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        labels: [("app".to_owned(), name.to_owned())].into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn import_pause(daemon: &Daemon, ctr: &Path) {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("pause.tar");
    crated_testsupport::oci::pause(PAUSE).write_archive(&archive);
    ok(daemon.client(
        ctr,
        &[
            "-n",
            "k8s.io",
            "images",
            "import",
            archive.to_str().unwrap(),
        ],
    ));
}

/// Imports busybox (user root) as `docker.io/library/busybox:cri-user` into `k8s.io`; the
/// directory returned holds the test's other files.
fn import_cri_busybox(daemon: &Daemon, ctr: &Path) -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("busybox.tar");
    crated_testsupport::oci::busybox_as_user("docker.io/library/busybox:cri-user", "0")
        .write_archive(&archive);
    ok(daemon.client(
        ctr,
        &[
            "-n",
            "k8s.io",
            "images",
            "import",
            archive.to_str().unwrap(),
        ],
    ));
    work
}

fn sandbox_state(daemon: &Daemon, id: &str) -> Result<i32, tonic::Status> {
    runtime().block_on(async {
        runtime_client(&daemon.socket)
            .await
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .map(|r| r.into_inner().status.unwrap().state)
    })
}

/// A host-network pod: RunPodSandbox starts its pause container (seen by ctr in k8s.io), its
/// name is held until it is removed, Stop makes it not ready, Remove leaves nothing (records,
/// tasks, mounts), and removing it again is no error.
fn host_network_pods_run_stop_and_go(daemon: &Daemon, ctr: &Path) {
    import_pause(daemon, ctr);
    let run = |config: cri::PodSandboxConfig| {
        runtime().block_on(async {
            runtime_client(&daemon.socket)
                .await
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
                .map(|r| r.into_inner().pod_sandbox_id)
        })
    };
    let id = run(pod_config("web")).unwrap();
    assert_eq!(id.len(), 64, "{id}");
    assert_eq!(
        sandbox_state(daemon, &id).unwrap(),
        cri::PodSandboxState::SandboxReady as i32
    );
    let containers = ok(daemon.client(ctr, &["-n", "k8s.io", "containers", "ls", "-q"]));
    assert!(containers.lines().any(|l| l == id), "{containers}");
    let tasks = ok(daemon.client(ctr, &["-n", "k8s.io", "tasks", "ls"]));
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("RUNNING")),
        "{tasks}"
    );
    let info = ok(daemon.client(ctr, &["-n", "k8s.io", "containers", "info", &id]));
    assert!(
        info.contains("\"io.cri-containerd.kind\": \"sandbox\""),
        "{info}"
    );

    let again = run(pod_config("web")).unwrap_err();
    assert!(
        again.message().contains("failed to reserve sandbox name"),
        "{again:?}"
    );

    let (listed, ready_only, by_label) = runtime().block_on(async {
        let mut client = runtime_client(&daemon.socket).await;
        let list = |filter: Option<cri::PodSandboxFilter>| {
            let request = cri::ListPodSandboxRequest { filter };
            let mut client = client.clone();
            async move {
                client
                    .list_pod_sandbox(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .items
            }
        };
        let listed = list(None).await;
        let ready_only = list(Some(cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }))
        .await;
        let by_label = list(Some(cri::PodSandboxFilter {
            label_selector: [("app".to_owned(), "web".to_owned())].into(),
            ..Default::default()
        }))
        .await;
        client
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .unwrap();
        (listed, ready_only, by_label)
    });
    assert_eq!(listed.iter().map(|p| &p.id).collect::<Vec<_>>(), [&id]);
    assert!(ready_only.is_empty(), "{ready_only:?}");
    assert_eq!(by_label.len(), 1);
    assert_eq!(
        sandbox_state(daemon, &id).unwrap(),
        cri::PodSandboxState::SandboxNotready as i32
    );

    for _ in 0..2 {
        runtime().block_on(async {
            runtime_client(&daemon.socket)
                .await
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .unwrap()
        });
    }
    assert_eq!(
        sandbox_state(daemon, &id).unwrap_err().code(),
        tonic::Code::NotFound
    );
    let containers = ok(daemon.client(ctr, &["-n", "k8s.io", "containers", "ls", "-q"]));
    assert_eq!(containers.trim(), "");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "mounts left: {mounts}");
    // The name is free again.
    let second = run(pod_config("web")).unwrap();
    runtime().block_on(async {
        let mut client = runtime_client(&daemon.socket).await;
        client
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: second.clone(),
            })
            .await
            .unwrap();
        client
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: second,
            })
            .await
            .unwrap();
    });
}

fn root_ctr_and_runc() -> Option<std::path::PathBuf> {
    let ctr = root_and_ctr()?;
    tool("runc", "runc")?;
    tool("containerd-shim-runc-v2", "containerd")?;
    tool("catatonit", "catatonit")?;
    Some(ctr)
}

#[test]
fn crated_runs_host_network_pods_as_containerd() {
    let Some(ctr) = root_ctr_and_runc() else {
        return;
    };
    let (daemon, _net_d) = daemon_with_cri(false).unwrap();
    host_network_pods_run_stop_and_go(&daemon, &ctr);
}

#[test]
fn containerd_runs_host_network_pods_the_same() {
    let Some(ctr) = root_ctr_and_runc() else {
        return;
    };
    let Some((daemon, _net_d)) = daemon_with_cri(true) else {
        return;
    };
    host_network_pods_run_stop_and_go(&daemon, &ctr);
}

fn container_config(name: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "busybox:cri-user".into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        labels: [("container".to_owned(), name.to_owned())].into(),
        ..Default::default()
    }
}

fn container_status(daemon: &Daemon, id: &str) -> cri::ContainerStatus {
    runtime().block_on(async {
        runtime_client(&daemon.socket)
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    })
}

/// Containers of a host-network pod: created, started, their output in the pod's log
/// directory in CRI's format, exit code and reason, stopped, listed by pod and state,
/// removed with their records.
fn containers_run_log_stop_and_go(daemon: &Daemon, ctr: &Path) {
    import_pause(daemon, ctr);
    let work = import_cri_busybox(daemon, ctr);
    let logs = work.path().join("pod-logs");
    let mut pod = pod_config("logs");
    pod.log_directory = logs.display().to_string();
    let rt = runtime();
    let connected = rt.block_on(runtime_client(&daemon.socket));
    let client = || connected.clone();
    let pod_id = rt
        .block_on(client().run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        }))
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let create = |config: cri::ContainerConfig| {
        rt.block_on(client().create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        }))
        .unwrap()
        .into_inner()
        .container_id
    };
    let start = |id: &str| {
        rt.block_on(client().start_container(cri::StartContainerRequest {
            container_id: id.into(),
        }))
        .unwrap()
    };
    let exits = create(container_config("exits", "echo out; echo err >&2; exit 3"));
    let status = container_status(daemon, &exits);
    assert_eq!(status.state, cri::ContainerState::ContainerCreated as i32);
    assert!(status.image_ref.starts_with("sha256:"), "{status:?}");
    start(&exits);
    wait_until(
        Duration::from_secs(20),
        || container_status(daemon, &exits).state == cri::ContainerState::ContainerExited as i32,
        || "the container never exited".into(),
    );
    let status = container_status(daemon, &exits);
    assert_eq!((status.exit_code, status.reason.as_str()), (3, "Error"));
    // The shim's exit time may come before the start was recorded.
    assert!(
        status.started_at > 0 && status.finished_at > 0,
        "{status:?}"
    );
    assert_eq!(
        status.log_path,
        logs.join("exits/0.log").display().to_string()
    );
    let log = std::fs::read_to_string(logs.join("exits/0.log")).unwrap();
    let mut records: Vec<&str> = log.lines().map(|l| l.split_once(' ').unwrap().1).collect();
    records.sort();
    assert_eq!(records, ["stderr F err", "stdout F out"], "{log}");
    let stamp = log.split(' ').next().unwrap();
    assert!(stamp.ends_with('Z') && stamp.contains('T'), "{stamp}");

    let sleeps = create(container_config("sleeps", "exec sleep 1000"));
    start(&sleeps);
    assert_eq!(
        container_status(daemon, &sleeps).state,
        cri::ContainerState::ContainerRunning as i32
    );
    let exec = |cmd: &[&str], timeout: i64| {
        rt.block_on(client().exec_sync(cri::ExecSyncRequest {
            container_id: sleeps.clone(),
            cmd: cmd.iter().map(|c| c.to_string()).collect(),
            timeout,
        }))
        .map(|r| r.into_inner())
    };
    let done = exec(&["/bin/sh", "-c", "echo hi; echo oops >&2; exit 5"], 0).unwrap();
    assert_eq!(
        (
            done.stdout.as_slice(),
            done.stderr.as_slice(),
            done.exit_code
        ),
        (&b"hi\n"[..], &b"oops\n"[..], 5)
    );
    let slow = exec(&["/bin/sh", "-c", "sleep 30"], 1).unwrap_err();
    assert_eq!(slow.code(), tonic::Code::DeadlineExceeded, "{slow:?}");

    // New limits reach the running container's cgroup.
    rt.block_on(
        client().update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: sleeps.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .unwrap();
    let limit = [
        format!("/sys/fs/cgroup/memory/k8s.io/{sleeps}/memory.limit_in_bytes"),
        format!("/sys/fs/cgroup/k8s.io/{sleeps}/memory.max"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .expect("the container's memory cgroup");
    assert_eq!(limit.trim(), (64u64 << 20).to_string());

    // Stats of a running container: its cgroup's CPU and memory, its writable layer.
    let stats = rt
        .block_on(client().container_stats(cri::ContainerStatsRequest {
            container_id: sleeps.clone(),
        }))
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(stats.attributes.as_ref().unwrap().id, sleeps);
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.is_some());
    assert!(
        stats.memory.unwrap().working_set_bytes.unwrap().value > 0,
        "a running shell uses memory"
    );
    let layer = stats.writable_layer.unwrap();
    assert!(
        layer
            .fs_id
            .as_ref()
            .unwrap()
            .mountpoint
            .ends_with("io.containerd.snapshotter.v1.overlayfs"),
        "{layer:?}"
    );
    let listed_stats = rt
        .block_on(
            client().list_container_stats(cri::ListContainerStatsRequest {
                filter: Some(cri::ContainerStatsFilter {
                    pod_sandbox_id: pod_id.clone(),
                    ..Default::default()
                }),
            }),
        )
        .unwrap()
        .into_inner()
        .stats;
    assert!(
        listed_stats
            .iter()
            .any(|s| s.attributes.as_ref().unwrap().id == sleeps && s.cpu.is_some()),
        "{listed_stats:?}"
    );

    // A rotated log: the output goes on into a new file after ReopenContainerLog.
    let talker = create(container_config(
        "talker",
        "while true; do echo tick; sleep 0.1; done",
    ));
    start(&talker);
    let talker_log = logs.join("talker/0.log");
    wait_until(
        Duration::from_secs(10),
        || std::fs::read_to_string(&talker_log).is_ok_and(|l| !l.is_empty()),
        || "the talker never logged".into(),
    );
    std::fs::rename(&talker_log, logs.join("talker/0.log.1")).unwrap();
    rt.block_on(
        client().reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: talker.clone(),
        }),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        || std::fs::read_to_string(&talker_log).is_ok_and(|l| l.contains(" stdout F tick")),
        || "the talker's output never reached the reopened log".into(),
    );
    let listed = rt
        .block_on(client().list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod_id.clone(),
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        }))
        .unwrap()
        .into_inner()
        .containers;
    let mut running: Vec<&String> = listed.iter().map(|c| &c.id).collect();
    running.sort();
    let mut expected = vec![&sleeps, &talker];
    expected.sort();
    assert_eq!(running, expected);
    rt.block_on(client().stop_container(cri::StopContainerRequest {
        container_id: sleeps.clone(),
        timeout: 2,
    }))
    .unwrap();
    let stopped = container_status(daemon, &sleeps);
    assert_eq!(stopped.state, cri::ContainerState::ContainerExited as i32);
    assert_ne!(stopped.exit_code, 0);

    let records = ok(daemon.client(ctr, &["-n", "k8s.io", "containers", "ls", "-q"]));
    assert_eq!(records.lines().count(), 4, "{records}");
    rt.block_on(client().remove_container(cri::RemoveContainerRequest {
        container_id: exits.clone(),
    }))
    .unwrap();
    let records = ok(daemon.client(ctr, &["-n", "k8s.io", "containers", "ls", "-q"]));
    assert!(!records.contains(&exits), "{records}");
    rt.block_on(client().stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    }))
    .unwrap();
    rt.block_on(client().remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    }))
    .unwrap();
    let records = ok(daemon.client(ctr, &["-n", "k8s.io", "containers", "ls", "-q"]));
    assert_eq!(records.trim(), "", "{records}");
    let tasks = ok(daemon.client(ctr, &["-n", "k8s.io", "tasks", "ls", "-q"]));
    assert_eq!(tasks.trim(), "", "{tasks}");
}

#[test]
fn crated_runs_containers_in_pods_as_containerd() {
    let Some(ctr) = root_ctr_and_runc() else {
        return;
    };
    let (daemon, _net_d) = daemon_with_cri(false).unwrap();
    containers_run_log_stop_and_go(&daemon, &ctr);
}

#[test]
fn containerd_runs_containers_in_pods_the_same() {
    let Some(ctr) = root_ctr_and_runc() else {
        return;
    };
    let Some((daemon, _net_d)) = daemon_with_cri(true) else {
        return;
    };
    containers_run_log_stop_and_go(&daemon, &ctr);
}

/// A pod on a bridge network (Debian's CNI plugins): it gets an address of the subnet, the
/// host reaches a server in one of its containers there, and after stop and remove its
/// address is free again, its namespace and CNI cache gone.
fn bridged_pods_get_an_address_and_give_it_back(
    daemon: &Daemon,
    ctr: &Path,
    net_d: &Path,
    bridge: &str,
    subnet_prefix: &str,
) {
    let ipam = tempfile::tempdir().unwrap();
    std::fs::write(
        net_d.join("10-bridge.conflist"),
        format!(
            r#"{{"cniVersion":"0.4.0","name":"{bridge}","plugins":[{{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{subnet_prefix}.0/24"}}]],"dataDir":"{}"}}}},{{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
            ipam.path().display()
        ),
    )
    .unwrap();
    let _bridge = BridgeGone(bridge.to_owned());
    import_pause(daemon, ctr);
    let _work = import_cri_busybox(daemon, ctr);
    let rt = runtime();
    let client = rt.block_on(runtime_client(&daemon.socket));
    let mut pod = pod_config(&format!("net-{bridge}"));
    pod.linux = None;
    let pod_id = rt
        .block_on(client.clone().run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        }))
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let status = rt
        .block_on(
            client
                .clone()
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: pod_id.clone(),
                    verbose: false,
                }),
        )
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let ip = status.network.unwrap().ip;
    assert!(ip.starts_with(&format!("{subnet_prefix}.")), "{ip}");
    let reserved = ipam.path().join(bridge).join(&ip);
    assert!(reserved.exists(), "host-local holds {ip}");

    let server = rt
        .block_on(client.clone().create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config(
                "server",
                "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www",
            )),
            sandbox_config: Some(pod.clone()),
        }))
        .unwrap()
        .into_inner()
        .container_id;
    rt.block_on(client.clone().start_container(cri::StartContainerRequest {
        container_id: server.clone(),
    }))
    .unwrap();
    let mut answer = String::new();
    wait_until(
        Duration::from_secs(10),
        || {
            use std::io::{Read, Write};
            let Ok(mut stream) = std::net::TcpStream::connect((ip.as_str(), 8080)) else {
                return false;
            };
            let _ = stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            answer.clear();
            let _ = stream.read_to_string(&mut answer);
            answer.contains("hello-from-pod")
        },
        || format!("the pod's server never answered on {ip}:8080"),
    );

    rt.block_on(client.clone().stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    }))
    .unwrap();
    assert!(!reserved.exists(), "host-local still holds {ip}");
    rt.block_on(
        client
            .clone()
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            }),
    )
    .unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&pod_id), "{mounts}");
    let cached: Vec<_> = std::fs::read_dir("/var/lib/cni/results")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&pod_id))
                .collect()
        })
        .unwrap_or_default();
    assert!(cached.is_empty(), "{cached:?}");
}

/// Deletes a test's bridge when the test ends, however it ends.
struct BridgeGone(String);

impl Drop for BridgeGone {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}

fn cni_plugins() -> bool {
    let found = Path::new("/usr/lib/cni/bridge").exists();
    if !found {
        assert!(
            !crated_testsupport::on_ci(),
            "/usr/lib/cni is empty on CI: scripts/setup.sh must install containernetworking-plugins"
        );
        eprintln!("SKIPPED: /usr/lib/cni/bridge not found (containernetworking-plugins)");
    }
    found
}

#[test]
fn crated_puts_pods_on_a_bridge_as_containerd() {
    let Some(ctr) = root_ctr_and_runc() else {
        return;
    };
    if !cni_plugins() {
        return;
    }
    let (daemon, net_d) = daemon_with_cri(false).unwrap();
    bridged_pods_get_an_address_and_give_it_back(
        &daemon,
        &ctr,
        net_d.path(),
        "crated-cri0",
        "10.233.81",
    );
}

#[test]
fn containerd_puts_pods_on_a_bridge_the_same() {
    let Some(ctr) = root_ctr_and_runc() else {
        return;
    };
    if !cni_plugins() {
        return;
    }
    let Some((daemon, net_d)) = daemon_with_cri(true) else {
        return;
    };
    bridged_pods_get_an_address_and_give_it_back(
        &daemon,
        &ctr,
        net_d.path(),
        "ctrd-cri0",
        "10.233.82",
    );
}

/// `kill -9` of crated under a running pod and its containers, one of which exits while crated
/// is down: after the restart the pod is ready with the same IP, the running container still
/// runs and its output still reaches the log, the one that exited shows its exit, names are
/// still held, and stop and remove leave nothing.
#[test]
fn pods_and_containers_survive_a_sigkill_of_crated() {
    let Some(ctr) = root_ctr_and_runc() else {
        return;
    };
    if !cni_plugins() {
        return;
    }
    let net_d = tempfile::tempdir().unwrap();
    let ipam = tempfile::tempdir().unwrap();
    let bridge = "crated-cri9";
    std::fs::write(
        net_d.path().join("10-bridge.conflist"),
        format!(
            r#"{{"cniVersion":"0.4.0","name":"{bridge}","plugins":[{{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.233.89.0/24"}}]],"dataDir":"{}"}}}}]}}"#,
            ipam.path().display()
        ),
    )
    .unwrap();
    let _bridge = BridgeGone(bridge.to_owned());
    let mut daemon = common::start(Some(&cri_config(net_d.path())));
    import_pause(&daemon, &ctr);
    let work = import_cri_busybox(&daemon, &ctr);
    let logs = work.path().join("logs");
    let mut pod = pod_config("survivor");
    pod.linux = None;
    pod.log_directory = logs.display().to_string();
    let (pod_id, ip, ticker, ender) = {
        let rt = runtime();
        let client = rt.block_on(runtime_client(&daemon.socket));
        let pod_id = rt
            .block_on(client.clone().run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            }))
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let ip = rt
            .block_on(
                client
                    .clone()
                    .pod_sandbox_status(cri::PodSandboxStatusRequest {
                        pod_sandbox_id: pod_id.clone(),
                        verbose: false,
                    }),
            )
            .unwrap()
            .into_inner()
            .status
            .unwrap()
            .network
            .unwrap()
            .ip;
        let mut started = Vec::new();
        for (name, script) in [
            ("ticker", "while true; do echo tick; sleep 0.2; done"),
            ("ender", "while [ ! -e /end ]; do sleep 0.1; done; exit 7"),
        ] {
            let id = rt
                .block_on(
                    client
                        .clone()
                        .create_container(cri::CreateContainerRequest {
                            pod_sandbox_id: pod_id.clone(),
                            config: Some(container_config(name, script)),
                            sandbox_config: Some(pod.clone()),
                        }),
                )
                .unwrap()
                .into_inner()
                .container_id;
            rt.block_on(client.clone().start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap();
            started.push(id);
        }
        let ender = started.pop().unwrap();
        let ticker = started.pop().unwrap();
        (pod_id, ip, ticker, ender)
    };

    daemon
        .restart_after_sigkill(&common::crated())
        .unwrap_or_else(|e| panic!("{e}"));
    // The ender is told to end once crated is back: the restarted daemon must see its exit.
    ok(daemon.client(
        &ctr,
        &[
            "-n",
            "k8s.io",
            "tasks",
            "exec",
            "--exec-id",
            "end",
            &ender,
            "/bin/sh",
            "-c",
            "echo > /end",
        ],
    ));
    let rt = runtime();
    let client = rt.block_on(runtime_client(&daemon.socket));
    let status = rt
        .block_on(
            client
                .clone()
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: pod_id.clone(),
                    verbose: false,
                }),
        )
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(status.network.unwrap().ip, ip);
    assert_eq!(
        container_status(&daemon, &ticker).state,
        cri::ContainerState::ContainerRunning as i32
    );
    wait_until(
        Duration::from_secs(20),
        || container_status(&daemon, &ender).state == cri::ContainerState::ContainerExited as i32,
        || "the ender's exit was never seen".into(),
    );
    assert_eq!(container_status(&daemon, &ender).exit_code, 7);
    let log = logs.join("ticker/0.log");
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    wait_until(
        Duration::from_secs(10),
        || std::fs::read_to_string(&log).unwrap().lines().count() > before + 2,
        || "the ticker's output no longer reaches its log".into(),
    );
    let again = rt
        .block_on(client.clone().run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        }))
        .unwrap_err();
    assert!(
        again.message().contains("failed to reserve sandbox name"),
        "{again:?}"
    );

    rt.block_on(client.clone().stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    }))
    .unwrap();
    rt.block_on(
        client
            .clone()
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            }),
    )
    .unwrap();
    let records = ok(daemon.client(&ctr, &["-n", "k8s.io", "containers", "ls", "-q"]));
    assert_eq!(records.trim(), "", "{records}");
    assert!(
        !ipam.path().join(bridge).join(&ip).exists(),
        "{ip} still held"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&pod_id), "{mounts}");
}

/// crictl runs a pod the way its users do: runp, create, start, ps, logs (crictl parses the
/// CRI log format itself), exec --sync, inspect, stop, rm, stopp, rmp.
#[test]
fn crictl_runs_a_pod_on_crated() {
    let Some(crictl) = crated_testsupport::cri_tool("crictl") else {
        return;
    };
    let Some(ctr) = root_ctr_and_runc() else {
        return;
    };
    let (daemon, _net_d) = daemon_with_cri(false).unwrap();
    import_pause(&daemon, &ctr);
    let work = import_cri_busybox(&daemon, &ctr);
    let logs = work.path().join("logs");
    let pod = work.path().join("pod.json");
    std::fs::write(
        &pod,
        serde_json::json!({
            "metadata": {"name": "crictl-pod", "namespace": "default", "uid": "crictl-uid", "attempt": 0},
            "log_directory": logs,
            "linux": {"security_context": {"namespace_options": {"network": 2}}}
        })
        .to_string(),
    )
    .unwrap();
    let container = work.path().join("container.json");
    std::fs::write(
        &container,
        serde_json::json!({
            "metadata": {"name": "app"},
            "image": {"image": "busybox:cri-user"},
            "command": ["/bin/sh", "-c", "echo started; exec sleep 1000"],
            "log_path": "app.log"
        })
        .to_string(),
    )
    .unwrap();
    let endpoint = format!("unix://{}", daemon.socket.display());
    let crictl = |args: &[&str]| {
        let out = std::process::Command::new(&crictl)
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
            ])
            .args(args)
            .output()
            .unwrap();
        ok(out)
    };
    let pod_id = crictl(&["runp", pod.to_str().unwrap()]).trim().to_owned();
    let id = crictl(&[
        "create",
        &pod_id,
        container.to_str().unwrap(),
        pod.to_str().unwrap(),
    ])
    .trim()
    .to_owned();
    crictl(&["start", &id]);
    let ps = crictl(&["ps", "-q"]);
    assert!(ps.lines().any(|l| l == id), "{ps}");
    wait_until(
        Duration::from_secs(10),
        || crictl(&["logs", &id]).contains("started"),
        || "crictl logs never showed the output".into(),
    );
    let exec = crictl(&["exec", "--sync", &id, "/bin/sh", "-c", "echo from-exec"]);
    assert_eq!(exec.trim(), "from-exec");
    let inspected: serde_json::Value = serde_json::from_str(&crictl(&["inspect", &id])).unwrap();
    assert_eq!(
        inspected["status"]["state"], "CONTAINER_RUNNING",
        "{inspected}"
    );
    let pods: serde_json::Value = serde_json::from_str(&crictl(&["inspectp", &pod_id])).unwrap();
    assert_eq!(pods["status"]["state"], "SANDBOX_READY", "{pods}");
    crictl(&["stop", &id]);
    crictl(&["rm", &id]);
    crictl(&["stopp", &pod_id]);
    crictl(&["rmp", &pod_id]);
    assert_eq!(crictl(&["pods", "-q"]).trim(), "");
}
