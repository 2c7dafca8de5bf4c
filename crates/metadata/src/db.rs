use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::MetadataError;

/// The schema this build writes. Older databases are migrated on open; newer ones refused.
pub const SCHEMA_VERSION: u64 = 2;

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// name -> JSON of the namespace's labels.
pub(crate) const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");

/// The tables holding namespaced records, keyed `<namespace>/<id>`. A namespace can be deleted
/// only when none of them has a key under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    Images,
    Blobs,
    Containers,
    Leases,
    Snapshots,
    Sandboxes,
    Ingests,
}

impl Table {
    pub(crate) const ALL: [Table; 7] = [
        Table::Images,
        Table::Blobs,
        Table::Containers,
        Table::Leases,
        Table::Snapshots,
        Table::Sandboxes,
        Table::Ingests,
    ];

    /// What the table holds, as messages name it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Images => "images",
            Table::Blobs => "blobs",
            Table::Containers => "containers",
            Table::Leases => "leases",
            Table::Snapshots => "snapshots",
            Table::Sandboxes => "sandboxes",
            Table::Ingests => "ingests",
        }
    }

    pub(crate) fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        // Blobs keep the table name of the first schema.
        let name = match self {
            Table::Blobs => "content",
            other => other.name(),
        };
        TableDefinition::new(name)
    }
}

/// `<namespace>/<lease>\0<type>\0<resource id>` -> empty: what each lease holds. Lease ids
/// may hold `/` (ctr names leases after paths), never NUL.
pub(crate) const LEASE_RESOURCES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("lease_resources");

/// The key of a namespaced record: `<ns>/<id>`.
pub(crate) fn key(ns: &str, id: &str) -> String {
    format!("{ns}/{id}")
}

/// Creates the namespace's entry when a record is first written in it, as containerd does.
pub(crate) fn ensure_namespace(tx: &redb::WriteTransaction, ns: &str) -> Result<(), MetadataError> {
    let mut namespaces = tx.open_table(NAMESPACES)?;
    if namespaces.get(ns)?.is_none() {
        namespaces.insert(ns, &b"{}"[..])?;
    }
    Ok(())
}

/// Inserts a new record `<ns>/<id>` into a resource table; a taken key is AlreadyExists,
/// naming `what`.
pub(crate) fn insert_new<T: serde::Serialize>(
    tx: &redb::WriteTransaction,
    table: Table,
    ns: &str,
    id: &str,
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<(), MetadataError> {
    ensure_namespace(tx, ns)?;
    let mut t = tx.open_table(table.def())?;
    let k = key(ns, id);
    if t.get(k.as_str())?.is_some() {
        return Err(MetadataError::AlreadyExists(what()));
    }
    t.insert(k.as_str(), serde_json::to_vec(value)?.as_slice())?;
    Ok(())
}

type Migration = fn(&redb::WriteTransaction) -> Result<(), MetadataError>;

/// Steps from version N to N+1, in order; index 0 upgrades version 0 (an empty file) to 1.
const MIGRATIONS: &[Migration] = &[|_tx| Ok(()), lease_resources_v2];

/// Version 1 keyed lease resources `<ns>/<lease>/<type>\0<id>`, which cannot tell a lease
/// named with a `/` apart; version 2 separates the lease with NUL.
fn lease_resources_v2(tx: &redb::WriteTransaction) -> Result<(), MetadataError> {
    let mut t = tx.open_table(LEASE_RESOURCES)?;
    let mut old = Vec::new();
    for entry in t.iter()? {
        old.push(entry?.0.value().to_owned());
    }
    for key in old {
        let mut parts = key.splitn(3, '/');
        if let (Some(ns), Some(lease), Some(rest)) = (parts.next(), parts.next(), parts.next()) {
            t.insert(format!("{ns}/{lease}\0{rest}").as_str(), &[][..])?;
        }
        t.remove(key.as_str())?;
    }
    Ok(())
}

/// What a committed change did, as the GC scheduler wants to hear of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mutation {
    /// Something was deleted, so a collection may free space.
    pub dirty: bool,
    /// A record that expires at this time (ns since the epoch) was written.
    pub expires_at: Option<u64>,
}

