//! containerd's registry hosts directory (`ctr --hosts-dir`, the transfer API's `host_dir`):
//! `<dir>/<host[:port]>/hosts.toml` (or `<dir>/_default/hosts.toml`) says where a registry is
//! reached and how. Read as containerd reads it: the `[host."URL"]` entries in the file's
//! order, then `server` (the registry's own address when not given) with the file's top-level
//! keys; each with `capabilities`, `ca` (a path or a list, relative to the host's directory),
//! `client` (a certificate and key in one file, or `[cert, key]` pairs), `skip_verify`,
//! `override_path` and `header`. A host directory without `hosts.toml` is read as Docker's
//! `certs.d`: `*.crt` authorities, `*.cert` client certificates with their `*.key`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ImageError;

/// One host a registry is reached through, in the order hosts are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `scheme://host[:port]` and the API path (`/v2` unless overridden); None is the
    /// registry's own address.
    pub endpoint: Option<Endpoint>,
    /// May resolve a tag to a manifest.
    pub resolve: bool,
    /// May serve manifests and blobs by digest.
    pub pull: bool,
    /// PEM files of the authorities trusted beside the built-in roots.
    pub ca: Vec<PathBuf>,
    /// Client certificates: (certificate PEM, key PEM; None when the key is in the first file).
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub skip_verify: bool,
    pub headers: Vec<(String, String)>,
}

