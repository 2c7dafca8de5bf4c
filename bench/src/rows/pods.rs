//! The pods rows, through CRI against crated's and containerd 1.6's CRI plugins with the same
//! shim and runc: a pod started (RunPodSandbox, CreateContainer, StartContainer, the images
//! there already), then many pods asked for at once and held: how long they took, the
//! daemon's RSS with them, and the p50 of the lists a kubelet calls every second.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use crated_testsupport::{tool, Daemon};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

use crate::table::{stats, Row};

const PAUSE: &str = "registry.k8s.io/pause:bench";
const BUSYBOX: &str = "docker.io/library/busybox:bench-pods";
/// Pods held at once for the RSS and list rows.
pub const HELD_PODS: usize = 30;

fn config(net_d: &Path) -> String {
    format!(
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n  sandbox_image = \"{PAUSE}\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  conf_dir = \"{}\"\n",
        net_d.display()
    )
}

fn pod(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
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

fn container() -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["/bin/busybox".into(), "sleep".into(), "1000".into()],
        ..Default::default()
    }
}

type Client = RuntimeServiceClient<tonic::transport::Channel>;

/// RunPodSandbox + CreateContainer + StartContainer; the pod's id.
async fn start_pod(client: &mut Client, name: &str) -> anyhow::Result<String> {
    let config = pod(name);
    let id = client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let container_id = client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(container()),
            sandbox_config: Some(config),
        })
        .await?
        .into_inner()
        .container_id;
    client
        .start_container(cri::StartContainerRequest { container_id })
        .await?;
    Ok(id)
}

async fn remove_pod(client: &mut Client, id: &str) -> anyhow::Result<()> {
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    Ok(())
}

struct Side {
    daemon: Daemon,
    client: Client,
    _net_d: tempfile::TempDir,
}

fn prepare(
    rt: &tokio::runtime::Runtime,
    ctr: &Path,
    start: impl FnOnce(&str) -> anyhow::Result<Daemon>,
    scratch: &Path,
) -> anyhow::Result<Side> {
    let net_d = tempfile::tempdir()?;
    let daemon = start(&config(net_d.path()))?;
    for (name, image) in [
        ("pause.tar", crated_testsupport::oci::pause(PAUSE)),
        ("busybox.tar", crated_testsupport::oci::busybox(BUSYBOX).0),
    ] {
        let archive = scratch.join(name);
        image.write_archive(&archive);
        let out = daemon.client(
            ctr,
            &[
                "-n",
                "k8s.io",
                "images",
                "import",
                archive.to_str().context("path")?,
            ],
        );
        anyhow::ensure!(
            out.status.success(),
            "ctr import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let channel = rt.block_on(crated_testsupport::channel(&daemon.socket))?;
    Ok(Side {
        daemon,
        client: RuntimeServiceClient::new(channel),
        _net_d: net_d,
    })
}

fn p50_micros(
    rt: &tokio::runtime::Runtime,
    calls: usize,
    mut call: impl FnMut() -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'static>,
    >,
) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        rt.block_on(call())?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(stats(&times).map_or(0.0, |(m, ..)| m))
}

pub fn pods(runs: usize, crated: &Path, containerd: Option<&Path>) -> anyhow::Result<Vec<Row>> {
    let ctr = tool("ctr", "containerd").context("ctr (Debian's containerd) is needed")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let scratch = tempfile::tempdir()?;
    let mut sides = vec![prepare(
        &rt,
        &ctr,
        |c| Daemon::crated(crated, Some(c), &[]).map_err(anyhow::Error::msg),
        scratch.path(),
    )?];
    if let Some(bin) = containerd {
        sides.push(prepare(
            &rt,
            &ctr,
            |c| Daemon::containerd(bin, Some(c)).map_err(anyhow::Error::msg),
            scratch.path(),
        )?);
    }
    let mut start_row = Row {
        name: "CRI pod start (run+create+start)".into(),
        unit: "ms",
        crated: vec![],
        containerd: vec![],
    };
    // One warm-up each, then the daemons alternate.
    for side in &mut sides {
        let id = rt.block_on(start_pod(&mut side.client, "warm"))?;
        rt.block_on(remove_pod(&mut side.client, &id))?;
    }
    for i in 0..runs {
        for (which, side) in sides.iter_mut().enumerate() {
            let started = Instant::now();
            let id = rt.block_on(start_pod(&mut side.client, &format!("timed-{i}")))?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            rt.block_on(remove_pod(&mut side.client, &id))?;
            if which == 0 {
                start_row.crated.push(ms);
            } else {
                start_row.containerd.push(ms);
            }
        }
    }
    let mut rss = Row {
        name: format!("daemon RSS with {HELD_PODS} pods"),
        unit: "MiB",
        crated: vec![],
        containerd: vec![],
    };
    let mut list_pods = Row {
        name: format!("ListPodSandbox p50, {HELD_PODS} pods"),
        unit: "us",
        crated: vec![],
        containerd: vec![],
    };
    let mut list_containers = Row {
        name: format!("ListContainers p50, {HELD_PODS} pods"),
        unit: "us",
        crated: vec![],
        containerd: vec![],
    };
    let mut list_stats = Row {
        name: format!("ListContainerStats p50, {HELD_PODS} pods"),
        unit: "us",
        crated: vec![],
        containerd: vec![],
    };
    let mut at_once = Row {
        name: format!("{HELD_PODS} CRI pods started at once"),
        unit: "s",
        crated: vec![],
        containerd: vec![],
    };
    for (which, side) in sides.iter_mut().enumerate() {
        // All the held pods are asked for at once, as a kubelet does after a node restart.
        let started = Instant::now();
        let held: Vec<String> = rt.block_on(async {
            let starts = (0..HELD_PODS).map(|i| {
                let mut client = side.client.clone();
                async move { start_pod(&mut client, &format!("held-{i}")).await }
            });
            futures::future::join_all(starts)
                .await
                .into_iter()
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        let all_started = started.elapsed().as_secs_f64();
        let kib = crated_testsupport::rss_kib(side.daemon.pid()).unwrap_or(0);
        let client = side.client.clone();
        let pods_p50 = p50_micros(&rt, 200, || {
            let mut c = client.clone();
            Box::pin(async move {
                c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                    .await?;
                Ok(())
            })
        })?;
        let containers_p50 = p50_micros(&rt, 200, || {
            let mut c = client.clone();
            Box::pin(async move {
                c.list_containers(cri::ListContainersRequest { filter: None })
                    .await?;
                Ok(())
            })
        })?;
        let stats_p50 = p50_micros(&rt, 50, || {
            let mut c = client.clone();
            Box::pin(async move {
                c.list_container_stats(cri::ListContainerStatsRequest { filter: None })
                    .await?;
                Ok(())
            })
        })?;
        for id in &held {
            rt.block_on(remove_pod(&mut side.client, id))?;
        }
        let target = |row: &mut Row, v: f64| {
            if which == 0 {
                row.crated.push(v)
            } else {
                row.containerd.push(v)
            }
        };
        target(&mut at_once, all_started);
        target(&mut rss, kib as f64 / 1024.0);
        target(&mut list_pods, pods_p50);
        target(&mut list_containers, containers_p50);
        target(&mut list_stats, stats_p50);
    }
    Ok(vec![
        start_row,
        at_once,
        rss,
        list_pods,
        list_containers,
        list_stats,
    ])
}