impl Mutation {
    /// A change that deleted something.
    pub const DELETION: Mutation = Mutation {
        dirty: true,
        expires_at: None,
    };

    /// A change that wrote a record expiring at `expires_at` (if any).
    pub fn expiring(expires_at: Option<u64>) -> Mutation {
        Mutation {
            dirty: false,
            expires_at,
        }
    }
}

type MutationHook = Box<dyn Fn(Mutation) + Send + Sync>;

/// A store a collection sweeps after the metadata store: what no record keeps goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Backend {
    Content,
    /// A snapshotter, by the name records use.
    Snapshotter(String),
}

/// See [`MetadataStore::backend_lock`].
pub type SweepLock = std::sync::Arc<tokio::sync::RwLock<()>>;

/// What [`MetadataStore::writing_to`] holds until dropped.
pub struct BackendWrite<'a> {
    _sweep: tokio::sync::OwnedRwLockReadGuard<()>,
    _collection: tokio::sync::RwLockReadGuard<'a, ()>,
}

/// The metadata database. Cheap to share behind an `Arc`; redb serialises writers.
pub struct MetadataStore {
    pub(crate) db: Database,
    /// The journal shared with the snapshotters' stores, if any.
    journal: Option<crated_wal::Journal>,
    writers: crated_wal::Writers,
    shared_content: std::sync::atomic::AtomicBool,
    on_mutation: std::sync::OnceLock<MutationHook>,
    /// Held shared by anything that puts data in a backend and then records it (a commit, an
    /// ingest's start), and exclusively by a collection through its mark and sweep of this
    /// store, until it holds the backends' locks ([`MetadataStore::writing_to`]).
    gc_lock: tokio::sync::RwLock<()>,
    /// One lock per backend a collection sweeps, made on first use.
    backend_locks: std::sync::Mutex<std::collections::HashMap<Backend, SweepLock>>,
    /// A record went without a collection (a content delete, an aborted ingest): the next
    /// collection must sweep the backends even if it removes no record itself.
    backends_dirty: std::sync::atomic::AtomicBool,
}

impl MetadataStore {
    /// Opens (or creates) `path`, creating the tables and migrating an older schema.
    pub fn open(path: &Path) -> Result<Self, MetadataError> {
        Self::open_in(path, None)
    }

