//! What CRI shows of an image: containerd keeps one record per name (the image id, each tag,
//! each repo digest), all with the same target; CRI groups them by the config digest their
//! target resolves to for this host's platform.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crated_content::ContentStore;
use crated_images::manifest::{self, Document};
use crated_images::Platform;
use crated_metadata::{Descriptor, ImageRecord};
use futures::StreamExt;

use crate::CriError;

/// The most of a manifest, index or config read whole.
const MAX_DOCUMENT: u64 = 8 << 20;

/// What a target resolves to: immutable for its digest, so it is worked out once.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The image id: the digest of the config.
    pub config_digest: String,
    /// The digest of the manifest for this platform.
    pub manifest_digest: String,
    /// Index (if any), manifest, config and layers, as containerd counts an image's size.
    pub size: u64,
    /// The config's `User`, as written.
    pub user: String,
    /// The layers' diff ids, bottom first.
    pub diff_ids: Vec<String>,
    pub stop_signal: String,
    /// The image config, whole.
    pub config: serde_json::Value,
}

/// One CRI image: every record whose target resolves to the same config.
#[derive(Debug, Clone, PartialEq)]
pub struct CriImage {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub resolved: Arc<Resolved>,
    pub pinned: bool,
    /// The records' names, the id's own included.
    pub names: Vec<String>,
}

pub const PINNED_LABEL: &str = "io.cri-containerd.pinned";

/// Resolves targets through a content store, remembering each answer.
pub struct Resolver {
    content: Arc<dyn ContentStore>,
    platform: Platform,
    known: Mutex<HashMap<String, Arc<Resolved>>>,
}

impl Resolver {
    pub fn new(content: Arc<dyn ContentStore>) -> Self {
        Resolver {
            content,
            platform: Platform::host(),
            known: Mutex::new(HashMap::new()),
        }
    }

    async fn read(&self, desc: &Descriptor) -> Result<Vec<u8>, CriError> {
        if desc.size < 0 || desc.size as u64 > MAX_DOCUMENT {
            return Err(CriError::InvalidImage(format!(
                "{} declares {} bytes",
                desc.digest, desc.size
            )));
        }
        let size = desc.size as u64;
        let mut stream = self.content.read(&desc.digest, 0, size, size).await?;
        let mut bytes = Vec::with_capacity(size as usize);
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?.1);
        }
        Ok(bytes)
    }

    /// The manifest, config and size a target stands for on this platform.
    pub async fn resolve(&self, target: &Descriptor) -> Result<Arc<Resolved>, CriError> {
        if let Some(known) = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&target.digest)
        {
            return Ok(known.clone());
        }
        let mut size = 0u64;
        let mut desc = target.clone();
        // An index may point at further indexes; a few levels are all any registry uses.
        for _ in 0..4 {
            let raw = self.read(&desc).await?;
            size += raw.len() as u64;
            match Document::parse(&desc.media_type, &raw)? {
                Document::Index(index) => {
                    let chosen = manifest::select(&index, std::slice::from_ref(&self.platform));
                    let Some(next) = chosen.first() else {
                        return Err(CriError::InvalidImage(format!(
                            "{} has no manifest for {}",
                            desc.digest, self.platform
                        )));
                    };
                    desc = Descriptor {
                        media_type: next.media_type.clone(),
                        digest: next.digest.clone(),
                        size: next.size,
                        annotations: Default::default(),
                    };
                }
                Document::Manifest(m) => {
                    let config_desc = Descriptor {
                        media_type: m.config.media_type.clone(),
                        digest: m.config.digest.clone(),
                        size: m.config.size,
                        annotations: Default::default(),
                    };
                    let config = self.read(&config_desc).await?;
                    size += config.len() as u64;
                    size += m.layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>();
                    let parsed: serde_json::Value = serde_json::from_slice(&config)
                        .map_err(|e| CriError::InvalidImage(format!("config: {e}")))?;
                    let text = |key: &str| {
                        parsed["config"][key]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let resolved = Arc::new(Resolved {
                        config_digest: config_desc.digest,
                        manifest_digest: desc.digest.clone(),
                        size,
                        user: text("User"),
                        diff_ids: manifest::diff_ids(&config)?,
                        stop_signal: text("StopSignal"),
                        config: parsed.clone(),
                    });
                    self.known
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(target.digest.clone(), resolved.clone());
                    return Ok(resolved);
                }
            }
        }
        Err(CriError::InvalidImage(format!(
            "{} nests indexes too deep",
            target.digest
        )))
    }

    /// The CRI images the records make, in id order. Records whose target cannot be resolved
    /// (content missing, another platform only) are left out, as containerd leaves them.
    pub async fn images(&self, records: &[ImageRecord]) -> Vec<CriImage> {
        let mut by_id: std::collections::BTreeMap<String, CriImage> = Default::default();
        for record in records {
            let resolved = match self.resolve(&record.target).await {
                Ok(resolved) => resolved,
                Err(e) => {
                    tracing::debug!(image = %record.name, "not a CRI image: {e}");
                    continue;
                }
            };
            let image = by_id
                .entry(resolved.config_digest.clone())
                .or_insert_with(|| CriImage {
                    id: resolved.config_digest.clone(),
                    repo_tags: Vec::new(),
                    repo_digests: Vec::new(),
                    resolved: resolved.clone(),
                    pinned: false,
                    names: Vec::new(),
                });
            image.names.push(record.name.clone());
            image.pinned |= record.labels.get(PINNED_LABEL).map(String::as_str) == Some("pinned");
            match classify(&record.name) {
                Some(Name::Tag) => image.repo_tags.push(record.name.clone()),
                Some(Name::Digest) => image.repo_digests.push(record.name.clone()),
                None => {}
            }
        }
        by_id.into_values().collect()
    }
}