impl Host {
    /// The registry itself, with every capability and nothing else said of it.
    pub fn registry() -> Host {
        Host {
            endpoint: None,
            resolve: true,
            pull: true,
            ca: Vec::new(),
            client: Vec::new(),
            skip_verify: false,
            headers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: String,
    pub authority: String,
    pub path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn strings(&self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(p) => vec![p.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `client`: a file holding certificate and key, or a list of such files and `[cert, key]` pairs.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum ClientCerts {
    #[default]
    None,
    One(String),
    Many(Vec<OneOrMany>),
}

/// The keys a host entry (or the file's top level, for `server`) may carry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    ca: OneOrMany,
    #[serde(default)]
    client: ClientCerts,
    #[serde(default)]
    skip_verify: Option<bool>,
    #[serde(default)]
    override_path: bool,
    #[serde(default)]
    header: BTreeMap<String, OneOrMany>,
}

fn invalid(file: &Path, what: impl std::fmt::Display) -> ImageError {
    ImageError::InvalidArgument(format!("{}: {what}", file.display()))
}

fn endpoint(url: &str, override_path: bool, file: &Path) -> Result<Endpoint, ImageError> {
    // containerd: a server without scheme is https.
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    if scheme != "http" && scheme != "https" {
        return Err(invalid(
            file,
            format!("host {url:?}: scheme must be http or https"),
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(invalid(file, format!("host {url:?} has no host name")));
    }
    // containerd: the API path is /v2 below the given one unless told to use it as it is.
    let path = if override_path || path.ends_with("/v2") {
        path.to_owned()
    } else {
        format!("{path}/v2")
    };
    Ok(Endpoint {
        scheme: scheme.to_owned(),
        authority: authority.to_owned(),
        path,
    })
}

/// One host from its entry; `url` None is the registry's own address.
fn host(url: Option<&str>, entry: HostEntry, dir: &Path, file: &Path) -> Result<Host, ImageError> {
    let within = |p: &String| dir.join(p);
    let (mut resolve, mut pull) = (true, true);
    if let Some(capabilities) = &entry.capabilities {
        (resolve, pull) = (false, false);
        for c in capabilities {
            match c.to_lowercase().as_str() {
                "resolve" => resolve = true,
                "pull" => pull = true,
                "push" | "referrers" => {}
                other => return Err(invalid(file, format!("unknown capability {other}"))),
            }
        }
    }
    let client = match &entry.client {
        ClientCerts::None => Vec::new(),
        ClientCerts::One(both) => vec![(within(both), None)],
        ClientCerts::Many(list) => list
            .iter()
            .map(|c| match c {
                OneOrMany::One(both) => Ok((within(both), None)),
                OneOrMany::Many(pair) if pair.len() == 2 => {
                    Ok((within(&pair[0]), Some(within(&pair[1]))))
                }
                _ => Err(invalid(
                    file,
                    "client: each entry is a file or a [certificate, key] pair",
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    let headers = entry
        .header
        .iter()
        .flat_map(|(k, v)| v.strings().into_iter().map(|v| (k.clone(), v)))
        .collect();
    Ok(Host {
        endpoint: url
            .map(|u| endpoint(u, entry.override_path, file))
            .transpose()?,
        resolve,
        pull,
        ca: entry.ca.strings().iter().map(within).collect(),
        client,
        skip_verify: entry.skip_verify.unwrap_or(false),
        headers,
    })
}

/// The hosts to try for `host` (as in a reference: `name[:port]`) under `dir`, in order; None
/// when the directory says nothing of it.
pub fn load(dir: &Path, host_name: &str) -> Result<Option<Vec<Host>>, ImageError> {
    let host_dir = [host_name, "_default"]
        .iter()
        .map(|h| dir.join(h))
        .find(|d| d.is_dir());
    let Some(host_dir) = host_dir else {
        return Ok(None);
    };
    let file = host_dir.join("hosts.toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Some(vec![certs_d(&host_dir)?]))
        }
        Err(e) => return Err(invalid(&file, e)),
    };
    // The top level is `server`, the `host` entries, and the keys of an entry for the server.
    let mut top: toml::Table = toml::from_str(&text).map_err(|e| invalid(&file, e))?;
    let server = match top.remove("server") {
        None => None,
        Some(toml::Value::String(s)) => Some(s),
        Some(_) => return Err(invalid(&file, "server must be a string")),
    };
    let entries = match top.remove("host") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err(invalid(&file, "host must be a table of hosts")),
    };
    let server_entry: HostEntry = toml::Value::Table(top)
        .try_into()
        .map_err(|e| invalid(&file, e))?;
    // Entries are tried in the file's order (the table itself is sorted by name).
    let mut urls: Vec<(&String, &toml::Value)> = entries.iter().collect();
    urls.sort_by_key(|(url, _)| text.find(&format!("\"{url}\"")).unwrap_or(usize::MAX));
    let mut hosts = Vec::new();
    for (url, value) in urls {
        let entry: HostEntry = value
            .clone()
            .try_into()
            .map_err(|e| invalid(&file, format!("[host.{url:?}]: {e}")))?;
        hosts.push(host(Some(url), entry, &host_dir, &file)?);
    }
    hosts.push(host(server.as_deref(), server_entry, &host_dir, &file)?);
    Ok(Some(hosts))
}

/// The registry as a host directory without `hosts.toml` says: Docker's `certs.d` layout.
fn certs_d(dir: &Path) -> Result<Host, ImageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| invalid(dir, e))?;
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    let named = |p: &PathBuf, ext: &str| p.extension().is_some_and(|x| x == ext);
    let mut host = Host::registry();
    host.ca = files.iter().filter(|p| named(p, "crt")).cloned().collect();
    host.client = files
        .iter()
        .filter(|p| named(p, "cert"))
        .map(|cert| {
            let key = cert.with_extension("key");
            (cert.clone(), key.is_file().then_some(key))
        })
        .collect();
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, host: &str, text: &str) {
        std::fs::create_dir_all(dir.join(host)).unwrap();
        std::fs::write(dir.join(host).join("hosts.toml"), text).unwrap();
    }

    #[test]
    fn server_ca_client_and_skip_verify_are_read() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "127.0.0.1:5000",
            "server = \"https://127.0.0.1:5000\"\nca = \"ca.pem\"\nclient = \"both.pem\"\n\
             skip_verify = true\n[header]\nx-test = \"one\"\n",
        );
        let hosts = load(d.path(), "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(hosts.len(), 1);
        let h = &hosts[0];
        assert_eq!(
            h.endpoint,
            Some(Endpoint {
                scheme: "https".into(),
                authority: "127.0.0.1:5000".into(),
                path: "/v2".into()
            })
        );
        assert!(h.resolve && h.pull);
        let dir = d.path().join("127.0.0.1:5000");
        assert_eq!(h.ca, vec![dir.join("ca.pem")]);
        assert_eq!(h.client, vec![(dir.join("both.pem"), None)]);
        assert!(h.skip_verify);
        assert_eq!(h.headers, vec![("x-test".to_owned(), "one".to_owned())]);
        assert_eq!(load(d.path(), "other:1").unwrap(), None);
    }

    #[test]
    fn hosts_come_in_file_order_then_the_server_and_default_applies_to_all() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "_default",
            "server = \"fallback\"\n\
             [host.\"https://pull-only:1\"]\ncapabilities = [\"pull\"]\n\
             [host.\"https://mirror:2/base\"]\ncapabilities = [\"pull\", \"resolve\"]\n\
             ca = [\"/abs/a.pem\", \"b.pem\"]\nclient = [[\"c.cert\", \"c.key\"], \"d.pem\"]\n\
             [host.\"http://a-later-one:3/v2\"]\n",
        );
        let hosts = load(d.path(), "any.example").unwrap().unwrap();
        let at = |h: &Host| {
            let e = h.endpoint.clone().unwrap();
            format!("{}://{}{}", e.scheme, e.authority, e.path)
        };
        let listed: Vec<(String, bool, bool)> =
            hosts.iter().map(|h| (at(h), h.resolve, h.pull)).collect();
        assert_eq!(
            listed,
            vec![
                ("https://pull-only:1/v2".to_owned(), false, true),
                ("https://mirror:2/base/v2".to_owned(), true, true),
                ("http://a-later-one:3/v2".to_owned(), true, true),
                ("https://fallback/v2".to_owned(), true, true),
            ]
        );
        let dir = d.path().join("_default");
        assert_eq!(
            hosts[1].ca,
            vec![PathBuf::from("/abs/a.pem"), dir.join("b.pem")]
        );
        assert_eq!(
            hosts[1].client,
            vec![
                (dir.join("c.cert"), Some(dir.join("c.key"))),
                (dir.join("d.pem"), None)
            ]
        );
        assert!(!hosts[1].skip_verify);
    }

    #[test]
    fn without_server_the_registry_itself_comes_last() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "reg", "[host.\"http://mirror\"]\n");
        let hosts = load(d.path(), "reg").unwrap().unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[1], Host::registry());
    }