    /// [`MetadataStore::open`], writing to `journal` when given. Its commits flush that journal,
    /// which makes the deferred commits of the stores sharing it durable too.
    pub fn open_in(
        path: &Path,
        journal: Option<&crated_wal::Journal>,
    ) -> Result<Self, MetadataError> {
        let fresh = !path.exists();
        let db = crated_wal::open_in(path, journal, crated_wal::Commits::Flushed)?;
        let mut tx = db.begin_write()?;
        if fresh {
            // A new file holds nothing to lose: if this layout commit is not on disk when the
            // daemon dies, the next open finds the empty database again and redoes it. Every
            // later commit is durable and carries this one with it.
            tx.set_durability(redb::Durability::None)
                .map_err(|e| MetadataError::Database(e.to_string()))?;
        }
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value()).unwrap_or(0);
            if found > SCHEMA_VERSION {
                return Err(MetadataError::FailedPrecondition(format!(
                    "metadata schema version {found} is newer than this daemon's ({SCHEMA_VERSION})"
                )));
            }
            for (from, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                tracing::info!(from, to = from + 1, "migrating metadata schema");
                step(&tx)?;
            }
            meta.insert("schema_version", SCHEMA_VERSION)?;
        }
        tx.open_table(NAMESPACES)?;
        tx.open_table(LEASE_RESOURCES)?;
        for table in Table::ALL {
            tx.open_table(table.def())?;
        }
        tx.commit()?;
        Ok(MetadataStore {
            db,
            journal: journal.cloned(),
            writers: Default::default(),
            shared_content: std::sync::atomic::AtomicBool::new(true),
            on_mutation: std::sync::OnceLock::new(),
            gc_lock: tokio::sync::RwLock::new(()),
            backend_locks: Default::default(),
            backends_dirty: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Whether a write now starts at once and commits with no more than an append to the
    /// shared journal and its flush ([`crated_wal::Writers::commits_are_short`]).
    pub fn commits_are_short(&self) -> bool {
        self.writers.commits_are_short(self.journal.as_ref())
    }

    /// Opens a write transaction, counted as open from before the wait for it until it ends.
    pub(crate) fn write(&self) -> Result<crated_wal::Write, MetadataError> {
        Ok(self.writers.begin(&self.db)?)
    }

    /// Registers the one listener told of every committed change (the GC scheduler).
    pub fn on_mutation(&self, hook: impl Fn(Mutation) + Send + Sync + 'static) {
        if self.on_mutation.set(Box::new(hook)).is_err() {
            tracing::warn!("a metadata mutation listener is registered already");
        }
    }

    /// Commits a write transaction, then tells the listener.
    pub(crate) fn commit(
        &self,
        tx: crated_wal::Write,
        mutation: Mutation,
    ) -> Result<(), MetadataError> {
        tx.commit()?;
        if let Some(hook) = self.on_mutation.get() {
            hook(mutation);
        }
        Ok(())
    }

    /// The backends may hold data no record keeps: the next collection sweeps them.
    pub fn mark_backends_dirty(&self) {
        self.backends_dirty
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the backends may hold data no record keeps (true at start, whatever a crash
    /// left); clears the mark. A collector that fails to sweep marks them again.
    pub fn take_backends_dirty(&self) -> bool {
        self.backends_dirty
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// Exclusive for a collection's mark and sweep of this store; writers into a backend
    /// hold it shared through [`MetadataStore::writing_to`].
    pub fn gc_lock(&self) -> &tokio::sync::RwLock<()> {
        &self.gc_lock
    }

    /// The lock a collection holds exclusively while it sweeps `backend`.
    pub fn backend_lock(&self, backend: &Backend) -> SweepLock {
        let mut locks = self
            .backend_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Looked up first: every snapshot prepare and commit asks, and only the first of a
        // backend needs its name copied.
        if let Some(lock) = locks.get(backend) {
            return lock.clone();
        }
        locks.entry(backend.clone()).or_default().clone()
    }

    /// Held by whatever puts data in `backend` and then records it, from before the first to
    /// after the second: the collection's lock shared, then the backend's. A collection takes
    /// every backend's lock before it lets writers back in after its mark and sweep, so no
    /// write is then midway and what it found live holds for the backends' sweep; after that a
    /// writer waits only for the sweep of the backend it writes to, as in containerd (its
    /// per-snapshotter and content locks).
    pub async fn writing_to(&self, backend: &Backend) -> BackendWrite<'_> {
        let collection = self.gc_lock.read().await;
        let sweep = self.backend_lock(backend).read_owned().await;
        BackendWrite {
            _sweep: sweep,
            _collection: collection,
        }
    }

    /// containerd's `content_sharing_policy`: `shared` (true) lets a namespace claim a blob
    /// another namespace has without writing it again; `isolated` (false) does not.
    pub fn set_shared_content(&self, shared: bool) {
        self.shared_content
            .store(shared, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn shared_content(&self) -> bool {
        self.shared_content
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The record `<ns>/<id>` of a resource table, decoded; `missing` when there is none.
    pub(crate) fn get_in<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        ns: &str,
        id: &str,
        missing: impl FnOnce() -> MetadataError,
    ) -> Result<T, MetadataError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table.def())?;
        let v = t.get(key(ns, id).as_str())?.ok_or_else(missing)?;
        Ok(serde_json::from_slice(v.value())?)
    }

    /// Every record of namespace `ns` in a resource table, decoded.
    pub(crate) fn list_in<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        ns: &str,
    ) -> Result<Vec<T>, MetadataError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table.def())?;
        let prefix = format!("{ns}/");
        let mut out = Vec::new();
        for entry in t.range(prefix.as_str()..)? {
            let (k, v) = entry?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    pub fn schema_version(&self) -> Result<u64, MetadataError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta.get("schema_version")?.map(|v| v.value()).unwrap_or(0))
    }
}
