//! Snapshot records: the namespaced view of every snapshotter, as containerd's metadata
//! `snapshotter` wrapper keeps it. A record `<ns>/<snapshotter>/<key>` holds the backend's key
//! for the snapshot (`name`), the namespace-local key of its parent, its labels, timestamps,
//! and its children (so a parent with children is refused removal without a scan).
//! The backend calls themselves are the caller's; these are the record halves.

use std::collections::BTreeMap;

use redb::ReadableDatabase;
use serde::{Deserialize, Serialize};

use crate::db::{ensure_namespace, Table};
use crate::leases::add_resource_in;
use crate::{MetadataError, MetadataStore, Mutation};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The snapshot's key in the backend snapshotter.
    pub name: String,
    /// The namespace-local key of the parent; empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub created: u64,
    pub updated: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
}

/// What [`MetadataStore::snapshot_check_new`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewSnapshotCheck {
    /// The key is free and the parent exists: its backend key (empty for none).
    Free(String),
    /// The key exists already, or (`target`) the snapshot the caller means to make does.
    Exists { key: String, target: bool },
}

/// The lease resource type of a snapshot of `snapshotter`.
pub fn snapshot_resource(snapshotter: &str) -> String {
    format!("snapshots/{snapshotter}")
}

fn key(ns: &str, snapshotter: &str, key: &str) -> String {
    format!("{ns}/{snapshotter}/{key}")
}

fn not_found(k: &str) -> MetadataError {
    MetadataError::NotFound(format!("snapshot {k} does not exist"))
}

type RecordTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;

