//! A write into a namespace of a blob the store already has for another namespace, under the
//! `shared` policy. As containerd's, the writer starts at the blob's end, so a commit records
//! the blob without a byte written; the first write or truncation copies the blob into an
//! ingest of its own and goes on from there.

use std::time::SystemTime;

use crated_content::{ContentError, ContentStore, ContentWriter, IngestStatus};
use futures::StreamExt;

pub(super) struct SharedBlobWriter {
    store: std::sync::Arc<dyn ContentStore>,
    /// The store's ref for an ingest of this write, once it needs one.
    backend_ref: String,
    digest: String,
    size: u64,
    started_at: SystemTime,
    /// The ingest the blob was copied into, once written to.
    copy: Option<Box<dyn ContentWriter>>,
}

impl SharedBlobWriter {
    pub(super) fn new(
        store: std::sync::Arc<dyn ContentStore>,
        backend_ref: String,
        digest: String,
        size: u64,
    ) -> Self {
        SharedBlobWriter {
            store,
            backend_ref,
            digest,
            size,
            started_at: SystemTime::now(),
            copy: None,
        }
    }

    /// Copies the first `keep` bytes of the blob into an ingest of this write.
    async fn unshare(&mut self, keep: u64) -> Result<&mut Box<dyn ContentWriter>, ContentError> {
        if self.copy.is_none() {
            let mut writer = self.store.writer(&self.backend_ref, 0, None).await?;
            if writer.offset() > 0 {
                writer.write(Vec::new(), true, SystemTime::now()).await?;
            }
            if keep > 0 {
                let mut chunks = self.store.read(&self.digest, 0, keep, self.size).await?;
                while let Some(chunk) = chunks.next().await {
                    let (_, data) = chunk?;
                    writer.write(data, false, SystemTime::now()).await?;
                }
            }
            self.copy = Some(writer);
        }
        self.copy.as_mut().ok_or_else(|| ContentError::Other {
            kind: crated_errdefs::Kind::Unknown,
            message: "shared blob copy vanished".into(),
        })
    }
}

#[async_trait::async_trait]
impl ContentWriter for SharedBlobWriter {
    fn offset(&self) -> u64 {
        self.copy.as_ref().map_or(self.size, |w| w.offset())
    }

    fn keeps_given_time(&self) -> bool {
        self.copy.as_ref().is_none_or(|w| w.keeps_given_time())
    }

    fn set_total(&mut self, total: u64) {
        if let Some(w) = self.copy.as_mut() {
            w.set_total(total);
        }
    }

    fn set_expected(&mut self, expected: &str) -> Result<(), ContentError> {
        match self.copy.as_mut() {
            Some(w) => w.set_expected(expected),
            None => Ok(()),
        }
    }

    async fn stat(&mut self) -> Result<(IngestStatus, String), ContentError> {
        if let Some(w) = self.copy.as_mut() {
            return w.stat().await;
        }
        let status = IngestStatus {
            reference: self.backend_ref.clone(),
            offset: self.size,
            total: self.size,
            expected: Some(crated_content::Digest::parse(&self.digest)?),
            started_at: self.started_at,
            updated_at: self.started_at,
        };
        Ok((status, self.digest.clone()))
    }

    async fn write(
        &mut self,
        data: Vec<u8>,
        reset: bool,
        at: SystemTime,
    ) -> Result<(), ContentError> {
        if self.copy.is_none() && data.is_empty() && !reset {
            return Ok(());
        }
        let keep = if reset { 0 } else { self.size };
        let copy = self.unshare(keep).await?;
        copy.write(data, false, at).await
    }

    async fn commit(
        self: Box<Self>,
        size: u64,
        expected: Option<String>,
    ) -> Result<String, ContentError> {
        if let Some(copy) = self.copy {
            return copy.commit(size, expected).await;
        }
        if size != 0 && size != self.size {
            return Err(ContentError::FailedPrecondition(format!(
                "{:?} failed size validation: {} != {size}",
                self.backend_ref, self.size
            )));
        }
        if expected.as_ref().is_some_and(|e| *e != self.digest) {
            return Err(ContentError::FailedPrecondition(format!(
                "{:?} unexpected digest",
                self.backend_ref
            )));
        }
        // Still there (the caller holds off collections from here to the record).
        self.store.info(&self.digest).await?;
        Ok(self.digest)
    }
}
