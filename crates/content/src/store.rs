use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::{validate, Digest};
use crate::writer::Writer;
use crate::ContentError;

/// A committed blob as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub digest: Digest,
    pub size: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A write in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestStatus {
    pub reference: String,
    pub offset: u64,
    pub total: u64,
    pub expected: Option<Digest>,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

/// What an ingest directory records besides its data.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct IngestMeta {
    pub reference: String,
    pub total: u64,
    pub expected: Option<String>,
    /// Nanoseconds since the epoch.
    pub started_at: u128,
    /// When the last write was accepted (ns since the epoch), kept when its writer closes: a
    /// file's mtime comes from a coarse clock, milliseconds behind what clients saw.
    #[serde(default)]
    pub updated_at: Option<u128>,
}

pub(crate) type Locks = Arc<Mutex<HashMap<String, SystemTime>>>;

/// The store under one root directory; clones share their locks and caches.
#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
    locks: Locks,
    /// Blobs whose data was last seen matching their digest, by (inode, mtime, size): a changed
    /// file is checked again.
    verified: Arc<Mutex<HashMap<String, FileIdentity>>>,
}

/// (inode, mtime in ns, size): what tells a replaced or changed file.
type FileIdentity = (u64, i64, u64);

fn identity(meta: &fs::Metadata) -> FileIdentity {
    use std::os::unix::fs::MetadataExt;
    (
        meta.ino(),
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        meta.len(),
    )
}

pub(crate) fn nanos(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

pub(crate) fn from_nanos(n: u128) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(n.min(u128::from(u64::MAX)) as u64)
}

