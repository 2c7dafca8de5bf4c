//! What containerd's CRI gets from go-cni: the pod networks (loopback as `lo`, then the
//! configured ones as eth0, eth1, ...), readiness, set-up of all of them for a pod (in
//! parallel) with the pod's identity and capability arguments, the pod IP chosen from eth0,
//! and teardown that tolerates what go-cni tolerates.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cache::ResultCache;
use crate::exec::{PluginExec, RuntimeConf};
use crate::result::{null_as_default, CniResult, Dns, Route};
use crate::{chain, CniError, NetworkList};

/// The interface name of the default network, whose address is the pod's.
const DEFAULT_IFNAME: &str = "eth0";

/// Which of eth0's addresses becomes the pod IP (containerd's `ip_pref`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IpPreference {
    /// The first IPv4 address, else the first address.
    #[default]
    Ipv4,
    /// The first IPv6 address, else the first address.
    Ipv6,
    /// The first address, in the plugin's order.
    Cni,
}

/// Where configs, plugins and the cache are, and how to run plugins.
#[derive(Debug, Clone)]
pub struct CniOptions {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// How many config files to use (0: all).
    pub max_conf_num: usize,
    pub cache_dir: PathBuf,
    pub ip_pref: IpPreference,
    /// How long one plugin invocation may take before it is killed.
    pub plugin_timeout: Duration,
}

impl IpPreference {
    /// From containerd's `ip_pref` setting: `ipv4` (or empty), `ipv6`, `cni`; anything else
    /// falls back to IPv4 with a warning, as containerd does.
    pub fn from_config(text: &str) -> IpPreference {
        match text {
            "" | "ipv4" => IpPreference::Ipv4,
            "ipv6" => IpPreference::Ipv6,
            "cni" => IpPreference::Cni,
            other => {
                tracing::warn!(ip_pref = other, "invalid ip_pref, falling back to ipv4");
                IpPreference::Ipv4
            }
        }
    }
}

impl Default for CniOptions {
    /// containerd's defaults.
    fn default() -> CniOptions {
        CniOptions {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin")],
            max_conf_num: 1,
            cache_dir: PathBuf::from(crate::cache::DEFAULT_CACHE_DIR),
            ip_pref: IpPreference::Ipv4,
            plugin_timeout: Duration::from_secs(120),
        }
    }
}

/// A host port mapped into the pod (the `portMappings` capability).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    /// `tcp`, `udp` or `sctp`, lower case.
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Traffic shaping (the `bandwidth` capability): rates in bits per second, bursts in bits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BandWidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

/// The pod's DNS settings (the `dns` capability).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// The pod, as the plugins are told about it: its identity in `CNI_ARGS` and the capability
/// arguments containerd offers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodNetworkArgs {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<BandWidth>,
    pub dns: Option<DnsConfig>,
    /// All the pod's annotations (`io.kubernetes.cri.pod-annotations`).
    pub annotations: BTreeMap<String, String>,
}

impl PodNetworkArgs {
    /// `CNI_ARGS` for sandbox `id`. IgnoreUnknown comes first so that plugins parsing in order
    /// know it before meeting the keys they do not have.
    fn cni_args(&self, id: &str) -> Vec<(String, String)> {
        [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", &self.namespace),
            ("K8S_POD_NAME", &self.name),
            ("K8S_POD_INFRA_CONTAINER_ID", id),
            ("K8S_POD_UID", &self.uid),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The capability arguments: annotations always, the others when there are any (as
    /// containerd adds them). Mappings without a host port map nothing and are left out.
    fn capability_args(&self) -> Result<Map<String, Value>, CniError> {
        let encode = |what: &str, v: Result<Value, serde_json::Error>| {
            v.map_err(|e| CniError::InvalidArgument(format!("{what}: {e}")))
        };
        let mut args = Map::new();
        args.insert(
            "io.kubernetes.cri.pod-annotations".into(),
            encode("annotations", serde_json::to_value(&self.annotations))?,
        );
        let mappings: Vec<&PortMapping> = self
            .port_mappings
            .iter()
            .filter(|m| m.host_port > 0)
            .collect();
        if !mappings.is_empty() {
            args.insert(
                "portMappings".into(),
                encode("port mappings", serde_json::to_value(mappings))?,
            );
        }
        if let Some(bandwidth) = &self.bandwidth {
            args.insert(
                "bandwidth".into(),
                encode("bandwidth", serde_json::to_value(bandwidth))?,
            );
        }
        if let Some(dns) = &self.dns {
            args.insert("dns".into(), encode("dns", serde_json::to_value(dns))?);
        }
        Ok(args)
    }
}

/// An address of an interface and its gateway (go-cni's `IPConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceIp {
    #[serde(rename = "IP")]
    pub ip: IpAddr,
    #[serde(
        rename = "Gateway",
        serialize_with = "gateway_as_go",
        deserialize_with = "crate::result::empty_as_none",
        default
    )]
    pub gateway: Option<IpAddr>,
}