    #[test]
    fn bad_files_are_refused_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a", "server = \"ftp://x\"\n");
        let e = load(d.path(), "a").unwrap_err().to_string();
        assert!(e.contains("hosts.toml") && e.contains("scheme"), "{e}");
        write(
            d.path(),
            "b",
            "[host.\"https://m\"]\nclients = \"c.cert\"\n",
        );
        let e = load(d.path(), "b").unwrap_err().to_string();
        assert!(e.contains("clients"), "{e}");
        write(d.path(), "c", "server = ");
        assert!(load(d.path(), "c").is_err());
        write(d.path(), "d", "capabilities = [\"fly\"]\n");
        let e = load(d.path(), "d").unwrap_err().to_string();
        assert!(e.contains("unknown capability fly"), "{e}");
        write(d.path(), "e", "client = [[\"only-one\"]]\n");
        let e = load(d.path(), "e").unwrap_err().to_string();
        assert!(e.contains("client"), "{e}");
    }

    #[test]
    fn a_certs_d_directory_trusts_its_crt_files_and_presents_its_cert_files() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("reg:443");
        std::fs::create_dir_all(&host).unwrap();
        for f in ["ca.crt", "client.cert", "client.key", "other.cert"] {
            std::fs::write(host.join(f), "x").unwrap();
        }
        let hosts = load(d.path(), "reg:443").unwrap().unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].ca, vec![host.join("ca.crt")]);
        assert_eq!(
            hosts[0].client,
            vec![
                (host.join("client.cert"), Some(host.join("client.key"))),
                (host.join("other.cert"), None)
            ]
        );
        assert_eq!(hosts[0].endpoint, None);
    }
}