impl LocalStore {
    pub fn open(root: &Path) -> Result<LocalStore, ContentError> {
        for dir in [root.join("blobs/sha256"), root.join("ingest")] {
            fs::create_dir_all(&dir)
                .map_err(ContentError::io(format!("creating {}", dir.display())))?;
        }
        Ok(LocalStore {
            root: root.to_path_buf(),
            locks: Arc::default(),
            verified: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.encoded())
    }

    /// `ingest/<sha256 of ref>`, so any ref is a safe directory name.
    pub(crate) fn ingest_dir(&self, reference: &str) -> PathBuf {
        self.root
            .join("ingest")
            .join(hex::encode(Sha256::digest(reference.as_bytes())))
    }

    pub fn info(&self, digest: &str) -> Result<Info, ContentError> {
        let digest = Digest::parse(digest)?;
        let path = self.blob_path(&digest);
        let meta = fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ContentError::NotFound(format!("content digest {digest}"))
            }
            _ => ContentError::Io {
                context: format!("stat {}", path.display()),
                source: e,
            },
        })?;
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(Info {
            digest,
            size: meta.len(),
            created_at: modified,
            updated_at: meta.accessed().unwrap_or(modified),
        })
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer at the end of the blob.
    pub fn read_at(
        &self,
        digest: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, ContentError> {
        let file = self.open_blob(digest)?;
        file.read_at(buf, offset)
            .map_err(ContentError::io(format!("reading {digest}")))
    }

    pub fn open_blob(&self, digest: &str) -> Result<File, ContentError> {
        let digest = Digest::parse(digest)?;
        File::open(self.blob_path(&digest)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ContentError::NotFound(format!("content digest {digest}"))
            }
            _ => ContentError::Io {
                context: format!("opening {digest}"),
                source: e,
            },
        })
    }

    /// Re-reads a blob and checks that its data still has its digest: a blob corrupted on disk
    /// is reported, never served as valid.
    pub fn verify(&self, digest: &str) -> Result<(), ContentError> {
        let mut file = self.open_blob(digest)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(ContentError::io(format!("reading {digest}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = Digest::from_sha256(&hasher.finalize());
        if actual.as_str() != digest {
            return Err(ContentError::FailedPrecondition(format!(
                "content {digest} is corrupt on disk: its data has digest {actual}"
            )));
        }
        Ok(())
    }

    /// Opens a blob for reading after [`LocalStore::verify`], which is skipped when the file is
    /// the one already checked (same inode, mtime and size).
    pub fn open_verified(&self, digest: &str) -> Result<File, ContentError> {
        let file = self.open_blob(digest)?;
        let id = identity(
            &file
                .metadata()
                .map_err(ContentError::io(format!("stat {digest}")))?,
        );
        let known = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            == Some(&id);
        if !known {
            self.verify(digest)?;
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(digest.to_owned(), id);
        }
        Ok(file)
    }

    /// Commits a writer of this store (see [`Writer::commit`]); the new blob counts as checked.
    pub fn commit(
        &self,
        writer: Writer,
        size: u64,
        expected: Option<&str>,
    ) -> Result<Digest, ContentError> {
        let digest = writer.commit(size, expected)?;
        self.mark_verified(&digest);
        Ok(digest)
    }

    fn mark_verified(&self, digest: &Digest) {
        if let Ok(meta) = fs::metadata(self.blob_path(digest)) {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(digest.to_string(), identity(&meta));
        }
    }

    pub fn delete(&self, digest: &str) -> Result<(), ContentError> {
        let digest = Digest::parse(digest)?;
        fs::remove_file(self.blob_path(&digest)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ContentError::NotFound(format!("content digest {digest}"))
            }
            _ => ContentError::Io {
                context: format!("removing {digest}"),
                source: e,
            },
        })
    }

    /// Every committed blob.
    pub fn walk(&self) -> Result<Vec<Info>, ContentError> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        for entry in
            fs::read_dir(&dir).map_err(ContentError::io(format!("listing {}", dir.display())))?
        {
            let entry = entry.map_err(ContentError::io("listing blobs"))?;
            let name = entry.file_name();
            let digest = format!("sha256:{}", name.to_string_lossy());
            if validate(&digest).is_err() {
                continue; // not ours (a temp file of an interrupted commit, say)
            }
            match self.info(&digest) {
                Ok(info) => out.push(info),
                Err(ContentError::NotFound(_)) => {} // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Opens the writer for `reference`, resuming what an earlier writer left. Only one writer
    /// per ref at a time: another is Unavailable.
    pub fn writer(
        &self,
        reference: &str,
        total: u64,
        expected: Option<&str>,
    ) -> Result<Writer, ContentError> {
        if reference.is_empty() {
            return Err(ContentError::InvalidArgument(
                "ref must not be empty".into(),
            ));
        }
        let expected = expected
            .filter(|e| !e.is_empty())
            .map(Digest::parse)
            .transpose()?;
        {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(since) = locks.get(reference) {
                let age = since.elapsed().unwrap_or_default();
                return Err(ContentError::Unavailable(format!(
                    "ref {reference} locked for {:.1}s (since {})",
                    age.as_secs_f64(),
                    nanos(*since) / 1_000_000_000
                )));
            }
            locks.insert(reference.to_owned(), SystemTime::now());
        }
        let dir = self.ingest_dir(reference);
        Writer::open(self, dir, reference, total, expected, self.locks.clone()).inspect_err(|_| {
            self.locks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(reference);
        })
    }

    fn read_status(&self, dir: &Path) -> Result<IngestStatus, ContentError> {
        let raw = fs::read(dir.join("meta.json"))
            .map_err(ContentError::io(format!("reading {}", dir.display())))?;
        let meta: IngestMeta = serde_json::from_slice(&raw).map_err(|e| ContentError::Io {
            context: format!("decoding {}", dir.join("meta.json").display()),
            source: std::io::Error::other(e),
        })?;
        let data = fs::metadata(dir.join("data"))
            .map_err(ContentError::io(format!("stat {}", dir.display())))?;
        Ok(IngestStatus {
            reference: meta.reference,
            offset: data.len(),
            total: meta.total,
            expected: meta.expected.as_deref().map(Digest::parse).transpose()?,
            started_at: from_nanos(meta.started_at),
            updated_at: match meta.updated_at {
                Some(at) => from_nanos(at),
                None => data.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            },
        })
    }

    pub fn status(&self, reference: &str) -> Result<IngestStatus, ContentError> {
        let dir = self.ingest_dir(reference);
        if !dir.join("meta.json").exists() {
            return Err(ContentError::NotFound(format!("ref {reference}")));
        }
        self.read_status(&dir)
    }

    pub fn list_statuses(&self) -> Result<Vec<IngestStatus>, ContentError> {
        let ingest = self.root.join("ingest");
        let mut out = Vec::new();
        for entry in fs::read_dir(&ingest).map_err(ContentError::io("listing ingests"))? {
            let entry = entry.map_err(ContentError::io("listing ingests"))?;
            match self.read_status(&entry.path()) {
                Ok(status) => out.push(status),
                // A directory without its files is an ingest that never got going.
                Err(e) => tracing::debug!("skipping ingest {}: {e}", entry.path().display()),
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Drops a write in progress and its data.
    pub fn abort(&self, reference: &str) -> Result<(), ContentError> {
        let dir = self.ingest_dir(reference);
        if !dir.exists() {
            return Err(ContentError::NotFound(format!("ref {reference}")));
        }
        fs::remove_dir_all(&dir).map_err(ContentError::io(format!("removing {}", dir.display())))
    }
}
