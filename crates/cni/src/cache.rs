//! libcni's result cache, in its format: `<dir>/results/<network>-<container>-<ifname>` holding
//! `{"kind":"cniCacheV1",...}` with the network's config bytes (base64), the runtime arguments
//! and the final ADD result. Written after ADD, read for DEL's prevResult, deleted after DEL;
//! containerd and crated can take over each other's pods because the format is the same.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::exec::RuntimeConf;
use crate::result::{null_as_default, CniResult};
use crate::{CniError, NetworkList};

/// libcni's default cache directory.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";

const KIND: &str = "cniCacheV1";

/// One cached attachment, field for field libcni's `cachedInfo` (same names, same order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CacheEntry {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The network list's bytes; Go writes a byte slice as base64.
    #[serde(with = "base64_bytes")]
    pub config: Vec<u8>,
    #[serde(rename = "ifName")]
    pub if_name: String,
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    #[serde(
        default,
        rename = "cniArgs",
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cni_args: Vec<[String; 2]>,
    #[serde(
        default,
        rename = "capabilityArgs",
        deserialize_with = "null_as_default",
        skip_serializing_if = "Map::is_empty"
    )]
    pub capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// The cache under one directory.
#[derive(Debug, Clone)]
pub(crate) struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    pub(crate) fn new(dir: PathBuf) -> ResultCache {
        ResultCache { dir }
    }

    fn results_dir(&self) -> PathBuf {
        self.dir.join("results")
    }

    /// The file of one attachment. The names were validated as libcni validates them on ADD;
    /// checking again keeps a DEL with odd arguments from reaching outside the directory.
    fn path(&self, network: &str, container_id: &str, if_name: &str) -> Result<PathBuf, CniError> {
        for part in [network, container_id, if_name] {
            if part.is_empty() || part.contains('/') || part == "." || part == ".." {
                return Err(CniError::InvalidArgument(format!(
                    "cache file path requires network name ({network:?}), container ID \
                     ({container_id:?}) and interface name ({if_name:?})"
                )));
            }
        }
        Ok(self
            .results_dir()
            .join(format!("{network}-{container_id}-{if_name}")))
    }

    /// Records an ADD's final result (replacing an earlier record of the same attachment).
    pub(crate) fn write(&self, entry: &CacheEntry) -> Result<(), CniError> {
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name)?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CniError::Io { path, source }
        };
        let dir = self.results_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        let bytes = serde_json::to_vec(entry).map_err(|e| CniError::Cache {
            path: path.clone(),
            why: format!("cannot encode: {e}"),
        })?;
        // Through a temporary file and a rename, so a crash leaves the old record or the new
        // one, never half of one (libcni writes in place). The dot keeps the temporary out of
        // libcni's listing of attachments.
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// The record of an attachment; none when there is no file or it cannot be read (libcni
    /// ignores read errors: the record may never have been written).
    #[cfg(test)]
    pub(crate) fn read(
        &self,
        network: &str,
        container_id: &str,
        if_name: &str,
    ) -> Result<Option<CacheEntry>, CniError> {
        let path = self.path(network, container_id, if_name)?;
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(None);
        };
        match serde_json::from_slice::<CacheEntry>(&bytes) {
            Ok(entry) if entry.kind == KIND => Ok(Some(entry)),
            Ok(entry) => Err(CniError::Cache {
                path,
                why: format!("unknown kind {:?}", entry.kind),
            }),
            Err(e) => Err(CniError::Cache {
                path,
                why: e.to_string(),
            }),
        }
    }

    /// The cached result of an attachment in `version` (the config's), for DEL's prevResult.
    /// Files from before the `cniCacheV1` format hold the bare result; they are read too.
    pub(crate) fn read_result(
        &self,
        network: &str,
        container_id: &str,
        if_name: &str,
        version: &str,
    ) -> Result<Option<CniResult>, CniError> {
        let path = self.path(network, container_id, if_name)?;
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(None);
        };
        let result_bytes = match serde_json::from_slice::<CacheEntry>(&bytes) {
            Ok(entry) if entry.kind == KIND => match entry.result {
                Some(result) => serde_json::to_vec(&result).map_err(|e| CniError::Cache {
                    path: path.clone(),
                    why: e.to_string(),
                })?,
                None => return Ok(None),
            },
            _ => bytes,
        };
        let result = CniResult::parse(&result_bytes, version).map_err(|e| CniError::Cache {
            path,
            why: e.to_string(),
        })?;
        result.as_version(version).map(Some)
    }

    /// Forgets an attachment; an absent record is fine.
    pub(crate) fn remove(
        &self,
        network: &str,
        container_id: &str,
        if_name: &str,
    ) -> Result<(), CniError> {
        let path = self.path(network, container_id, if_name)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CniError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Every readable record of `container_id`, in file-name order (libcni's
    /// `GetCachedAttachments`).
    pub(crate) fn entries_of(&self, container_id: &str) -> Vec<CacheEntry> {
        let Ok(dir) = std::fs::read_dir(self.results_dir()) else {
            return Vec::new();
        };
        let part = format!("-{container_id}-");
        let mut names: Vec<String> = dir
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.find(&part).is_some_and(|pos| pos > 0))
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| std::fs::read(self.results_dir().join(name)).ok())
            .filter_map(|bytes| serde_json::from_slice::<CacheEntry>(&bytes).ok())
            .filter(|e| {
                e.kind == KIND
                    && e.container_id == container_id
                    && !e.if_name.is_empty()
                    && !e.network_name.is_empty()
            })
            .collect()
    }
}

