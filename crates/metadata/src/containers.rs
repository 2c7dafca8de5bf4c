//! Container records: the metadata of a container (its spec, runtime, image and snapshot), not
//! a running process. Containers are GC roots for their snapshot and what their labels reference.

use std::collections::BTreeMap;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::content::apply_label_paths;
use crate::db::{insert_new, key, MetadataStore, Mutation, Table};
use crate::{validate, MetadataError};

/// A protobuf `Any` kept as it came: the spec, runtime options and extensions are opaque here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnyValue {
    pub type_url: String,
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub name: String,
    #[serde(default)]
    pub options: Option<AnyValue>,
}

/// The JSON field names `snapshotter`, `snapshot_key` and `labels` are read by GC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub image: String,
    pub runtime: RuntimeInfo,
    pub spec: Option<AnyValue>,
    #[serde(default)]
    pub snapshotter: String,
    #[serde(default)]
    pub snapshot_key: String,
    #[serde(default)]
    pub extensions: BTreeMap<String, AnyValue>,
    #[serde(default)]
    pub sandbox: String,
    pub created_at: u64,
    pub updated_at: u64,
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

fn not_found(ns: &str, id: &str) -> MetadataError {
    MetadataError::NotFound(format!("container {id:?} in namespace {ns:?}"))
}

/// containerd's `validateContainer`, with its messages.
fn validate_container(c: &ContainerRecord) -> Result<(), MetadataError> {
    validate::identifier(&c.id)
        .map_err(|e| MetadataError::InvalidArgument(format!("container.ID: {e}")))?;
    if c.extensions.keys().any(String::is_empty) {
        return Err(MetadataError::InvalidArgument(
            "container.Extension keys must not be zero-length".into(),
        ));
    }
    for (k, v) in &c.labels {
        validate::label(k, v)
            .map_err(|e| MetadataError::InvalidArgument(format!("containers.Labels: {e}")))?;
    }
    if c.runtime.name.is_empty() {
        return Err(MetadataError::InvalidArgument(
            "container.Runtime.Name must be set".into(),
        ));
    }
    if c.spec.is_none() {
        return Err(MetadataError::InvalidArgument(
            "container.Spec must be set".into(),
        ));
    }
    if !c.snapshot_key.is_empty() && c.snapshotter.is_empty() {
        return Err(MetadataError::InvalidArgument(
            "container.Snapshotter must be set if container.SnapshotKey is set".into(),
        ));
    }
    Ok(())
}

impl MetadataStore {
    pub fn container_get(&self, ns: &str, id: &str) -> Result<ContainerRecord, MetadataError> {
        self.get_in(Table::Containers, ns, id, || not_found(ns, id))
    }

    pub fn container_list(&self, ns: &str) -> Result<Vec<ContainerRecord>, MetadataError> {
        self.list_in(Table::Containers, ns)
    }

    /// Records a new container; its times are set here. An id taken is AlreadyExists.
    pub fn container_create(
        &self,
        ns: &str,
        container: &ContainerRecord,
    ) -> Result<ContainerRecord, MetadataError> {
        validate_container(container)?;
        let now = crate::now_nanos();
        let container = ContainerRecord {
            created_at: now,
            updated_at: now,
            ..container.clone()
        };
        let tx = self.write()?;
        insert_new(
            &tx,
            Table::Containers,
            ns,
            &container.id,
            &container,
            || format!("container {:?}", container.id),
        )?;
        self.commit(tx, Default::default())?;
        Ok(container)
    }

