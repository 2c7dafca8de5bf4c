//! End to end with Debian's real plugins in /usr/lib/cni (bridge, host-local, loopback,
//! portmap): a pod network set up in a fresh named netns, reached from the host, and torn
//! down without leaving an address, a cache record, an iptables rule or a mount. Needs root;
//! skipped without it outside CI, a failure on CI.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crated_cni::{
    create_netns, remove_netns, run_in_netns, Cni, CniOptions, IpPreference, PodNetworkArgs,
    PortMapping,
};

const BIN: &str = "/usr/lib/cni";

/// Root and the plugins, or a skip (a failure on CI, where both must be there).
fn prerequisites() -> bool {
    let missing = if !crated_testsupport::is_root() {
        Some("root (it makes network namespaces, a bridge and iptables rules)")
    } else if !Path::new(BIN).join("bridge").is_file() {
        Some("the CNI plugins in /usr/lib/cni (Debian package `containernetworking-plugins`)")
    } else {
        None
    };
    let Some(what) = missing else {
        return true;
    };
    assert!(
        !crated_testsupport::on_ci(),
        "{what} is missing on CI: .ci/run must provide it"
    );
    eprintln!("SKIPPED: this test needs {what}");
    false
}

/// Deletes the bridge the plugin made when the test ends, passed or not.
struct BridgeGuard(&'static str);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Removes a netns when the test ends, passed or not (a failed one must not leave a mount).
struct NetnsGuard(PathBuf);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = remove_netns(&self.0);
    }
}

/// A temp dir with a conf dir holding `conflist`, a cache dir, a netns dir and host-local's
/// data dir, and a Cni over them.
struct Setup {
    dir: tempfile::TempDir,
    cni: Cni,
}

impl Setup {
    fn new(conflist: &str, extra_bin: Option<PathBuf>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        std::fs::create_dir(&conf).unwrap();
        let ipam = dir.path().join("ipam");
        std::fs::write(
            conf.join("10-crated.conflist"),
            conflist.replace("<ipam>", ipam.to_str().unwrap()),
        )
        .unwrap();
        let mut bin_dirs: Vec<PathBuf> = extra_bin.into_iter().collect();
        bin_dirs.push(BIN.into());
        let cni = Cni::new(CniOptions {
            conf_dir: conf,
            bin_dirs,
            max_conf_num: 1,
            cache_dir: dir.path().join("cache"),
            ip_pref: IpPreference::Ipv4,
            plugin_timeout: Duration::from_secs(60),
        });
        cni.load().unwrap();
        cni.status().unwrap();
        Setup { dir, cni }
    }

    fn netns_dir(&self) -> PathBuf {
        self.dir.path().join("netns")
    }

    /// The addresses host-local has handed out for `network`.
    fn allocated(&self, network: &str) -> Vec<IpAddr> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("ipam").join(network)) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.unwrap().file_name().into_string().unwrap().parse().ok())
            .collect()
    }

    fn cache_records(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("cache/results")) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

fn pod(host_port: i32) -> PodNetworkArgs {
    PodNetworkArgs {
        namespace: "default".into(),
        name: "cni-test".into(),
        uid: "0f3a9c1e-uid".into(),
        port_mappings: vec![PortMapping {
            host_port,
            container_port: 8080,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }],
        ..PodNetworkArgs::default()
    }
}

/// `args` run inside the netns at `netns`; their stdout.
fn in_netns(netns: &Path, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} in {}: {}",
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mounted(path: &Path) -> bool {
    let path = path.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path))
}

