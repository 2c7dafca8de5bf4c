//! `cratectl images export`: the OCI layout of the named images (this host's platform, or
//! all) as ctr writes it, with a Docker `manifest.json` beside it so `docker load` reads it too.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use crated_api::containerd::services::content::v1::ReadContentRequest;
use crated_api::containerd::types::Descriptor;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::{descriptor, is_host, read_json, IMAGE_NAME, REF_NAME};
use crate::client::Connection;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Every platform's manifest, not only this host's.
    #[arg(long)]
    all_platforms: bool,
    output: PathBuf,
    #[arg(required = true)]
    images: Vec<String>,
}

/// `docker.io/library/busybox:latest` as Docker shows it: `busybox:latest`.
fn familiar(name: &str) -> String {
    let short = name.strip_prefix("docker.io/").unwrap_or(name);
    short.strip_prefix("library/").unwrap_or(short).to_owned()
}

/// The blobs of `desc` to export, depth first: the document, then its children (for an index
/// only this host's manifests unless `all`).
async fn collect(
    conn: &Connection,
    desc: Descriptor,
    all: bool,
    out: &mut Vec<Descriptor>,
) -> anyhow::Result<Option<serde_json::Value>> {
    let doc = read_json(conn, &desc.digest).await?;
    out.push(desc);
    let mut chosen = None;
    if let Some(list) = doc["manifests"].as_array() {
        for entry in list {
            if all || is_host(entry) {
                let found = Box::pin(collect(conn, descriptor(entry), all, out)).await?;
                // The Docker manifest.json names this host's manifest.
                if chosen.is_none() && is_host(entry) {
                    chosen = found;
                }
            }
        }
        return Ok(chosen);
    }
    out.push(descriptor(&doc["config"]));
    for layer in doc["layers"].as_array().into_iter().flatten() {
        out.push(descriptor(layer));
    }
    Ok(Some(doc))
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// One file's worth of chunks, read by the tar writer.
struct ChunkReader {
    chunks: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(c) => {
                    self.current = c;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

pub async fn export(conn: &Connection, args: ExportArgs) -> anyhow::Result<()> {
    let mut index_entries = Vec::new();
    let mut docker = Vec::new();
    let mut blobs: Vec<Descriptor> = Vec::new();
    for name in &args.images {
        let image = crate::images::get(conn, name).await?;
        let target = image.target.unwrap_or_default();
        let manifest = collect(conn, target.clone(), args.all_platforms, &mut blobs).await?;
        let tag = name
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'));
        let mut annotations = BTreeMap::from([(IMAGE_NAME.to_owned(), name.clone())]);
        if let Some(tag) = tag {
            annotations.insert(REF_NAME.to_owned(), tag.to_owned());
        }
        index_entries.push(serde_json::json!({
            "mediaType": target.media_type,
            "digest": target.digest,
            "size": target.size,
            "annotations": annotations,
        }));
        if let Some(m) = manifest {
            let layers: Vec<String> = m["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["digest"].as_str().map(blob_path))
                .collect();
            docker.push(serde_json::json!({
                "Config": m["config"]["digest"].as_str().map(blob_path),
                "RepoTags": [familiar(name)],
                "Layers": layers,
            }));
        }
    }
    let mut seen = std::collections::HashSet::new();
    blobs.retain(|d| seen.insert(d.digest.clone()));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": index_entries,
    }))?;
    let docker = serde_json::to_vec(&docker)?;

    // The tar is written by a blocking thread; blobs reach it as chunks, one file at a time.
    let (file_tx, mut file_rx) = mpsc::channel::<(String, u64, mpsc::Receiver<Vec<u8>>)>(1);
    // Written beside the output and renamed into place once whole: a failed export leaves
    // no archive that looks complete.
    let partial = PathBuf::from(format!("{}.partial", args.output.display()));
    let output = partial.clone();
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let file = std::fs::File::create(&output)
            .with_context(|| format!("creating {}", output.display()))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        while let Some((path, size, chunks)) = file_rx.blocking_recv() {
            let mut header = tar::Header::new_ustar();
            header.set_size(size);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            let reader = ChunkReader {
                chunks,
                current: Vec::new(),
                at: 0,
            };
            tar.append_data(&mut header, &path, reader)
                .with_context(|| format!("writing {path}"))?;
        }
        let mut inner = tar.into_inner()?;
        std::io::Write::flush(&mut inner)?;
        inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    });
    let send_bytes = |path: &str, bytes: Vec<u8>| {
        let (tx, rx) = mpsc::channel(1);
        let size = bytes.len() as u64;
        let file_tx = file_tx.clone();
        let path = path.to_owned();
        async move {
            file_tx.send((path, size, rx)).await.ok();
            tx.send(bytes).await.ok();
        }
    };
    let sent = async {
        send_bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()).await;
        send_blobs(conn, &blobs, &file_tx).await?;
        send_bytes("index.json", index).await;
        send_bytes("manifest.json", docker).await;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    drop(file_tx);
    let written = writer.await.map_err(anyhow::Error::from).and_then(|r| r);
    match sent.and(written) {
        Ok(()) => std::fs::rename(&partial, &args.output)
            .with_context(|| format!("renaming into {}", args.output.display())),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

type FileSender = mpsc::Sender<(String, u64, mpsc::Receiver<Vec<u8>>)>;

/// Each blob's bytes from the content store, to the tar writer as one file each.
async fn send_blobs(
    conn: &Connection,
    blobs: &[Descriptor],
    file_tx: &FileSender,
) -> anyhow::Result<()> {
    for blob in blobs {
        let (tx, rx) = mpsc::channel(4);
        file_tx
            .send((blob_path(&blob.digest), blob.size as u64, rx))
            .await
            .map_err(|_| anyhow::anyhow!("the archive writer stopped"))?;
        let mut stream = conn
            .content()
            .read(conn.request(ReadContentRequest {
                digest: blob.digest.clone(),
                offset: 0,
                size: 0,
            }))
            .await
            .with_context(|| format!("reading {}", blob.digest))?
            .into_inner();
        let mut sent = 0u64;
        while let Some(chunk) = stream.next().await {
            let data = chunk?.data;
            sent += data.len() as u64;
            if tx.send(data).await.is_err() {
                bail!("the archive writer stopped");
            }
        }
        if sent != blob.size as u64 {
            bail!(
                "blob {} is {sent} bytes, its descriptor says {}",
                blob.digest,
                blob.size
            );
        }
    }
    Ok(())
}
