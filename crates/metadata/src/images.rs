//! Image records: a name pointing at a target descriptor (a manifest or an index), with labels.
//! Images are GC roots: their target, and what it references, stay.

use std::collections::BTreeMap;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::content::apply_label_paths;
use crate::db::{insert_new, key, MetadataStore, Mutation, Table};
use crate::{validate, MetadataError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub target: Descriptor,
    pub created_at: u64,
    pub updated_at: u64,
}

fn not_found(name: &str) -> MetadataError {
    MetadataError::NotFound(format!("image {name:?}"))
}

/// containerd's checks: a name, valid labels, and a target with a digest, a size and a media
/// type.
fn validate_image(image: &ImageRecord) -> Result<(), MetadataError> {
    if image.name.is_empty() {
        return Err(MetadataError::InvalidArgument(
            "image name must not be empty".into(),
        ));
    }
    for (k, v) in &image.labels {
        validate::label(k, v)?;
    }
    let t = &image.target;
    validate::digest(&t.digest).map_err(|why| {
        MetadataError::InvalidArgument(format!("Target.Digest {:?} invalid: {why}", t.digest))
    })?;
    if t.size <= 0 {
        return Err(MetadataError::InvalidArgument(
            "Target.Size must be greater than zero".into(),
        ));
    }
    if t.media_type.is_empty() {
        return Err(MetadataError::InvalidArgument(
            "Target.MediaType must be set".into(),
        ));
    }
    Ok(())
}

impl MetadataStore {
    pub fn image_get(&self, ns: &str, name: &str) -> Result<ImageRecord, MetadataError> {
        self.get_in(Table::Images, ns, name, || not_found(name))
    }

    pub fn image_list(&self, ns: &str) -> Result<Vec<ImageRecord>, MetadataError> {
        self.list_in(Table::Images, ns)
    }

    /// Records a new image; its times are set here. A name taken is AlreadyExists.
    pub fn image_create(
        &self,
        ns: &str,
        image: &ImageRecord,
    ) -> Result<ImageRecord, MetadataError> {
        validate_image(image)?;
        let now = crate::now_nanos();
        let image = ImageRecord {
            created_at: now,
            updated_at: now,
            ..image.clone()
        };
        let tx = self.write()?;
        insert_new(&tx, Table::Images, ns, &image.name, &image, || {
            format!("image {:?}", image.name)
        })?;
        self.commit(tx, Default::default())?;
        Ok(image)
    }