    /// containerd's Update: no paths replaces `labels`, `spec`, `extensions`, `image` and
    /// `snapshotkey` (the snapshotter and runtime name are immutable); else those paths, and
    /// `labels.<key>`, `extensions.<key>`.
    pub fn container_update(
        &self,
        ns: &str,
        given: &ContainerRecord,
        paths: &[String],
    ) -> Result<ContainerRecord, MetadataError> {
        if given.id.is_empty() {
            return Err(MetadataError::InvalidArgument(
                "must specify a container id".into(),
            ));
        }
        let tx = self.write()?;
        let updated = {
            let mut t = tx.open_table(Table::Containers.def())?;
            let k = key(ns, &given.id);
            let mut current: ContainerRecord = match t.get(k.as_str())? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => {
                    return Err(MetadataError::NotFound(format!(
                        "cannot update container {:?} in namespace {ns:?}",
                        given.id
                    )))
                }
            };
            let full = ["labels", "spec", "extensions", "image", "snapshotkey"].map(String::from);
            let paths = if paths.is_empty() {
                if current.snapshotter != given.snapshotter {
                    return Err(MetadataError::InvalidArgument(
                        "container.Snapshotter field is immutable".into(),
                    ));
                }
                if current.runtime.name != given.runtime.name {
                    return Err(MetadataError::InvalidArgument(
                        "container.Runtime.Name field is immutable".into(),
                    ));
                }
                &full[..]
            } else {
                paths
            };
            let what = format!("{:?}", given.id);
            for path in paths {
                if path == "labels" || path.starts_with("labels.") {
                    apply_label_paths(
                        &mut current.labels,
                        &given.labels,
                        std::slice::from_ref(path),
                        &what,
                    )?;
                } else if let Some(key) = path.strip_prefix("extensions.") {
                    match given.extensions.get(key) {
                        Some(v) => current.extensions.insert(key.to_owned(), v.clone()),
                        None => current.extensions.remove(key),
                    };
                } else {
                    match path.as_str() {
                        "spec" => current.spec = given.spec.clone(),
                        "extensions" => current.extensions = given.extensions.clone(),
                        "image" => current.image = given.image.clone(),
                        "snapshotkey" => current.snapshot_key = given.snapshot_key.clone(),
                        _ => {
                            return Err(MetadataError::InvalidArgument(format!(
                                "cannot update {path:?} field on {what}"
                            )))
                        }
                    }
                }
            }
            validate_container(&current).map_err(|e| {
                MetadataError::InvalidArgument(format!("update failed validation: {e}"))
            })?;
            current.updated_at = crate::now_nanos().max(current.created_at);
            t.insert(k.as_str(), serde_json::to_vec(&current)?.as_slice())?;
            current
        };
        // A new snapshot key or labels can leave what the old ones kept unreferenced.
        self.commit(tx, Mutation::DELETION)?;
        Ok(updated)
    }

    pub fn container_delete(&self, ns: &str, id: &str) -> Result<(), MetadataError> {
        let tx = self.write()?;
        {
            let mut t = tx.open_table(Table::Containers.def())?;
            if t.remove(key(ns, id).as_str())?.is_none() {
                return Err(MetadataError::NotFound(format!(
                    "cannot delete container {id:?} in namespace {ns:?}"
                )));
            }
        }
        self.commit(tx, Mutation::DELETION)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, MetadataStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(&dir.path().join("meta.db")).unwrap();
        (dir, store)
    }

    fn container(id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            runtime: RuntimeInfo {
                name: "io.containerd.runc.v2".into(),
                options: None,
            },
            spec: Some(AnyValue {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: b"{\"ociVersion\":\"1.0.2\"}\x00\xff".to_vec(),
            }),
            snapshotter: "overlayfs".into(),
            snapshot_key: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn containers_are_created_once_and_read_back_whole() {
        let (_d, s) = store();
        let made = s.container_create("ns", &container("c1")).unwrap();
        assert!(made.created_at > 0);
        assert_eq!(
            s.container_get("ns", "c1").unwrap(),
            made,
            "bytes kept exactly"
        );
        assert!(matches!(
            s.container_create("ns", &container("c1")),
            Err(MetadataError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.container_get("other", "c1"),
            Err(MetadataError::NotFound(_))
        ));
        assert_eq!(s.container_list("ns").unwrap().len(), 1);
        s.container_delete("ns", "c1").unwrap();
        assert!(matches!(
            s.container_delete("ns", "c1"),
            Err(MetadataError::NotFound(_))
        ));
    }

    #[test]
    fn invalid_containers_are_refused_with_containerd_messages() {
        let (_d, s) = store();
        let mut bad = container("c");
        bad.runtime.name.clear();
        let err = s.container_create("ns", &bad).unwrap_err().to_string();
        assert!(err.contains("container.Runtime.Name must be set"), "{err}");
        let mut bad = container("c");
        bad.spec = None;
        let err = s.container_create("ns", &bad).unwrap_err().to_string();
        assert!(err.contains("container.Spec must be set"), "{err}");
        let mut bad = container("c");
        bad.snapshotter.clear();
        let err = s.container_create("ns", &bad).unwrap_err().to_string();
        assert!(err.contains("container.Snapshotter must be set"), "{err}");
        let err = s.container_create("ns", &container("bad id!")).unwrap_err();
        assert!(matches!(err, MetadataError::InvalidArgument(_)), "{err}");
    }

    #[test]
    fn updates_follow_containerd_field_paths() {
        let (_d, s) = store();
        let made = s.container_create("ns", &container("c")).unwrap();
        let mut change = container("c");
        change.labels.insert("a".into(), "1".into());
        change.image = "busybox".into();
        let updated = s
            .container_update("ns", &change, &["labels.a".into()])
            .unwrap();
        assert_eq!(updated.labels.get("a").map(String::as_str), Some("1"));
        assert_eq!(updated.image, "", "image untouched without its path");
        assert_eq!(updated.created_at, made.created_at);
        let replaced = s.container_update("ns", &change, &[]).unwrap();
        assert_eq!(replaced.image, "busybox");
        change.snapshotter = "native".into();
        let err = s.container_update("ns", &change, &[]).unwrap_err();
        assert!(err.to_string().contains("immutable"), "{err}");
        let err = s
            .container_update("ns", &change, &["runtime".into()])
            .unwrap_err();
        assert!(matches!(err, MetadataError::InvalidArgument(_)), "{err}");
        assert!(matches!(
            s.container_update("ns", &container("missing"), &[]),
            Err(MetadataError::NotFound(_))
        ));
    }
}
