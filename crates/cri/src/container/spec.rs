//! The OCI spec of a pod's container, as containerd 1.6's CRI builds it: the image's process
//! under the CRI config's command, args, env and working directory; the pod's namespaces
//! joined through its pause process; the pod's hostname, hosts, resolv.conf and `/dev/shm`;
//! the CRI mounts, resources and security context.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    Capability, LinuxCpu, LinuxMemory, LinuxNamespaceType, LinuxResources, Mount, Spec, User,
};

use crate::sandbox::spec::ImageProcess;
use crate::CriError;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What of the pod a container joins.
pub struct PodParts<'a> {
    pub sandbox_id: &'a str,
    pub sandbox_config: &'a cri::PodSandboxConfig,
    /// The pause process, whose namespaces the container joins.
    pub pause_pid: u32,
    /// `hostname`, `hosts`, `resolv.conf` of the pod.
    pub files_dir: &'a Path,
    /// The pod's `/dev/shm`; None for the host's.
    pub shm: Option<&'a Path>,
}

pub struct ContainerSpecInput<'a> {
    pub id: &'a str,
    pub config: &'a cri::ContainerConfig,
    pub image: &'a ImageProcess,
    /// The image's `User` when it is numeric (`uid` or `uid:gid`).
    pub image_user: &'a str,
    pub image_name: &'a str,
    pub pod: PodParts<'a>,
    pub cgroups_path: String,
    /// Whether an oom_score_adj below the daemon's own is raised to it.
    pub restrict_oom_score_adj: bool,
}

/// A bind mount of `source` at `destination`.
pub fn bind(source: &Path, destination: &str, read_only: bool, propagation: &str) -> Mount {
    let mut mount = Mount::default();
    mount.set_destination(PathBuf::from(destination));
    mount.set_typ(Some("bind".into()));
    mount.set_source(Some(source.to_path_buf()));
    mount.set_options(Some(vec![
        "rbind".to_owned(),
        propagation.to_owned(),
        if read_only { "ro" } else { "rw" }.to_owned(),
    ]));
    mount
}

fn propagation(mode: i32) -> &'static str {
    match cri::MountPropagation::try_from(mode) {
        Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
        _ => "rprivate",
    }
}

/// The capability name as the OCI spec spells it (`NET_ADMIN` is `CAP_NET_ADMIN`).
fn capability(name: &str) -> Result<Capability, CriError> {
    name.strip_prefix("CAP_")
        .unwrap_or(name)
        .parse::<Capability>()
        .map_err(|_| CriError::InvalidArgument(format!("unknown capability {name:?}")))
}

/// CRI's resources as the OCI spec's: CPU period, quota, shares and sets, memory limit.
pub fn linux_resources(resources: &cri::LinuxContainerResources) -> LinuxResources {
    let mut limits = LinuxResources::default();
    let mut cpu = LinuxCpu::default();
    if resources.cpu_period > 0 {
        cpu.set_period(Some(resources.cpu_period as u64));
    }
    if resources.cpu_quota > 0 {
        cpu.set_quota(Some(resources.cpu_quota));
    }
    if resources.cpu_shares > 0 {
        cpu.set_shares(Some(resources.cpu_shares as u64));
    }
    if !resources.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(resources.cpuset_cpus.clone()));
    }
    if !resources.cpuset_mems.is_empty() {
        cpu.set_mems(Some(resources.cpuset_mems.clone()));
    }
    limits.set_cpu(Some(cpu));
    if resources.memory_limit_in_bytes > 0 {
        let mut memory = LinuxMemory::default();
        memory.set_limit(Some(resources.memory_limit_in_bytes));
        limits.set_memory(Some(memory));
    }
    limits
}

/// Raises a score below the daemon's own to it, when the host forbids going lower.
pub fn restrict_oom_score_adj(wanted: i32, restrict: bool) -> i32 {
    if !restrict {
        return wanted;
    }
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    wanted.max(own)
}

/// `uid[:gid]` of an image's `User`, when numeric.
fn numeric_user(user: &str) -> Option<(u32, Option<u32>)> {
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = uid.parse().ok()?;
    let gid = match gid {
        Some(g) => Some(g.parse().ok()?),
        None => None,
    };
    Some((uid, gid))
}

