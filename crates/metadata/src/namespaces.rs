use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};

use crate::db::{MetadataStore, Table, NAMESPACES};
use crate::{validate, MetadataError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

fn not_found(name: &str) -> MetadataError {
    MetadataError::NotFound(format!("namespace {name:?}"))
}

impl MetadataStore {
    pub fn namespace_create(&self, ns: &Namespace) -> Result<(), MetadataError> {
        validate::identifier(&ns.name).map_err(|e| {
            MetadataError::InvalidArgument(format!("namespace name: {}", inner(&e)))
        })?;
        for (k, v) in &ns.labels {
            validate::label(k, v)?;
        }
        let tx = self.write()?;
        {
            let mut table = tx.open_table(NAMESPACES)?;
            if table.get(ns.name.as_str())?.is_some() {
                return Err(MetadataError::AlreadyExists(format!(
                    "namespace {:?}",
                    ns.name
                )));
            }
            table.insert(ns.name.as_str(), serde_json::to_vec(&ns.labels)?.as_slice())?;
        }
        self.commit(tx, Default::default())?;
        Ok(())
    }

    /// A namespace's labels; one that does not exist yet answers with none, as containerd's
    /// store does (clients read a default namespace's labels before anything creates it).
    pub fn namespace_get(&self, name: &str) -> Result<Namespace, MetadataError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(NAMESPACES)?;
        let labels = match table.get(name)? {
            Some(labels) => serde_json::from_slice(labels.value())?,
            None => BTreeMap::new(),
        };
        Ok(Namespace {
            name: name.to_owned(),
            labels,
        })
    }

    pub fn namespace_list(&self) -> Result<Vec<Namespace>, MetadataError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(NAMESPACES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, labels) = entry?;
            out.push(Namespace {
                name: name.value().to_owned(),
                labels: serde_json::from_slice(labels.value())?,
            });
        }
        Ok(out)
    }

    /// Sets (or, with an empty value, removes) labels, creating the namespace when it does not
    /// exist yet, as containerd's store does. With `replace`, labels not given are removed.
    pub fn namespace_update_labels(
        &self,
        name: &str,
        changes: &BTreeMap<String, String>,
        replace: bool,
    ) -> Result<Namespace, MetadataError> {
        validate::identifier(name).map_err(|e| {
            MetadataError::InvalidArgument(format!("namespace name: {}", inner(&e)))
        })?;
        for (k, v) in changes {
            validate::label(k, v)?;
        }
        let tx = self.write()?;
        let labels = {
            let mut table = tx.open_table(NAMESPACES)?;
            let mut labels: BTreeMap<String, String> = match table.get(name)? {
                Some(v) if !replace => serde_json::from_slice(v.value())?,
                _ => BTreeMap::new(),
            };
            for (k, v) in changes {
                if v.is_empty() {
                    labels.remove(k);
                } else {
                    labels.insert(k.clone(), v.clone());
                }
            }
            table.insert(name, serde_json::to_vec(&labels)?.as_slice())?;
            labels
        };
        self.commit(tx, Default::default())?;
        Ok(Namespace {
            name: name.to_owned(),
            labels,
        })
    }

    /// Deletes an empty namespace; one that still holds resources is a failed precondition
    /// naming what it holds.
    pub fn namespace_delete(&self, name: &str) -> Result<(), MetadataError> {
        let tx = self.write()?;
        {
            let mut table = tx.open_table(NAMESPACES)?;
            if table.get(name)?.is_none() {
                return Err(not_found(name));
            }
            let prefix = format!("{name}/");
            let mut held = Vec::new();
            for table in Table::ALL {
                let resources = tx.open_table(table.def())?;
                let first = resources.range(prefix.as_str()..)?.next().transpose()?;
                if first.is_some_and(|(k, _)| k.value().starts_with(&prefix)) {
                    held.push(table.name());
                }
            }
            if !held.is_empty() {
                return Err(MetadataError::FailedPrecondition(format!(
                    "namespace {name:?} must be empty, but it still has {}",
                    held.join(", ")
                )));
            }
            table.remove(name)?;
        }
        self.commit(tx, Default::default())?;
        Ok(())
    }
}