/// The record of an ADD of `list` with `rt` that ended in `result`.
pub(crate) fn entry(list: &NetworkList, rt: &RuntimeConf, result: Value) -> CacheEntry {
    CacheEntry {
        kind: KIND.into(),
        container_id: rt.container_id.clone(),
        config: list.bytes.clone(),
        if_name: rt.if_name.clone(),
        network_name: list.name.clone(),
        netns: rt.netns.clone(),
        cni_args: rt
            .args
            .iter()
            .map(|(k, v)| [k.clone(), v.clone()])
            .collect(),
        capability_args: rt.capability_args.clone(),
        result: Some(result),
    }
}

/// For tests elsewhere in the crate: the base64 of bytes as the cache writes it.
#[cfg(test)]
pub(crate) fn encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CacheEntry {
        let bytes = br#"{"cniVersion":"0.4.0","name":"net1","plugins":[{"type":"bridge"}]}"#;
        let list = NetworkList::parse(bytes, false, Path::new("net1.conflist")).unwrap();
        let rt = RuntimeConf {
            container_id: "abc".into(),
            netns: "/var/run/netns/cni-1".into(),
            if_name: "eth0".into(),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            capability_args: serde_json::json!({"portMappings": [{"hostPort": 80}]})
                .as_object()
                .unwrap()
                .clone(),
        };
        entry(
            &list,
            &rt,
            serde_json::json!({"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.2.3/24"}],"dns":{}}),
        )
    }

    #[test]
    fn a_record_is_written_as_libcni_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path().to_path_buf());
        let e = sample();
        cache.write(&e).unwrap();
        let path = dir.path().join("results/net1-abc-eth0");
        let text = std::fs::read_to_string(&path).unwrap();
        // Field order and names as Go's encoder writes cachedInfo.
        let expected = format!(
            concat!(
                r#"{{"kind":"cniCacheV1","containerId":"abc","config":"{}","ifName":"eth0","#,
                r#""networkName":"net1","netns":"/var/run/netns/cni-1","#,
                r#""cniArgs":[["IgnoreUnknown","1"]],"#,
                r#""capabilityArgs":{{"portMappings":[{{"hostPort":80}}]}},"#,
                r#""result":{{"cniVersion":"0.4.0","dns":{{}},"ips":[{{"address":"10.1.2.3/24","version":"4"}}]}}}}"#
            ),
            encode(&e.config)
        );
        assert_eq!(text, expected);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(cache.read("net1", "abc", "eth0").unwrap(), Some(e));
        assert_eq!(cache.entries_of("abc").len(), 1);
        assert!(cache.entries_of("ab").is_empty());
        cache.remove("net1", "abc", "eth0").unwrap();
        assert!(!path.exists());
        cache.remove("net1", "abc", "eth0").unwrap();
        assert_eq!(cache.read("net1", "abc", "eth0").unwrap(), None);
    }

    #[test]
    fn a_containerd_record_is_read_and_its_result_converted_to_the_config_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("results")).unwrap();
        // As libcni wrote it for a 1.0.0 list (fields it leaves empty are absent).
        let config = br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#;
        std::fs::write(
            dir.path().join("results/n-c1-eth0"),
            format!(
                r#"{{"kind":"cniCacheV1","containerId":"c1","config":"{}","ifName":"eth0","networkName":"n","result":{{"cniVersion":"1.0.0","ips":[{{"address":"10.9.0.5/16","interface":0}}],"interfaces":[{{"name":"eth0"}}],"dns":{{}}}}}}"#,
                encode(config)
            ),
        )
        .unwrap();
        let cache = ResultCache::new(dir.path().to_path_buf());
        let entry = cache.read("n", "c1", "eth0").unwrap().unwrap();
        assert_eq!(entry.config, config);
        assert!(entry.cni_args.is_empty());
        let r = cache
            .read_result("n", "c1", "eth0", "0.4.0")
            .unwrap()
            .unwrap();
        assert_eq!(r.cni_version, "0.4.0");
        assert_eq!(r.to_json("0.4.0").unwrap()["ips"][0]["version"], "4");
        assert_eq!(cache.read_result("n", "c2", "eth0", "1.0.0").unwrap(), None);
    }

    #[test]
    fn a_legacy_bare_result_is_read_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("results")).unwrap();
        std::fs::write(
            dir.path().join("results/n-c1-eth0"),
            r#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.9.0.5/16"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("results/n-c2-eth0"), "garbage").unwrap();
        let cache = ResultCache::new(dir.path().to_path_buf());
        let r = cache
            .read_result("n", "c1", "eth0", "0.3.1")
            .unwrap()
            .unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.9.0.5/16");
        assert!(cache.read_result("n", "c2", "eth0", "0.3.1").is_err());
        assert!(cache.read("n", "c2", "eth0").is_err());
    }

    #[test]
    fn names_that_would_leave_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path().to_path_buf());
        assert!(cache.path("n", "../x", "eth0").is_err());
        assert!(cache.path("n", "", "eth0").is_err());
        assert!(cache.remove("n", "a/b", "eth0").is_err());
    }
}
