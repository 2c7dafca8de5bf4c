//! Fetching blobs into the namespaced content store: documents whole, layers streamed from
//! the registry with their digest checked at commit. A cut download resumes from the bytes
//! already written. While a layer downloads, its bytes are also offered to the unpacker waiting
//! on it ([`Feed`]); an unpacker busy with an earlier layer lets the offer overflow and later
//! reads the blob back from the store, from where the feed stopped ([`LayerSource`]).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crated_content::ChunkStream;
use crated_errdefs::{HasKind, Kind};
use crated_images::{Descriptor, ImageError, Registry};
use crated_metadata::{ContentStoreError, NamespacedContentStore};
use futures::StreamExt;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::error::{Result, TransferError};
use crate::progress::Progress;
use crate::pull::{Pull, Puller};

/// How many times a failing download is resumed before the pull fails.
const ATTEMPTS: u32 = 5;
/// What a feed holds before the download waits (the unpacker reads this layer) or the feed
/// overflows (it does not read it yet).
const FEED_BUDGET: usize = 4 << 20;
/// How often `downloading` progress is reported per layer.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The outcome of a download, once known: the blob is committed, or why not.
pub type Done = watch::Receiver<Option<std::result::Result<(), Arc<TransferError>>>>;

/// The receiving side of a layer's live bytes. Reading marks it active: from then on the
/// download waits for the unpacker rather than letting the feed overflow. Dropped, it lets the
/// download go on alone.
pub struct Live {
    rx: mpsc::UnboundedReceiver<Bytes>,
    budget: Arc<Semaphore>,
    active: Arc<AtomicBool>,
}

impl Live {
    fn next(&mut self) -> Option<Bytes> {
        self.active.store(true, Ordering::SeqCst);
        let chunk = self.rx.blocking_recv()?;
        self.budget.add_permits(chunk.len());
        Some(chunk)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // A download waiting for room gives up the feed.
        self.budget.close();
    }
}

/// The sending side of a layer's live bytes.
pub struct Feed {
    tx: Option<mpsc::UnboundedSender<Bytes>>,
    budget: Arc<Semaphore>,
    active: Arc<AtomicBool>,
}

impl Feed {
    /// Offers `chunk`: waits for room while the unpacker reads this layer; otherwise, past the
    /// budget, the feed stops for good (the unpacker reads the stored blob later).
    async fn offer(&mut self, chunk: &Bytes) {
        let Some(tx) = &self.tx else { return };
        let permit = match u32::try_from(chunk.len()) {
            Ok(n) if (n as usize) <= FEED_BUDGET => {
                if self.active.load(Ordering::SeqCst) {
                    self.budget.acquire_many(n).await.ok()
                } else {
                    self.budget.try_acquire_many(n).ok()
                }
            }
            _ => None,
        };
        match permit {
            Some(permit) if tx.send(chunk.clone()).is_ok() => permit.forget(),
            _ => self.tx = None,
        }
    }
}

/// A feed and the receiving side.
pub fn feed() -> (Feed, Live) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(FEED_BUDGET));
    let active = Arc::new(AtomicBool::new(false));
    (
        Feed {
            tx: Some(tx),
            budget: Arc::clone(&budget),
            active: Arc::clone(&active),
        },
        Live { rx, budget, active },
    )
}

/// Everything one download needs.
pub struct Download {
    pub content: NamespacedContentStore,
    pub registry: Arc<Registry>,
    pub ns: String,
    pub lease: String,
    pub desc: Descriptor,
    pub labels: HashMap<String, String>,
    pub progress: Progress,
    pub name: String,
    pub parents: Vec<String>,
}

fn retryable(e: &ImageError) -> bool {
    matches!(e, ImageError::Http { .. } | ImageError::Unavailable(_))
}

