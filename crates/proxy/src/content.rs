//! A content store reached over containerd's content API: what `[proxy_plugins.x] type =
//! "content"` configures. Whole-blob reads are checked against their digest here too, so a
//! remote store cannot hand out data that is not what it claims.

use std::time::SystemTime;

use crated_api::containerd::services::content::v1 as api;
use crated_api::containerd::services::content::v1::content_client::ContentClient;
use crated_api::containerd::services::content::v1::WriteAction;
use crated_content::{
    ChunkStream, ContentError, ContentStore, ContentWriter, Digest, Info, IngestStatus,
    WholeBlobCheck,
};
use crated_errdefs::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use std::time::Duration;

use crate::connection::{Connection, CALL_TIMEOUT, COMMIT_TIMEOUT};

pub struct ProxyContentStore {
    connection: Connection,
}

/// An error of the remote store as ours: the classes the service layer acts on keep their
/// variants (without the class suffix the remote already added to the text).
fn error((kind, message): (Kind, String)) -> ContentError {
    let bare = |suffix: &str| message.strip_suffix(suffix).unwrap_or(&message).to_owned();
    match kind {
        Kind::NotFound => ContentError::NotFound(bare(": not found")),
        Kind::AlreadyExists => ContentError::AlreadyExists(bare(": already exists")),
        kind => ContentError::Other { kind, message },
    }
}