/// Go writes an absent address as `""`.
fn gateway_as_go<S: serde::Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
    match ip {
        Some(ip) => s.collect_str(ip),
        None => s.serialize_str(""),
    }
}

/// One interface of the pod's networks (go-cni's `Config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceConfig {
    #[serde(rename = "IPConfigs", default, deserialize_with = "null_as_default")]
    pub ips: Vec<InterfaceIp>,
    #[serde(rename = "Mac", default)]
    pub mac: String,
    #[serde(rename = "Sandbox", default)]
    pub sandbox: String,
    #[serde(rename = "PciID", default)]
    pub pci_id: String,
    #[serde(rename = "SocketPath", default)]
    pub socket_path: String,
}

/// Everything the networks reported for a pod, by interface name (go-cni's `Result`, in its
/// JSON form, which containerd stores with the sandbox).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkResult {
    #[serde(rename = "Interfaces", default, deserialize_with = "null_as_default")]
    pub interfaces: BTreeMap<String, InterfaceConfig>,
    #[serde(rename = "DNS", default, deserialize_with = "null_as_default")]
    pub dns: Vec<Dns>,
    #[serde(rename = "Routes", default, deserialize_with = "null_as_default")]
    pub routes: Vec<Route>,
    /// Each network's own result, in network order (lo first).
    #[serde(skip)]
    pub raw: Vec<CniResult>,
}

/// What [`Cni::setup`] gives the sandbox: its IPs and the full result.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupResult {
    /// The pod IP: eth0's address of the preferred family.
    pub ip: IpAddr,
    /// eth0's other addresses.
    pub additional_ips: Vec<IpAddr>,
    pub result: NetworkResult,
}

/// A configured network and the interface it makes in the pod.
#[derive(Debug, Clone)]
struct Network {
    list: NetworkList,
    if_name: String,
}

/// The pod networks of one config directory, and the plugins to run them with.
#[derive(Debug)]
pub struct Cni {
    options: CniOptions,
    exec: PluginExec,
    cache: ResultCache,
    /// Swapped whole by [`Cni::load`]; an operation keeps the set it started with.
    networks: RwLock<Arc<Vec<Network>>>,
}

impl Cni {
    /// A CNI with no networks yet: [`Cni::load`] reads the config directory.
    pub fn new(options: CniOptions) -> Cni {
        Cni {
            exec: PluginExec::new(options.bin_dirs.clone(), options.plugin_timeout),
            cache: ResultCache::new(options.cache_dir.clone()),
            options,
            networks: RwLock::new(Arc::new(Vec::new())),
        }
    }

    /// (Re)reads the networks: loopback as `lo`, then the first `max_conf_num` configs of the
    /// directory as eth0, eth1, ... (go-cni's `WithLoNetwork` + `WithDefaultConf`). Without
    /// configs only loopback is there and [`Cni::status`] says so.
    pub fn load(&self) -> Result<(), CniError> {
        let configured = crate::load_dir(&self.options.conf_dir, self.options.max_conf_num)?;
        let mut networks = vec![Network {
            list: NetworkList::loopback(),
            if_name: "lo".into(),
        }];
        networks.extend(configured.into_iter().enumerate().map(|(i, list)| Network {
            list,
            if_name: format!("eth{i}"),
        }));
        tracing::info!(
            networks = ?networks.iter().map(|n| (&n.list.name, &n.if_name)).collect::<Vec<_>>(),
            conf_dir = %self.options.conf_dir.display(),
            "loaded CNI networks"
        );
        *self.networks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(networks);
        Ok(())
    }

