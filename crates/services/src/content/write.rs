//! One Write stream, as containerd's clients drive it: the first message names the ref and
//! opens its writer; each message gets one answer. A plain write is started and answered as
//! accepted at once, so the next message is received while the data is written and hashed;
//! every other action, and the end of the stream, first waits for it (a failed write fails the
//! next answer).

use crated_api::containerd::services::content::v1 as api;
use crated_api::containerd::services::content::v1::WriteAction;
use crated_content::{ContentError, ContentWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::{Status, Streaming};

use crate::status::status;

/// What a Write stream does around the backend's writer: the namespaced service records
/// ingests and blobs in the metadata store, a bare store server does not.
#[tonic::async_trait]
pub(crate) trait Ingest: Send + Sync {
    /// Opens the writer named by the stream's first message.
    async fn open(
        &self,
        first: &api::WriteContentRequest,
    ) -> Result<Box<dyn ContentWriter>, Status>;
    /// The status ending the stream when the expected blob is there already.
    async fn already_there(&self, req: &api::WriteContentRequest)
        -> Result<Option<Status>, Status>;
    /// Drops the ingest of a stream ended by [`Ingest::already_there`].
    async fn discard(&self);
    /// Commits what was written (its digest so far is `digest`); the digest committed.
    async fn commit(
        &self,
        writer: Box<dyn ContentWriter>,
        digest: String,
        req: &api::WriteContentRequest,
    ) -> Result<String, Status>;
}

type PendingWrite = JoinHandle<Result<Box<dyn ContentWriter>, ContentError>>;

/// Waits for a started write and gives its writer back.
async fn finish(write: PendingWrite) -> Result<Box<dyn ContentWriter>, Status> {
    write
        .await
        .map_err(|e| Status::internal(format!("write task failed: {e}")))?
        .map_err(|e| status(&e))
}

/// Serves one Write stream in its own task: `make` builds the stream's ingest from the first
/// message.
pub(crate) fn serve<I: Ingest + 'static>(
    mut inbound: Streaming<api::WriteContentRequest>,
    make: impl FnOnce(&api::WriteContentRequest) -> I + Send + 'static,
) -> crate::wire::BoxStream<api::WriteContentResponse> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let first = match inbound.message().await {
            Ok(Some(first)) => first,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let ingest = make(&first);
        if let Err(e) = run(&ingest, first, &mut inbound, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Runs the stream whose first message is `first`.
pub(crate) async fn run(
    ingest: &dyn Ingest,
    first: api::WriteContentRequest,
    inbound: &mut Streaming<api::WriteContentRequest>,
    out: &mpsc::Sender<Result<api::WriteContentResponse, Status>>,
) -> Result<(), Status> {
    let mut req = first;
    if req.r#ref.is_empty() {
        return Err(Status::invalid_argument(
            "first message must have a reference",
        ));
    }
    // A blob that is there already is not written again: decided before any writer opens
    // (a remote store would refuse to open it).
    if !req.expected.is_empty() {
        if let Some(done) = ingest.already_there(&req).await? {
            return Err(done);
        }
    }
    let mut writer = Some(ingest.open(&req).await?);
    // The first message was checked above; every later one with an expected digest is.
    let mut checked = !req.expected.is_empty();
    let mut pending: Option<PendingWrite> = None;
    let mut total: Option<i64> = None;
    loop {
        if let Some(write) = pending.take() {
            writer = Some(finish(write).await?);
        }
        let Some(mut w) = writer.take() else {
            return Err(Status::failed_precondition("writer already committed"));
        };
        let mut msg = api::WriteContentResponse {
            action: req.action,
            offset: w.offset() as i64,
            ..Default::default()
        };
        if !req.expected.is_empty() {
            if !std::mem::take(&mut checked) {
                if let Some(done) = ingest.already_there(&req).await? {
                    drop(w);
                    ingest.discard().await;
                    return Err(done);
                }
            }
            w.set_expected(&req.expected).map_err(|e| status(&e))?;
        }
        // containerd: the first message's total stands, even a negative one (a commit then
        // fails its size check); a later one replaces it only when positive.
        total = match total {
            Some(t) if req.total <= 0 => Some(t),
            _ => Some(req.total),
        };
        let total = total.unwrap_or_default();
        w.set_total(total.max(0) as u64);
        match WriteAction::try_from(req.action) {
            Ok(WriteAction::Stat) => {
                let (st, digest) = w.stat().await.map_err(|e| status(&e))?;
                msg.digest = digest;
                msg.started_at = Some(st.started_at.into());
                msg.updated_at = Some(st.updated_at.into());
                msg.total = if total < 0 { total } else { st.total as i64 };
                writer = Some(w);
            }
            Ok(action @ (WriteAction::Write | WriteAction::Commit)) => {
                let offset = w.offset();
                if req.offset > 0 && req.offset as u64 != offset {
                    return Err(Status::out_of_range(format!(
                        "write @{} must occur at current offset {offset}",
                        req.offset
                    )));
                }
                let reset = req.offset == 0 && offset > 0;
                let keeps_time = w.keeps_given_time();
                let data = std::mem::take(&mut req.data);
                let accepted = if reset { 0 } else { offset } + data.len() as u64;
                // The write lands after the answer; its time is when it was accepted.
                let at = std::time::SystemTime::now();
                let work = async move {
                    if reset || !data.is_empty() {
                        w.write(data, reset, at).await?;
                    }
                    Ok(w)
                };
                if action == WriteAction::Write && keeps_time {
                    pending = Some(tokio::spawn(work));
                    msg.offset = accepted as i64;
                } else if action == WriteAction::Write {
                    let w = work.await.map_err(|e: ContentError| status(&e))?;
                    msg.offset = w.offset() as i64;
                    writer = Some(w);
                } else {
                    let mut w = work.await.map_err(|e: ContentError| status(&e))?;
                    if total < 0 {
                        return Err(Status::failed_precondition(format!(
                            "{:?} failed size validation: {} != {total}: failed precondition",
                            req.r#ref,
                            w.offset()
                        )));
                    }
                    let (_, digest) = w.stat().await.map_err(|e| status(&e))?;
                    msg.offset = w.offset() as i64;
                    msg.digest = ingest.commit(w, digest, &req).await?;
                }
            }
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown write action {}",
                    req.action
                )))
            }
        }
        if out.send(Ok(msg)).await.is_err() {
            // The client went away; the ingest stays resumable once its data is written.
            if let Some(write) = pending.take() {
                finish(write).await?;
            }
            return Ok(());
        }
        let next = inbound.message().await;
        if !matches!(next, Ok(Some(_))) {
            // The stream ended or broke: what was accepted lands before the call ends, so
            // that the ingest's status, and a resume, see all of it.
            if let Some(write) = pending.take() {
                finish(write).await?;
            }
        }
        match next? {
            Some(next) => req = next,
            None => return Ok(()),
        }
        if writer.is_none() && pending.is_none() {
            return Err(Status::failed_precondition("writer already committed"));
        }
    }
}
