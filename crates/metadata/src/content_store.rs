//! Content as a namespace sees it, as containerd's metadata content store
//! (core/metadata/content.go): a namespace sees a blob once it has a record of it, and its
//! ingests are recorded too (under the writer's lease, or expiring). With the `shared` policy a
//! namespace may claim a blob another namespace has without writing it again (see `shared.rs`).

mod shared;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crated_content::{ChunkStream, ContentError, ContentStore, ContentWriter, IngestStatus};
use crated_errdefs::{HasKind, Kind};
use crated_plugin::{types, InitContext, PluginError};

use crate::{Backend, ContentRecord, MetadataError, MetadataStore};

#[derive(Debug, thiserror::Error)]
pub enum ContentStoreError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("blocking task failed: {0}")]
    Task(String),
}

impl HasKind for ContentStoreError {
    fn kind(&self) -> Kind {
        match self {
            ContentStoreError::Metadata(e) => e.kind(),
            ContentStoreError::Content(e) => e.kind(),
            ContentStoreError::Task(_) => Kind::Internal,
        }
    }
}

type Result<T> = std::result::Result<T, ContentStoreError>;

/// Runs blocking record work off the async threads.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> std::result::Result<T, MetadataError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => Ok(result?),
        Err(join) => Err(ContentStoreError::Task(join.to_string())),
    }
}

fn check_digest(digest: &str) -> Result<()> {
    Ok(crated_content::validate_digest(digest)?)
}

/// A content store seen through the metadata store's records of each namespace.
#[derive(Clone)]
pub struct NamespacedContentStore {
    db: Arc<MetadataStore>,
    store: Arc<dyn ContentStore>,
}

impl NamespacedContentStore {
    pub fn new(db: Arc<MetadataStore>, store: Arc<dyn ContentStore>) -> Self {
        NamespacedContentStore { db, store }
    }

    /// The store for a plugin that requires the metadata and content plugins.
    pub fn from_context(ctx: &InitContext) -> std::result::Result<Self, PluginError> {
        let db = ctx.get_single::<MetadataStore>(types::METADATA)?;
        // The first content store that started, as containerd's metadata plugin picks it:
        // a proxy store serves when the local one is disabled.
        let store = ctx.get_single::<Arc<dyn ContentStore>>(types::CONTENT)?;
        Ok(NamespacedContentStore::new(db, Arc::clone(&store)))
    }

    /// The store the blobs are in, for all namespaces.
    pub fn backend(&self) -> &Arc<dyn ContentStore> {
        &self.store
    }

    /// The namespace's record of blob `digest`.
    pub async fn info(&self, ns: &str, digest: &str) -> Result<ContentRecord> {
        check_digest(digest)?;
        let (db, ns, digest) = (self.db.clone(), ns.to_owned(), digest.to_owned());
        blocking(move || db.content_get(&ns, &digest)).await
    }

    /// containerd's Update: the labels named by `paths` (all of them when empty).
    pub async fn update(
        &self,
        ns: &str,
        digest: &str,
        labels: BTreeMap<String, String>,
        paths: Vec<String>,
    ) -> Result<ContentRecord> {
        check_digest(digest)?;
        let (db, ns, digest) = (self.db.clone(), ns.to_owned(), digest.to_owned());
        blocking(move || db.content_update(&ns, &digest, &labels, &paths)).await
    }

