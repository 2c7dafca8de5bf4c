//! The OCI and Docker schema 2 manifest formats, as far as pulling and unpacking need them, and
//! the labels containerd puts on a blob to keep its children alive (`containerd.io/gc.ref.*`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{ImageError, Platform};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Every manifest kind a resolve accepts, in the registry's `Accept` header.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Where a blob came from, `containerd.io/distribution.source.<host>` = repository.
pub const LABEL_DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source.";
pub const LABEL_GC_CONTENT: &str = "containerd.io/gc.ref.content.";
pub const LABEL_GC_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// A manifest document of either kind.
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

impl Document {
    /// Parses `raw`, of `media_type` (or, without one, of the kind its fields say).
    pub fn parse(media_type: &str, raw: &[u8]) -> Result<Document, ImageError> {
        let bad = |e: serde_json::Error| {
            ImageError::InvalidArgument(format!(
                "malformed {} document: {e}",
                kind_name(media_type)
            ))
        };
        if is_index(media_type) {
            return serde_json::from_slice(raw)
                .map(Document::Index)
                .map_err(bad);
        }
        if is_manifest(media_type) {
            return serde_json::from_slice(raw)
                .map(Document::Manifest)
                .map_err(bad);
        }
        let value: serde_json::Value = serde_json::from_slice(raw).map_err(bad)?;
        if value.get("manifests").is_some() {
            serde_json::from_value(value)
                .map(Document::Index)
                .map_err(bad)
        } else if value.get("config").is_some() && value.get("layers").is_some() {
            serde_json::from_value(value)
                .map(Document::Manifest)
                .map_err(bad)
        } else {
            Err(ImageError::NotImplemented(format!(
                "media type {media_type:?} is not an image index or manifest"
            )))
        }
    }

    /// The children of this document with the `containerd.io/gc.ref.content.*` label key
    /// naming each, as containerd labels a manifest's or an index's blob.
    pub fn children(&self) -> Vec<(String, &Descriptor)> {
        match self {
            Document::Index(i) => i
                .manifests
                .iter()
                .enumerate()
                .map(|(n, d)| (format!("{LABEL_GC_CONTENT}m.{n}"), d))
                .collect(),
            Document::Manifest(m) => {
                std::iter::once((format!("{LABEL_GC_CONTENT}config"), &m.config))
                    .chain(
                        m.layers
                            .iter()
                            .enumerate()
                            .map(|(n, d)| (format!("{LABEL_GC_CONTENT}l.{n}"), d)),
                    )
                    .collect()
            }
        }
    }
}

fn kind_name(media_type: &str) -> &str {
    if media_type.is_empty() {
        "manifest"
    } else {
        media_type
    }
}

/// The manifests of an index that `wanted` accepts (all of them when `wanted` is empty), in
/// the index's order. Entries without a platform are taken as the host's.
pub fn select<'a>(index: &'a Index, wanted: &[Platform]) -> Vec<&'a Descriptor> {
    index
        .manifests
        .iter()
        .filter(|d| is_manifest(&d.media_type) || is_index(&d.media_type))
        .filter(|d| {
            wanted.is_empty() || {
                let p = d.platform.clone().unwrap_or_else(Platform::host);
                wanted.iter().any(|w| w.matches(&p))
            }
        })
        .collect()
}

/// The diff IDs (`rootfs.diff_ids`) of an image config.
pub fn diff_ids(config: &[u8]) -> Result<Vec<String>, ImageError> {
    let c: ImageConfig = serde_json::from_slice(config)
        .map_err(|e| ImageError::InvalidArgument(format!("malformed image config: {e}")))?;
    Ok(c.rootfs.diff_ids)
}

/// The chain IDs of a stack of layers: the first is its diff ID, each next one is the
/// sha256 of `"<parent chain ID> <diff ID>"`. A layer's snapshot is named by its chain ID.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex(&Sha256::digest(format!("{parent} {diff_id}").as_bytes()))
            ),
        };
        chain.push(next);
    }
    chain
}

/// The `sha256:<hex>` digest of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], digest_of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn documents_name_their_children_for_gc() {
        let raw = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"sha256:{c}","size":2}},"layers":[{{"mediaType":"x","digest":"sha256:{c}","size":3}}]}}"#,
            c = "c".repeat(64)
        );
        let doc = Document::parse("", raw.as_bytes()).unwrap();
        let labels: Vec<String> = doc.children().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            labels,
            [
                "containerd.io/gc.ref.content.config",
                "containerd.io/gc.ref.content.l.0"
            ]
        );
        assert!(Document::parse(OCI_INDEX, b"{}").is_err());
    }

    #[test]
    fn selects_manifests_by_platform() {
        let host = Platform::host();
        let other = Platform::new(
            "linux",
            if host.architecture == "s390x" {
                "amd64"
            } else {
                "s390x"
            },
            "",
        );
        let entry = |p: &Platform, d: char| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            size: 1,
            platform: Some(p.clone()),
            ..Default::default()
        };
        let index = Index {
            media_type: OCI_INDEX.into(),
            manifests: vec![entry(&other, 'a'), entry(&host, 'b')],
        };
        let picked = select(&index, std::slice::from_ref(&host));
        assert_eq!(picked.len(), 1);
        assert!(picked[0].digest.ends_with('b'));
        assert_eq!(select(&index, &[]).len(), 2);
    }
}