enum Name {
    Tag,
    Digest,
}

/// Whether a record's name is a repo tag, a repo digest, or neither (the id itself).
fn classify(name: &str) -> Option<Name> {
    if crated_images::reference::is_digest(name) {
        return None;
    }
    let reference = crated_images::Reference::parse(name).ok()?;
    if reference.digest.is_some() {
        Some(Name::Digest)
    } else {
        Some(Name::Tag)
    }
}

/// The uid or user name an image runs as, from its config's `User` (`name`, `uid`,
/// `uid:gid`), as containerd's CRI reads it.
pub fn user_of(user: &str) -> (Option<i64>, String) {
    let user = user.split(':').next().unwrap_or_default();
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_owned()),
    }
}

/// Finds the image a CRI request names: an image id (whole, or a unique prefix of its hex),
/// or a reference, normalised (`busybox` is `docker.io/library/busybox:latest`).
pub fn find<'a>(images: &'a [CriImage], ref_or_id: &str) -> Option<&'a CriImage> {
    if let Ok(reference) = crated_images::Reference::parse(ref_or_id) {
        let name = reference.to_string();
        if let Some(found) = images.iter().find(|i| i.names.contains(&name)) {
            return Some(found);
        }
    }
    let hex = ref_or_id.strip_prefix("sha256:").unwrap_or(ref_or_id);
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut matching = images.iter().filter(|i| {
        i.id.strip_prefix("sha256:")
            .is_some_and(|id| id.starts_with(hex))
    });
    let first = matching.next()?;
    matching.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_read_as_containerds_cri_reads_them() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(user_of("1002"), (Some(1002), String::new()));
        assert_eq!(user_of("1003:1004"), (Some(1003), String::new()));
        assert_eq!(user_of("www-data"), (None, "www-data".to_owned()));
        assert_eq!(user_of("www-data:1004"), (None, "www-data".to_owned()));
    }

    fn image(id: &str, names: &[&str]) -> CriImage {
        CriImage {
            id: id.into(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            resolved: Arc::new(Resolved {
                config_digest: id.into(),
                manifest_digest: String::new(),
                size: 0,
                user: String::new(),
                diff_ids: Vec::new(),
                stop_signal: String::new(),
                config: serde_json::Value::Null,
            }),
            pinned: false,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn images_are_found_by_reference_id_or_unique_id_prefix() {
        let a = format!("sha256:ab{}", "0".repeat(62));
        let b = format!("sha256:ac{}", "1".repeat(62));
        let images = vec![
            image(&a, &["docker.io/library/busybox:latest", &a]),
            image(&b, &["127.0.0.1:5000/app:1", &b]),
        ];
        assert_eq!(find(&images, "busybox").map(|i| &i.id), Some(&a));
        assert_eq!(find(&images, "busybox:latest").map(|i| &i.id), Some(&a));
        assert_eq!(
            find(&images, "127.0.0.1:5000/app:1").map(|i| &i.id),
            Some(&b)
        );
        assert_eq!(find(&images, &b).map(|i| &i.id), Some(&b));
        assert_eq!(find(&images, "ab0").map(|i| &i.id), Some(&a));
        assert_eq!(find(&images, "sha256:ac1").map(|i| &i.id), Some(&b));
        assert!(
            find(&images, "a").is_none(),
            "an ambiguous prefix finds nothing"
        );
        assert!(find(&images, "nginx").is_none());
    }
}
