//! Blobs read and written by other services (the differ, image import): the same namespaced
//! rules as the Content API, without a stream of messages in between.

use std::collections::HashMap;

use crated_api::containerd::services::content::v1 as api;
use crated_content::{ChunkStream, ContentWriter};
use tonic::Status;
use write::Ingest as _;

use super::{write, ContentService, NamespacedIngest};
use crate::edge::status;

impl ContentService {
    /// The whole blob `digest` as the namespace sees it (NotFound when it has no record of
    /// it), streamed and checked against its digest at the end; and its size.
    pub(crate) async fn read_blob(
        &self,
        ns: &str,
        digest: &str,
    ) -> Result<(ChunkStream, u64), Status> {
        self.read_blob_from(ns, digest, 0).await
    }

    /// Blob `digest` from `offset` to its end, as [`ContentService::read_blob`] reads it.
    pub(crate) async fn read_blob_from(
        &self,
        ns: &str,
        digest: &str,
        offset: u64,
    ) -> Result<(ChunkStream, u64), Status> {
        let record = self.record(ns, digest).await?;
        let chunks = self
            .store
            .read(digest, offset.min(record.size), record.size, record.size)
            .await
            .map_err(|e| status(&e))?;
        Ok((chunks, record.size))
    }

    /// The labels of blob `digest` if the namespace has it.
    pub(crate) async fn blob_labels(
        &self,
        ns: &str,
        digest: &str,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        self.record(ns, digest).await.ok().map(|r| r.labels)
    }

    /// Sets the given labels of blob `digest`, leaving its others.
    pub(crate) async fn add_labels(
        &self,
        ns: &str,
        digest: &str,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<(), Status> {
        let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        let (db, ns, digest) = (self.db.clone(), ns.to_owned(), digest.to_owned());
        crate::edge::blocking(move || db.content_update(&ns, &digest, &labels, &paths))
            .await
            .map(|_| ())
    }

    /// Opens an ingest named `reference` in the namespace, under `lease` if any.
    pub(crate) async fn ingest_blob(
        &self,
        ns: &str,
        lease: Option<String>,
        reference: &str,
    ) -> Result<BlobIngest, Status> {
        let ingest = NamespacedIngest {
            service: self.clone(),
            ns: ns.to_owned(),
            lease,
            reference: reference.to_owned(),
            backend_ref: Default::default(),
        };
        let first = api::WriteContentRequest {
            r#ref: reference.to_owned(),
            ..Default::default()
        };
        let mut writer = ingest.open(&first).await?;
        if writer.offset() > 0 {
            // A leftover of an earlier attempt under the same name: start over.
            writer
                .write(Vec::new(), true, std::time::SystemTime::now())
                .await
                .map_err(|e| status(&e))?;
        }
        Ok(BlobIngest { ingest, writer })
    }
}

/// A blob being written; commit it or abort it.
pub(crate) struct BlobIngest {
    ingest: NamespacedIngest,
    writer: Box<dyn ContentWriter>,
}

impl BlobIngest {
    pub(crate) async fn write(&mut self, data: Vec<u8>) -> Result<(), Status> {
        self.writer
            .write(data, false, std::time::SystemTime::now())
            .await
            .map_err(|e| status(&e))
    }

    /// Bytes written so far.
    pub(crate) fn offset(&self) -> u64 {
        self.writer.offset()
    }

    /// Commits what was written with `labels`: its digest and size.
    pub(crate) async fn commit(
        self,
        labels: HashMap<String, String>,
    ) -> Result<(String, u64), Status> {
        self.commit_checked(None, labels).await
    }

    /// Commits what was written with `labels` if it is `expected` (digest, size); the digest
    /// and size committed.
    pub(crate) async fn commit_checked(
        mut self,
        expected: Option<(&str, u64)>,
        labels: HashMap<String, String>,
    ) -> Result<(String, u64), Status> {
        let (_, digest) = self.writer.stat().await.map_err(|e| status(&e))?;
        let size = self.writer.offset();
        let req = api::WriteContentRequest {
            r#ref: self.ingest.reference.clone(),
            total: expected.map_or(size, |(_, s)| s) as i64,
            expected: expected.map(|(d, _)| d.to_owned()).unwrap_or_default(),
            labels,
            ..Default::default()
        };
        let digest = self.ingest.commit(self.writer, digest, &req).await?;
        Ok((digest, size))
    }

    pub(crate) async fn abort(self) {
        drop(self.writer);
        self.ingest.discard().await;
    }
}
