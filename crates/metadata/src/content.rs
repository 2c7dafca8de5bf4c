//! Content records: which blobs a namespace has, with their labels. The blobs themselves live in
//! the content store; a record appears only once the namespace has committed (or, with the
//! `shared` policy, claimed) the blob.

use std::collections::BTreeMap;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::db::{insert_new, key, MetadataStore, Mutation, Table};
use crate::ingests::remove_ingest_in;
use crate::leases::add_resource_in;
use crate::{validate, MetadataError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRecord {
    pub digest: String,
    pub size: u64,
    pub created_at: u64,
    pub updated_at: u64,
    pub labels: BTreeMap<String, String>,
}

fn not_found(digest: &str) -> MetadataError {
    MetadataError::NotFound(format!("content digest {digest}"))
}

impl MetadataStore {
    pub fn content_get(&self, ns: &str, digest: &str) -> Result<ContentRecord, MetadataError> {
        self.get_in(Table::Blobs, ns, digest, || not_found(digest))
    }

    pub fn content_list(&self, ns: &str) -> Result<Vec<ContentRecord>, MetadataError> {
        self.list_in(Table::Blobs, ns)
    }

    /// Records that `ns` has the blob, under `lease` when given, and ends the ingest `ingest`
    /// that wrote it (when given) in the same transaction. A blob the namespace has already is
    /// AlreadyExists.
    pub fn content_add(
        &self,
        ns: &str,
        record: &ContentRecord,
        lease: Option<&str>,
        ingest: Option<&str>,
    ) -> Result<(), MetadataError> {
        for (k, v) in &record.labels {
            validate::label(k, v)?;
        }
        let tx = self.write()?;
        insert_new(&tx, Table::Blobs, ns, &record.digest, record, || {
            format!("content {}", record.digest)
        })?;
        if let Some(lease) = lease {
            add_resource_in(&tx, ns, lease, "content", &record.digest)?;
        }
        if let Some(reference) = ingest {
            remove_ingest_in(&tx, ns, reference)?;
        }
        self.commit(tx, Default::default())?;
        Ok(())
    }

    /// Sets labels by field path (`labels` replaces all, `labels.<key>` one); no paths replaces
    /// all labels, as containerd does.
    pub fn content_update(
        &self,
        ns: &str,
        digest: &str,
        labels: &BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<ContentRecord, MetadataError> {
        for (k, v) in labels {
            validate::label(k, v)?;
        }
        let tx = self.write()?;
        let record = {
            let mut t = tx.open_table(Table::Blobs.def())?;
            let k = key(ns, digest);
            let mut record: ContentRecord = match t.get(k.as_str())? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => return Err(not_found(digest)),
            };
            apply_label_paths(
                &mut record.labels,
                labels,
                paths,
                &format!("content {digest}"),
            )?;
            record.updated_at = crate::now_nanos();
            t.insert(k.as_str(), serde_json::to_vec(&record)?.as_slice())?;
            record
        };
        self.commit(tx, Default::default())?;
        Ok(record)
    }

    pub fn content_delete(&self, ns: &str, digest: &str) -> Result<(), MetadataError> {
        let tx = self.write()?;
        {
            let mut t = tx.open_table(Table::Blobs.def())?;
            if t.remove(key(ns, digest).as_str())?.is_none() {
                return Err(not_found(digest));
            }
        }
        self.commit(tx, Mutation::DELETION)?;
        self.mark_backends_dirty();
        Ok(())
    }
}

/// containerd's field-path rules for labels, shared by every record with labels.
pub(crate) fn apply_label_paths(
    current: &mut BTreeMap<String, String>,
    given: &BTreeMap<String, String>,
    paths: &[String],
    what: &str,
) -> Result<(), MetadataError> {
    if paths.is_empty() {
        *current = given.clone();
        return Ok(());
    }
    for path in paths {
        if path == "labels" {
            *current = given.clone();
        } else if let Some(label) = path.strip_prefix("labels.") {
            match given.get(label) {
                Some(v) if !v.is_empty() => {
                    current.insert(label.to_owned(), v.clone());
                }
                _ => {
                    current.remove(label);
                }
            }
        } else {
            return Err(MetadataError::InvalidArgument(format!(
                "cannot update {path:?} field on {what}"
            )));
        }
    }
    Ok(())
}
