//! CNI results as plugins print them (spec versions 0.3.0 to 1.1.0): parsing, conversion to
//! another version (prevResult must be in the version of the config), and the spec's version
//! numbers.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::CniError;

/// A CNI spec version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SpecVersion(u32, u32, u32);

impl SpecVersion {
    pub(crate) const V0_3_0: SpecVersion = SpecVersion(0, 3, 0);
    pub(crate) const V0_4_0: SpecVersion = SpecVersion(0, 4, 0);
    pub(crate) const V1_0_0: SpecVersion = SpecVersion(1, 0, 0);
    /// The newest version this library speaks (libcni's `version.Current()`).
    pub(crate) const CURRENT: SpecVersion = SpecVersion(1, 1, 0);

    /// `X`, `X.Y` or `X.Y.Z`, as libcni's `ParseVersion` takes them. An empty version is the
    /// spec's implicit 0.1.0.
    pub(crate) fn parse(text: &str) -> Option<SpecVersion> {
        if text.is_empty() {
            return Some(SpecVersion(0, 1, 0));
        }
        let mut parts = text.split('.');
        let mut next = |required: bool| match parts.next() {
            Some(p) => p.parse::<u32>().ok(),
            None if required => None,
            None => Some(0),
        };
        let version = SpecVersion(next(true)?, next(false)?, next(false)?);
        parts.next().is_none().then_some(version)
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// An address with its prefix length, as CNI writes them (`10.1.2.3/24`: the host address is
/// kept, not masked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<IpNet, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not in CIDR notation"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|e| format!("{text:?} has no valid address: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{text:?} has no valid prefix length"))?;
        Ok(IpNet { addr, prefix_len })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What one plugin chain (one network) reports: the interfaces it made, their addresses,
/// routes and DNS. One type serves every supported version; each is written with the fields
/// its version has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    /// The version the plugin answered in.
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// 1.0.0 and later.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    /// The netns path for a container-side interface; empty for a host-side one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// 1.1.0.
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    /// 1.1.0.
    #[serde(default, rename = "pciID", skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway: Option<IpAddr>,
    /// Index into the result's interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub advmss: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub search: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub options: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Go writes a missing address as `""` (and sometimes `null`).
pub(crate) fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// Go writes a nil slice or map as `null`.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The fields of a 0.3.0-to-1.1.0 result, as read.
#[derive(Deserialize)]
struct RawResult {
    #[serde(default, rename = "cniVersion")]
    cni_version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    interfaces: Vec<Interface>,
    #[serde(default, deserialize_with = "null_as_default")]
    ips: Vec<IpConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    routes: Vec<Route>,
    #[serde(default, deserialize_with = "null_as_default")]
    dns: Dns,
}

impl CniResult {
    /// Parses a plugin's result. A result without `cniVersion` is taken to be in the config's
    /// version, as libcni does for plugins that leave it out.
    pub(crate) fn parse(bytes: &[u8], config_version: &str) -> Result<CniResult, CniError> {
        let invalid = |why: String| CniError::InvalidResult { why };
        let raw: RawResult = serde_json::from_slice(bytes).map_err(|e| {
            invalid(format!(
                "{e} in {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
            ))
        })?;
        let cni_version = if raw.cni_version.is_empty() {
            config_version.to_owned()
        } else {
            raw.cni_version
        };
        supported_result_version(&cni_version)?;
        let result = CniResult {
            cni_version,
            interfaces: raw.interfaces,
            ips: raw.ips,
            routes: raw.routes,
            dns: raw.dns,
        };
        for ip in &result.ips {
            // An index past the interfaces would name no interface (go-cni checks this too).
            if ip.interface.is_some_and(|i| i >= result.interfaces.len()) {
                return Err(invalid(format!(
                    "IP {} names interface {:?} of {}",
                    ip.address,
                    ip.interface,
                    result.interfaces.len()
                )));
            }
        }
        Ok(result)
    }

    /// The result as `version` writes it: `version` on each IP before 1.0.0, the interface
    /// fields 1.0.0 added only from then on.
    pub(crate) fn to_json(&self, version: &str) -> Result<Value, CniError> {
        let v = supported_result_version(version)?;
        let mut out = Map::new();
        out.insert("cniVersion".into(), Value::String(version.to_owned()));
        if !self.interfaces.is_empty() {
            let mut list = Vec::new();
            for intf in &self.interfaces {
                let mut value = to_value(intf)?;
                if v < SpecVersion::V1_0_0 {
                    if let Value::Object(map) = &mut value {
                        for key in ["mtu", "socketPath", "pciID"] {
                            map.remove(key);
                        }
                    }
                }
                list.push(value);
            }
            out.insert("interfaces".into(), Value::Array(list));
        }
        if !self.ips.is_empty() {
            let mut list = Vec::new();
            for ip in &self.ips {
                let mut value = to_value(ip)?;
                if v < SpecVersion::V1_0_0 {
                    if let Value::Object(map) = &mut value {
                        let family = if ip.address.addr.is_ipv4() { "4" } else { "6" };
                        map.insert("version".into(), Value::String(family.into()));
                    }
                }
                list.push(value);
            }
            out.insert("ips".into(), Value::Array(list));
        }
        if !self.routes.is_empty() {
            let list = self
                .routes
                .iter()
                .map(to_value)
                .collect::<Result<Vec<_>, _>>()?;
            out.insert("routes".into(), Value::Array(list));
        }
        out.insert("dns".into(), to_value(&self.dns)?);
        Ok(Value::Object(out))
    }

    /// The same result labelled as `version` (libcni's `GetAsVersion`): the fields are common
    /// to every supported version, so only the label changes; [`CniResult::to_json`] writes
    /// the version's shape.
    pub(crate) fn as_version(&self, version: &str) -> Result<CniResult, CniError> {
        supported_result_version(version)?;
        Ok(CniResult {
            cni_version: version.to_owned(),
            ..self.clone()
        })
    }
}

/// Only the result shape 0.3.0 introduced is understood; 0.1.0/0.2.0 (`ip4`/`ip6`) predate
/// chained plugins and are not written by current plugins.
fn supported_result_version(version: &str) -> Result<SpecVersion, CniError> {
    match SpecVersion::parse(version) {
        Some(v) if (SpecVersion::V0_3_0..=SpecVersion::CURRENT).contains(&v) => Ok(v),
        _ => Err(CniError::InvalidResult {
            why: format!(
                "result version {version:?} is not supported (0.3.0 to {} are)",
                SpecVersion::CURRENT
            ),
        }),
    }
}

fn to_value<T: Serialize>(x: &T) -> Result<Value, CniError> {
    serde_json::to_value(x).map_err(|e| CniError::InvalidResult {
        why: format!("cannot encode a result: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE_040: &str = r#"{
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/cni-1"}
        ],
        "ips": [
            {"version": "4", "interface": 2, "address": "10.1.2.3/24", "gateway": "10.1.2.1"},
            {"version": "6", "interface": 2, "address": "fd00::3/64"}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}],
        "dns": {"nameservers": ["10.0.0.10"]}
    }"#;

    #[test]
    fn versions_parse_and_order_as_the_spec_numbers_them() {
        assert_eq!(SpecVersion::parse("0.3.1"), Some(SpecVersion(0, 3, 1)));
        assert_eq!(SpecVersion::parse("1.0"), Some(SpecVersion(1, 0, 0)));
        assert_eq!(SpecVersion::parse(""), Some(SpecVersion(0, 1, 0)));
        assert_eq!(SpecVersion::parse("1.0.0.0"), None);
        assert_eq!(SpecVersion::parse("x.1"), None);
        assert!(SpecVersion::parse("0.4.0") >= Some(SpecVersion::V0_4_0));
        assert!(SpecVersion::parse("0.3.1") < Some(SpecVersion::V0_4_0));
        assert!(SpecVersion::parse("0.10.0") > Some(SpecVersion::V0_4_0));
    }

    #[test]
    fn a_040_result_parses_with_interfaces_ips_routes_and_dns() {
        let r = CniResult::parse(BRIDGE_040.as_bytes(), "0.4.0").unwrap();
        assert_eq!(r.cni_version, "0.4.0");
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.interfaces[2].sandbox, "/var/run/netns/cni-1");
        assert_eq!(r.ips[0].address.to_string(), "10.1.2.3/24");
        assert_eq!(r.ips[0].gateway, Some("10.1.2.1".parse().unwrap()));
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.ips[1].address.addr, "fd00::3".parse::<IpAddr>().unwrap());
        assert_eq!(r.routes[0].gw, Some("10.1.2.1".parse().unwrap()));
        assert_eq!(r.dns.nameservers, ["10.0.0.10"]);
    }

    #[test]
    fn conversion_writes_each_versions_shape() {
        let mut r = CniResult::parse(BRIDGE_040.as_bytes(), "0.4.0").unwrap();
        r.interfaces[0].mtu = 1500;
        let v1 = r.to_json("1.0.0").unwrap();
        assert_eq!(v1["cniVersion"], "1.0.0");
        assert!(
            v1["ips"][0].get("version").is_none(),
            "1.0.0 has no IP version"
        );
        assert_eq!(v1["interfaces"][0]["mtu"], 1500);
        let v031 = r.as_version("0.3.1").unwrap().to_json("0.3.1").unwrap();
        assert_eq!(v031["ips"][0]["version"], "4");
        assert_eq!(v031["ips"][1]["version"], "6");
        assert!(v031["interfaces"][0].get("mtu").is_none());
        assert_eq!(v031["dns"]["nameservers"][0], "10.0.0.10");
        // What was written reads back the same.
        let again = CniResult::parse(serde_json::to_vec(&v1).unwrap().as_slice(), "1.0.0").unwrap();
        assert_eq!(again.ips, r.ips);
        assert_eq!(again.routes, r.routes);
    }

    #[test]
    fn a_result_without_version_takes_the_configs() {
        let r = CniResult::parse(br#"{"ips":[{"address":"10.0.0.2/8"}]}"#, "1.0.0").unwrap();
        assert_eq!(r.cni_version, "1.0.0");
        assert_eq!(r.ips[0].interface, None);
        assert_eq!(r.to_json("1.0.0").unwrap()["dns"], serde_json::json!({}));
    }

    #[test]
    fn bad_results_are_refused_with_why() {
        let bad = |text: &str| CniResult::parse(text.as_bytes(), "0.4.0").unwrap_err();
        assert!(bad("not json").to_string().contains("invalid CNI result"));
        assert!(bad(r#"{"cniVersion":"0.2.0","ip4":{}}"#)
            .to_string()
            .contains("not supported"));
        assert!(bad(r#"{"ips":[{"address":"10.0.0.2"}]}"#)
            .to_string()
            .contains("CIDR"));
        assert!(bad(r#"{"ips":[{"address":"10.0.0.2/33"}]}"#)
            .to_string()
            .contains("prefix"));
        assert!(
            bad(r#"{"interfaces":[],"ips":[{"address":"10.0.0.2/8","interface":0}]}"#)
                .to_string()
                .contains("names interface")
        );
    }

    #[test]
    fn go_style_empty_values_read_as_absent() {
        let r = CniResult::parse(
            br#"{"cniVersion":"1.0.0","interfaces":null,"ips":[{"address":"10.0.0.2/8","gateway":""}],"dns":{"nameservers":null}}"#,
            "1.0.0",
        )
        .unwrap();
        assert_eq!(r.ips[0].gateway, None);
        assert!(r.dns.nameservers.is_empty());
    }
}