/// The message of an error without its class suffix, to wrap it in another.
fn inner(e: &MetadataError) -> String {
    match e {
        MetadataError::InvalidArgument(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crated_errdefs::{HasKind, Kind};

    fn store() -> (tempfile::TempDir, MetadataStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = MetadataStore::open(&dir.path().join("meta.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn an_absent_namespace_reads_as_one_without_labels_and_is_not_listed() {
        let (_d, s) = store();
        let ns = s.namespace_get("moby").unwrap();
        assert_eq!(ns.name, "moby");
        assert!(ns.labels.is_empty());
        assert!(s.namespace_list().unwrap().is_empty());
    }

    #[test]
    fn create_get_list_delete() {
        let (_d, s) = store();
        let ns = Namespace {
            name: "k8s.io".into(),
            labels: [("a".to_string(), "b".to_string())].into(),
        };
        s.namespace_create(&ns).unwrap();
        assert_eq!(s.namespace_get("k8s.io").unwrap(), ns);
        assert_eq!(
            s.namespace_create(&ns).unwrap_err().kind(),
            Kind::AlreadyExists
        );
        s.namespace_create(&Namespace {
            name: "a".into(),
            ..Default::default()
        })
        .unwrap();
        let names: Vec<_> = s
            .namespace_list()
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["a", "k8s.io"]);
        s.namespace_delete("k8s.io").unwrap();
        let e = s.namespace_delete("k8s.io").unwrap_err();
        assert_eq!(e.kind(), Kind::NotFound);
        assert_eq!(e.to_string(), "namespace \"k8s.io\": not found");
    }

    #[test]
    fn names_are_validated() {
        let (_d, s) = store();
        for bad in ["", "-a", "a-", "a..b", "a/b", &"x".repeat(77)] {
            let e = s
                .namespace_create(&Namespace {
                    name: bad.to_string(),
                    ..Default::default()
                })
                .unwrap_err();
            assert_eq!(e.kind(), Kind::InvalidArgument, "{bad:?}");
        }
        for good in ["a", "a.b-c_d", "A1", &"x".repeat(76)] {
            s.namespace_create(&Namespace {
                name: good.to_string(),
                ..Default::default()
            })
            .unwrap();
        }
    }

    #[test]
    fn labels_update_and_replace() {
        let (_d, s) = store();
        let set = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        // Setting a label on a missing namespace creates it, as containerd does.
        s.namespace_update_labels("n", &set("a", "1"), false)
            .unwrap();
        s.namespace_update_labels("n", &set("b", "2"), false)
            .unwrap();
        assert_eq!(s.namespace_get("n").unwrap().labels.len(), 2);
        s.namespace_update_labels("n", &set("a", ""), false)
            .unwrap();
        assert_eq!(s.namespace_get("n").unwrap().labels, set("b", "2"));
        s.namespace_update_labels("n", &set("c", "3"), true)
            .unwrap();
        assert_eq!(s.namespace_get("n").unwrap().labels, set("c", "3"));
        let big = "v".repeat(5000);
        assert_eq!(
            s.namespace_update_labels("n", &set("k", &big), false)
                .unwrap_err()
                .kind(),
            Kind::InvalidArgument
        );
    }

    #[test]
    fn non_empty_namespace_cannot_be_deleted() {
        let (_d, s) = store();
        s.namespace_create(&Namespace {
            name: "n".into(),
            ..Default::default()
        })
        .unwrap();
        s.namespace_create(&Namespace {
            name: "n2".into(),
            ..Default::default()
        })
        .unwrap();
        let tx = s.db.begin_write().unwrap();
        tx.open_table(Table::Images.def())
            .unwrap()
            .insert("n/img", &b"{}"[..])
            .unwrap();
        tx.commit().unwrap();
        let e = s.namespace_delete("n").unwrap_err();
        assert_eq!(e.kind(), Kind::FailedPrecondition);
        assert!(
            e.to_string()
                .contains("must be empty, but it still has images"),
            "{e}"
        );
        // "n2" shares the prefix "n" but not "n/": it is empty.
        s.namespace_delete("n2").unwrap();
    }

    #[test]
    fn schema_version_is_recorded_and_newer_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let s = MetadataStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), crate::SCHEMA_VERSION);
        let tx = s.db.begin_write().unwrap();
        tx.open_table(crate::db::META)
            .unwrap()
            .insert("schema_version", 99)
            .unwrap();
        tx.commit().unwrap();
        drop(s);
        let e = MetadataStore::open(&path).err().unwrap();
        assert!(e.to_string().contains("newer than this daemon"), "{e}");
    }
}
