//! Ingests: the writes in progress of each namespace. The data lives in the content backend
//! under `backend_ref`; the record says who holds it: a lease, or nobody until `expires_at`, when
//! GC aborts it (containerd gives an unleased ingest 24 hours).

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::db::{ensure_namespace, key, MetadataStore, Mutation, Table, LEASE_RESOURCES};
use crate::leases::{add_resource_in, resource_key};
use crate::MetadataError;

/// How long an ingest that no lease holds survives, as in containerd.
pub const UNLEASED_INGEST_LIFETIME_NANOS: u64 = 24 * 3600 * 1_000_000_000;

/// The lease resource type of ingests, as containerd names it.
pub const INGEST_RESOURCE: &str = "ingests";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestRecord {
    pub reference: String,
    /// The ref the backend store knows this write by.
    pub backend_ref: String,
    pub lease: Option<String>,
    /// Nanoseconds since the epoch; none while a lease holds it.
    pub expires_at: Option<u64>,
}

/// Ends the ingest's record (its data was committed or aborted) and its lease entry.
pub(crate) fn remove_ingest_in(
    tx: &redb::WriteTransaction,
    ns: &str,
    reference: &str,
) -> Result<Option<IngestRecord>, MetadataError> {
    let mut t = tx.open_table(Table::Ingests.def())?;
    let Some(old) = t.remove(key(ns, reference).as_str())? else {
        return Ok(None);
    };
    let record: IngestRecord = serde_json::from_slice(old.value())?;
    drop(old);
    if let Some(lease) = &record.lease {
        let mut resources = tx.open_table(LEASE_RESOURCES)?;
        resources.remove(resource_key(ns, lease, INGEST_RESOURCE, reference).as_str())?;
    }
    Ok(Some(record))
}

impl MetadataStore {
    /// The record of the ingest `ns/reference`, and whether it is new: under `lease` when
    /// given, else expiring at `expires_at` (default: a day from now). An existing record is
    /// kept (a resumed write keeps its backend ref) but moves to `lease` when one is given.
    pub fn ingest_open(
        &self,
        ns: &str,
        reference: &str,
        lease: Option<&str>,
        expires_at: Option<u64>,
    ) -> Result<(IngestRecord, bool), MetadataError> {
        let tx = self.write()?;
        ensure_namespace(&tx, ns)?;
        let k = key(ns, reference);
        let existing: Option<IngestRecord> = {
            let t = tx.open_table(Table::Ingests.def())?;
            let found = t.get(k.as_str())?;
            found
                .map(|v| serde_json::from_slice(v.value()))
                .transpose()?
        };
        let created = existing.is_none();
        let mut record = existing.unwrap_or_else(|| IngestRecord {
            reference: reference.to_owned(),
            backend_ref: key(ns, reference),
            lease: None,
            expires_at: None,
        });
        if let Some(lease) = lease {
            if let Some(old) = record.lease.as_deref().filter(|old| *old != lease) {
                tx.open_table(LEASE_RESOURCES)?
                    .remove(resource_key(ns, old, INGEST_RESOURCE, reference).as_str())?;
            }
            add_resource_in(&tx, ns, lease, INGEST_RESOURCE, reference)?;
            record.lease = Some(lease.to_owned());
            record.expires_at = None;
        } else if record.lease.is_none() {
            let expiry = expires_at.unwrap_or_else(|| {
                crate::now_nanos().saturating_add(UNLEASED_INGEST_LIFETIME_NANOS)
            });
            record.expires_at = Some(expiry);
        }
        tx.open_table(Table::Ingests.def())?
            .insert(k.as_str(), serde_json::to_vec(&record)?.as_slice())?;
        self.commit(tx, Mutation::expiring(record.expires_at))?;
        Ok((record, created))
    }

    pub fn ingest_get(&self, ns: &str, reference: &str) -> Result<IngestRecord, MetadataError> {
        self.get_in(Table::Ingests, ns, reference, || {
            MetadataError::NotFound(format!("ingest {reference:?}"))
        })
    }

    pub fn ingest_list(&self, ns: &str) -> Result<Vec<IngestRecord>, MetadataError> {
        self.list_in(Table::Ingests, ns)
    }

    /// Drops the record of an aborted ingest; the caller aborts the backend write.
    pub fn ingest_remove(&self, ns: &str, reference: &str) -> Result<IngestRecord, MetadataError> {
        let tx = self.write()?;
        let record = remove_ingest_in(&tx, ns, reference)?
            .ok_or_else(|| MetadataError::NotFound(format!("ingest {reference:?}")))?;
        self.commit(tx, Mutation::default())?;
        // Its data is aborted by the caller; if that fails, the next sweep does it.
        self.mark_backends_dirty();
        Ok(record)
    }
}
