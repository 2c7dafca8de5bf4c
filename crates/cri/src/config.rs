//! `[plugins."io.containerd.grpc.v1.cri"]`: containerd 1.6's keys and defaults, checked as
//! strictly as every other section (an unknown key stops the daemon, naming it).

use std::collections::BTreeMap;
use std::time::Duration;

use crated_config::GoDuration;
use serde::{Deserialize, Serialize};

/// The whole section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CriConfig {
    pub sandbox_image: String,
    pub stream_server_address: String,
    /// A port number as text; "0" takes any free port.
    pub stream_server_port: String,
    pub stream_idle_timeout: GoDuration,
    pub enable_tls_streaming: bool,
    pub x509_key_pair_streaming: X509KeyPair,
    pub disable_tcp_service: bool,
    pub restrict_oom_score_adj: bool,
    pub disable_cgroup: bool,
    pub disable_apparmor: bool,
    pub enable_selinux: bool,
    pub selinux_category_range: i64,
    pub disable_proc_mount: bool,
    pub unset_seccomp_profile: String,
    pub tolerate_missing_hugetlb_controller: bool,
    pub disable_hugetlb_controller: bool,
    pub ignore_image_defined_volumes: bool,
    pub enable_unprivileged_ports: bool,
    pub enable_unprivileged_icmp: bool,
    pub device_ownership_from_security_context: bool,
    /// Longest log line written whole; longer ones are split. -1: no limit.
    pub max_container_log_line_size: i64,
    pub max_concurrent_downloads: u32,
    /// Seconds between refreshes of the writable layers' usage.
    pub stats_collect_period: u64,
    pub netns_mounts_under_state_dir: bool,
    pub drain_exec_sync_io_timeout: GoDuration,
    pub systemd_cgroup: bool,
    pub containerd: ContainerdConfig,
    pub cni: CniConfig,
    pub registry: RegistryConfig,
    pub image_decryption: ImageDecryption,
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            sandbox_image: "registry.k8s.io/pause:3.6".into(),
            stream_server_address: "127.0.0.1".into(),
            stream_server_port: "0".into(),
            stream_idle_timeout: GoDuration(Duration::from_secs(4 * 3600)),
            enable_tls_streaming: false,
            x509_key_pair_streaming: X509KeyPair::default(),
            disable_tcp_service: true,
            restrict_oom_score_adj: false,
            disable_cgroup: false,
            disable_apparmor: false,
            enable_selinux: false,
            selinux_category_range: 1024,
            disable_proc_mount: false,
            unset_seccomp_profile: String::new(),
            tolerate_missing_hugetlb_controller: true,
            disable_hugetlb_controller: true,
            ignore_image_defined_volumes: false,
            enable_unprivileged_ports: false,
            enable_unprivileged_icmp: false,
            device_ownership_from_security_context: false,
            max_container_log_line_size: 16 * 1024,
            max_concurrent_downloads: 3,
            stats_collect_period: 10,
            netns_mounts_under_state_dir: false,
            drain_exec_sync_io_timeout: GoDuration(Duration::ZERO),
            systemd_cgroup: false,
            containerd: ContainerdConfig::default(),
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
            image_decryption: ImageDecryption::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct X509KeyPair {
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

/// `[…cri.containerd]`: the snapshotter and the runtimes pods run with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerdConfig {
    pub snapshotter: String,
    pub default_runtime_name: String,
    pub runtimes: BTreeMap<String, Runtime>,
    /// Deprecated in containerd 1.6; read so configs that carry it load.
    pub default_runtime: Runtime,
    /// Deprecated in containerd 1.6; read so configs that carry it load.
    pub untrusted_workload_runtime: Runtime,
    pub disable_snapshot_annotations: bool,
    pub discard_unpacked_layers: bool,
    pub ignore_rdt_not_enabled_errors: bool,
    pub no_pivot: bool,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        let runc = Runtime {
            runtime_type: "io.containerd.runc.v2".into(),
            ..Runtime::default()
        };
        ContainerdConfig {
            snapshotter: "overlayfs".into(),
            default_runtime_name: "runc".into(),
            runtimes: BTreeMap::from([("runc".to_owned(), runc)]),
            default_runtime: Runtime::default(),
            untrusted_workload_runtime: Runtime::default(),
            disable_snapshot_annotations: true,
            discard_unpacked_layers: false,
            ignore_rdt_not_enabled_errors: false,
            no_pivot: false,
        }
    }
}

/// `[…cri.containerd.runtimes.<handler>]`: a runtime handler.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    pub runtime_type: String,
    pub runtime_path: String,
    pub runtime_engine: String,
    pub runtime_root: String,
    pub pod_annotations: Vec<String>,
    pub container_annotations: Vec<String>,
    pub privileged_without_host_devices: bool,
    pub base_runtime_spec: String,
    pub cni_conf_dir: String,
    pub cni_max_conf_num: i64,
    /// The shim's own options (runc's `BinaryName`, `SystemdCgroup`, …), passed on as given.
    pub options: toml::Table,
}

