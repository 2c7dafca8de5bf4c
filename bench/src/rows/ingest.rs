//! The ingest rows: 1 GiB through the content Write stream, and the daemon's CPU for it.

use std::path::Path;

use anyhow::bail;
use crated_testsupport::Daemon;

use super::cpu_seconds;
use crate::floors::durable_write_floor;
use crate::table::{stats, Row};

/// Streams `blob` into the daemon's content store through the Write stream as one client
/// does for both daemons: Stat, 1 MiB writes sent without waiting on each answer, Commit with
/// the expected digest. Returns seconds from opening the stream to the commit's answer.
async fn ingest_once(
    socket: &Path,
    blob: std::sync::Arc<Vec<u8>>,
    digest: &str,
) -> anyhow::Result<f64> {
    use crated_api::containerd::services::content::v1::content_client::ContentClient;
    use crated_api::containerd::services::content::v1::{WriteAction, WriteContentRequest};
    let channel = crated_testsupport::channel(socket).await?;
    let mut client = ContentClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let started = std::time::Instant::now();
    let request = crated_testsupport::in_namespace(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        "bench",
        None,
    );
    tx.send(WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: "bench-ingest".into(),
        total: blob.len() as i64,
        expected: digest.to_owned(),
        ..Default::default()
    })
    .await?;
    let mut responses = client.write(request).await?.into_inner();
    let total = blob.len();
    let expected = digest.to_owned();
    let sender = tokio::spawn(async move {
        const CHUNK: usize = 1 << 20;
        let mut offset = 0;
        while offset < total {
            let end = (offset + CHUNK).min(total);
            let last = end == total;
            let req = WriteContentRequest {
                action: if last {
                    WriteAction::Commit
                } else {
                    WriteAction::Write
                } as i32,
                offset: offset as i64,
                data: blob[offset..end].to_vec(),
                total: total as i64,
                expected: if last {
                    expected.clone()
                } else {
                    String::new()
                },
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                break;
            }
            offset = end;
        }
    });
    let mut last_digest = String::new();
    while let Some(m) = responses.message().await? {
        last_digest = m.digest;
    }
    sender.await?;
    let secs = started.elapsed().as_secs_f64();
    if last_digest != digest {
        bail!("ingest ended with digest {last_digest:?}, not {digest}");
    }
    Ok(secs)
}

/// 1 GiB of random data through the content Write stream, each run on a fresh daemon; beside
/// it, the disk's durable write floor for the same bytes.
pub fn ingest(
    runs: usize,
    crated: &Path,
    containerd: Option<&Path>,
) -> anyhow::Result<(Vec<Row>, String)> {
    use sha2::Digest as _;
    let size = 1usize << 30;
    let mut blob = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in blob.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(&blob));
    let blob = std::sync::Arc::new(blob);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rate = Row {
        name: "ingest 1 GiB, Write stream".into(),
        unit: "MB/s",
        crated: vec![],
        containerd: vec![],
    };
    let mut cpu = Row {
        name: "ingest 1 GiB, daemon CPU".into(),
        unit: "s",
        crated: vec![],
        containerd: vec![],
    };
    let one = |daemon: Daemon, rate: &mut Vec<f64>, cpu: &mut Vec<f64>| -> anyhow::Result<()> {
        let before = cpu_seconds(daemon.pid())?;
        let secs = runtime.block_on(ingest_once(&daemon.socket, blob.clone(), &digest))?;
        cpu.push(cpu_seconds(daemon.pid())? - before);
        rate.push(size as f64 / secs / 1e6);
        drop(daemon);
        Ok(())
    };
    // The daemons' roots are temporary directories: the floor writes where they do.
    let scratch = tempfile::tempdir()?;
    let mut floor = Vec::new();
    for _ in 0..runs {
        let d = Daemon::crated(crated, None, &[]).map_err(anyhow::Error::msg)?;
        one(d, &mut rate.crated, &mut cpu.crated)?;
        if let Some(c) = containerd {
            let d = Daemon::containerd(c, Some("")).map_err(anyhow::Error::msg)?;
            one(d, &mut rate.containerd, &mut cpu.containerd)?;
        }
        floor.push(size as f64 / durable_write_floor(&blob, scratch.path())? / 1e6);
    }
    let floor = stats(&floor).map_or(0.0, |(m, ..)| m);
    let note = format!(
        "floor: durable write of the same 1 GiB (O_DIRECT in 8 MiB blocks, then fsync, no hashing) {floor:.1} MB/s (median); ingest / floor: crated {:.2}, containerd {:.2}",
        stats(&rate.crated).map_or(0.0, |(m, ..)| m) / floor.max(f64::EPSILON),
        stats(&rate.containerd).map_or(0.0, |(m, ..)| m) / floor.max(f64::EPSILON)
    );
    Ok((vec![rate, cpu], note))
}