    /// Sets the given labels of blob `digest`, leaving its others.
    pub async fn add_labels(
        &self,
        ns: &str,
        digest: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<()> {
        let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        let (db, ns, digest) = (self.db.clone(), ns.to_owned(), digest.to_owned());
        blocking(move || db.content_update(&ns, &digest, &labels, &paths))
            .await
            .map(|_| ())
    }

    pub async fn list(&self, ns: &str) -> Result<Vec<ContentRecord>> {
        let (db, ns) = (self.db.clone(), ns.to_owned());
        blocking(move || db.content_list(&ns)).await
    }

    /// Forgets the namespace's record; the blob stays on disk until garbage collection, as in
    /// containerd.
    pub async fn delete(&self, ns: &str, digest: &str) -> Result<()> {
        check_digest(digest)?;
        let (db, ns, digest) = (self.db.clone(), ns.to_owned(), digest.to_owned());
        blocking(move || db.content_delete(&ns, &digest)).await
    }

    /// Blob `digest` from `offset` to its end, checked against its digest at the end, and its
    /// size. NotFound when the namespace has no record of it.
    pub async fn read(&self, ns: &str, digest: &str, offset: u64) -> Result<(ChunkStream, u64)> {
        let record = self.info(ns, digest).await?;
        let chunks = self
            .store
            .read(digest, offset.min(record.size), record.size, record.size)
            .await?;
        Ok((chunks, record.size))
    }

    /// The status of the namespace's ingest `reference`.
    pub async fn status(&self, ns: &str, reference: &str) -> Result<IngestStatus> {
        let (db, ns, r) = (self.db.clone(), ns.to_owned(), reference.to_owned());
        let record = blocking(move || db.ingest_get(&ns, &r)).await?;
        Ok(self.store.status(&record.backend_ref).await?)
    }

    /// The statuses of the namespace's ingests whose reference is `wanted`, with their
    /// references. An ingest whose writer never wrote anything has no status yet.
    pub async fn statuses(
        &self,
        ns: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, IngestStatus)>> {
        let (db, ns) = (self.db.clone(), ns.to_owned());
        let records = blocking(move || db.ingest_list(&ns)).await?;
        let mut statuses = Vec::new();
        for record in records {
            if !wanted(&record.reference) {
                continue;
            }
            if let Ok(st) = self.store.status(&record.backend_ref).await {
                statuses.push((record.reference, st));
            }
        }
        Ok(statuses)
    }

    /// Ends the namespace's ingest `reference` and drops what it wrote.
    pub async fn abort(&self, ns: &str, reference: &str) -> Result<()> {
        let (db, ns, r) = (self.db.clone(), ns.to_owned(), reference.to_owned());
        let record = blocking(move || db.ingest_remove(&ns, &r)).await?;
        match self.store.abort(&record.backend_ref).await {
            Ok(()) | Err(ContentError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The ingest `reference` of the namespace, under `lease` if any; nothing is recorded
    /// until it opens.
    pub fn ingest(&self, ns: &str, lease: Option<String>, reference: &str) -> NamespacedIngest {
        NamespacedIngest {
            content: self.clone(),
            ns: ns.to_owned(),
            lease,
            reference: reference.to_owned(),
            backend_ref: Mutex::default(),
        }
    }

    /// Opens ingest `reference` to write a whole blob from its start.
    pub async fn ingest_blob(
        &self,
        ns: &str,
        lease: Option<String>,
        reference: &str,
    ) -> Result<BlobIngest> {
        let ingest = self.ingest(ns, lease, reference);
        let mut writer = ingest.open(0, None, &HashMap::new()).await?;
        if writer.offset() > 0 {
            // A leftover of an earlier attempt under the same name: start over.
            writer.write(Vec::new(), true, SystemTime::now()).await?;
        }
        Ok(BlobIngest { ingest, writer })
    }

    /// With the shared policy, the size of blob `digest` when the store has it (for another
    /// namespace) and it is the size the writer declared, if any.
    async fn shared_blob(&self, digest: Option<&str>, declared: i64) -> Option<u64> {
        let digest = digest.filter(|_| self.db.shared_content())?;
        let info = self.store.info(digest).await.ok()?;
        (declared <= 0 || info.size == declared as u64).then_some(info.size)
    }

    async fn drop_ingest_record(&self, ns: &str, reference: &str) {
        let (db, ns, r) = (self.db.clone(), ns.to_owned(), reference.to_owned());
        let _ = blocking(move || db.ingest_remove(&ns, &r)).await;
    }
}

/// A write of one namespace: its ingest is recorded (under the lease, or expiring), and the
/// committed blob recorded in the namespace.
pub struct NamespacedIngest {
    content: NamespacedContentStore,
    ns: String,
    lease: Option<String>,
    reference: String,
    /// The store's ref of this ingest, once open.
    backend_ref: Mutex<String>,
}

impl NamespacedIngest {
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Whether the namespace has blob `digest` already.
    pub async fn has(&self, digest: &str) -> bool {
        self.content.info(&self.ns, digest).await.is_ok()
    }

    /// Records the ingest and opens its writer, for a blob of `total` bytes (if positive) and
    /// digest `expected` (if known). The labels of the opening request may say when the
    /// ingest expires.
    pub async fn open(
        &self,
        total: i64,
        expected: Option<&str>,
        labels: &HashMap<String, String>,
    ) -> Result<Box<dyn ContentWriter>> {
        let content = &self.content;
        let expires_at = labels
            .get(crate::gc::LABEL_EXPIRE)
            .and_then(|v| crate::gc::parse_expire(v));
        // Held from the record to the writer's start, so GC sees the ingest or none of it.
        let _start = content.db.writing_to(&Backend::Content).await;
        let (db, ns, r, lease) = (
            content.db.clone(),
            self.ns.clone(),
            self.reference.clone(),
            self.lease.clone(),
        );
        let (record, created) =
            blocking(move || db.ingest_open(&ns, &r, lease.as_deref(), expires_at)).await?;
        record
            .backend_ref
            .clone_into(&mut self.backend_ref.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(size) = content.shared_blob(expected, total).await {
            return Ok(Box::new(shared::SharedBlobWriter::new(
                content.store.clone(),
                record.backend_ref,
                expected.unwrap_or_default().to_owned(),
                size,
            )));
        }
        let opened = content
            .store
            .writer(&record.backend_ref, total.max(0) as u64, expected)
            .await;
        if opened.is_err() && created {
            // Nothing was written under this record: it must not hold the ref for a day. A
            // record that was there before belongs to a writer that may still be at work.
            content.drop_ingest_record(&self.ns, &self.reference).await;
        }
        Ok(opened?)
    }

    /// Drops the ingest: its record and what it wrote.
    pub async fn discard(&self) {
        self.content
            .drop_ingest_record(&self.ns, &self.reference)
            .await;
        let backend_ref = self
            .backend_ref
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Err(e) = self.content.store.abort(&backend_ref).await {
            tracing::debug!("aborting ingest {backend_ref}: {e}");
        }
    }

    /// Commits what `writer` wrote (its digest so far is `digest`) as a blob of `total` bytes
    /// (if positive) and digest `expected` (if given), and records it in the namespace with
    /// `labels`; the digest committed.
    pub async fn commit(
        &self,
        writer: Box<dyn ContentWriter>,
        digest: String,
        total: i64,
        expected: Option<&str>,
        labels: HashMap<String, String>,
    ) -> Result<String> {
        let size = writer.offset();
        let content = &self.content;
        // Held from the backend's commit to the record, so GC never sees the blob unrecorded.
        let _commit = content.db.writing_to(&Backend::Content).await;
        let digest = match writer
            .commit(total.max(0) as u64, expected.map(str::to_owned))
            .await
        {
            Ok(d) => d,
            // Same bytes already in the store (checked against the digest): this namespace
            // still gets its record.
            Err(ContentError::AlreadyExists(_)) => digest,
            Err(e) => return Err(e.into()),
        };
        let now = crate::now_nanos();
        let record = ContentRecord {
            digest: digest.clone(),
            size,
            created_at: now,
            updated_at: now,
            labels: labels.into_iter().collect(),
        };
        let (db, ns, lease, r) = (
            content.db.clone(),
            self.ns.clone(),
            self.lease.clone(),
            self.reference.clone(),
        );
        let added =
            blocking(move || db.content_add(&ns, &record, lease.as_deref(), Some(&r))).await;
        if let Err(e) = added {
            if e.kind() == Kind::AlreadyExists {
                content.drop_ingest_record(&self.ns, &self.reference).await;
            }
            return Err(e);
        }
        Ok(digest)
    }
}

/// A whole blob being written by the daemon itself (the differ, a pull); commit it or abort
/// it.
pub struct BlobIngest {
    ingest: NamespacedIngest,
    writer: Box<dyn ContentWriter>,
}

impl BlobIngest {
    pub async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        Ok(self.writer.write(data, false, SystemTime::now()).await?)
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.writer.offset()
    }

    /// Commits what was written with `labels`: its digest and size.
    pub async fn commit(self, labels: HashMap<String, String>) -> Result<(String, u64)> {
        self.commit_checked(None, labels).await
    }

    /// Commits what was written with `labels` if it is `expected` (digest, size); the digest
    /// and size committed.
    pub async fn commit_checked(
        mut self,
        expected: Option<(&str, u64)>,
        labels: HashMap<String, String>,
    ) -> Result<(String, u64)> {
        let (_, digest) = self.writer.stat().await?;
        let size = self.writer.offset();
        let total = expected.map_or(size, |(_, s)| s) as i64;
        let digest = self
            .ingest
            .commit(
                self.writer,
                digest,
                total,
                expected.map(|(d, _)| d).filter(|d| !d.is_empty()),
                labels,
            )
            .await?;
        Ok((digest, size))
    }

    pub async fn abort(self) {
        drop(self.writer);
        self.ingest.discard().await;
    }
}