/// `[…cri.cni]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    pub bin_dir: String,
    pub conf_dir: String,
    /// How many network configs of `conf_dir` are used, in name order; 0: all.
    pub max_conf_num: i64,
    pub conf_template: String,
    pub ip_pref: String,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            bin_dir: "/opt/cni/bin".into(),
            conf_dir: "/etc/cni/net.d".into(),
            max_conf_num: 1,
            conf_template: String::new(),
            ip_pref: String::new(),
        }
    }
}

/// `[…cri.registry]`: hosts.toml directories, or the older per-host tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub config_path: String,
    pub mirrors: BTreeMap<String, Mirror>,
    pub configs: BTreeMap<String, RegistryHostConfig>,
    pub auths: BTreeMap<String, AuthConfig>,
    pub headers: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Mirror {
    pub endpoint: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryHostConfig {
    pub auth: Option<AuthConfig>,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
    pub auth: String,
    pub identitytoken: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub insecure_skip_verify: bool,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImageDecryption {
    pub key_model: String,
}

impl Default for ImageDecryption {
    fn default() -> Self {
        ImageDecryption {
            key_model: "node".into(),
        }
    }
}

impl CriConfig {
    /// The longest log record, None for no limit (`max_container_log_line_size` of -1).
    pub fn max_log_line(&self) -> Option<usize> {
        usize::try_from(self.max_container_log_line_size)
            .ok()
            .filter(|max| *max > 0)
    }

    /// The handler a request names, the default one for "".
    pub fn runtime(&self, handler: &str) -> Option<(&str, &Runtime)> {
        let name = if handler.is_empty() {
            self.containerd.default_runtime_name.as_str()
        } else {
            handler
        };
        self.containerd
            .runtimes
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CriConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn containerds_default_section_loads_and_matches_the_defaults() {
        let text = r#"
            device_ownership_from_security_context = false
            disable_apparmor = false
            disable_cgroup = false
            disable_hugetlb_controller = true
            disable_proc_mount = false
            disable_tcp_service = true
            enable_selinux = false
            enable_tls_streaming = false
            enable_unprivileged_icmp = false
            enable_unprivileged_ports = false
            ignore_image_defined_volumes = false
            max_concurrent_downloads = 3
            max_container_log_line_size = 16384
            netns_mounts_under_state_dir = false
            restrict_oom_score_adj = false
            sandbox_image = "registry.k8s.io/pause:3.6"
            selinux_category_range = 1024
            stats_collect_period = 10
            stream_idle_timeout = "4h0m0s"
            stream_server_address = "127.0.0.1"
            stream_server_port = "0"
            systemd_cgroup = false
            tolerate_missing_hugetlb_controller = true
            unset_seccomp_profile = ""
            [cni]
              bin_dir = "/opt/cni/bin"
              conf_dir = "/etc/cni/net.d"
              conf_template = ""
              ip_pref = ""
              max_conf_num = 1
            [containerd]
              default_runtime_name = "runc"
              disable_snapshot_annotations = true
              discard_unpacked_layers = false
              ignore_rdt_not_enabled_errors = false
              no_pivot = false
              snapshotter = "overlayfs"
              [containerd.default_runtime]
                base_runtime_spec = ""
                cni_conf_dir = ""
                cni_max_conf_num = 0
                container_annotations = []
                pod_annotations = []
                privileged_without_host_devices = false
                runtime_engine = ""
                runtime_path = ""
                runtime_root = ""
                runtime_type = ""
                [containerd.default_runtime.options]
              [containerd.runtimes]
                [containerd.runtimes.runc]
                  runtime_type = "io.containerd.runc.v2"
                  [containerd.runtimes.runc.options]
                    BinaryName = ""
                    SystemdCgroup = false
            [image_decryption]
              key_model = "node"
            [registry]
              config_path = ""
              [registry.auths]
              [registry.configs]
              [registry.headers]
              [registry.mirrors]
            [x509_key_pair_streaming]
              tls_cert_file = ""
              tls_key_file = ""
        "#;
        let config = parse(text).unwrap();
        let mut expected = CriConfig::default();
        expected
            .containerd
            .runtimes
            .get_mut("runc")
            .unwrap()
            .options = toml::from_str("BinaryName = \"\"\nSystemdCgroup = false").unwrap();
        assert_eq!(config, expected);
        assert_eq!(config.runtime("").map(|(name, _)| name), Some("runc"));
        assert!(config.runtime("kata").is_none());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = parse("[cni]\nbin_dirs = [\"/usr/lib/cni\"]\n").unwrap_err();
        assert!(err.to_string().contains("bin_dirs"), "{err}");
    }
}