fn get(
    t: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    k: &str,
) -> Result<Option<SnapshotRecord>, MetadataError> {
    match t.get(k)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

fn put(t: &mut RecordTable<'_>, k: &str, r: &SnapshotRecord) -> Result<(), MetadataError> {
    t.insert(k, serde_json::to_vec(r)?.as_slice())?;
    Ok(())
}

impl MetadataStore {
    pub fn snapshot_get(
        &self,
        ns: &str,
        snapshotter: &str,
        k: &str,
    ) -> Result<SnapshotRecord, MetadataError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(Table::Snapshots.def())?;
        get(&t, &key(ns, snapshotter, k))?.ok_or_else(|| not_found(k))
    }

    /// Every snapshot of `snapshotter` in `ns`, with its key.
    pub fn snapshot_list(
        &self,
        ns: &str,
        snapshotter: &str,
    ) -> Result<Vec<(String, SnapshotRecord)>, MetadataError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(Table::Snapshots.def())?;
        let prefix = format!("{ns}/{snapshotter}/");
        let mut out = Vec::new();
        for entry in t.range(prefix.as_str()..)? {
            let (k, v) = entry?;
            let Some(local) = k.value().strip_prefix(&prefix) else {
                break;
            };
            out.push((local.to_owned(), serde_json::from_slice(v.value())?));
        }
        Ok(out)
    }

    /// Checks that `k` is free and `parent` (if any) exists in `ns`; returns the parent's
    /// backend key (empty for none). The caller then creates the backend snapshot. With a
    /// `target` (the `containerd.io/snapshot.ref` label), that snapshot existing already is
    /// reported first, as containerd does: the caller has nothing to unpack.
    pub fn snapshot_check_new(
        &self,
        ns: &str,
        snapshotter: &str,
        k: &str,
        parent: &str,
        target: &str,
    ) -> Result<NewSnapshotCheck, MetadataError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(Table::Snapshots.def())?;
        if !target.is_empty() && get(&t, &key(ns, snapshotter, target))?.is_some() {
            return Ok(NewSnapshotCheck::Exists {
                key: target.to_owned(),
                target: true,
            });
        }
        if get(&t, &key(ns, snapshotter, k))?.is_some() {
            return Ok(NewSnapshotCheck::Exists {
                key: k.to_owned(),
                target: false,
            });
        }
        if parent.is_empty() {
            return Ok(NewSnapshotCheck::Free(String::new()));
        }
        Ok(NewSnapshotCheck::Free(
            get(&t, &key(ns, snapshotter, parent))?
                .ok_or_else(|| {
                    MetadataError::NotFound(format!("parent snapshot {parent} does not exist"))
                })?
                .name,
        ))
    }

    /// Records the snapshot `k` the backend has just created (under the call's lease, if any).
    pub fn snapshot_create(
        &self,
        ns: &str,
        snapshotter: &str,
        k: &str,
        record: &SnapshotRecord,
        lease: Option<&str>,
    ) -> Result<(), MetadataError> {
        let tx = self.write()?;
        ensure_namespace(&tx, ns)?;
        {
            let mut t = tx.open_table(Table::Snapshots.def())?;
            let full = key(ns, snapshotter, k);
            if get(&t, &full)?.is_some() {
                return Err(MetadataError::AlreadyExists(format!("snapshot {k}")));
            }
            if !record.parent.is_empty() {
                let pk = key(ns, snapshotter, &record.parent);
                let mut parent = get(&t, &pk)?.ok_or_else(|| {
                    MetadataError::NotFound(format!(
                        "parent snapshot {} does not exist",
                        record.parent
                    ))
                })?;
                parent.children.push(k.to_owned());
                put(&mut t, &pk, &parent)?;
            }
            put(&mut t, &full, record)?;
        }
        if let Some(lease) = lease {
            add_resource_in(&tx, ns, lease, &snapshot_resource(snapshotter), k)?;
        }
        self.commit(tx, Mutation::default())
    }

    /// Checks that the active `k` exists and `name` is free; returns `k`'s record.
    pub fn snapshot_check_commit(
        &self,
        ns: &str,
        snapshotter: &str,
        name: &str,
        k: &str,
    ) -> Result<SnapshotRecord, MetadataError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(Table::Snapshots.def())?;
        if get(&t, &key(ns, snapshotter, name))?.is_some() {
            return Err(MetadataError::AlreadyExists(format!("snapshot {name}")));
        }
        get(&t, &key(ns, snapshotter, k))?.ok_or_else(|| not_found(k))
    }

    /// Replaces the record of the active `k` by the committed `name`, whose backend key and
    /// labels `committed` gives (its times are set here, and its parent: the active one's, or
    /// `committed.parent` for one prepared without a parent and rebased on commit), moving it
    /// in its parent's children and in the call's lease.
    pub fn snapshot_commit(
        &self,
        ns: &str,
        snapshotter: &str,
        name: &str,
        k: &str,
        committed: SnapshotRecord,
        lease: Option<&str>,
    ) -> Result<SnapshotRecord, MetadataError> {
        let tx = self.write()?;
        let record = {
            let mut t = tx.open_table(Table::Snapshots.def())?;
            let full_name = key(ns, snapshotter, name);
            if get(&t, &full_name)?.is_some() {
                return Err(MetadataError::AlreadyExists(format!("snapshot {name}")));
            }
            let full = key(ns, snapshotter, k);
            let active = get(&t, &full)?.ok_or_else(|| not_found(k))?;
            let parent = if active.parent.is_empty() {
                committed.parent.clone()
            } else if committed.parent.is_empty() || committed.parent == active.parent {
                active.parent.clone()
            } else {
                return Err(MetadataError::InvalidArgument(format!(
                    "cannot change parent of active snapshot {k} on commit"
                )));
            };
            let now = crate::now_nanos();
            let record = SnapshotRecord {
                parent: parent.clone(),
                created: now,
                updated: now,
                children: Vec::new(),
                ..committed
            };
            if !parent.is_empty() {
                let pk = key(ns, snapshotter, &parent);
                let mut p = get(&t, &pk)?.ok_or_else(|| {
                    MetadataError::NotFound(format!("parent snapshot {parent} does not exist"))
                })?;
                p.children.retain(|c| c != k);
                p.children.push(name.to_owned());
                put(&mut t, &pk, &p)?;
            }
            t.remove(full.as_str())?;
            put(&mut t, &full_name, &record)?;
            record
        };
        if let Some(lease) = lease {
            let resource = snapshot_resource(snapshotter);
            let mut held = tx.open_table(crate::db::LEASE_RESOURCES)?;
            held.remove(crate::leases::resource_key(ns, lease, &resource, k).as_str())?;
            drop(held);
            add_resource_in(&tx, ns, lease, &resource, name)?;
        }
        self.commit(tx, Mutation::default())?;
        Ok(record)
    }

    /// Forgets the snapshot `k`; one with children is FailedPrecondition. The backend's copy
    /// goes at the next collection.
    pub fn snapshot_remove(
        &self,
        ns: &str,
        snapshotter: &str,
        k: &str,
    ) -> Result<(), MetadataError> {
        let tx = self.write()?;
        {
            let mut t = tx.open_table(Table::Snapshots.def())?;
            let full = key(ns, snapshotter, k);
            let record = get(&t, &full)?.ok_or_else(|| not_found(k))?;
            for child in &record.children {
                // A child the collector removed may still be listed.
                if get(&t, &key(ns, snapshotter, child))?.is_some() {
                    return Err(MetadataError::FailedPrecondition(format!(
                        "cannot remove snapshot {k} with child {child}"
                    )));
                }
            }
            t.remove(full.as_str())?;
            if !record.parent.is_empty() {
                let pk = key(ns, snapshotter, &record.parent);
                if let Some(mut parent) = get(&t, &pk)? {
                    parent.children.retain(|c| c != k);
                    put(&mut t, &pk, &parent)?;
                }
            }
        }
        self.commit(tx, Mutation::DELETION)?;
        self.mark_backends_dirty();
        Ok(())
    }

    /// Changes the labels of `k` by containerd's field-path rules.
    pub fn snapshot_update(
        &self,
        ns: &str,
        snapshotter: &str,
        k: &str,
        labels: &BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<SnapshotRecord, MetadataError> {
        let tx = self.write()?;
        let record = {
            let mut t = tx.open_table(Table::Snapshots.def())?;
            let full = key(ns, snapshotter, k);
            let mut record = get(&t, &full)?.ok_or_else(|| not_found(k))?;
            crate::content::apply_label_paths(
                &mut record.labels,
                labels,
                paths,
                &format!("snapshot {k:?}"),
            )?;
            record.labels.retain(|_, v| !v.is_empty());
            record.updated = crate::now_nanos();
            put(&mut t, &full, &record)?;
            record
        };
        self.commit(tx, Mutation::default())?;
        Ok(record)
    }
}
