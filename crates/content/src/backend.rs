//! The content store as the metadata layer and GC see it: the local store, or one reached over
//! gRPC (a proxy plugin). Digests and refs here are the backend's own: no namespaces.

use futures::Stream;
use sha2::{Digest as _, Sha256};
use std::pin::Pin;
use std::time::SystemTime;

use crate::{ContentError, Info, IngestStatus, LocalStore, Writer};

/// Chunks of a blob, each with its offset.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<(u64, Vec<u8>), ContentError>> + Send>>;

/// How much one read chunk holds.
pub const READ_CHUNK: usize = 1 << 20;

/// Checks a read of a whole blob against its digest as its chunks go by: the chunk that ends
/// the blob is refused when the data is not what the digest says.
pub struct WholeBlobCheck {
    hasher: Option<Sha256>,
    digest: String,
    end: u64,
}

impl WholeBlobCheck {
    /// For a read of `[offset, end)` of a blob of `size` bytes: only a whole read is checked.
    pub fn new(digest: &str, offset: u64, end: u64, size: u64) -> Self {
        WholeBlobCheck {
            hasher: (offset == 0 && end == size).then(Sha256::new),
            digest: digest.to_owned(),
            end,
        }
    }

    /// Takes the chunk ending at `upto`; `place` says where the data came from, for the error.
    pub fn feed(&mut self, data: &[u8], upto: u64, place: &str) -> Result<(), ContentError> {
        let Some(h) = self.hasher.as_mut() else {
            return Ok(());
        };
        h.update(data);
        if upto < self.end {
            return Ok(());
        }
        let actual = format!("sha256:{:x}", h.clone().finalize());
        if actual != self.digest {
            return Err(ContentError::DataLoss(format!(
                "content {} is corrupt {place}: its data has digest {actual}",
                self.digest
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
pub trait ContentStore: Send + Sync + 'static {
    async fn info(&self, digest: &str) -> Result<Info, ContentError>;
    /// Every committed blob.
    async fn walk(&self) -> Result<Vec<Info>, ContentError>;
    async fn delete(&self, digest: &str) -> Result<(), ContentError>;
    /// The bytes `[offset, end)` of a blob of `size` bytes. A read of the whole blob is checked
    /// against its digest: the last chunk comes only once the data proved to be what it claims.
    async fn read(
        &self,
        digest: &str,
        offset: u64,
        end: u64,
        size: u64,
    ) -> Result<ChunkStream, ContentError>;
    /// Opens (or resumes) the write for `reference`; another one open on it is Unavailable.
    async fn writer(
        &self,
        reference: &str,
        total: u64,
        expected: Option<&str>,
    ) -> Result<Box<dyn ContentWriter>, ContentError>;
    async fn status(&self, reference: &str) -> Result<IngestStatus, ContentError>;
    async fn list_statuses(&self) -> Result<Vec<IngestStatus>, ContentError>;
    async fn abort(&self, reference: &str) -> Result<(), ContentError>;
}

/// One write in progress.
#[async_trait::async_trait]
pub trait ContentWriter: Send + 'static {
    fn offset(&self) -> u64;
    fn set_total(&mut self, total: u64);
    fn set_expected(&mut self, expected: &str) -> Result<(), ContentError>;
    /// The status and the digest of the data so far.
    async fn stat(&mut self) -> Result<(IngestStatus, String), ContentError>;
    /// Appends `data`, after dropping what was written when `reset`. `at` is when the write
    /// was accepted, the ingest's `updated_at` from then on.
    async fn write(
        &mut self,
        data: Vec<u8>,
        reset: bool,
        at: SystemTime,
    ) -> Result<(), ContentError>;
    /// Whether [`Self::write`] records the time it is given. A writer that cannot (a remote
    /// store's, which keeps its own) must have its writes land before they are answered, so
    /// that its time is before the answer.
    fn keeps_given_time(&self) -> bool {
        true
    }
    /// Checks size and digest and commits; the digest committed.
    async fn commit(
        self: Box<Self>,
        size: u64,
        expected: Option<String>,
    ) -> Result<String, ContentError>;
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ContentError> + Send + 'static,
) -> Result<T, ContentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ContentError::Other {
            kind: crated_errdefs::Kind::Unknown,
            message: format!("content task failed: {e}"),
        })?
}

#[async_trait::async_trait]
impl ContentStore for LocalStore {
    async fn info(&self, digest: &str) -> Result<Info, ContentError> {
        let (store, digest) = (self.clone(), digest.to_owned());
        blocking(move || store.info(&digest)).await
    }

    async fn walk(&self) -> Result<Vec<Info>, ContentError> {
        let store = self.clone();
        blocking(move || store.walk()).await
    }

    async fn delete(&self, digest: &str) -> Result<(), ContentError> {
        let (store, digest) = (self.clone(), digest.to_owned());
        blocking(move || store.delete(&digest)).await
    }

    async fn read(
        &self,
        digest: &str,
        offset: u64,
        end: u64,
        size: u64,
    ) -> Result<ChunkStream, ContentError> {
        let store = self.clone();
        let digest = digest.to_owned();
        // A read from the start (how clients read a blob) first checks the data against its
        // digest, unless this very file was checked already.
        let file = {
            let digest = digest.clone();
            blocking(move || {
                if offset == 0 {
                    store.open_verified(&digest)
                } else {
                    store.open_blob(&digest)
                }
            })
            .await?
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut check = WholeBlobCheck::new(&digest, offset, end, size);
            let mut at = offset;
            while at < end {
                let mut data = vec![0u8; ((end - at) as usize).min(READ_CHUNK)];
                let item = match file.read_at(&mut data, at) {
                    Ok(0) => Err(ContentError::DataLoss(format!(
                        "content {digest} is shorter on disk than its recorded size {size}"
                    ))),
                    Ok(n) => {
                        data.truncate(n);
                        Ok((at, data))
                    }
                    Err(e) => Err(ContentError::Io {
                        context: format!("reading {digest}"),
                        source: e,
                    }),
                };
                let item = item.and_then(|(off, data)| {
                    check.feed(&data, off + data.len() as u64, "on disk")?;
                    Ok((off, data))
                });
                let failed = item.is_err();
                if let Ok((_, ref data)) = item {
                    at += data.len() as u64;
                }
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn writer(
        &self,
        reference: &str,
        total: u64,
        expected: Option<&str>,
    ) -> Result<Box<dyn ContentWriter>, ContentError> {
        let store = self.clone();
        let (r, e) = (reference.to_owned(), expected.map(str::to_owned));
        let writer = {
            let store = store.clone();
            blocking(move || store.writer(&r, total, e.as_deref())).await?
        };
        Ok(Box::new(LocalWriter {
            store,
            writer: Some(writer),
        }))
    }

    async fn status(&self, reference: &str) -> Result<IngestStatus, ContentError> {
        let (store, r) = (self.clone(), reference.to_owned());
        blocking(move || store.status(&r)).await
    }

    async fn list_statuses(&self) -> Result<Vec<IngestStatus>, ContentError> {
        let store = self.clone();
        blocking(move || store.list_statuses()).await
    }

    async fn abort(&self, reference: &str) -> Result<(), ContentError> {
        let store = self.clone();
        let r = reference.to_owned();
        blocking(move || store.abort(&r)).await
    }
}

fn failed_earlier() -> ContentError {
    ContentError::FailedPrecondition("writer failed earlier".into())
}

/// A local writer, handed to a blocking thread for each write.
struct LocalWriter {
    store: LocalStore,
    /// Away only while a write runs; a failed write leaves none (the ref stays resumable).
    writer: Option<Writer>,
}

impl LocalWriter {
    fn writer(&mut self) -> Result<&mut Writer, ContentError> {
        self.writer.as_mut().ok_or_else(failed_earlier)
    }

    fn take(&mut self) -> Result<Writer, ContentError> {
        self.writer.take().ok_or_else(failed_earlier)
    }
}

#[async_trait::async_trait]
impl ContentWriter for LocalWriter {
    fn offset(&self) -> u64 {
        self.writer.as_ref().map_or(0, Writer::offset)
    }

    fn set_total(&mut self, total: u64) {
        if let Some(w) = self.writer.as_mut() {
            w.set_total(total);
        }
    }

    fn set_expected(&mut self, expected: &str) -> Result<(), ContentError> {
        self.writer()?.set_expected(expected)
    }

    async fn stat(&mut self) -> Result<(IngestStatus, String), ContentError> {
        let w = self.writer()?;
        Ok((w.status(), w.digest().to_string()))
    }

    async fn write(
        &mut self,
        data: Vec<u8>,
        reset: bool,
        at: SystemTime,
    ) -> Result<(), ContentError> {
        let mut w = self.take()?;
        let w = blocking(move || {
            if reset {
                w.truncate()?;
            }
            w.write(&data)?;
            w.set_updated_at(at);
            Ok(w)
        })
        .await?;
        self.writer = Some(w);
        Ok(())
    }

    async fn commit(
        mut self: Box<Self>,
        size: u64,
        expected: Option<String>,
    ) -> Result<String, ContentError> {
        let w = self.take()?;
        let store = self.store.clone();
        blocking(move || {
            store
                .commit(w, size, expected.as_deref())
                .map(|d| d.to_string())
        })
        .await
    }
}