impl Download {
    /// Downloads and commits the blob unless the namespace has it.
    pub async fn run(self, mut feed: Feed) -> Result<()> {
        let digest = self.desc.digest.clone();
        if already_there(
            &self.content,
            &self.ns,
            &self.desc,
            &self.labels,
            &self.progress,
            &self.name,
        )
        .await?
        {
            return Ok(());
        }
        self.progress
            .object("waiting", &self.name, &self.parents, 0, &self.desc)
            .await;
        let mut ingest = self
            .content
            .ingest_blob(
                &self.ns,
                Some(self.lease.clone()),
                &format!("layer-{digest}"),
            )
            .await?;
        let size = self.desc.size.max(0) as u64;
        let mut failures = 0;
        let mut reported = Instant::now();
        let outcome: Result<()> = async {
            while ingest.offset() < size {
                let offset = ingest.offset();
                let step: std::result::Result<(), ImageError> = async {
                    let mut body = self.registry.open_blob(&digest, offset).await?;
                    // A registry that ignored the range repeats what we have.
                    let mut skip = offset - body.offset;
                    while let Some(mut chunk) = body.chunk().await? {
                        if skip > 0 {
                            let n = skip.min(chunk.len() as u64);
                            skip -= n;
                            chunk = chunk.slice(n as usize..);
                            if chunk.is_empty() {
                                continue;
                            }
                        }
                        if ingest.offset() + chunk.len() as u64 > size {
                            return Err(ImageError::FailedPrecondition(format!(
                                "blob {digest} is longer than its {size} bytes"
                            )));
                        }
                        feed.offer(&chunk).await;
                        ingest
                            .write(chunk.to_vec())
                            .await
                            .map_err(|e| ImageError::FailedPrecondition(e.to_string()))?;
                        if reported.elapsed() >= PROGRESS_EVERY {
                            reported = Instant::now();
                            self.progress
                                .object(
                                    "downloading",
                                    &self.name,
                                    &self.parents,
                                    ingest.offset() as i64,
                                    &self.desc,
                                )
                                .await;
                        }
                    }
                    if ingest.offset() < size {
                        return Err(ImageError::Unavailable(format!(
                            "blob {digest} ended after {} of {size} bytes",
                            ingest.offset()
                        )));
                    }
                    Ok(())
                }
                .await;
                match step {
                    Ok(()) => {}
                    Err(e) if retryable(&e) && failures + 1 < ATTEMPTS => {
                        failures += 1;
                        tracing::info!(
                            digest,
                            offset = ingest.offset(),
                            "download cut ({e}); resuming"
                        );
                        tokio::time::sleep(Duration::from_millis(100 << failures)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            ingest.abort().await;
            return Err(e);
        }
        ingest
            .commit_checked(Some((&digest, size)), self.labels.clone())
            .await?;
        self.progress
            .object(
                "complete",
                &self.name,
                &self.parents,
                self.desc.size,
                &self.desc,
            )
            .await;
        Ok(())
    }
}

/// Whether the namespace has blob `desc` already; if so it still gets this pull's `labels`
/// and is reported as there.
pub async fn already_there(
    content: &NamespacedContentStore,
    ns: &str,
    desc: &Descriptor,
    labels: &HashMap<String, String>,
    progress: &Progress,
    name: &str,
) -> Result<bool> {
    if content.info(ns, &desc.digest).await.is_err() {
        return Ok(false);
    }
    let labels = labels.clone().into_iter().collect();
    content.add_labels(ns, &desc.digest, labels).await?;
    progress
        .object("already exists", name, &[], desc.size, desc)
        .await;
    Ok(true)
}

/// Where an unpacker reads a layer from: the live feed while it lasts, then the committed
/// blob from where the feed stopped. Runs on a blocking thread.
pub struct LayerSource {
    pub runtime: tokio::runtime::Handle,
    pub live: Option<Live>,
    pub done: Done,
    pub content: NamespacedContentStore,
    pub ns: String,
    pub desc: Descriptor,
    pub offset: u64,
    pub stored: Option<ChunkStream>,
    /// Why the blob could not be read, reported as the pull's error rather than as the
    /// differ's read error.
    pub failure: Arc<Mutex<Option<TransferError>>>,
}

impl LayerSource {
    pub fn next_chunk(&mut self) -> Option<io::Result<Vec<u8>>> {
        if let Some(live) = &mut self.live {
            match live.next() {
                Some(chunk) => {
                    self.offset += chunk.len() as u64;
                    return Some(Ok(chunk.to_vec()));
                }
                None => self.live = None,
            }
        }
        if self.offset >= self.desc.size.max(0) as u64 {
            return None;
        }
        if self.stored.is_none() {
            let opened = self.runtime.block_on(async {
                wait(&mut self.done).await?;
                self.content
                    .read(&self.ns, &self.desc.digest, self.offset)
                    .await
                    .map(|(chunks, _)| chunks)
                    .map_err(TransferError::from)
            });
            match opened {
                Ok(chunks) => self.stored = Some(chunks),
                Err(e) => return Some(Err(self.fail(e))),
            }
        }
        let stored = self.stored.as_mut()?;
        match self.runtime.block_on(stored.next())? {
            Ok((_, data)) => {
                self.offset += data.len() as u64;
                Some(Ok(data))
            }
            Err(e) => Some(Err(self.fail(ContentStoreError::from(e).into()))),
        }
    }

    fn fail(&self, e: TransferError) -> io::Error {
        let io = io::Error::other(e.to_string());
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        io
    }
}

/// Waits for a download's outcome.
pub async fn wait(done: &mut Done) -> Result<()> {
    match done.wait_for(Option::is_some).await {
        Ok(outcome) => outcome
            .clone()
            .unwrap_or(Ok(()))
            .map_err(TransferError::Shared),
        Err(_) => Err(TransferError::Aborted(
            "the download stopped without an outcome".into(),
        )),
    }
}

impl Puller {
    /// Stores a manifest, index or config document with `labels`, unless the namespace has it.
    pub(crate) async fn store_document(
        &self,
        pull: &Pull,
        desc: &Descriptor,
        raw: &[u8],
        labels: HashMap<String, String>,
        name: &str,
        parents: &[String],
    ) -> Result<()> {
        let labels = pull.labels(labels);
        if already_there(&self.content, &pull.ns, desc, &labels, &pull.progress, name).await? {
            return Ok(());
        }
        let _locked = self.lock_key(format!("{}/{}", pull.ns, desc.digest)).await;
        let mut ingest = self
            .content
            .ingest_blob(&pull.ns, Some(pull.lease.clone()), name)
            .await?;
        let written = ingest.write(raw.to_vec()).await;
        if let Err(e) = written {
            ingest.abort().await;
            return Err(e.into());
        }
        match ingest
            .commit_checked(Some((&desc.digest, desc.size.max(0) as u64)), labels)
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == Kind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        pull.progress
            .object("complete", name, parents, desc.size, desc)
            .await;
        Ok(())
    }
}
