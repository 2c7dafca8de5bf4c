//! `cratectl content ls|get|ingest|rm|label|active`.

use std::collections::HashMap;
use std::io::{Read, Write};

use anyhow::{bail, Context};
use clap::Subcommand;
use crated_api::containerd::services::content::v1::{
    DeleteContentRequest, Info, ListContentRequest, ListStatusesRequest, ReadContentRequest,
    UpdateRequest, WriteAction, WriteContentRequest,
};
use crated_api::prost_types::FieldMask;
use tabwriter::TabWriter;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Connection;

const CHUNK: usize = 1 << 20;

#[derive(Subcommand, Debug)]
pub enum ContentCommand {
    /// List blobs of the namespace.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Write a blob to stdout.
    Get { digest: String },
    /// Store stdin under REF, resuming an earlier partial write of the same REF.
    Ingest {
        #[arg(long, default_value_t = 0)]
        expected_size: i64,
        #[arg(long, default_value = "")]
        expected_digest: String,
        /// Let GC abort the write if it is not committed within this long (Go's form: 30s,
        /// 1h); by default a write no lease holds lasts a day.
        #[arg(long)]
        expires: Option<String>,
        reference: String,
    },
    /// Remove blobs from the namespace.
    #[command(alias = "del", alias = "remove", alias = "delete")]
    Rm { digests: Vec<String> },
    /// Set labels KEY=VALUE on a blob (an empty value removes the label).
    Label { digest: String, labels: Vec<String> },
    /// List writes in progress.
    Active { filters: Vec<String> },
    /// Remove now every blob nothing keeps (no image, lease, gc.root or reference from one),
    /// printing the digests removed from this namespace.
    Prune,
}

fn labels_text(labels: &HashMap<String, String>) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    if l.is_empty() {
        "-".into()
    } else {
        l.join(",")
    }
}

async fn list(conn: &Connection, filters: Vec<String>) -> anyhow::Result<Vec<Info>> {
    let mut stream = conn
        .content()
        .list(conn.request(ListContentRequest { filters }))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await? {
        out.extend(batch.info);
    }
    Ok(out)
}

/// Streams stdin into the store.
async fn ingest(
    conn: &Connection,
    reference: String,
    size: i64,
    expected: String,
    labels: HashMap<String, String>,
) -> anyhow::Result<()> {
    let (chunks, rx) = mpsc::channel(4);
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = stdin.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            if chunks.blocking_send(buf).is_err() {
                return Ok(());
            }
        }
    });
    let written = write_blob(conn, reference, size, expected, labels, rx).await;
    reader.await??;
    written
}

