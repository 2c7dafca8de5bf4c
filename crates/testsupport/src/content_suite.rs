//! containerd's content store test suite (its `content/testsuite`, 1.6), ported: the
//! semantics every content store behind containerd's API keeps. It drives a store through
//! containerd's content gRPC API the way containerd's Go client does (its `remoteWriter`: a
//! Write stream opened with a Stat, writes at the client's offset, a Commit that closes the
//! stream), so it runs against any daemon or content server on a unix socket.
//!
//! [`content_suite`] is containerd's `ContentSuite`; [`cross_namespace_shared_suite`] and
//! [`cross_namespace_isolated_suite`] its `ContentCrossNS*Suite`s, for a namespaced store with
//! the `shared` or `isolated` policy. Each check panics with what differs.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crated_api::containerd::services::content::v1 as api;
use crated_api::containerd::services::content::v1::content_client::ContentClient;
use crated_api::containerd::services::content::v1::WriteAction;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

/// Where a suite runs: a content API on a socket, in a namespace (none for a bare store).
/// In a namespace, every call is made under a lease, as containerd's suite wraps its calls,
/// so that no collection takes what a check wrote.
#[derive(Clone)]
pub struct Target {
    pub channel: Channel,
    pub namespace: Option<String>,
    /// Whether the store keeps labels (a bare local store does not).
    pub labels: bool,
}

/// The lease every call in a namespace is made under.
const LEASE: &str = "content-suite";

impl Target {
    /// The content API at `socket`, in `namespace`.
    pub async fn connect(socket: &Path, namespace: Option<&str>, labels: bool) -> Target {
        let target = Target {
            channel: crate::channel(socket)
                .await
                .expect("connecting to the content API"),
            namespace: namespace.map(str::to_owned),
            labels,
        };
        target.lease().await;
        target
    }

    /// Creates the suite's lease in the target's namespace.
    async fn lease(&self) {
        use crated_api::containerd::services::leases::v1::leases_client::LeasesClient;
        use crated_api::containerd::services::leases::v1::CreateRequest;
        let Some(ns) = &self.namespace else { return };
        let mut request = tonic::Request::new(CreateRequest {
            id: LEASE.into(),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "containerd-namespace",
            ns.parse().expect("a namespace is a header value"),
        );
        match LeasesClient::new(self.channel.clone())
            .create(request)
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => panic!("creating the suite's lease: {s:?}"),
        }
    }

    /// The same store seen from another namespace.
    async fn in_namespace(&self, namespace: &str) -> Target {
        let other = Target {
            namespace: Some(namespace.to_owned()),
            ..self.clone()
        };
        other.lease().await;
        other
    }

    fn client(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(ns) = &self.namespace {
            let md = request.metadata_mut();
            md.insert(
                "containerd-namespace",
                ns.parse().expect("a namespace is a header value"),
            );
            md.insert(
                "containerd-lease",
                tonic::metadata::MetadataValue::from_static(LEASE),
            );
        }
        request
    }
}

/// A store's answer to a call that failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// What containerd's `content.Info` holds.
#[derive(Debug, Clone)]
pub struct Info {
    pub digest: String,
    pub size: i64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: HashMap<String, String>,
}