    fn networks(&self) -> Arc<Vec<Network>> {
        self.networks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ready once a network besides loopback is configured (containerd asks go-cni for two).
    pub fn status(&self) -> Result<(), CniError> {
        ready(&self.networks())
    }

    /// Sets up every network for sandbox `id` in the netns at `netns`: each network's plugins
    /// in order, the networks in parallel (as go-cni's `Setup`). On error, networks that
    /// were set up stay so: call [`Cni::remove`].
    pub async fn setup(
        &self,
        id: &str,
        netns: &Path,
        pod: &PodNetworkArgs,
    ) -> Result<SetupResult, CniError> {
        let networks = self.networks();
        ready(&networks)?;
        let netns = netns_str(netns)?;
        let args = pod.cni_args(id);
        let capability_args = pod.capability_args()?;
        let attach = networks.iter().map(|network| {
            let rt = RuntimeConf {
                container_id: id.to_owned(),
                netns: netns.to_owned(),
                if_name: network.if_name.clone(),
                args: args.clone(),
                capability_args: capability_args.clone(),
            };
            async move { chain::add(&self.exec, &self.cache, &network.list, &rt).await }
        });
        let results = futures::future::join_all(attach)
            .await
            .into_iter()
            .collect::<Result<Vec<CniResult>, CniError>>()?;
        let result = network_result(results)?;
        let eth0 = result
            .interfaces
            .get(DEFAULT_IFNAME)
            .map(|i| i.ips.as_slice())
            .unwrap_or_default();
        let (ip, additional_ips) =
            select_pod_ips(eth0, self.options.ip_pref).ok_or_else(|| CniError::NoPodIp {
                id: id.to_owned(),
                if_name: DEFAULT_IFNAME.into(),
            })?;
        tracing::info!(sandbox = id, %ip, ?additional_ips, "set up the pod network");
        Ok(SetupResult {
            ip,
            additional_ips,
            result,
        })
    }

    /// Tears down every network of sandbox `id` (DEL of each network's plugins, last first).
    /// Safe to repeat and to call after a failed [`Cni::setup`]. As go-cni, a network whose DEL
    /// fails with "not found" in the message (or "no such file or directory" when `netns` is
    /// empty, the netns being gone) counts as removed; any other failure is returned.
    /// Networks no longer configured but still in the result cache are removed from their
    /// cache records, best effort.
    pub async fn remove(
        &self,
        id: &str,
        netns: &Path,
        pod: &PodNetworkArgs,
    ) -> Result<(), CniError> {
        let networks = self.networks();
        ready(&networks)?;
        let netns = netns_str(netns)?;
        let args = pod.cni_args(id);
        let capability_args = pod.capability_args()?;
        for network in networks.iter() {
            let rt = RuntimeConf {
                container_id: id.to_owned(),
                netns: netns.to_owned(),
                if_name: network.if_name.clone(),
                args: args.clone(),
                capability_args: capability_args.clone(),
            };
            if let Err(e) = chain::del(&self.exec, &self.cache, &network.list, &rt).await {
                if tolerated(&e, netns) {
                    tracing::debug!(sandbox = id, network = %network.list.name, "ignoring: {e}");
                    continue;
                }
                return Err(e);
            }
        }
        // Attachments of networks since removed from the config directory: their cache
        // records have what DEL needs, and without it their addresses would leak.
        for entry in self.cache.entries_of(id) {
            let configured = networks
                .iter()
                .any(|n| n.list.name == entry.network_name && n.if_name == entry.if_name);
            if configured {
                continue;
            }
            if let Err(e) = chain::del_cached(&self.exec, &self.cache, &entry, netns).await {
                tracing::warn!(
                    sandbox = id,
                    network = %entry.network_name,
                    "removing an attachment of a network no longer configured: {e}"
                );
            }
        }
        tracing::info!(sandbox = id, "tore down the pod network");
        Ok(())
    }

    /// CHECK of every network of sandbox `id` against its cached result (go-cni's `Check`;
    /// containerd's CRI does not call it).
    pub async fn check(
        &self,
        id: &str,
        netns: &Path,
        pod: &PodNetworkArgs,
    ) -> Result<(), CniError> {
        let networks = self.networks();
        ready(&networks)?;
        let netns = netns_str(netns)?;
        for network in networks.iter() {
            let rt = RuntimeConf {
                container_id: id.to_owned(),
                netns: netns.to_owned(),
                if_name: network.if_name.clone(),
                args: pod.cni_args(id),
                capability_args: pod.capability_args()?,
            };
            chain::check(&self.exec, &self.cache, &network.list, &rt).await?;
        }
        Ok(())
    }

    /// The spec versions plugin `plugin_type` supports (its VERSION answer).
    pub async fn plugin_versions(&self, plugin_type: &str) -> Result<Vec<String>, CniError> {
        self.exec.versions(plugin_type).await
    }
}

fn ready(networks: &[Network]) -> Result<(), CniError> {
    if networks.len() < 2 {
        return Err(CniError::NotInitialized);
    }
    Ok(())
}

fn netns_str(netns: &Path) -> Result<&str, CniError> {
    netns
        .to_str()
        .ok_or_else(|| CniError::InvalidArgument(format!("netns path {netns:?} is not UTF-8")))
}

/// go-cni's rule for DEL errors that mean "already gone".
fn tolerated(e: &CniError, netns: &str) -> bool {
    let text = e.to_string();
    text.contains("not found") || (netns.is_empty() && text.contains("no such file or directory"))
}

/// The results by interface (go-cni's `createResult`): eth0 is always there; an address
/// without an interface index belongs to eth0.
fn network_result(results: Vec<CniResult>) -> Result<NetworkResult, CniError> {
    let mut out = NetworkResult::default();
    out.interfaces
        .insert(DEFAULT_IFNAME.into(), InterfaceConfig::default());
    for result in &results {
        for intf in &result.interfaces {
            out.interfaces.insert(
                intf.name.clone(),
                InterfaceConfig {
                    ips: Vec::new(),
                    mac: intf.mac.clone(),
                    sandbox: intf.sandbox.clone(),
                    pci_id: intf.pci_id.clone(),
                    socket_path: intf.socket_path.clone(),
                },
            );
        }
        for ip in &result.ips {
            let name = match ip.interface {
                Some(i) => result
                    .interfaces
                    .get(i)
                    .map(|intf| intf.name.as_str())
                    .ok_or_else(|| CniError::InvalidResult {
                        why: format!("IP {} names interface {i}, which is not there", ip.address),
                    })?,
                None => DEFAULT_IFNAME,
            };
            out.interfaces
                .entry(name.to_owned())
                .or_default()
                .ips
                .push(InterfaceIp {
                    ip: ip.address.addr,
                    gateway: ip.gateway,
                });
        }
        out.dns.push(result.dns.clone());
        out.routes.extend(result.routes.iter().cloned());
    }
    out.raw = results;
    Ok(out)
}

/// The pod IP and the others, as containerd's `selectPodIPs` picks them.
fn select_pod_ips(ips: &[InterfaceIp], pref: IpPreference) -> Option<(IpAddr, Vec<IpAddr>)> {
    let all: Vec<IpAddr> = ips.iter().map(|i| i.ip).collect();
    let chosen = match pref {
        IpPreference::Ipv4 => all.iter().position(IpAddr::is_ipv4),
        IpPreference::Ipv6 => all.iter().position(IpAddr::is_ipv6),
        IpPreference::Cni => None,
    }
    .unwrap_or(0);
    let ip = *all.get(chosen)?;
    let others = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != chosen)
        .map(|(_, ip)| *ip)
        .collect();
    Some((ip, others))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fake_plugin, Recorder};

    /// A conf dir, a bin dir with loopback and bridge-like fakes that record their calls,
    /// and a cache dir, all in a temp dir.
    struct Fixture {
        dir: tempfile::TempDir,
        rec: Recorder,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let rec = Recorder::new(dir.path());
            let fixture = Fixture { dir, rec };
            fixture.plugin(
                "loopback",
                r#"{"cniVersion":"0.3.1","interfaces":[{"name":"lo","sandbox":"'"$CNI_NETNS"'"}],"ips":[{"version":"4","interface":0,"address":"127.0.0.1/8"}],"dns":{}}"#,
            );
            fixture.plugin("fakebridge", BRIDGE_RESULT);
            // A meta plugin passes the previous result on; this one knows what it will be.
            fixture.plugin("fakeportmap", BRIDGE_RESULT);
            fixture
        }

        /// A fake plugin that records its calls and answers ADD with `add_result`.
        fn plugin(&self, name: &str, add_result: &str) {
            fake_plugin(
                &self.dir.path().join("bin"),
                name,
                &format!(
                    "{}\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{add_result}'; fi",
                    self.rec.script()
                ),
            );
        }

        fn conf(&self, file: &str, text: &str) {
            let conf = self.dir.path().join("net.d");
            std::fs::create_dir_all(&conf).unwrap();
            std::fs::write(conf.join(file), text).unwrap();
        }

        fn cni(&self, max: usize) -> Cni {
            let cni = Cni::new(CniOptions {
                conf_dir: self.dir.path().join("net.d"),
                bin_dirs: vec![self.dir.path().join("bin")],
                max_conf_num: max,
                cache_dir: self.dir.path().join("cache"),
                ip_pref: IpPreference::Ipv4,
                plugin_timeout: Duration::from_secs(20),
            });
            cni.load().unwrap();
            cni
        }

        fn cache_files(&self) -> Vec<String> {
            let Ok(dir) = std::fs::read_dir(self.dir.path().join("cache/results")) else {
                return Vec::new();
            };
            let mut names: Vec<String> = dir
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        }
    }

    fn pod() -> PodNetworkArgs {
        PodNetworkArgs {
            namespace: "default".into(),
            name: "web".into(),
            uid: "uid-1".into(),
            port_mappings: vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                    host_ip: String::new(),
                },
                PortMapping {
                    host_port: 0,
                    container_port: 81,
                    protocol: "tcp".into(),
                    host_ip: String::new(),
                },
            ],
            bandwidth: None,
            dns: Some(DnsConfig {
                servers: vec!["10.96.0.10".into()],
                ..DnsConfig::default()
            }),
            annotations: [("a".to_owned(), "b".to_owned())].into(),
        }
    }

    const BRIDGE_RESULT: &str = r#"{"cniVersion":"0.4.0","interfaces":[{"name":"br0"},{"name":"'"$CNI_IFNAME"'","sandbox":"'"$CNI_NETNS"'","mac":"02:00:00:00:00:01"}],"ips":[{"version":"6","interface":1,"address":"fd00::5/64"},{"version":"4","interface":1,"address":"10.22.0.5/16","gateway":"10.22.0.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;

    const NET: &str = r#"{"cniVersion":"0.4.0","name":"podnet","plugins":[{"type":"fakebridge"},{"type":"fakeportmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn status_waits_for_a_configured_network_and_load_picks_them_up() {
        let f = Fixture::new();
        let cni = f.cni(1);
        assert!(matches!(cni.status(), Err(CniError::NotInitialized)));
        assert_eq!(
            cni.status().unwrap_err().to_string(),
            "cni plugin not initialized"
        );
        f.conf("10-podnet.conflist", NET);
        f.conf(
            "20-second.conf",
            r#"{"cniVersion":"0.4.0","name":"second","type":"fakebridge"}"#,
        );
        cni.load().unwrap();
        cni.status().unwrap();
        let names: Vec<(String, String)> = cni
            .networks()
            .iter()
            .map(|n| (n.list.name.clone(), n.if_name.clone()))
            .collect();
        assert_eq!(
            names,
            [
                ("cni-loopback".into(), "lo".into()),
                ("podnet".into(), "eth0".into())
            ]
        );
        let all = f.cni(0);
        assert_eq!(all.networks().len(), 3);
        assert_eq!(all.networks()[2].if_name, "eth1");
    }

    #[tokio::test]
    async fn setup_runs_every_network_and_picks_the_pod_ip_from_eth0() {
        let f = Fixture::new();
        f.conf("10-podnet.conflist", NET);
        let cni = f.cni(1);
        let netns = Path::new("/var/run/netns/cni-test");
        let out = cni.setup("sb1", netns, &pod()).await.unwrap();
        assert_eq!(out.ip, "10.22.0.5".parse::<IpAddr>().unwrap(), "IPv4 first");
        assert_eq!(out.additional_ips, ["fd00::5".parse::<IpAddr>().unwrap()]);
        let eth0 = &out.result.interfaces["eth0"];
        assert_eq!(eth0.mac, "02:00:00:00:00:01");
        assert_eq!(eth0.sandbox, "/var/run/netns/cni-test");
        assert_eq!(eth0.ips[1].gateway, Some("10.22.0.1".parse().unwrap()));
        assert_eq!(
            out.result.interfaces["lo"].ips[0].ip.to_string(),
            "127.0.0.1"
        );
        assert!(out.result.interfaces.contains_key("br0"));
        assert_eq!(out.result.dns.len(), 2, "one per network");
        assert_eq!(out.result.raw.len(), 2);

        let calls = f.rec.calls();
        let mut seen: Vec<(String, String)> = calls
            .iter()
            .map(|c| (c.plugin.clone(), c.env("CNI_IFNAME")))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("fakebridge".into(), "eth0".into()),
                ("fakeportmap".into(), "eth0".into()),
                ("loopback".into(), "lo".into())
            ]
        );
        for call in &calls {
            assert_eq!(call.env("CNI_COMMAND"), "ADD");
            assert_eq!(call.env("CNI_CONTAINERID"), "sb1");
            assert_eq!(
                call.env("CNI_ARGS"),
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
                 K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=uid-1"
            );
        }
        let portmap = calls.iter().find(|c| c.plugin == "fakeportmap").unwrap();
        assert_eq!(
            portmap.stdin["runtimeConfig"],
            serde_json::json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}),
            "only what portmap declares, and only mappings with a host port"
        );
        assert_eq!(
            portmap.stdin["prevResult"]["ips"][1]["address"],
            "10.22.0.5/16"
        );
        let bridge = calls.iter().find(|c| c.plugin == "fakebridge").unwrap();
        assert!(bridge.stdin.get("runtimeConfig").is_none());
        assert_eq!(f.cache_files(), ["cni-loopback-sb1-lo", "podnet-sb1-eth0"]);
        let record: Value = serde_json::from_slice(
            &std::fs::read(f.dir.path().join("cache/results/podnet-sb1-eth0")).unwrap(),
        )
        .unwrap();
        assert_eq!(record["capabilityArgs"]["dns"]["servers"][0], "10.96.0.10");
        assert_eq!(
            record["capabilityArgs"]["io.kubernetes.cri.pod-annotations"]["a"],
            "b"
        );
        assert_eq!(record["config"], crate::cache::encode(NET.as_bytes()));
    }

    #[tokio::test]
    async fn remove_runs_del_in_reverse_with_the_cache_even_from_a_new_instance() {
        let f = Fixture::new();
        f.conf("10-podnet.conflist", NET);
        let netns = Path::new("/var/run/netns/cni-test");
        f.cni(1).setup("sb1", netns, &pod()).await.unwrap();
        f.rec.clear();
        // A restarted daemon: nothing in memory, only the cache on disk.
        let cni = f.cni(1);
        cni.remove("sb1", netns, &pod()).await.unwrap();
        let calls = f.rec.calls();
        let order: Vec<(String, String)> = calls
            .iter()
            .map(|c| (c.plugin.clone(), c.env("CNI_COMMAND")))
            .collect();
        assert_eq!(
            order,
            [
                ("loopback".into(), "DEL".into()),
                ("fakeportmap".into(), "DEL".into()),
                ("fakebridge".into(), "DEL".into())
            ]
        );
        let bridge = &calls[2];
        assert_eq!(
            bridge.stdin["prevResult"]["ips"][1]["address"], "10.22.0.5/16",
            "DEL's prevResult comes from the cache"
        );
        assert!(
            calls[0].stdin.get("prevResult").is_none(),
            "loopback is 0.3.1"
        );
        assert!(f.cache_files().is_empty());
        f.rec.clear();
        cni.remove("sb1", Path::new(""), &pod()).await.unwrap();
        assert_eq!(
            f.rec.calls().len(),
            3,
            "a repeat runs DEL again and succeeds"
        );
    }

    #[tokio::test]
    async fn remove_tolerates_not_found_and_missing_netns_as_go_cni_does() {
        let f = Fixture::new();
        f.conf("10-podnet.conflist", NET);
        fake_plugin(
            &f.dir.path().join("bin"),
            "fakeportmap",
            r#"cat >/dev/null; echo '{"code":11,"msg":"chain CNI-HOSTPORT not found"}'; exit 1"#,
        );
        let cni = f.cni(1);
        cni.remove("sb1", Path::new("/x"), &pod()).await.unwrap();
        fake_plugin(
            &f.dir.path().join("bin"),
            "fakeportmap",
            r#"cat >/dev/null; echo '{"code":11,"msg":"open /x: no such file or directory"}'; exit 1"#,
        );
        cni.remove("sb1", Path::new(""), &pod()).await.unwrap();
        let e = cni
            .remove("sb1", Path::new("/x"), &pod())
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("failed (delete): open /x: no such file or directory"),
            "{e}"
        );
        fake_plugin(
            &f.dir.path().join("bin"),
            "fakeportmap",
            r#"cat >/dev/null; echo '{"code":999,"msg":"iptables is broken"}'; exit 1"#,
        );
        assert!(cni.remove("sb1", Path::new(""), &pod()).await.is_err());
        // A missing plugin binary is no "not found" to go-cni: it fails the removal.
        std::fs::remove_file(f.dir.path().join("bin/fakeportmap")).unwrap();
        let e = cni.remove("sb1", Path::new(""), &pod()).await.unwrap_err();
        assert!(e.to_string().contains("failed to find plugin"), "{e}");
    }

    #[tokio::test]
    async fn a_failed_setup_reports_the_plugin_message_and_remove_cleans_up() {
        let f = Fixture::new();
        f.conf("10-podnet.conflist", NET);
        fake_plugin(
            &f.dir.path().join("bin"),
            "fakeportmap",
            &format!(
                "{}\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{{\"code\":5,\"msg\":\"port 8080 is taken\"}}'; exit 1; fi",
                f.rec.script()
            ),
        );
        let cni = f.cni(1);
        let netns = Path::new("/var/run/netns/cni-test");
        let e = cni.setup("sb1", netns, &pod()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"plugin type="fakeportmap" failed (add): port 8080 is taken"#
        );
        assert_eq!(
            f.cache_files(),
            ["cni-loopback-sb1-lo"],
            "no record of the failed one"
        );
        f.rec.clear();
        cni.remove("sb1", netns, &pod()).await.unwrap();
        let order: Vec<String> = f.rec.calls().into_iter().map(|c| c.plugin).collect();
        assert_eq!(order, ["loopback", "fakeportmap", "fakebridge"]);
        assert!(f.cache_files().is_empty());
    }

    #[tokio::test]
    async fn setup_fails_when_eth0_gets_no_address() {
        let f = Fixture::new();
        f.plugin("noip", r#"{"cniVersion":"0.4.0","dns":{}}"#);
        f.conf(
            "10-noip.conflist",
            r#"{"cniVersion":"0.4.0","name":"noip","plugins":[{"type":"noip"}]}"#,
        );
        let e = f
            .cni(1)
            .setup("sb1", Path::new("/x"), &pod())
            .await
            .unwrap_err();
        assert!(matches!(e, CniError::NoPodIp { .. }), "{e:?}");
        assert!(e
            .to_string()
            .contains("failed to find network info for sandbox \"sb1\""));
    }

    #[tokio::test]
    async fn remove_also_removes_attachments_of_networks_no_longer_configured() {
        let f = Fixture::new();
        f.conf("10-podnet.conflist", NET);
        let netns = Path::new("/var/run/netns/cni-test");
        f.cni(1).setup("sb1", netns, &pod()).await.unwrap();
        std::fs::remove_file(f.dir.path().join("net.d/10-podnet.conflist")).unwrap();
        f.conf(
            "20-other.conflist",
            r#"{"cniVersion":"0.4.0","name":"other","plugins":[{"type":"fakebridge"}]}"#,
        );
        f.rec.clear();
        f.cni(1).remove("sb1", netns, &pod()).await.unwrap();
        let order: Vec<(String, String)> = f
            .rec
            .calls()
            .into_iter()
            .map(|c| (c.plugin, c.stdin["name"].as_str().unwrap_or("").to_owned()))
            .collect();
        assert_eq!(
            order,
            [
                ("loopback".into(), "cni-loopback".into()),
                ("fakebridge".into(), "other".into()),
                ("fakeportmap".into(), "podnet".into()),
                ("fakebridge".into(), "podnet".into()),
            ]
        );
        assert!(f.cache_files().is_empty());
    }

    #[test]
    fn operations_can_run_on_any_runtime_thread() {
        fn send<T: Send>(_: &T) {}
        let cni = Cni::new(CniOptions::default());
        let netns = Path::new("");
        let pod = pod();
        send(&cni.setup("x", netns, &pod));
        send(&cni.remove("x", netns, &pod));
        send(&cni.check("x", netns, &pod));
        fn sync<T: Sync + Send>(_: &T) {}
        sync(&cni);
    }

    #[test]
    fn ip_preference_reads_containerds_setting() {
        assert_eq!(IpPreference::from_config(""), IpPreference::Ipv4);
        assert_eq!(IpPreference::from_config("ipv6"), IpPreference::Ipv6);
        assert_eq!(IpPreference::from_config("cni"), IpPreference::Cni);
        assert_eq!(IpPreference::from_config("bogus"), IpPreference::Ipv4);
    }

    #[test]
    fn pod_ips_are_chosen_by_preference() {
        let ips: Vec<InterfaceIp> = ["fd00::1", "10.0.0.1", "10.0.0.2"]
            .iter()
            .map(|ip| InterfaceIp {
                ip: ip.parse().unwrap(),
                gateway: None,
            })
            .collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            select_pod_ips(&ips, IpPreference::Ipv4),
            Some((ip("10.0.0.1"), vec![ip("fd00::1"), ip("10.0.0.2")]))
        );
        assert_eq!(
            select_pod_ips(&ips, IpPreference::Ipv6),
            Some((ip("fd00::1"), vec![ip("10.0.0.1"), ip("10.0.0.2")]))
        );
        assert_eq!(
            select_pod_ips(&ips[1..], IpPreference::Ipv6).unwrap().0,
            ip("10.0.0.1")
        );
        assert_eq!(
            select_pod_ips(&ips, IpPreference::Cni).unwrap().0,
            ip("fd00::1")
        );
        assert_eq!(select_pod_ips(&[], IpPreference::Ipv4), None);
    }

    #[test]
    fn the_result_serialises_as_go_cni_writes_it() {
        let mut result = NetworkResult::default();
        result.interfaces.insert(
            "eth0".into(),
            InterfaceConfig {
                ips: vec![InterfaceIp {
                    ip: "10.0.0.2".parse().unwrap(),
                    gateway: None,
                }],
                mac: "m".into(),
                ..InterfaceConfig::default()
            },
        );
        let text = serde_json::to_string(&result).unwrap();
        assert_eq!(
            text,
            r#"{"Interfaces":{"eth0":{"IPConfigs":[{"IP":"10.0.0.2","Gateway":""}],"Mac":"m","Sandbox":"","PciID":"","SocketPath":""}},"DNS":[],"Routes":[]}"#
        );
        // containerd's form, nulls included, reads back.
        let go = r#"{"Interfaces":{"eth0":{"IPConfigs":null,"Mac":"","Sandbox":"","PciID":"","SocketPath":""},"lo":{"IPConfigs":[{"IP":"127.0.0.1","Gateway":""}],"Mac":"00:00:00:00:00:00","Sandbox":"/var/run/netns/cni-1","PciID":"","SocketPath":""}},"DNS":[{},{}],"Routes":null}"#;
        let parsed: NetworkResult = serde_json::from_str(go).unwrap();
        assert!(parsed.interfaces["eth0"].ips.is_empty());
        assert_eq!(parsed.interfaces["lo"].ips[0].gateway, None);
        assert_eq!(parsed.dns.len(), 2);
    }
}