    /// containerd's Update: no paths replaces the record (keeping its creation time); else
    /// `labels`, `labels.<key>`, `target` (as a whole), `annotations`, `annotations.<key>`.
    pub fn image_update(
        &self,
        ns: &str,
        image: &ImageRecord,
        paths: &[String],
    ) -> Result<ImageRecord, MetadataError> {
        if image.name.is_empty() {
            return Err(MetadataError::InvalidArgument(
                "image name is required for update".into(),
            ));
        }
        let tx = self.write()?;
        let updated = {
            let mut t = tx.open_table(Table::Images.def())?;
            let k = key(ns, &image.name);
            let mut current: ImageRecord = match t.get(k.as_str())? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => return Err(not_found(&image.name)),
            };
            let what = format!("image {:?}", image.name);
            if paths.is_empty() {
                current = ImageRecord {
                    created_at: current.created_at,
                    ..image.clone()
                };
            }
            for path in paths {
                if path == "labels" || path.starts_with("labels.") {
                    apply_label_paths(
                        &mut current.labels,
                        &image.labels,
                        std::slice::from_ref(path),
                        &what,
                    )?;
                } else if path == "target" {
                    current.target = image.target.clone();
                } else if path == "annotations" {
                    current.target.annotations = image.target.annotations.clone();
                } else if let Some(a) = path.strip_prefix("annotations.") {
                    match image.target.annotations.get(a) {
                        Some(v) => current.target.annotations.insert(a.to_owned(), v.clone()),
                        None => current.target.annotations.remove(a),
                    };
                } else {
                    return Err(MetadataError::InvalidArgument(format!(
                        "cannot update {path:?} field on {what}"
                    )));
                }
            }
            validate_image(&current)?;
            current.updated_at = crate::now_nanos().max(current.created_at);
            t.insert(k.as_str(), serde_json::to_vec(&current)?.as_slice())?;
            current
        };
        // A new target can leave the old one unreferenced.
        self.commit(tx, Mutation::DELETION)?;
        Ok(updated)
    }

    /// Deletes the image; with `target`, only if it still points there (else NotFound).
    pub fn image_delete(
        &self,
        ns: &str,
        name: &str,
        target: Option<&str>,
    ) -> Result<(), MetadataError> {
        let tx = self.write()?;
        {
            let mut t = tx.open_table(Table::Images.def())?;
            let k = key(ns, name);
            let current: ImageRecord = match t.get(k.as_str())? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => return Err(not_found(name)),
            };
            if let Some(expected) = target {
                if current.target.digest != expected {
                    return Err(MetadataError::NotFound(format!(
                        "image {name:?} has target {}, not {expected}",
                        current.target.digest
                    )));
                }
            }
            t.remove(k.as_str())?;
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

    fn image(name: &str, digest: char) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            target: Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: format!("sha256:{}", digest.to_string().repeat(64)),
                size: 10,
                annotations: BTreeMap::new(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn images_are_created_once_and_kept_per_namespace() {
        let (_d, s) = store();
        let made = s
            .image_create("ns", &image("docker.io/library/busybox:latest", 'a'))
            .unwrap();
        assert!(made.created_at > 0);
        let again = s.image_create("ns", &image("docker.io/library/busybox:latest", 'b'));
        assert!(
            matches!(again, Err(MetadataError::AlreadyExists(_))),
            "{again:?}"
        );
        assert_eq!(
            s.image_get("ns", "docker.io/library/busybox:latest")
                .unwrap(),
            made
        );
        assert!(matches!(
            s.image_get("other", "docker.io/library/busybox:latest"),
            Err(MetadataError::NotFound(_))
        ));
        assert_eq!(s.image_list("ns").unwrap().len(), 1);
        assert!(s.image_list("other").unwrap().is_empty());
    }

    #[test]
    fn invalid_images_are_refused_with_containerd_messages() {
        let (_d, s) = store();
        let mut bad = image("", 'a');
        let err = s.image_create("ns", &bad).unwrap_err().to_string();
        assert!(err.contains("image name must not be empty"), "{err}");
        bad.name = "x".into();
        bad.target.size = 0;
        let err = s.image_create("ns", &bad).unwrap_err().to_string();
        assert!(
            err.contains("Target.Size must be greater than zero"),
            "{err}"
        );
        bad.target.size = 1;
        bad.target.media_type.clear();
        let err = s.image_create("ns", &bad).unwrap_err().to_string();
        assert!(err.contains("Target.MediaType must be set"), "{err}");
        bad.target.media_type = "m".into();
        for (digest, why) in [
            ("nodigest", "invalid checksum digest format"),
            ("md5:0123", "unsupported digest algorithm"),
            ("sha256:zz", "invalid checksum digest length"),
        ] {
            bad.target.digest = digest.into();
            let err = s.image_create("ns", &bad).unwrap_err();
            assert!(matches!(err, MetadataError::InvalidArgument(_)));
            assert_eq!(
                err.to_string(),
                format!("Target.Digest {digest:?} invalid: {why}: invalid argument")
            );
        }
    }

    #[test]
    fn updates_follow_field_paths() {
        let (_d, s) = store();
        let mut img = image("x", 'a');
        img.labels.insert("keep".into(), "1".into());
        let made = s.image_create("ns", &img).unwrap();
        let mut change = image("x", 'b');
        change.labels.insert("new".into(), "2".into());
        let updated = s
            .image_update("ns", &change, &["labels.new".into()])
            .unwrap();
        assert_eq!(
            updated.target, made.target,
            "target untouched without its path"
        );
        assert_eq!(updated.labels.len(), 2);
        assert_eq!(updated.created_at, made.created_at);
        let updated = s.image_update("ns", &change, &["target".into()]).unwrap();
        assert_eq!(updated.target, change.target);
        let err = s.image_update("ns", &change, &["name".into()]).unwrap_err();
        assert!(matches!(err, MetadataError::InvalidArgument(_)), "{err}");
        let replaced = s.image_update("ns", &change, &[]).unwrap();
        assert_eq!(replaced.labels, change.labels);
        assert!(matches!(
            s.image_update("ns", &image("missing", 'a'), &[]),
            Err(MetadataError::NotFound(_))
        ));
    }

    #[test]
    fn delete_can_insist_on_the_target() {
        let (_d, s) = store();
        s.image_create("ns", &image("x", 'a')).unwrap();
        let other = format!("sha256:{}", "b".repeat(64));
        assert!(matches!(
            s.image_delete("ns", "x", Some(&other)),
            Err(MetadataError::NotFound(_))
        ));
        s.image_delete("ns", "x", None).unwrap();
        assert!(matches!(
            s.image_delete("ns", "x", None),
            Err(MetadataError::NotFound(_))
        ));
    }
}