fn iptables_nat() -> String {
    let out = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

const CONFLIST: &str = r#"{"cniVersion":"0.4.0","name":"crated-test","plugins":[
    {"type":"bridge","bridge":"crated-cni0","isGateway":true,"ipMasq":false,
     "ipam":{"type":"host-local","ranges":[[{"subnet":"10.233.91.0/24"}]],"dataDir":"<ipam>"}},
    {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

#[tokio::test]
async fn a_pod_network_is_set_up_reached_and_torn_down() {
    if !prerequisites() {
        return;
    }
    let _bridge = BridgeGuard("crated-cni0");
    let s = Setup::new(CONFLIST, None);
    let netns = create_netns(&s.netns_dir()).unwrap();
    let _netns = NetnsGuard(netns.clone());
    assert!(mounted(&netns));
    let id = "crated-cni-it-1";

    let out = s.cni.setup(id, &netns, &pod(38091)).await.unwrap();
    let ip = out.ip;
    let IpAddr::V4(v4) = ip else {
        panic!("an IPv4 pod IP, got {ip}");
    };
    assert_eq!(v4.octets()[..3], [10, 233, 91], "{ip} is in the subnet");
    assert!(out.additional_ips.is_empty());
    let eth0 = &out.result.interfaces["eth0"];
    assert_eq!(eth0.ips[0].gateway, Some("10.233.91.1".parse().unwrap()));
    assert_eq!(eth0.sandbox, netns.to_str().unwrap());
    assert!(out.result.interfaces.contains_key("crated-cni0"));
    // In the netns: the address on eth0, and loopback up.
    let addrs = in_netns(&netns, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("inet {ip}/24")), "{addrs}");
    let lo = in_netns(&netns, &["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    assert_eq!(s.allocated("crated-test"), [ip]);
    assert_eq!(
        s.cache_records(),
        [
            format!("cni-loopback-{id}-lo"),
            format!("crated-test-{id}-eth0")
        ]
    );

    // The host reaches the pod: directly, and through portmap's host port on the gateway.
    // The listener is opened inside the netns and used from here.
    let listener = run_in_netns(&netns, move || std::net::TcpListener::bind((ip, 8080)))
        .unwrap()
        .unwrap();
    assert!(connects(SocketAddr::new(ip, 8080)), "host -> pod {ip}:8080");
    assert!(
        connects("10.233.91.1:38091".parse().unwrap()),
        "host port 38091 -> pod 8080 (portmap got its runtimeConfig)"
    );
    assert!(
        iptables_nat().contains(id),
        "portmap's rules name the sandbox"
    );
    if let Some(ping) = ping() {
        let status = Command::new(ping)
            .args(["-c1", "-W2", &ip.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "ping {ip}");
    }
    drop(listener);

    s.cni.remove(id, &netns, &pod(38091)).await.unwrap();
    assert!(
        s.allocated("crated-test").is_empty(),
        "host-local released {ip}"
    );
    assert!(s.cache_records().is_empty());
    assert!(!iptables_nat().contains(id), "portmap's rules are gone");
    assert!(
        in_netns(&netns, &["ip", "-o", "link", "show"])
            .lines()
            .count()
            == 1
    );
    // Again (kubelet retries StopPodSandbox): fine.
    s.cni.remove(id, &netns, &pod(38091)).await.unwrap();

    remove_netns(&netns).unwrap();
    assert!(!netns.exists());
    assert!(!mounted(&netns), "no mount left behind");
    // With the netns gone, as after a reboot: still fine.
    s.cni.remove(id, Path::new(""), &pod(38091)).await.unwrap();
}

#[tokio::test]
async fn a_failing_plugin_is_reported_and_remove_releases_the_address() {
    if !prerequisites() {
        return;
    }
    let _bridge = BridgeGuard("crated-cni1");
    let fake_bin = tempfile::tempdir().unwrap();
    let fail = fake_bin.path().join("crated-fail");
    std::fs::write(
        &fail,
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] || exit 0\n\
         echo '{\"cniVersion\":\"0.4.0\",\"code\":999,\"msg\":\"crated-fail refuses\",\"details\":\"on purpose\"}'\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fail, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = Setup::new(
        r#"{"cniVersion":"0.4.0","name":"crated-fail-test","plugins":[
            {"type":"bridge","bridge":"crated-cni1","isGateway":true,"ipMasq":false,
             "ipam":{"type":"host-local","ranges":[[{"subnet":"10.233.92.0/24"}]],"dataDir":"<ipam>"}},
            {"type":"crated-fail"}]}"#,
        Some(fake_bin.path().to_path_buf()),
    );
    let netns = create_netns(&s.netns_dir()).unwrap();
    let _netns = NetnsGuard(netns.clone());
    let id = "crated-cni-it-2";

    let e = s.cni.setup(id, &netns, &pod(0)).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"plugin type="crated-fail" failed (add): crated-fail refuses; on purpose"#
    );
    // The bridge plugin ran first and took an address; the failed network has no record.
    assert_eq!(s.allocated("crated-fail-test").len(), 1);
    assert_eq!(s.cache_records(), [format!("cni-loopback-{id}-lo")]);

    s.cni.remove(id, &netns, &pod(0)).await.unwrap();
    assert!(
        s.allocated("crated-fail-test").is_empty(),
        "DEL after the failed ADD released the address"
    );
    assert!(s.cache_records().is_empty());
    remove_netns(&netns).unwrap();
    assert!(!mounted(&netns));
}

/// `ping` when installed (iputils-ping is not among the test dependencies: the TCP checks
/// above are what must pass).
fn ping() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("ping"))
            .find(|p| p.is_file())
    })
}