pub fn container_spec(input: &ContainerSpecInput<'_>) -> Result<Spec, CriError> {
    let config = input.config;
    let linux = config.linux.clone().unwrap_or_default();
    let security = linux.security_context.clone().unwrap_or_default();
    let resources = linux.resources.clone().unwrap_or_default();

    // As containerd: a CRI command replaces the entrypoint (and the image's cmd with it).
    let (mut args, rest) = if config.command.is_empty() {
        let cmd = if config.args.is_empty() {
            input.image.cmd.clone()
        } else {
            config.args.clone()
        };
        (input.image.entrypoint.clone(), cmd)
    } else {
        (config.command.clone(), config.args.clone())
    };
    args.extend(rest);
    if args.is_empty() {
        return Err(CriError::InvalidArgument(
            "no command specified: neither the config nor the image gives one".into(),
        ));
    }
    let mut env = vec![DEFAULT_PATH.to_owned()];
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_owned();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    };
    for entry in &input.image.env {
        set(entry.clone());
    }
    for kv in &config.envs {
        set(format!("{}={}", kv.key, kv.value));
    }

    let mut spec = Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_env(Some(env));
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.as_str()
    } else if !input.image.working_dir.is_empty() {
        input.image.working_dir.as_str()
    } else {
        "/"
    };
    process.set_cwd(PathBuf::from(cwd));
    process.set_terminal(Some(config.tty));
    let image_user = numeric_user(input.image_user);
    let mut user = User::default();
    let uid = match (&security.run_as_user, image_user) {
        (Some(u), _) => u32::try_from(u.value)
            .map_err(|_| CriError::InvalidArgument(format!("run_as_user {}", u.value)))?,
        (None, Some((uid, _))) => uid,
        (None, None) => 0,
    };
    let gid = match (&security.run_as_group, image_user) {
        (Some(g), _) => u32::try_from(g.value)
            .map_err(|_| CriError::InvalidArgument(format!("run_as_group {}", g.value)))?,
        (None, Some((_, Some(gid)))) => gid,
        _ => 0,
    };
    user.set_uid(uid);
    user.set_gid(gid);
    let groups: Vec<u32> = security
        .supplemental_groups
        .iter()
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    if !groups.is_empty() {
        user.set_additional_gids(Some(groups));
    }
    process.set_user(user);
    process.set_no_new_privileges(Some(security.no_new_privs));
    if resources.oom_score_adj != 0 || input.restrict_oom_score_adj {
        let wanted = i32::try_from(resources.oom_score_adj).unwrap_or(0);
        process.set_oom_score_adj(Some(restrict_oom_score_adj(
            wanted,
            input.restrict_oom_score_adj,
        )));
    }
    if let Some(caps) = &security.capabilities {
        if !caps.add_capabilities.is_empty() || !caps.drop_capabilities.is_empty() {
            let mut set = process.capabilities().clone().unwrap_or_default();
            let mut bounding = set.bounding().clone().unwrap_or_default();
            let all = caps.drop_capabilities.iter().any(|c| c == "ALL");
            if all {
                bounding.clear();
            }
            for drop in caps.drop_capabilities.iter().filter(|c| *c != "ALL") {
                bounding.remove(&capability(drop)?);
            }
            for add in &caps.add_capabilities {
                bounding.insert(capability(add)?);
            }
            set.set_bounding(Some(bounding.clone()));
            set.set_effective(Some(bounding.clone()));
            set.set_permitted(Some(bounding));
            set.set_inheritable(None);
            set.set_ambient(None);
            process.set_capabilities(Some(set));
        }
    }
    spec.set_process(Some(process));

    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(security.readonly_rootfs));
    spec.set_root(Some(root));
    spec.set_hostname(None);

    // Mounts: the defaults without /dev/shm, the pod's files, then the CRI mounts (which win).
    let wanted: Vec<&cri::Mount> = config.mounts.iter().collect();
    let taken = |destination: &str| wanted.iter().any(|m| m.container_path == destination);
    let mut mounts: Vec<Mount> = spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.destination() != Path::new("/dev/shm"))
        .filter(|m| !taken(&m.destination().to_string_lossy()))
        .collect();
    let read_only_files = security.readonly_rootfs;
    for (file, destination) in [
        ("hostname", "/etc/hostname"),
        ("hosts", "/etc/hosts"),
        ("resolv.conf", "/etc/resolv.conf"),
    ] {
        if !taken(destination) {
            mounts.push(bind(
                &input.pod.files_dir.join(file),
                destination,
                read_only_files,
                "rprivate",
            ));
        }
    }
    if !taken("/dev/shm") {
        let shm = input.pod.shm.unwrap_or(Path::new("/dev/shm"));
        mounts.push(bind(shm, "/dev/shm", false, "rprivate"));
    }
    for m in wanted {
        if m.host_path.is_empty() || m.container_path.is_empty() {
            return Err(CriError::InvalidArgument(
                "a mount needs a host path and a container path".into(),
            ));
        }
        mounts.push(bind(
            Path::new(&m.host_path),
            &m.container_path,
            m.readonly,
            propagation(m.propagation),
        ));
    }
    spec.set_mounts(Some(mounts));

    let mut spec_linux = spec.linux().clone().unwrap_or_default();
    let pod_options = input
        .pod
        .sandbox_config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let options = security.namespace_options.clone().unwrap_or_default();
    let node = cri::NamespaceMode::Node as i32;
    let joined = |kind: &str| {
        Some(PathBuf::from(format!(
            "/proc/{}/ns/{kind}",
            input.pod.pause_pid
        )))
    };
    let namespaces = spec_linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| match ns.typ() {
            LinuxNamespaceType::Network | LinuxNamespaceType::Uts => pod_options.network != node,
            LinuxNamespaceType::Ipc => pod_options.ipc != node,
            LinuxNamespaceType::Pid => options.pid != node,
            _ => true,
        })
        .map(|mut ns| {
            match ns.typ() {
                LinuxNamespaceType::Network => {
                    ns.set_path(joined("net"));
                }
                LinuxNamespaceType::Uts => {
                    ns.set_path(joined("uts"));
                }
                LinuxNamespaceType::Ipc => {
                    ns.set_path(joined("ipc"));
                }
                LinuxNamespaceType::Pid if options.pid == cri::NamespaceMode::Pod as i32 => {
                    ns.set_path(joined("pid"));
                }
                _ => {}
            }
            ns
        })
        .collect();
    spec_linux.set_namespaces(Some(namespaces));
    spec_linux.set_cgroups_path(Some(PathBuf::from(&input.cgroups_path)));
    let mut limits = linux_resources(&resources);
    if let Some(defaults) = spec_linux.resources() {
        limits.set_devices(defaults.devices().clone());
    }
    spec_linux.set_resources(Some::<LinuxResources>(limits));
    if !security.masked_paths.is_empty() {
        spec_linux.set_masked_paths(Some(security.masked_paths.clone()));
    }
    if !security.readonly_paths.is_empty() {
        spec_linux.set_readonly_paths(Some(security.readonly_paths.clone()));
    }
    spec.set_linux(Some(spec_linux));

    let sandbox_metadata = input
        .pod
        .sandbox_config
        .metadata
        .clone()
        .unwrap_or_default();
    let name = config.metadata.clone().unwrap_or_default().name;
    let mut annotations: HashMap<String, String> = config
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, value) in [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.container-name", name.as_str()),
        ("io.kubernetes.cri.sandbox-id", input.pod.sandbox_id),
        (
            "io.kubernetes.cri.sandbox-name",
            sandbox_metadata.name.as_str(),
        ),
        (
            "io.kubernetes.cri.sandbox-namespace",
            sandbox_metadata.namespace.as_str(),
        ),
        (
            "io.kubernetes.cri.sandbox-uid",
            sandbox_metadata.uid.as_str(),
        ),
        ("io.kubernetes.cri.image-name", input.image_name),
    ] {
        annotations.insert(key.to_owned(), value.to_owned());
    }
    spec.set_annotations(Some(annotations));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input_for<'a>(
        config: &'a cri::ContainerConfig,
        sandbox: &'a cri::PodSandboxConfig,
        image: &'a ImageProcess,
    ) -> ContainerSpecInput<'a> {
        ContainerSpecInput {
            id: "c1",
            config,
            image,
            image_user: "1002:1004",
            image_name: "docker.io/library/busybox:latest",
            pod: PodParts {
                sandbox_id: "s1",
                sandbox_config: sandbox,
                pause_pid: 42,
                files_dir: Path::new("/var/lib/x/sandboxes/s1"),
                shm: Some(Path::new("/run/x/sandboxes/s1/shm")),
            },
            cgroups_path: "/k8s.io/c1".into(),
            restrict_oom_score_adj: false,
        }
    }

    fn image() -> ImageProcess {
        ImageProcess {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["A=image".into(), "B=image".into()],
            working_dir: "/work".into(),
        }
    }

    #[test]
    fn command_and_args_replace_the_images_as_containerd_does() {
        let sandbox = cri::PodSandboxConfig::default();
        let image = image();
        let args = |command: &[&str], args: &[&str]| {
            let config = cri::ContainerConfig {
                command: command.iter().map(|s| s.to_string()).collect(),
                args: args.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            container_spec(&input_for(&config, &sandbox, &image))
                .unwrap()
                .process()
                .as_ref()
                .unwrap()
                .args()
                .clone()
                .unwrap()
        };
        assert_eq!(args(&[], &[]), ["/entry", "default"]);
        assert_eq!(args(&[], &["x"]), ["/entry", "x"]);
        assert_eq!(args(&["/cmd"], &[]), ["/cmd"]);
        assert_eq!(args(&["/cmd"], &["y"]), ["/cmd", "y"]);
    }

    #[test]
    fn a_container_joins_its_pods_namespaces_files_and_limits() {
        let sandbox = cri::PodSandboxConfig::default();
        let image = image();
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            envs: vec![cri::KeyValue {
                key: "B".into(),
                value: "cri".into(),
            }],
            mounts: vec![cri::Mount {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                ..Default::default()
            }],
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 64 << 20,
                    cpu_shares: 512,
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    capabilities: Some(cri::Capability {
                        drop_capabilities: vec!["ALL".into()],
                        add_capabilities: vec!["NET_BIND_SERVICE".into()],
                        ..Default::default()
                    }),
                    readonly_rootfs: true,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let spec = container_spec(&input_for(&config, &sandbox, &image)).unwrap();
        let process = spec.process().as_ref().unwrap();
        let env = process.env().clone().unwrap();
        assert!(env.contains(&"A=image".to_owned()) && env.contains(&"B=cri".to_owned()));
        assert!(!env.contains(&"B=image".to_owned()));
        assert_eq!(process.cwd(), Path::new("/work"));
        assert_eq!((process.user().uid(), process.user().gid()), (1002, 1004));
        let bounding = process
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap();
        assert_eq!(bounding.len(), 1);
        assert!(bounding.contains(&Capability::NetBindService));
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .clone()
            .unwrap()
            .into_iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect();
        assert!(ns.contains(&(
            LinuxNamespaceType::Network,
            Some(PathBuf::from("/proc/42/ns/net"))
        )));
        assert!(ns.contains(&(
            LinuxNamespaceType::Ipc,
            Some(PathBuf::from("/proc/42/ns/ipc"))
        )));
        let limits = linux.resources().as_ref().unwrap();
        assert_eq!(limits.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(limits.cpu().as_ref().unwrap().shares(), Some(512));
        let mounts = spec.mounts().as_ref().unwrap();
        let find = |d: &str| {
            mounts
                .iter()
                .find(|m| m.destination() == Path::new(d))
                .unwrap()
        };
        assert_eq!(
            find("/etc/hosts").source().as_deref(),
            Some(Path::new("/var/lib/x/sandboxes/s1/hosts"))
        );
        assert_eq!(
            find("/dev/shm").source().as_deref(),
            Some(Path::new("/run/x/sandboxes/s1/shm"))
        );
        assert!(find("/data")
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_owned()));
        assert_eq!(
            spec.annotations().as_ref().unwrap()["io.kubernetes.cri.container-name"],
            "app"
        );
    }

    #[test]
    fn unknown_capabilities_are_refused() {
        let sandbox = cri::PodSandboxConfig::default();
        let image = image();
        let config = cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    capabilities: Some(cri::Capability {
                        add_capabilities: vec!["FLY".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = container_spec(&input_for(&config, &sandbox, &image)).unwrap_err();
        assert!(err.to_string().contains("FLY"), "{err}");
    }
}
