//! containerd's registry hosts directory (`ctr --hosts-dir`, the transfer API's `host_dir`):
//! `<dir>/<host[:port]>/hosts.toml` (or `<dir>/_default/hosts.toml`) says where a registry is
//! reached and how its certificate is trusted. Read here: `server`, and `[host."URL"]` entries
//! with `capabilities`, `ca` (a path or a list, relative to the host's directory),
//! `skip_verify`, `override_path` and `header`; the first entry that can `resolve` is used,
//! else `server`. A host directory without `hosts.toml` trusts the `*.crt` files in it, as
//! Docker's `certs.d`. Client certificates and falling back from one host to the next are not
//! read (a file naming them is refused rather than half obeyed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ImageError;

/// Where and how to reach one registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// `scheme://host[:port]` and the API path (`/v2` unless overridden); None keeps the default.
    pub endpoint: Option<Endpoint>,
    /// PEM files of the authorities trusted beside the built-in roots.
    pub ca: Vec<PathBuf>,
    pub skip_verify: bool,
    pub headers: Vec<(String, String)>,
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
    fn paths(&self, base: &Path) -> Vec<PathBuf> {
        let list = match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(p) => vec![p.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        list.into_iter().map(|p| base.join(p)).collect()
    }
}

/// The keys a host entry (or the file's top level, for `server`) may carry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    ca: OneOrMany,
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
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid(file, format!("host {url:?} has no scheme")))?;
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
    let path = if override_path {
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

fn headers(entry: &HostEntry) -> Vec<(String, String)> {
    entry
        .header
        .iter()
        .flat_map(|(k, v)| match v {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![(k.clone(), s.clone())],
            OneOrMany::Many(l) => l.iter().map(|s| (k.clone(), s.clone())).collect(),
        })
        .collect()
}

/// The configuration for `host` (as in a reference: `name[:port]`) under `dir`; None when the
/// directory says nothing of it.
pub fn load(dir: &Path, host: &str) -> Result<Option<HostConfig>, ImageError> {
    let host_dir = [host, "_default"]
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
            return Ok(Some(HostConfig {
                ca: certs_d(&host_dir)?,
                ..Default::default()
            }))
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
    let mut chosen = None;
    for (url, value) in urls {
        let entry: HostEntry = value
            .clone()
            .try_into()
            .map_err(|e| invalid(&file, format!("[host.{url:?}]: {e}")))?;
        let can_resolve = entry
            .capabilities
            .as_ref()
            .is_none_or(|c| c.iter().any(|c| c == "resolve"));
        if can_resolve {
            chosen = Some((url.clone(), entry));
            break;
        }
    }
    let (url, entry) = match chosen {
        Some((url, entry)) => (Some(url), entry),
        None => (server, server_entry),
    };
    Ok(Some(HostConfig {
        endpoint: url
            .map(|u| endpoint(&u, entry.override_path, &file))
            .transpose()?,
        ca: entry.ca.paths(&host_dir),
        skip_verify: entry.skip_verify.unwrap_or(false),
        headers: headers(&entry),
    }))
}

/// The `*.crt` files of a host directory without `hosts.toml`.
fn certs_d(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| invalid(dir, e))?;
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, host: &str, text: &str) {
        std::fs::create_dir_all(dir.join(host)).unwrap();
        std::fs::write(dir.join(host).join("hosts.toml"), text).unwrap();
    }

    #[test]
    fn server_ca_and_skip_verify_are_read() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "127.0.0.1:5000",
            "server = \"https://127.0.0.1:5000\"\nca = \"ca.pem\"\nskip_verify = true\n[header]\nx-test = \"one\"\n",
        );
        let c = load(d.path(), "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(
            c.endpoint,
            Some(Endpoint {
                scheme: "https".into(),
                authority: "127.0.0.1:5000".into(),
                path: "/v2".into()
            })
        );
        assert_eq!(c.ca, vec![d.path().join("127.0.0.1:5000/ca.pem")]);
        assert!(c.skip_verify);
        assert_eq!(c.headers, vec![("x-test".to_owned(), "one".to_owned())]);
        assert_eq!(load(d.path(), "other:1").unwrap(), None);
    }

    #[test]
    fn the_first_host_that_resolves_wins_and_default_applies_to_all() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "_default",
            "server = \"https://fallback\"\n\
             [host.\"https://pull-only:1\"]\ncapabilities = [\"pull\"]\n\
             [host.\"https://mirror:2/base\"]\ncapabilities = [\"pull\", \"resolve\"]\nca = [\"/abs/a.pem\", \"b.pem\"]\n\
             [host.\"https://a-later-one:3\"]\n",
        );
        let c = load(d.path(), "any.example").unwrap().unwrap();
        let e = c.endpoint.unwrap();
        assert_eq!(
            (e.scheme.as_str(), e.authority.as_str()),
            ("https", "mirror:2")
        );
        assert_eq!(e.path, "/base/v2");
        assert_eq!(
            c.ca,
            vec![PathBuf::from("/abs/a.pem"), d.path().join("_default/b.pem")]
        );
        assert!(!c.skip_verify);
    }

    #[test]
    fn bad_files_are_refused_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a", "server = \"ftp://x\"\n");
        let e = load(d.path(), "a").unwrap_err().to_string();
        assert!(e.contains("hosts.toml") && e.contains("scheme"), "{e}");
        write(d.path(), "b", "[host.\"https://m\"]\nclient = \"c.cert\"\n");
        let e = load(d.path(), "b").unwrap_err().to_string();
        assert!(e.contains("client"), "{e}");
        write(d.path(), "c", "server = ");
        assert!(load(d.path(), "c").is_err());
    }

    #[test]
    fn a_certs_d_directory_trusts_its_crt_files() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("reg:443");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("ca.crt"), "x").unwrap();
        std::fs::write(host.join("client.cert"), "x").unwrap();
        let c = load(d.path(), "reg:443").unwrap().unwrap();
        assert_eq!(c.ca, vec![host.join("ca.crt")]);
        assert_eq!(c.endpoint, None);
    }
}
