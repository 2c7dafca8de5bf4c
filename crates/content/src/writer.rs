use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::sink::DataSink;
use crate::store::{from_nanos, nanos, IngestMeta, IngestStatus, LocalStore, Locks};
use crate::ContentError;

/// One write in progress, holding the lock on its ref until dropped.
pub struct Writer {
    reference: String,
    dir: PathBuf,
    blob_dir: PathBuf,
    data: DataSink,
    hasher: Sha256,
    offset: u64,
    total: u64,
    expected: Option<Digest>,
    started_at: SystemTime,
    /// When the last write was accepted.
    updated_at: SystemTime,
    /// Whether `updated_at` changed since meta.json was written.
    updated: bool,
    locks: Locks,
}

impl Writer {
    pub(crate) fn open(
        store: &LocalStore,
        dir: PathBuf,
        reference: &str,
        total: u64,
        expected: Option<Digest>,
        locks: Locks,
    ) -> Result<Writer, ContentError> {
        let meta_path = dir.join("meta.json");
        let data_path = dir.join("data");
        let resumed: Option<IngestMeta> = fs::read(&meta_path)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok());
        let (started_at, updated_at, total, expected) = match &resumed {
            Some(meta) => (
                from_nanos(meta.started_at),
                meta.updated_at.map(from_nanos),
                if total > 0 { total } else { meta.total },
                expected.or(meta.expected.as_deref().map(Digest::parse).transpose()?),
            ),
            None => {
                fs::create_dir_all(&dir)
                    .map_err(ContentError::io(format!("creating {}", dir.display())))?;
                (SystemTime::now(), None, total, expected)
            }
        };
        let meta = IngestMeta {
            reference: reference.to_owned(),
            total,
            expected: expected.as_ref().map(|d| d.to_string()),
            started_at: nanos(started_at),
            updated_at: updated_at.map(nanos),
        };
        let encoded = serde_json::to_vec(&meta).map_err(|e| ContentError::Io {
            context: "encoding ingest meta".into(),
            source: std::io::Error::other(e),
        })?;
        fs::write(&meta_path, encoded)
            .map_err(ContentError::io(format!("writing {}", meta_path.display())))?;
        // Resuming: the digest so far is rebuilt from the data already written.
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        if let Ok(mut existing) = File::open(&data_path) {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = existing
                    .read(&mut buf)
                    .map_err(ContentError::io("re-reading ingest data"))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
        }
        let data = DataSink::open(&data_path, offset)
            .map_err(ContentError::io(format!("opening {}", data_path.display())))?;
        Ok(Writer {
            reference: reference.to_owned(),
            dir,
            blob_dir: store.root().join("blobs/sha256"),
            data,
            hasher,
            offset,
            total,
            expected,
            started_at,
            updated_at: updated_at.unwrap_or(started_at),
            updated: false,
            locks,
        })
    }

    pub fn status(&self) -> IngestStatus {
        IngestStatus {
            reference: self.reference.clone(),
            offset: self.offset,
            total: self.total,
            expected: self.expected.clone(),
            started_at: self.started_at,
            updated_at: self.updated_at,
        }
    }

    /// Says when the last write was accepted, if not when it ran ([`Self::write`] and
    /// [`Self::truncate`] set now).
    pub fn set_updated_at(&mut self, at: SystemTime) {
        self.updated_at = at;
        self.updated = true;
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The digest of what was written so far.
    pub fn digest(&self) -> Digest {
        Digest::from_sha256(&self.hasher.clone().finalize())
    }

    pub fn set_total(&mut self, total: u64) {
        if total > 0 {
            self.total = total;
        }
    }

    pub fn set_expected(&mut self, expected: &str) -> Result<(), ContentError> {
        if !expected.is_empty() {
            self.expected = Some(Digest::parse(expected)?);
        }
        Ok(())
    }

    /// Appends `data`: hashed, then staged; the sink's direct writes of earlier data run on
    /// their own thread meanwhile. (Hashing on a thread of its own per write cost more in
    /// thread starts than it saved.)
    pub fn write(&mut self, data: &[u8]) -> Result<(), ContentError> {
        if data.is_empty() {
            return Ok(());
        }
        self.hasher.update(data);
        self.data.append(data).map_err(ContentError::io(format!(
            "writing ingest {}",
            self.reference
        )))?;
        self.offset += data.len() as u64;
        self.set_updated_at(SystemTime::now());
        Ok(())
    }

    /// Puts everything written so far into the data file (not yet durable).
    pub fn flush(&mut self) -> Result<(), ContentError> {
        self.data
            .flush()
            .map_err(ContentError::io("flushing ingest data"))
    }

    /// Starts over from offset 0.
    pub fn truncate(&mut self) -> Result<(), ContentError> {
        self.data
            .truncate()
            .map_err(ContentError::io("truncating ingest"))?;
        self.hasher = Sha256::new();
        self.offset = 0;
        self.set_updated_at(SystemTime::now());
        Ok(())
    }

    /// Checks size and digest, makes the data durable and moves it into place atomically.
    /// `size` 0 and `expected` None mean "whatever was declared when the write started".
    pub fn commit(mut self, size: u64, expected: Option<&str>) -> Result<Digest, ContentError> {
        self.set_total(size);
        if let Some(e) = expected {
            self.set_expected(e)?;
        }
        if self.total > 0 && self.total != self.offset {
            return Err(ContentError::FailedPrecondition(format!(
                "unexpected commit size {}, expected {}",
                self.offset, self.total
            )));
        }
        let digest = self.digest();
        if let Some(expected) = &self.expected {
            if *expected != digest {
                return Err(ContentError::FailedPrecondition(format!(
                    "unexpected commit digest {digest}, expected {expected}"
                )));
            }
        }
        let target = self.blob_dir.join(digest.encoded());
        if target.exists() {
            self.updated = false;
            let _ = fs::remove_dir_all(&self.dir);
            return Err(ContentError::AlreadyExists(format!("content {digest}")));
        }
        self.data
            .sync()
            .map_err(ContentError::io("syncing ingest data"))?;
        self.data.seal();
        let data_path = self.dir.join("data");
        // A blob's times are its record's (created, updated): set to now, as containerd
        // does, since the kernel's file times come from a coarse clock.
        let committed_at = SystemTime::now();
        File::open(&data_path)
            .and_then(|f| {
                f.set_times(
                    fs::FileTimes::new()
                        .set_accessed(committed_at)
                        .set_modified(committed_at),
                )
            })
            .map_err(ContentError::io("setting the blob's times"))?;
        // Blobs are immutable: read-only, as containerd leaves them.
        fs::set_permissions(&data_path, fs::Permissions::from_mode(0o444))
            .map_err(ContentError::io("making blob read-only"))?;
        fs::rename(&data_path, &target).map_err(ContentError::io(format!(
            "moving blob to {}",
            target.display()
        )))?;
        File::open(&self.blob_dir)
            .and_then(|d| d.sync_all())
            .map_err(ContentError::io("syncing blob directory"))?;
        self.updated = false;
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!("leaving ingest directory {}: {e}", self.dir.display());
        }
        Ok(digest)
    }
}

impl Writer {
    /// Records `updated_at` in meta.json for the writers and status reads that follow.
    fn keep_updated_at(&self) -> std::io::Result<()> {
        let path = self.dir.join("meta.json");
        let raw = fs::read(&path)?;
        let mut meta: IngestMeta = serde_json::from_slice(&raw).map_err(std::io::Error::other)?;
        meta.updated_at = Some(nanos(self.updated_at));
        let encoded = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
        let staged = self.dir.join("meta.json.new");
        fs::write(&staged, encoded)?;
        fs::rename(&staged, &path)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // What was accepted goes into the file, so a later writer resumes after it.
        if let Err(e) = self.data.flush() {
            tracing::warn!("flushing ingest {}: {e}", self.reference);
        }
        if self.updated && self.dir.join("meta.json").exists() {
            if let Err(e) = self.keep_updated_at() {
                tracing::warn!("recording when ingest {} was updated: {e}", self.reference);
            }
        }
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.reference);
    }
}
