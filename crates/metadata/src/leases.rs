//! Leases: named holds on resources (content, ingests, snapshots) that keep them from GC.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::db::{insert_new, key, MetadataStore, Mutation, Table, LEASE_RESOURCES};
use crate::{validate, MetadataError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub created_at: u64,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeaseResource {
    pub resource_type: String,
    pub id: String,
}

fn not_found(id: &str) -> MetadataError {
    MetadataError::NotFound(format!("lease {id:?}"))
}

pub(crate) fn resource_key(ns: &str, lease: &str, resource_type: &str, id: &str) -> String {
    format!("{}{resource_type}\0{id}", lease_prefix(ns, lease))
}

/// Where the resources of lease `ns/lease` start in [`LEASE_RESOURCES`].
fn lease_prefix(ns: &str, lease: &str) -> String {
    format!("{ns}/{lease}\0")
}

/// NotFound unless the lease exists.
fn require_lease(
    leases: &impl ReadableTable<&'static str, &'static [u8]>,
    ns: &str,
    lease: &str,
) -> Result<(), MetadataError> {
    match leases.get(key(ns, lease).as_str())? {
        Some(_) => Ok(()),
        None => Err(not_found(lease)),
    }
}

pub(crate) fn add_resource_in(
    tx: &redb::WriteTransaction,
    ns: &str,
    lease: &str,
    resource_type: &str,
    id: &str,
) -> Result<(), MetadataError> {
    require_lease(&tx.open_table(Table::Leases.def())?, ns, lease)?;
    let mut t = tx.open_table(LEASE_RESOURCES)?;
    t.insert(resource_key(ns, lease, resource_type, id).as_str(), &[][..])?;
    Ok(())
}

impl MetadataStore {
    pub fn lease_create(&self, ns: &str, lease: &Lease) -> Result<(), MetadataError> {
        // containerd takes any id (its clients make them with `_` and `-` side by side, or
        // from a path); ours must only not hold NUL, our keys' separator.
        if lease.id.is_empty() {
            return Err(MetadataError::InvalidArgument(
                "lease id must be provided".into(),
            ));
        }
        if lease.id.contains('\0') {
            return Err(MetadataError::InvalidArgument(format!(
                "lease id {:?} must not contain NUL",
                lease.id
            )));
        }
        for (k, v) in &lease.labels {
            validate::label(k, v)?;
        }
        let tx = self.write()?;
        insert_new(&tx, Table::Leases, ns, &lease.id, lease, || {
            format!("lease {:?}", lease.id)
        })?;
        let expires_at = lease
            .labels
            .get(crate::gc::LABEL_EXPIRE)
            .and_then(|v| crate::gc::parse_expire(v));
        self.commit(tx, Mutation::expiring(expires_at))?;
        Ok(())
    }

    pub fn lease_list(&self, ns: &str) -> Result<Vec<Lease>, MetadataError> {
        self.list_in(Table::Leases, ns)
    }

    /// Removes the lease and its resource list (the resources themselves stay until GC).
    pub fn lease_delete(&self, ns: &str, id: &str) -> Result<(), MetadataError> {
        let tx = self.write()?;
        self.lease_delete_in(&tx, ns, id)?;
        self.commit(tx, Mutation::DELETION)?;
        Ok(())
    }

    pub(crate) fn lease_delete_in(
        &self,
        tx: &redb::WriteTransaction,
        ns: &str,
        id: &str,
    ) -> Result<(), MetadataError> {
        let mut t = tx.open_table(Table::Leases.def())?;
        if t.remove(key(ns, id).as_str())?.is_none() {
            return Err(not_found(id));
        }
        let mut resources = tx.open_table(LEASE_RESOURCES)?;
        let prefix = lease_prefix(ns, id);
        let mut keys = Vec::new();
        for entry in resources.range(prefix.as_str()..)? {
            let key = entry?.0.value().to_owned();
            if !key.starts_with(&prefix) {
                break;
            }
            keys.push(key);
        }
        for k in keys {
            resources.remove(k.as_str())?;
        }
        Ok(())
    }

    pub fn lease_add_resource(
        &self,
        ns: &str,
        lease: &str,
        resource: &LeaseResource,
    ) -> Result<(), MetadataError> {
        validate::lease_resource(&resource.resource_type, &resource.id)?;
        let tx = self.write()?;
        add_resource_in(&tx, ns, lease, &resource.resource_type, &resource.id)?;
        self.commit(tx, Default::default())?;
        Ok(())
    }

    pub fn lease_delete_resource(
        &self,
        ns: &str,
        lease: &str,
        resource: &LeaseResource,
    ) -> Result<(), MetadataError> {
        validate::lease_resource(&resource.resource_type, &resource.id)?;
        let tx = self.write()?;
        {
            require_lease(&tx.open_table(Table::Leases.def())?, ns, lease)?;
            let mut t = tx.open_table(LEASE_RESOURCES)?;
            t.remove(resource_key(ns, lease, &resource.resource_type, &resource.id).as_str())?;
        }
        self.commit(tx, Mutation::DELETION)?;
        Ok(())
    }

    pub fn lease_resources(
        &self,
        ns: &str,
        lease: &str,
    ) -> Result<Vec<LeaseResource>, MetadataError> {
        let tx = self.db.begin_read()?;
        require_lease(&tx.open_table(Table::Leases.def())?, ns, lease)?;
        let t = tx.open_table(LEASE_RESOURCES)?;
        resources_under(&t, ns, lease)
    }
}

/// The resources lease `ns/lease` holds.
pub(crate) fn resources_under(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    ns: &str,
    lease: &str,
) -> Result<Vec<LeaseResource>, MetadataError> {
    let prefix = lease_prefix(ns, lease);
    let mut out = Vec::new();
    for entry in t.range(prefix.as_str()..)? {
        let (k, _) = entry?;
        let Some(rest) = k.value().strip_prefix(&prefix) else {
            break;
        };
        if let Some((resource_type, id)) = rest.split_once('\0') {
            out.push(LeaseResource {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ContentRecord;
    use crated_errdefs::{HasKind, Kind};

    /// ctr names the lease of `images mount` after the mount point; one such lease must not
    /// see the resources of another whose id it starts with.
    #[test]
    fn lease_ids_may_be_paths() {
        let dir = tempfile::tempdir().unwrap();
        let s = MetadataStore::open(&dir.path().join("m.db")).unwrap();
        for id in ["/tmp/a", "/tmp/a/b"] {
            let lease = Lease {
                id: id.into(),
                ..Default::default()
            };
            s.lease_create("ns", &lease).unwrap();
            let r = LeaseResource {
                resource_type: "content".into(),
                id: format!("sha256:{}", "a".repeat(64)),
            };
            s.lease_add_resource("ns", id, &r).unwrap();
        }
        assert_eq!(s.lease_resources("ns", "/tmp/a").unwrap().len(), 1);
        s.lease_delete("ns", "/tmp/a").unwrap();
        assert_eq!(s.lease_resources("ns", "/tmp/a/b").unwrap().len(), 1);
        let nul = Lease {
            id: "a\0b".into(),
            ..Default::default()
        };
        assert_eq!(
            s.lease_create("ns", &nul).unwrap_err().kind(),
            Kind::InvalidArgument
        );
    }

    /// A version 1 database (lease resources keyed `<ns>/<lease>/<type>\0<id>`) is migrated.
    #[test]
    fn version_1_lease_resources_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let s = MetadataStore::open(&path).unwrap();
        let lease = Lease {
            id: "old".into(),
            ..Default::default()
        };
        s.lease_create("ns", &lease).unwrap();
        let tx = s.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(LEASE_RESOURCES).unwrap();
            t.insert("ns/old/content\0sha256:abc", &[][..]).unwrap();
            tx.open_table(crate::db::META)
                .unwrap()
                .insert("schema_version", 1)
                .unwrap();
        }
        tx.commit().unwrap();
        drop(s);
        let s = MetadataStore::open(&path).unwrap();
        let held = s.lease_resources("ns", "old").unwrap();
        assert_eq!(
            held,
            vec![LeaseResource {
                resource_type: "content".into(),
                id: "sha256:abc".into()
            }]
        );
    }

    #[test]
    fn leases_hold_resources_and_namespaces_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = MetadataStore::open(&dir.path().join("m.db")).unwrap();
        s.lease_create(
            "ns1",
            &Lease {
                id: "l1".into(),
                created_at: 1,
                labels: BTreeMap::new(),
            },
        )
        .unwrap();
        assert_eq!(
            s.lease_create(
                "ns1",
                &Lease {
                    id: "l1".into(),
                    ..Default::default()
                }
            )
            .unwrap_err()
            .kind(),
            Kind::AlreadyExists
        );
        let rec = ContentRecord {
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 3,
            ..Default::default()
        };
        s.content_add("ns1", &rec, Some("l1"), None).unwrap();
        assert_eq!(
            s.content_add("ns1", &rec, None, None).unwrap_err().kind(),
            Kind::AlreadyExists
        );
        assert_eq!(
            s.lease_resources("ns1", "l1").unwrap(),
            [LeaseResource {
                resource_type: "content".into(),
                id: rec.digest.clone()
            }]
        );
        assert!(s.content_list("ns2").unwrap().is_empty());
        // The namespace now exists and holds things.
        assert_eq!(
            s.namespace_delete("ns1").unwrap_err().kind(),
            Kind::FailedPrecondition
        );
        s.lease_delete("ns1", "l1").unwrap();
        assert!(s.lease_resources("ns1", "l1").is_err());
        assert_eq!(
            s.lease_delete("ns1", "l1").unwrap_err().kind(),
            Kind::NotFound
        );
        let updated = s
            .content_update(
                "ns1",
                &rec.digest,
                &BTreeMap::from([("a".into(), "1".into())]),
                &["labels.a".into()],
            )
            .unwrap();
        assert_eq!(updated.labels["a"], "1");
        s.content_delete("ns1", &rec.digest).unwrap();
        s.namespace_delete("ns1").unwrap();
    }
}