/// What containerd's `content.Status` holds.
#[derive(Debug, Clone)]
pub struct Status {
    pub reference: String,
    pub offset: i64,
    pub total: i64,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

fn time(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// A write in progress, as containerd's `remoteWriter` keeps one.
pub struct Writer {
    reference: String,
    sender: Option<mpsc::Sender<api::WriteContentRequest>>,
    answers: tonic::Streaming<api::WriteContentResponse>,
    offset: i64,
    digest: String,
}

impl Writer {
    /// `cs.Writer(ctx, WithRef(reference), WithDescriptor{size, digest})`.
    /// Opens a writer as containerd's `content.OpenWriter` does: a ref still held (by a
    /// writer just closed, whose stream the store has not seen end yet) is tried again.
    pub async fn open(target: &Target, reference: &str, size: i64, digest: &str) -> Result<Writer> {
        let mut wait_ms = 16;
        loop {
            match Writer::open_once(target, reference, size, digest).await {
                Err(f) if f.code == Code::Unavailable && wait_ms <= 1024 => {
                    tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
                    wait_ms *= 2;
                }
                opened => return opened,
            }
        }
    }

    /// One try at opening a writer, as a store's `Writer` call.
    pub async fn open_once(
        target: &Target,
        reference: &str,
        size: i64,
        digest: &str,
    ) -> Result<Writer> {
        let (sender, receiver) = mpsc::channel(4);
        sender
            .send(api::WriteContentRequest {
                action: WriteAction::Stat as i32,
                r#ref: reference.to_owned(),
                total: size,
                expected: digest.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|_| closed())?;
        let mut answers = target
            .client()
            .write(target.request(ReceiverStream::new(receiver)))
            .await?
            .into_inner();
        let first = answers.message().await?.ok_or_else(closed)?;
        Ok(Writer {
            reference: reference.to_owned(),
            sender: Some(sender),
            answers,
            offset: first.offset,
            digest: String::new(),
        })
    }

    async fn send(
        &mut self,
        request: api::WriteContentRequest,
    ) -> Result<api::WriteContentResponse> {
        let sender = self.sender.as_ref().ok_or_else(closed)?;
        sender.send(request).await.map_err(|_| closed())?;
        let answer = self.answers.message().await?.ok_or_else(closed)?;
        if !answer.digest.is_empty() {
            self.digest = answer.digest.clone();
        }
        Ok(answer)
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        let answer = self
            .send(api::WriteContentRequest {
                action: WriteAction::Write as i32,
                offset: self.offset,
                data: data.to_vec(),
                ..Default::default()
            })
            .await?;
        let want = self.offset + data.len() as i64;
        if answer.offset != want {
            return Err(Failure {
                code: Code::Unknown,
                message: format!("short write: {} of {want}", answer.offset),
            });
        }
        self.offset = want;
        Ok(())
    }

    pub async fn status(&mut self) -> Result<Status> {
        let answer = self
            .send(api::WriteContentRequest {
                action: WriteAction::Stat as i32,
                ..Default::default()
            })
            .await?;
        Ok(Status {
            reference: self.reference.clone(),
            offset: answer.offset,
            total: answer.total,
            started_at: time(answer.started_at),
            updated_at: time(answer.updated_at),
        })
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Only to 0, checked at the next write, as containerd's remote writer does.
    pub fn truncate(&mut self, size: i64) {
        self.offset = size;
    }

    /// Commits and closes the stream.
    pub async fn commit(
        &mut self,
        size: i64,
        expected: &str,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        let answer = self
            .send(api::WriteContentRequest {
                action: WriteAction::Commit as i32,
                total: size,
                offset: self.offset,
                expected: expected.to_owned(),
                labels: labels.clone(),
                ..Default::default()
            })
            .await;
        self.close().await;
        let answer = answer?;
        if size != 0 && answer.offset != size {
            return Err(Failure {
                code: Code::Unknown,
                message: format!("unexpected size: {} != {size}", answer.offset),
            });
        }
        if !expected.is_empty() && answer.digest != expected {
            return Err(Failure {
                code: Code::Unknown,
                message: format!("unexpected digest: {} != {expected}", answer.digest),
            });
        }
        Ok(())
    }

    /// Ends the stream and waits for the store to end it too, so the ref is free again.
    pub async fn close(&mut self) {
        if self.sender.take().is_some() {
            while let Ok(Some(_)) = self.answers.message().await {}
        }
    }
}

fn closed() -> Failure {
    Failure {
        code: Code::Unavailable,
        message: "write stream closed".into(),
    }
}

pub async fn info(target: &Target, digest: &str) -> Result<Info> {
    let answer = target
        .client()
        .info(target.request(api::InfoRequest {
            digest: digest.to_owned(),
        }))
        .await?
        .into_inner();
    let i = answer.info.unwrap_or_default();
    Ok(Info {
        digest: i.digest,
        size: i.size,
        created_at: time(i.created_at),
        updated_at: time(i.updated_at),
        labels: i.labels,
    })
}

pub async fn update(target: &Target, info: &Info, paths: &[&str]) -> Result<()> {
    target
        .client()
        .update(target.request(api::UpdateRequest {
            info: Some(api::Info {
                digest: info.digest.clone(),
                size: info.size,
                labels: info.labels.clone(),
                ..Default::default()
            }),
            update_mask: (!paths.is_empty()).then(|| prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        }))
        .await?;
    Ok(())
}

/// `size` bytes of blob `digest` from `offset` (a read past the end gives what there is).
pub async fn read(target: &Target, digest: &str, offset: i64, size: i64) -> Result<Vec<u8>> {
    let mut answers = target
        .client()
        .read(target.request(api::ReadContentRequest {
            digest: digest.to_owned(),
            offset,
            size,
        }))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = answers.message().await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// containerd's `content.WriteBlob`: already there is success.
pub async fn write_blob(target: &Target, reference: &str, data: &[u8], digest: &str) -> Result<()> {
    let mut w = match Writer::open(target, reference, data.len() as i64, digest).await {
        Err(f) if f.code == Code::AlreadyExists => return Ok(()),
        other => other?,
    };
    let result = copy(&mut w, data, data.len() as i64, digest).await;
    w.close().await;
    result
}

/// containerd's `content.Copy`: from the writer's offset on, then a commit at `size`.
async fn copy(w: &mut Writer, data: &[u8], size: i64, digest: &str) -> Result<()> {
    let offset = w.status().await?.offset as usize;
    for chunk in data[offset.min(data.len())..].chunks(32 * 1024) {
        w.write(chunk).await?;
    }
    match w.commit(size, digest, &HashMap::new()).await {
        Err(f) if f.code == Code::AlreadyExists => Ok(()),
        other => other,
    }
}

/// containerd's `createContent`: different bytes at every call.
fn content(size: usize) -> (Vec<u8>, String) {
    static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut state = SEED
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(std::process::id() as u64)
        | 1;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let digest = digest_of(&data);
    (data, digest)
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn between(what: &str, t: SystemTime, from: SystemTime, to: SystemTime) {
    assert!(
        t >= from && t <= to,
        "unexpected {what} {t:?}, expected between {from:?} and {to:?}"
    );
}

#[allow(clippy::too_many_arguments)]
async fn check_status(
    w: &mut Writer,
    reference: &str,
    offset: i64,
    total: i64,
    digest: &str,
    started: (SystemTime, SystemTime),
    updated: (SystemTime, SystemTime),
) {
    let st = w.status().await.expect("status");
    assert_eq!(w.digest(), digest, "writer digest");
    assert_eq!(st.reference, reference);
    assert_eq!(st.offset, offset, "offset");
    assert_eq!(st.total, total, "total");
    between("started at", st.started_at, started.0, started.1);
    between("updated at", st.updated_at, updated.0, updated.1);
}

#[allow(clippy::too_many_arguments)]
async fn check_info(
    target: &Target,
    digest: &str,
    size: i64,
    labels: &HashMap<String, String>,
    created: (SystemTime, SystemTime),
    updated: (SystemTime, SystemTime),
) {
    let i = info(target, digest).await.expect("info");
    assert_eq!(i.digest, digest);
    assert_eq!(i.size, size, "info size");
    between("created at", i.created_at, created.0, created.1);
    between("updated at", i.updated_at, updated.0, updated.1);
    let expected = if target.labels {
        labels.clone()
    } else {
        HashMap::new()
    };
    assert_eq!(i.labels, expected, "labels of {digest}");
}

async fn check_content(
    target: &Target,
    digest: &str,
    size: i64,
    created: (SystemTime, SystemTime),
    updated: (SystemTime, SystemTime),
) {
    check_info(target, digest, size, &HashMap::new(), created, updated).await;
    let data = read(target, digest, 0, 0).await.expect("reading the blob");
    assert_eq!(data.len() as i64, size, "blob size");
    assert_eq!(digest_of(&data), digest, "blob digest");
}

fn gc_root() -> HashMap<String, String> {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    HashMap::from([("containerd.io/gc.root".to_owned(), stamp.to_string())])
}

async fn check_ref_not_available(target: &Target, reference: &str) {
    match Writer::open_once(target, reference, 0, "").await {
        Ok(mut w) => {
            w.close().await;
            panic!("writer created with ref {reference}, expected to be in use");
        }
        Err(f) => assert_eq!(f.code, Code::Unavailable, "{f:?}"),
    }
}

/// `Writer`: four writers (with and without size and digest) at once, committed with labels.
pub async fn writer(t: &Target) {
    let labels = gc_root();
    let mut cases = Vec::new();
    for (i, (with_size, with_digest)) in
        [(false, false), (true, false), (false, true), (true, true)]
            .into_iter()
            .enumerate()
    {
        let (data, digest) = content(256);
        let size = if with_size { data.len() as i64 } else { 0 };
        let expected = if with_digest {
            digest.clone()
        } else {
            String::new()
        };
        let w = Writer::open(t, &format!("c{}", i + 1), size, &expected)
            .await
            .expect("open");
        cases.push((data, digest, w));
    }
    for (data, digest, mut w) in cases {
        for chunk in data.chunks(32) {
            w.write(chunk).await.expect("write");
        }
        let pre = now();
        w.commit(0, "", &labels).await.expect("commit");
        let post = now();
        assert_eq!(w.digest(), digest);
        check_info(t, &digest, 256, &labels, (pre, post), (pre, post)).await;
    }
}

/// `Resume`: a write closed halfway goes on in a new writer with the same status.
pub async fn resume(t: &Target) {
    let (data, digest) = content(256);
    let (first, second) = data.split_at(128);
    let pre_start = now();
    let mut w1 = Writer::open(t, "cb", 256, &digest).await.expect("open");
    let post_start = now();
    let pre_update = post_start;
    w1.write(first).await.expect("write");
    let post_update = now();
    let first_digest = digest_of(first);
    check_status(
        &mut w1,
        "cb",
        128,
        256,
        &first_digest,
        (pre_start, post_start),
        (pre_update, post_update),
    )
    .await;
    w1.close().await;

    let mut w2 = Writer::open(t, "cb", 256, &digest).await.expect("reopen");
    check_status(
        &mut w2,
        "cb",
        128,
        256,
        &first_digest,
        (pre_start, post_start),
        (pre_update, post_update),
    )
    .await;
    let pre_update = now();
    w2.write(second).await.expect("write");
    let post_update = now();
    check_status(
        &mut w2,
        "cb",
        256,
        256,
        &digest,
        (pre_start, post_start),
        (pre_update, post_update),
    )
    .await;
    let pre = now();
    w2.commit(0, "", &HashMap::new()).await.expect("commit");
    let post = now();
    check_info(t, &digest, 256, &HashMap::new(), (pre, post), (pre, post)).await;
}

/// `CommitExists`: committing bytes the store has is AlreadyExists, with a digest or without.
pub async fn commit_exists(t: &Target) {
    let (data, digest) = content(256);
    write_blob(t, "c1", &data, &digest)
        .await
        .expect("write blob");
    for (i, expected) in [digest.as_str(), ""].into_iter().enumerate() {
        let mut w = Writer::open(t, &format!("c1-commitexists-{i}"), 0, "")
            .await
            .expect("open");
        w.write(&data).await.expect("write");
        let err = w
            .commit(data.len() as i64, expected, &HashMap::new())
            .await
            .expect_err(&format!("({i}) already exists"));
        assert_eq!(err.code, Code::AlreadyExists, "({i}) {err:?}");
    }
}

/// `CommitErrorState`: a failed commit leaves the ref usable, and a ref in use is Unavailable.
pub async fn commit_error_state(t: &Target) {
    let none = HashMap::new();
    let (c1, d1) = content(256);
    let (_, d2) = content(256);
    write_blob(t, "c1", &c1, &d1).await.expect("write blob");
    let r = "c1-commiterror-state";
    let size = c1.len() as i64;

    let mut w = Writer::open(t, r, 0, "").await.expect("open");
    w.write(&c1).await.expect("write");
    check_ref_not_available(t, r).await;
    let err = w.commit(size, &d1, &none).await.expect_err("exists");
    assert_eq!(err.code, Code::AlreadyExists, "{err:?}");

    let mut w = Writer::open(t, r, 0, "").await.expect("open");
    check_ref_not_available(t, r).await;
    w.write(&c1).await.expect("write");
    let err = w.commit(size, "", &none).await.expect_err("exists");
    assert_eq!(err.code, Code::AlreadyExists, "{err:?}");

    let mut w = Writer::open(t, r, 0, "").await.expect("open");
    check_ref_not_available(t, r).await;
    let more = [&c1[..], b"more"].concat();
    w.write(&more).await.expect("write");
    let err = w
        .commit(size + 4, &d2, &none)
        .await
        .expect_err("wrong digest");
    assert_eq!(err.code, Code::FailedPrecondition, "{err:?}");

    let mut w = Writer::open(t, r, 0, "").await.expect("open");
    check_ref_not_available(t, r).await;
    let err = w.commit(size, "", &none).await.expect_err("wrong size");
    assert_eq!(err.code, Code::FailedPrecondition, "{err:?}");

    let mut w = Writer::open(t, r, 0, "").await.expect("open");
    check_ref_not_available(t, r).await;
    w.commit(size + 4, "", &none).await.expect("commit");

    let mut w = Writer::open(t, r, 0, "").await.expect("open after commit");
    w.write(&c1).await.expect("write");
    check_ref_not_available(t, r).await;
    let err = w.commit(size, &d1, &none).await.expect_err("exists");
    assert_eq!(err.code, Code::AlreadyExists, "{err:?}");

    let mut w = Writer::open(t, r, 0, "").await.expect("open");
    check_ref_not_available(t, r).await;
    w.close().await;
    let mut w = Writer::open(t, r, 0, "").await.expect("open after close");
    w.close().await;
}

/// `UpdateStatus`: status after each write: offset, digest so far, times.
pub async fn update_status(t: &Target) {
    let labels = gc_root();
    let (c1, d1) = content(256);
    let pre_start = now();
    let mut w = Writer::open(t, "c1", 256, &d1).await.expect("open");
    let post_start = now();
    // Nothing written: the digest of nothing, updated when started.
    w.status().await.expect("status");
    let empty = digest_of(b"");
    let digest_now = if w.digest().is_empty() {
        empty.clone()
    } else {
        w.digest().to_owned()
    };
    assert_eq!(digest_now, empty);
    check_status(
        &mut w,
        "c1",
        0,
        256,
        &empty,
        (pre_start, post_start),
        (pre_start, post_start),
    )
    .await;
    for (from, to) in [(0, 64), (64, 192), (192, 256)] {
        let pre = now();
        w.write(&c1[from..to]).await.expect("write");
        let post = now();
        check_status(
            &mut w,
            "c1",
            to as i64,
            256,
            &digest_of(&c1[..to]),
            (pre_start, post_start),
            (pre, post),
        )
        .await;
    }
    let pre = now();
    w.commit(0, "", &labels).await.expect("commit");
    let post = now();
    check_info(t, &d1, 256, &labels, (pre, post), (pre, post)).await;
}

/// `Labels`: committed with labels, replaced whole, then changed by field paths.
pub async fn labels(t: &Target) {
    if !t.labels {
        return;
    }
    let (c1, d1) = content(256);
    let mut w = Writer::open(t, "c1-checklabels", 256, &d1)
        .await
        .expect("open");
    w.write(&c1).await.expect("write");
    let root = gc_root();
    let mut labels: HashMap<String, String> = root.clone();
    labels.insert("k1".into(), "v1".into());
    labels.insert("k2".into(), "v2".into());
    let pre_commit = now();
    w.commit(0, "", &labels).await.expect("commit");
    let post_commit = now();
    let created = (pre_commit, post_commit);
    check_info(t, &d1, 256, &labels, created, created).await;

    labels.insert("k1".into(), "newvalue".into());
    labels.remove("k2");
    labels.insert("k3".into(), "v3".into());
    let mut i = info(t, &d1).await.expect("info");
    i.labels = labels.clone();
    let pre = now();
    update(t, &i, &[]).await.expect("update");
    let post = now();
    check_info(t, &d1, 256, &labels, created, (pre, post)).await;

    let mut labels = root;
    labels.insert("k1".into(), "v1".into());
    i.labels = labels.clone();
    let pre = now();
    update(t, &i, &["labels.k3", "labels.k1"])
        .await
        .expect("update");
    let post = now();
    check_info(t, &d1, 256, &labels, created, (pre, post)).await;
}

#[derive(Clone, Copy, Debug)]
pub enum ResumeHow {
    /// Truncate to 0 and write it all again.
    Truncate,
    /// Write what is missing.
    Discard,
    /// containerd's `content.Copy`, from the writer's offset.
    Copy,
}

/// `Resume*`: writes cut at 0, 10, 50, 90 and 100% of three sizes, resumed.
pub async fn resume_as(t: &Target, how: ResumeHow) {
    for (i, size) in [500usize, 5000, 50000].into_iter().enumerate() {
        for (j, part) in [0.0, 0.1, 0.5, 0.9, 1.0].into_iter().enumerate() {
            let (data, digest) = content(size);
            let limit = (size as f64 * part) as usize;
            let r = format!("ref-{i}-{j}-{how:?}");
            let mut w = Writer::open(t, &r, size as i64, &digest)
                .await
                .expect("open");
            w.write(&data[..limit]).await.expect("write");
            w.close().await;
            let mut w = Writer::open(t, &r, size as i64, &digest)
                .await
                .expect("reopen");
            let st = w.status().await.expect("status");
            assert_eq!(st.offset, limit as i64, "{r}");
            let pre = now();
            match how {
                ResumeHow::Truncate => {
                    w.truncate(0);
                    for chunk in data.chunks(1024) {
                        w.write(chunk).await.expect("write");
                    }
                    w.commit(size as i64, &digest, &HashMap::new())
                        .await
                        .expect("commit");
                }
                ResumeHow::Discard => {
                    for chunk in data[limit..].chunks(1024) {
                        w.write(chunk).await.expect("write");
                    }
                    w.commit(size as i64, &digest, &HashMap::new())
                        .await
                        .expect("commit");
                }
                ResumeHow::Copy => copy(&mut w, &data, size as i64, &digest)
                    .await
                    .expect("copy"),
            }
            let post = now();
            w.close().await;
            check_info(
                t,
                &digest,
                size as i64,
                &HashMap::new(),
                (pre, post),
                (pre, post),
            )
            .await;
        }
    }
}

/// `SmallBlob`: a read past a small blob's end gives the blob.
pub async fn small_blob(t: &Target) {
    let blob = b"foobar";
    let digest = digest_of(blob);
    let mut w = Writer::open(t, "small-blob", 6, &digest)
        .await
        .expect("open");
    w.write(blob).await.expect("write");
    w.commit(6, &digest, &HashMap::new()).await.expect("commit");
    let got = read(t, &digest, 0, 7).await.expect("read");
    assert_eq!(got, blob);
}

/// containerd's `ContentSuite`.
pub async fn content_suite(t: &Target) {
    writer(t).await;
    update_status(t).await;
    commit_exists(t).await;
    resume(t).await;
    resume_as(t, ResumeHow::Truncate).await;
    resume_as(t, ResumeHow::Discard).await;
    resume_as(t, ResumeHow::Copy).await;
    small_blob(t).await;
    labels(t).await;
    commit_error_state(t).await;
}

/// `CrossNamespaceShare`: a blob of namespace `t` is written in `other` without its bytes:
/// the writer starts at its end, and the commit records it there.
pub async fn cross_namespace_share(t: &Target, other: &str) {
    let size = 1000;
    let (data, digest) = content(size);
    let r = format!("ref-{size}-share");
    let t1 = now();
    write_blob(t, &r, &data, &digest).await.expect("write blob");
    let t2_target = t.in_namespace(other).await;
    let mut w = Writer::open(&t2_target, &r, size as i64, &digest)
        .await
        .expect("open in the other namespace");
    let t2 = now();
    check_status(
        &mut w,
        &r,
        size as i64,
        size as i64,
        &digest,
        (t1, t2),
        (t1, t2),
    )
    .await;
    w.commit(size as i64, &digest, &HashMap::new())
        .await
        .expect("commit");
    let t3 = now();
    check_content(t, &digest, size as i64, (t1, t3), (t1, t3)).await;
    check_content(&t2_target, &digest, size as i64, (t1, t3), (t1, t3)).await;
}

/// `CrossNamespaceAppend`: the shared blob's writer in `other` appends past it: a new blob
/// there, the first one untouched in `t`.
pub async fn cross_namespace_append(t: &Target, other: &str) {
    let size = 1000;
    let (data, digest) = content(size);
    let r = format!("ref-{size}-append");
    let t1 = now();
    write_blob(t, &r, &data, &digest).await.expect("write blob");
    let other = t.in_namespace(other).await;
    let extra = b"appended bytes";
    let longer = [&data[..], extra].concat();
    let longer_digest = digest_of(&longer);
    let mut w = Writer::open(&other, &r, size as i64, &digest)
        .await
        .expect("open in the other namespace");
    let t2 = now();
    check_status(
        &mut w,
        &r,
        size as i64,
        size as i64,
        &digest,
        (t1, t2),
        (t1, t2),
    )
    .await;
    w.write(extra).await.expect("append");
    w.commit(longer.len() as i64, &longer_digest, &HashMap::new())
        .await
        .expect("commit");
    let t3 = now();
    check_content(t, &digest, size as i64, (t1, t3), (t1, t3)).await;
    check_content(
        &other,
        &longer_digest,
        longer.len() as i64,
        (t1, t3),
        (t1, t3),
    )
    .await;
}

/// `CrossNamespaceIsolate`: with the isolated policy a writer in `other` starts empty.
pub async fn cross_namespace_isolate(t: &Target, other: &str) {
    let size = 1000;
    let (data, digest) = content(size);
    let r = format!("ref-{size}-isolate");
    write_blob(t, &r, &data, &digest).await.expect("write blob");
    let other = t.in_namespace(other).await;
    let t3 = now();
    let mut w = Writer::open(&other, &r, size as i64, &digest)
        .await
        .expect("open in the other namespace");
    let t4 = now();
    let st = w.status().await.expect("status");
    assert_eq!(st.offset, 0);
    let empty = digest_of(b"");
    assert!(
        w.digest().is_empty() || w.digest() == empty,
        "{}",
        w.digest()
    );
    between(
        "started at",
        st.started_at,
        t3,
        t4 + Duration::from_millis(1),
    );
    w.close().await;
}

/// containerd's `ContentCrossNSSharedSuite`.
pub async fn cross_namespace_shared_suite(t: &Target, other: &str) {
    cross_namespace_append(t, other).await;
    cross_namespace_share(t, other).await;
}

/// containerd's `ContentCrossNSIsolatedSuite`.
pub async fn cross_namespace_isolated_suite(t: &Target, other: &str) {
    cross_namespace_isolate(t, other).await;
}