fn time(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn info_from(i: api::Info) -> Result<Info, ContentError> {
    Ok(Info {
        digest: Digest::parse(&i.digest)?,
        size: i.size.max(0) as u64,
        created_at: time(i.created_at),
        updated_at: time(i.updated_at),
    })
}

fn status_from(s: api::Status) -> Result<IngestStatus, ContentError> {
    Ok(IngestStatus {
        reference: s.r#ref,
        offset: s.offset.max(0) as u64,
        total: s.total.max(0) as u64,
        expected: (!s.expected.is_empty())
            .then(|| Digest::parse(&s.expected))
            .transpose()?,
        started_at: time(s.started_at),
        updated_at: time(s.updated_at),
    })
}

impl ProxyContentStore {
    pub fn new(connection: Connection) -> Self {
        ProxyContentStore { connection }
    }

    fn client(&self) -> ContentClient<Channel> {
        ContentClient::new(self.connection.channel())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }
}

#[async_trait::async_trait]
impl ContentStore for ProxyContentStore {
    async fn info(&self, digest: &str) -> Result<Info, ContentError> {
        let mut c = self.client();
        let req = api::InfoRequest {
            digest: digest.to_owned(),
        };
        let info = self
            .connection
            .call("info", c.info(req))
            .await
            .map_err(error)?
            .into_inner()
            .info
            .unwrap_or_default();
        info_from(info)
    }

    async fn walk(&self) -> Result<Vec<Info>, ContentError> {
        let mut c = self.client();
        let req = api::ListContentRequest { filters: vec![] };
        let mut stream = self
            .connection
            .call("list", c.list(req))
            .await
            .map_err(error)?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = self
            .connection
            .call("list", stream.message())
            .await
            .map_err(error)?
        {
            for i in batch.info {
                out.push(info_from(i)?);
            }
        }
        Ok(out)
    }

    async fn delete(&self, digest: &str) -> Result<(), ContentError> {
        let mut c = self.client();
        let req = api::DeleteContentRequest {
            digest: digest.to_owned(),
        };
        self.connection
            .call("delete", c.delete(req))
            .await
            .map_err(error)?;
        Ok(())
    }

    async fn read(
        &self,
        digest: &str,
        offset: u64,
        end: u64,
        size: u64,
    ) -> Result<ChunkStream, ContentError> {
        let mut c = self.client();
        let req = api::ReadContentRequest {
            digest: digest.to_owned(),
            offset: offset as i64,
            size: (end - offset) as i64,
        };
        let mut stream = self
            .connection
            .call("read", c.read(req))
            .await
            .map_err(error)?
            .into_inner();
        let (tx, rx) = mpsc::channel(4);
        let connection = self.connection.clone();
        let digest = digest.to_owned();
        let mut check = WholeBlobCheck::new(&digest, offset, end, size);
        tokio::spawn(async move {
            let mut at = offset;
            loop {
                let item = match connection.call("read", stream.message()).await {
                    Ok(Some(chunk)) if chunk.offset as u64 == at => Ok(chunk.data),
                    Ok(Some(chunk)) => Err(ContentError::DataLoss(format!(
                        "reading {digest}: chunk at offset {} where {at} was due",
                        chunk.offset
                    ))),
                    Ok(None) if at >= end => return,
                    Ok(None) => Err(ContentError::DataLoss(format!(
                        "reading {digest}: the store ended at {at} of {end} bytes"
                    ))),
                    Err(e) => Err(error(e)),
                };
                let item = item.and_then(|data| {
                    let chunk_at = at;
                    at += data.len() as u64;
                    check.feed(&data, at, "in the proxy store")?;
                    Ok((chunk_at, data))
                });
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn writer(
        &self,
        reference: &str,
        total: u64,
        expected: Option<&str>,
    ) -> Result<Box<dyn ContentWriter>, ContentError> {
        let (tx, rx) = mpsc::channel(4);
        let mut c = self.client();
        let mut writer = ProxyWriter {
            connection: self.connection.clone(),
            reference: reference.to_owned(),
            requests: tx,
            responses: None,
            offset: 0,
            total,
            expected: expected.unwrap_or_default().to_owned(),
            status: None,
        };
        // The first message opens the remote writer; the call returns once it is sent.
        let first = writer.request(WriteAction::Stat, 0, Vec::new());
        writer
            .requests
            .send(first)
            .await
            .map_err(|_| closed(&writer.reference))?;
        let responses = self
            .connection
            .call("write", c.write(ReceiverStream::new(rx)))
            .await
            .map_err(error)?
            .into_inner();
        writer.responses = Some(responses);
        writer.answer(CALL_TIMEOUT).await?;
        Ok(Box::new(writer))
    }

    async fn status(&self, reference: &str) -> Result<IngestStatus, ContentError> {
        let mut c = self.client();
        let req = api::StatusRequest {
            r#ref: reference.to_owned(),
        };
        let status = self
            .connection
            .call("status", c.status(req))
            .await
            .map_err(error)?
            .into_inner()
            .status
            .unwrap_or_default();
        status_from(status)
    }

    async fn list_statuses(&self) -> Result<Vec<IngestStatus>, ContentError> {
        let mut c = self.client();
        let req = api::ListStatusesRequest { filters: vec![] };
        self.connection
            .call("list statuses", c.list_statuses(req))
            .await
            .map_err(error)?
            .into_inner()
            .statuses
            .into_iter()
            .map(status_from)
            .collect()
    }

    async fn abort(&self, reference: &str) -> Result<(), ContentError> {
        let mut c = self.client();
        let req = api::AbortRequest {
            r#ref: reference.to_owned(),
        };
        self.connection
            .call("abort", c.abort(req))
            .await
            .map_err(error)?;
        Ok(())
    }
}

fn closed(reference: &str) -> ContentError {
    ContentError::Other {
        kind: Kind::Unavailable,
        message: format!("write of {reference} to the proxy store was closed"),
    }
}

/// One remote Write stream; each request waits for its answer, as containerd's proxy does.
struct ProxyWriter {
    connection: Connection,
    reference: String,
    requests: mpsc::Sender<api::WriteContentRequest>,
    responses: Option<tonic::Streaming<api::WriteContentResponse>>,
    offset: u64,
    total: u64,
    expected: String,
    /// The last answer: its status and digest.
    status: Option<(IngestStatus, String)>,
}

impl ProxyWriter {
    /// The expected digest goes only with the commit: the remote store would end the stream
    /// early (AlreadyExists) for a blob it has, which is the metadata layer's call to make.
    fn request(&self, action: WriteAction, offset: u64, data: Vec<u8>) -> api::WriteContentRequest {
        let expected = if action == WriteAction::Commit {
            self.expected.clone()
        } else {
            String::new()
        };
        api::WriteContentRequest {
            action: action as i32,
            r#ref: self.reference.clone(),
            total: self.total as i64,
            expected,
            offset: offset as i64,
            data,
            labels: Default::default(),
        }
    }

    async fn send(
        &mut self,
        req: api::WriteContentRequest,
    ) -> Result<api::WriteContentResponse, ContentError> {
        let deadline = if req.action == WriteAction::Commit as i32 {
            COMMIT_TIMEOUT
        } else {
            CALL_TIMEOUT
        };
        self.requests
            .send(req)
            .await
            .map_err(|_| closed(&self.reference))?;
        self.answer(deadline).await
    }

    async fn answer(
        &mut self,
        deadline: Duration,
    ) -> Result<api::WriteContentResponse, ContentError> {
        let Some(responses) = self.responses.as_mut() else {
            return Err(closed(&self.reference));
        };
        let response = self
            .connection
            .call_within(deadline, "write", responses.message())
            .await
            .map_err(error)?
            .ok_or_else(|| closed(&self.reference))?;
        self.offset = response.offset.max(0) as u64;
        let status = IngestStatus {
            reference: self.reference.clone(),
            offset: self.offset,
            total: if response.total > 0 {
                response.total as u64
            } else {
                self.total
            },
            expected: None,
            started_at: time(response.started_at),
            updated_at: time(response.updated_at),
        };
        self.status = Some((status, response.digest.clone()));
        Ok(response)
    }
}

#[async_trait::async_trait]
impl ContentWriter for ProxyWriter {
    fn offset(&self) -> u64 {
        self.offset
    }

    fn set_total(&mut self, total: u64) {
        if total > 0 {
            self.total = total;
        }
    }

    fn set_expected(&mut self, expected: &str) -> Result<(), ContentError> {
        crated_content::validate_digest(expected)?;
        self.expected = expected.to_owned();
        Ok(())
    }

    async fn stat(&mut self) -> Result<(IngestStatus, String), ContentError> {
        let req = self.request(WriteAction::Stat, 0, Vec::new());
        self.send(req).await?;
        self.status.clone().ok_or_else(|| closed(&self.reference))
    }

    fn keeps_given_time(&self) -> bool {
        false
    }

    async fn write(
        &mut self,
        data: Vec<u8>,
        reset: bool,
        _at: SystemTime,
    ) -> Result<(), ContentError> {
        let at = if reset { 0 } else { self.offset };
        let want = at + data.len() as u64;
        let req = self.request(WriteAction::Write, at, data);
        self.send(req).await?;
        if self.offset != want {
            return Err(ContentError::Other {
                kind: Kind::DataLoss,
                message: format!(
                    "proxy store took {} of {want} bytes of {}",
                    self.offset, self.reference
                ),
            });
        }
        Ok(())
    }

    async fn commit(
        mut self: Box<Self>,
        size: u64,
        expected: Option<String>,
    ) -> Result<String, ContentError> {
        if size > 0 {
            self.total = size;
        }
        if let Some(e) = expected {
            self.expected = e;
        }
        let at = self.offset;
        let req = self.request(WriteAction::Commit, at, Vec::new());
        let response = self.send(req).await?;
        Ok(response.digest)
    }
}
