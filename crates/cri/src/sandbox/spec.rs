//! The OCI spec of a pod's sandbox container (its pause process), as containerd 1.6's CRI
//! builds it: the default spec, the pause image's process, the pod's namespaces, hostname,
//! shared memory, DNS, sysctls and cgroup, with a read-only root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::{LinuxCpu, LinuxNamespaceType, LinuxResources, Mount, Spec, User};

use crate::container::spec::bind;
use crate::CriError;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The score containerd gives a pause process: the last to go when memory runs out.
pub const SANDBOX_OOM_SCORE_ADJ: i32 = -998;

/// What an image's config says of the process it runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageProcess {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
}

impl ImageProcess {
    /// Reads the `config` object of an image config.
    pub fn from_config(config: &serde_json::Value) -> ImageProcess {
        let strings = |key: &str| -> Vec<String> {
            config["config"][key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        ImageProcess {
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            env: strings("Env"),
            working_dir: config["config"]["WorkingDir"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// Where a sandbox's own files are, on the host.
pub struct SandboxFiles {
    /// The pod's `/dev/shm`: None shares the host's (host IPC).
    pub shm: Option<PathBuf>,
    pub resolv_conf: PathBuf,
}

pub struct SandboxSpecInput<'a> {
    pub id: &'a str,
    pub config: &'a cri::PodSandboxConfig,
    pub image: &'a ImageProcess,
    pub files: &'a SandboxFiles,
    /// `<cgroup_parent>/<id>`, or containerd's default for the namespace.
    pub cgroups_path: String,
    pub oom_score_adj: i32,
    /// The network namespace to join; None for the host's.
    pub netns: Option<&'a Path>,
    pub runtime_handler: &'a str,
}

fn namespace_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

/// The cgroup of a pod's container `id` (its pause container's too): under the pod's
/// `cgroup_parent`, or containerd's default for the namespace.
pub fn cgroups_path(config: &cri::PodSandboxConfig, id: &str) -> String {
    let parent = config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or_default();
    if parent.is_empty() {
        format!("/{}/{id}", crate::NAMESPACE)
    } else {
        format!("{}/{id}", parent.trim_end_matches('/'))
    }
}

/// Whether the pod uses the host's network.
pub fn host_network(config: &cri::PodSandboxConfig) -> bool {
    namespace_options(config).network == cri::NamespaceMode::Node as i32
}

/// Whether the pod uses the host's IPC namespace (and so its `/dev/shm`).
pub fn host_ipc(config: &cri::PodSandboxConfig) -> bool {
    namespace_options(config).ipc == cri::NamespaceMode::Node as i32
}

pub fn sandbox_spec(input: &SandboxSpecInput<'_>) -> Result<Spec, CriError> {
    let config = input.config;
    let metadata = config.metadata.clone().unwrap_or_default();
    let mut args = input.image.entrypoint.clone();
    args.extend(input.image.cmd.iter().cloned());
    if args.is_empty() {
        return Err(CriError::InvalidArgument(
            "no command specified: the sandbox image has neither Entrypoint nor Cmd".into(),
        ));
    }
    let mut env = vec![DEFAULT_PATH.to_owned()];
    for entry in &input.image.env {
        let key = entry.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(entry.clone());
    }
    let security = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();

    let mut spec = Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(if input.image.working_dir.is_empty() {
        "/"
    } else {
        input.image.working_dir.as_str()
    }));
    process.set_terminal(Some(false));
    let mut user = User::default();
    user.set_uid(
        security
            .run_as_user
            .map_or(0, |u| u32::try_from(u.value).unwrap_or(0)),
    );
    user.set_gid(
        security
            .run_as_group
            .map_or(0, |g| u32::try_from(g.value).unwrap_or(0)),
    );
    let groups: Vec<u32> = security
        .supplemental_groups
        .iter()
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    if !groups.is_empty() {
        user.set_additional_gids(Some(groups));
    }
    process.set_user(user);
    process.set_oom_score_adj(Some(input.oom_score_adj));
    spec.set_process(Some(process));

    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(true));
    spec.set_root(Some(root));

    let host_network = host_network(config);
    let options = namespace_options(config);
    if !host_network {
        let hostname = if config.hostname.is_empty() {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            config.hostname.clone()
        };
        spec.set_hostname(Some(hostname));
    } else {
        spec.set_hostname(None);
    }

    // Mounts: the defaults without /dev/shm (the pod's own, or the host's) and /run.
    let mut mounts: Vec<Mount> = spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            let d = m.destination();
            d != Path::new("/dev/shm") && d != Path::new("/run")
        })
        .collect();
    match &input.files.shm {
        Some(shm) => mounts.push(bind(shm, "/dev/shm", false, "rprivate")),
        None => mounts.push(bind(Path::new("/dev/shm"), "/dev/shm", false, "rprivate")),
    }
    mounts.push(bind(
        &input.files.resolv_conf,
        "/etc/resolv.conf",
        true,
        "rprivate",
    ));
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| match ns.typ() {
            LinuxNamespaceType::Network | LinuxNamespaceType::Uts => !host_network,
            LinuxNamespaceType::Pid => options.pid != cri::NamespaceMode::Node as i32,
            LinuxNamespaceType::Ipc => options.ipc != cri::NamespaceMode::Node as i32,
            _ => true,
        })
        .map(|mut ns| {
            if ns.typ() == LinuxNamespaceType::Network {
                ns.set_path(input.netns.map(Path::to_path_buf));
            }
            ns
        })
        .collect();
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(PathBuf::from(&input.cgroups_path)));
    let sysctls: HashMap<String, String> = config
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone().into_iter().collect())
        .unwrap_or_default();
    if !sysctls.is_empty() {
        linux.set_sysctl(Some(sysctls));
    }
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut cpu = LinuxCpu::default();
    // As containerd: the pause process needs next to no CPU.
    cpu.set_shares(Some(2));
    resources.set_cpu(Some(cpu));
    linux.set_resources(Some::<LinuxResources>(resources));
    spec.set_linux(Some(linux));

    let mut annotations: HashMap<String, String> = config
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, value) in [
        ("io.kubernetes.cri.container-type", "sandbox"),
        ("io.kubernetes.cri.sandbox-id", input.id),
        ("io.kubernetes.cri.sandbox-name", metadata.name.as_str()),
        (
            "io.kubernetes.cri.sandbox-namespace",
            metadata.namespace.as_str(),
        ),
        ("io.kubernetes.cri.sandbox-uid", metadata.uid.as_str()),
        (
            "io.kubernetes.cri.sandbox-log-directory",
            config.log_directory.as_str(),
        ),
        ("io.kubernetes.cri.runtime-handler", input.runtime_handler),
    ] {
        annotations.insert(key.to_owned(), value.to_owned());
    }
    spec.set_annotations(Some(annotations));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(network: cri::NamespaceMode) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "web-0".into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: network as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                sysctls: [("net.ipv4.ip_forward".to_owned(), "1".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn spec_for(config: &cri::PodSandboxConfig, netns: Option<&Path>) -> Spec {
        let image = ImageProcess {
            entrypoint: vec!["/pause".into()],
            cmd: vec!["-P".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            working_dir: String::new(),
        };
        let files = SandboxFiles {
            shm: Some(PathBuf::from("/run/x/shm")),
            resolv_conf: PathBuf::from("/var/x/resolv.conf"),
        };
        sandbox_spec(&SandboxSpecInput {
            id: "abc",
            config,
            image: &image,
            files: &files,
            cgroups_path: "/k8s.io/abc".into(),
            oom_score_adj: SANDBOX_OOM_SCORE_ADJ,
            netns,
            runtime_handler: "runc",
        })
        .unwrap()
    }

    fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    #[test]
    fn a_pod_network_pod_joins_its_netns_and_names_its_host() {
        let config = pod(cri::NamespaceMode::Pod);
        let spec = spec_for(&config, Some(Path::new("/var/run/netns/cni-1")));
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &["/pause", "-P"]);
        assert_eq!(
            process.env().as_ref().unwrap(),
            &["PATH=/bin".to_owned(), "A=1".to_owned()]
        );
        assert_eq!(process.oom_score_adj(), Some(-998));
        assert_eq!(spec.hostname().as_deref(), Some("web-0"));
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());
        let ns = namespaces(&spec);
        assert!(ns.contains(&(
            LinuxNamespaceType::Network,
            Some(PathBuf::from("/var/run/netns/cni-1"))
        )));
        assert!(ns.iter().any(|(t, _)| *t == LinuxNamespaceType::Uts));
        let mounts = spec.mounts().as_ref().unwrap();
        let shm: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
            .collect();
        assert_eq!(shm.len(), 1);
        assert_eq!(shm[0].source().as_deref(), Some(Path::new("/run/x/shm")));
        assert!(mounts
            .iter()
            .any(|m| m.destination() == Path::new("/etc/resolv.conf")));
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/k8s.io/abc"))
        );
        assert_eq!(
            linux.sysctl().as_ref().unwrap().get("net.ipv4.ip_forward"),
            Some(&"1".to_owned())
        );
        let annotations = spec.annotations().as_ref().unwrap();
        assert_eq!(annotations["io.kubernetes.cri.container-type"], "sandbox");
        assert_eq!(annotations["io.kubernetes.cri.sandbox-uid"], "u1");
    }

    #[test]
    fn a_host_network_pod_has_neither_network_nor_uts_namespace() {
        let config = pod(cri::NamespaceMode::Node);
        assert!(host_network(&config));
        let spec = spec_for(&config, None);
        let ns = namespaces(&spec);
        assert!(!ns
            .iter()
            .any(|(t, _)| matches!(t, LinuxNamespaceType::Network | LinuxNamespaceType::Uts)));
        assert_eq!(spec.hostname(), &None);
    }

    #[test]
    fn an_image_without_a_command_cannot_be_a_sandbox() {
        let config = pod(cri::NamespaceMode::Pod);
        let files = SandboxFiles {
            shm: None,
            resolv_conf: PathBuf::from("/r"),
        };
        let err = sandbox_spec(&SandboxSpecInput {
            id: "abc",
            config: &config,
            image: &ImageProcess::default(),
            files: &files,
            cgroups_path: String::new(),
            oom_score_adj: 0,
            netns: None,
            runtime_handler: "runc",
        })
        .unwrap_err();
        assert!(err.to_string().contains("no command"), "{err}");
    }
}
