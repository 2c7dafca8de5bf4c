//! The CRI plugin (`io.containerd.grpc.v1.cri`) through Kubernetes' own client stubs, on
//! crated and, side by side with the same client, on Debian's containerd 1.6.

use std::path::Path;
use std::time::Duration;

use crated_testsupport::{channel, tool, wait_until, Daemon};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

mod common;

/// A CRI section whose networks come from `net_d` only.
fn cri_config(net_d: &Path) -> String {
    format!(
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{}\"\n",
        net_d.display()
    )
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
    let net_d = tempfile::tempdir().unwrap();
    let daemon = common::start(Some(&cri_config(net_d.path())));
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
