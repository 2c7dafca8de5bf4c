//! Network configurations as libcni loads them from a directory: `*.conf`, `*.conflist` and
//! `*.json` in name order, a single-plugin `.conf` wrapped into a list of one, and the bytes
//! of each list as libcni keeps them (the result cache records them).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::result::SpecVersion;
use crate::CniError;

/// go-cni's built-in loopback list, byte for byte: its bytes go into the result cache.
const LOOPBACK: &str = r#"{
"cniVersion": "0.3.1",
"name": "cni-loopback",
"plugins": [{
  "type": "loopback"
}]
}"#;

/// A network: a named chain of plugins, and the bytes it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    /// Each plugin's config as written, `type` included.
    pub plugins: Vec<Value>,
    /// Where it came from (for messages).
    pub source: PathBuf,
    /// The list as libcni holds it: a `.conflist` file's bytes, or the list a `.conf` was
    /// wrapped into.
    pub bytes: Vec<u8>,
}

impl NetworkList {
    /// Parses a `.conflist`, or a `.conf` (one plugin) when `single` is set.
    pub fn parse(bytes: &[u8], single: bool, source: &Path) -> Result<NetworkList, CniError> {
        let invalid = |why: String| CniError::InvalidConfig {
            path: source.to_path_buf(),
            why,
        };
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let Value::Object(map) = &value else {
            return Err(invalid("not a JSON object".into()));
        };
        let text = |key: &str| {
            map.get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let name = text("name");
        if name.is_empty() {
            return Err(invalid("no network name".into()));
        }
        let cni_version =
            negotiate_version(text("cniVersion"), map.get("cniVersions")).map_err(invalid)?;
        let plugins = if single {
            if text("type").is_empty() {
                return Err(invalid("no plugin type".into()));
            }
            vec![value.clone()]
        } else {
            let Some(Value::Array(plugins)) = map.get("plugins") else {
                return Err(invalid("no plugins list".into()));
            };
            if plugins.is_empty() {
                return Err(invalid("no plugins in list".into()));
            }
            for plugin in plugins {
                if plugin
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
                {
                    return Err(invalid("a plugin has no type".into()));
                }
            }
            plugins.clone()
        };
        let bytes = if single {
            // libcni's ConfListFromConf: a list of the one plugin, keys sorted as Go writes
            // maps.
            serde_json::to_vec(&serde_json::json!({
                "cniVersion": text("cniVersion"),
                "name": name,
                "plugins": [value],
            }))
            .map_err(|e| invalid(format!("cannot wrap into a list: {e}")))?
        } else {
            bytes.to_vec()
        };
        Ok(NetworkList {
            name,
            cni_version,
            disable_check: map
                .get("disableCheck")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            plugins,
            source: source.to_path_buf(),
            bytes,
        })
    }

    /// The built-in loopback network every pod gets, as go-cni's.
    pub fn loopback() -> NetworkList {
        NetworkList {
            name: "cni-loopback".into(),
            cni_version: "0.3.1".into(),
            disable_check: false,
            plugins: vec![serde_json::json!({"type": "loopback"})],
            source: PathBuf::new(),
            bytes: LOOPBACK.as_bytes().to_vec(),
        }
    }
}

/// The list's version: with `cniVersions`, the highest listed (or `cniVersion`) that this
/// library speaks, as libcni picks it; else `cniVersion`.
fn negotiate_version(cni_version: String, versions: Option<&Value>) -> Result<String, String> {
    let Some(versions) = versions else {
        return Ok(cni_version);
    };
    let Value::Array(versions) = versions else {
        return Err("cniVersions is not a list".into());
    };
    let mut best: Option<(SpecVersion, String)> = None;
    let listed = versions.iter().map(|v| v.as_str().map(str::to_owned));
    let candidates = listed.chain((!cni_version.is_empty()).then(|| Some(cni_version.clone())));
    for candidate in candidates {
        let text = candidate.ok_or("cniVersions has a non-string entry")?;
        let version = SpecVersion::parse(&text)
            .ok_or_else(|| format!("invalid cniVersions entry {text:?}"))?;
        if version <= SpecVersion::CURRENT && best.as_ref().is_none_or(|(b, _)| version > *b) {
            best = Some((version, text));
        }
    }
    Ok(best.map(|(_, text)| text).unwrap_or(cni_version))
}

/// The networks of `dir` in file-name order, at most `max` of them (0: all). Files that do not
/// parse are skipped with a warning, as libcni's loader skips them; a missing directory has
/// none.
pub fn load_dir(dir: &Path, max: usize) -> Result<Vec<NetworkList>, CniError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CniError::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .collect();
    files.sort();
    let mut networks = Vec::new();
    for file in files {
        if max > 0 && networks.len() == max {
            break;
        }
        let single = file.extension().and_then(|e| e.to_str()) != Some("conflist");
        let parsed = std::fs::read(&file)
            .map_err(|e| CniError::Io {
                path: file.clone(),
                source: e,
            })
            .and_then(|bytes| NetworkList::parse(&bytes, single, &file));
        match parsed {
            Ok(network) => networks.push(network),
            Err(e) => tracing::warn!("skipping a CNI config: {e}"),
        }
    }
    Ok(networks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_single_configs_load_in_name_order_up_to_the_maximum() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "20-b.conflist",
            r#"{"cniVersion":"0.4.0","name":"b","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        );
        write(
            "10-a.conf",
            r#"{"cniVersion":"0.3.1","name":"a","type":"bridge"}"#,
        );
        write("05-broken.conflist", r#"{"name":"broken","plugins":[]}"#);
        write("99-ignored.txt", "not a config");
        let all = load_dir(dir.path(), 0).unwrap();
        let names: Vec<&str> = all.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(all[1].plugins.len(), 2);
        assert_eq!(all[0].plugins[0]["type"], "bridge");
        let first = load_dir(dir.path(), 1).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].name, "a");
    }

    #[test]
    fn lists_keep_the_bytes_libcni_caches() {
        let text = br#"{"cniVersion":"0.4.0", "name":"b","plugins":[{"type":"bridge"}]}"#;
        let list = NetworkList::parse(text, false, Path::new("b.conflist")).unwrap();
        assert_eq!(list.bytes, text, "a conflist as written");
        let conf = NetworkList::parse(
            br#"{"type":"bridge", "name":"a","cniVersion":"0.3.1"}"#,
            true,
            Path::new("a.conf"),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(conf.bytes).unwrap(),
            r#"{"cniVersion":"0.3.1","name":"a","plugins":[{"cniVersion":"0.3.1","name":"a","type":"bridge"}]}"#,
            "a conf wrapped as ConfListFromConf does, keys sorted"
        );
        let lo = NetworkList::loopback();
        assert_eq!(
            NetworkList::parse(&lo.bytes, false, Path::new("lo"))
                .unwrap()
                .plugins,
            lo.plugins
        );
    }

    #[test]
    fn cni_versions_pick_the_highest_supported() {
        let parse = |text: &str| NetworkList::parse(text.as_bytes(), false, Path::new("x"));
        let list = parse(
            r#"{"cniVersion":"0.3.1","cniVersions":["0.4.0","1.0.0","9.9.9"],"name":"n","plugins":[{"type":"t"}]}"#,
        )
        .unwrap();
        assert_eq!(list.cni_version, "1.0.0");
        let list =
            parse(r#"{"cniVersions":["0.4.0"],"name":"n","plugins":[{"type":"t"}]}"#).unwrap();
        assert_eq!(list.cni_version, "0.4.0");
        assert!(parse(r#"{"cniVersions":[1],"name":"n","plugins":[{"type":"t"}]}"#).is_err());
        assert!(parse(r#"{"cniVersions":"1.0.0","name":"n","plugins":[{"type":"t"}]}"#).is_err());
    }

    #[test]
    fn a_missing_directory_has_no_networks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_dir(&dir.path().join("absent"), 1).unwrap().is_empty());
    }
}