/// Writes the bytes arriving on `chunks` as a blob: Stat first (to learn where an earlier write
/// of the reference stopped: that much of the input is skipped), then writes that are not each
/// waited for, then Commit with the expected size and digest. A blob already there is done.
pub async fn write_blob(
    conn: &Connection,
    reference: String,
    size: i64,
    expected: String,
    labels: HashMap<String, String>,
    mut chunks: mpsc::Receiver<Vec<u8>>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<WriteContentRequest>(8);
    tx.send(WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: reference.clone(),
        total: size,
        expected: expected.clone(),
        labels: labels.clone(),
        ..Default::default()
    })
    .await?;
    let mut responses = conn
        .content()
        .write(conn.request(ReceiverStream::new(rx)))
        .await?
        .into_inner();
    let first = match responses.message().await {
        Ok(Some(m)) => m,
        Ok(None) => bail!("the daemon closed the write stream"),
        // Already stored: nothing to do, as ctr.
        Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
        Err(s) => return Err(s.into()),
    };
    let sender = async move {
        let mut skip = first.offset.max(0) as usize;
        let mut offset = first.offset;
        let mut pending: Option<Vec<u8>> = None;
        let mut committed = false;
        loop {
            let next = chunks.recv().await;
            // Each chunk goes out once the next is known, so the last one carries Commit.
            if let Some(data) = pending.take() {
                let last = next.is_none();
                let len = data.len() as i64;
                let req = WriteContentRequest {
                    action: if last {
                        WriteAction::Commit
                    } else {
                        WriteAction::Write
                    } as i32,
                    offset,
                    data,
                    total: if last { size } else { 0 },
                    expected: if last {
                        expected.clone()
                    } else {
                        String::new()
                    },
                    labels: if last { labels.clone() } else { HashMap::new() },
                    ..Default::default()
                };
                offset += len;
                committed = last;
                tx.send(req).await.context("the daemon ended the write")?;
            }
            let Some(mut data) = next else { break };
            if skip > 0 {
                let n = skip.min(data.len());
                data.drain(..n);
                skip -= n;
            }
            pending = Some(data);
        }
        if !committed {
            // Nothing arrived: commit what is there.
            tx.send(WriteContentRequest {
                action: WriteAction::Commit as i32,
                offset,
                total: size,
                expected: expected.clone(),
                labels: labels.clone(),
                ..Default::default()
            })
            .await
            .context("the daemon ended the write")?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let receiver = async {
        let mut digest = String::new();
        while let Some(m) = responses.message().await? {
            digest = m.digest;
        }
        Ok::<_, anyhow::Error>(digest)
    };
    let (sent, digest) = tokio::join!(sender, receiver);
    let digest = digest?;
    sent?;
    if digest.is_empty() {
        bail!("no commit acknowledged");
    }
    Ok(())
}

pub async fn run(conn: &Connection, command: ContentCommand) -> anyhow::Result<()> {
    match command {
        ContentCommand::Ls { quiet, filters } => {
            let infos = list(conn, filters).await?;
            if quiet {
                for i in infos {
                    println!("{}", i.digest);
                }
                return Ok(());
            }
            let mut w = TabWriter::new(std::io::stdout()).padding(1);
            writeln!(w, "DIGEST\tSIZE\tLABELS")?;
            for i in infos {
                writeln!(w, "{}\t{}\t{}", i.digest, i.size, labels_text(&i.labels))?;
            }
            w.flush()?;
        }
        ContentCommand::Get { digest } => {
            let mut stream = conn
                .content()
                .read(conn.request(ReadContentRequest {
                    digest,
                    offset: 0,
                    size: 0,
                }))
                .await?
                .into_inner();
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = stream.message().await? {
                out.write_all(&chunk.data)?;
            }
            out.flush()?;
        }
        ContentCommand::Ingest {
            expected_size,
            expected_digest,
            expires,
            reference,
        } => {
            let labels = match expires {
                Some(after) => crate::gc::expire_label(&after)?.into_iter().collect(),
                None => HashMap::new(),
            };
            ingest(conn, reference, expected_size, expected_digest, labels).await?;
        }
        ContentCommand::Rm { digests } => {
            for digest in digests {
                conn.content()
                    .delete(conn.request(DeleteContentRequest {
                        digest: digest.clone(),
                    }))
                    .await?;
                println!("{digest}");
            }
        }
        ContentCommand::Label { digest, labels } => {
            let mut map = HashMap::new();
            let mut paths = Vec::new();
            for l in labels {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                paths.push(format!("labels.{k}"));
                map.insert(k.to_owned(), v.to_owned());
            }
            let info = Info {
                digest,
                labels: map,
                ..Default::default()
            };
            let updated = conn
                .content()
                .update(conn.request(UpdateRequest {
                    info: Some(info),
                    update_mask: Some(FieldMask { paths }),
                }))
                .await?
                .into_inner();
            println!("{}", labels_text(&updated.info.unwrap_or_default().labels));
        }
        ContentCommand::Prune => {
            let ns = conn.namespace().to_owned();
            crate::gc::run(conn, crate::gc::Show::ContentOf(ns)).await?;
        }
        ContentCommand::Active { filters } => {
            let statuses = conn
                .content()
                .list_statuses(conn.request(ListStatusesRequest { filters }))
                .await?
                .into_inner()
                .statuses;
            let mut w = TabWriter::new(std::io::stdout()).padding(1);
            writeln!(w, "REF\tSIZE\tTOTAL")?;
            for s in statuses {
                writeln!(w, "{}\t{}\t{}", s.r#ref, s.offset, s.total)?;
            }
            w.flush()?;
        }
    }
    Ok(())
}
