//! `cratectl images import`: an OCI image layout archive (`index.json`, `blobs/`; image names
//! from the `io.containerd.image.name` or `org.opencontainers.image.ref.name` annotations) or a
//! Docker `save` archive (`manifest.json`, for which a Docker schema 2 manifest is written), as
//! ctr reads them. Every blob goes into the content store checked against its digest, under a
//! lease until the image records hold it, with containerd's GC labels; then each image is
//! unpacked for this host.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use crated_api::containerd::services::content::v1 as content;
use crated_api::containerd::services::diff::v1::ApplyRequest;
use crated_api::containerd::services::images::v1 as images;
use crated_api::containerd::services::snapshots::v1 as snapshots;
use crated_api::containerd::types::Descriptor;
use sha2::Digest as _;
use tokio::sync::mpsc;

use super::{descriptor, host_manifest, read_json, IMAGE_NAME, REF_NAME};
use crate::client::Connection;
use crate::content::write_blob;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Files up to this size are kept from the first read (the JSON documents are among them).
const SMALL: u64 = 4 << 20;
const CHUNK: usize = 1 << 20;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Snapshotter to unpack into.
    #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
    snapshotter: String,
    /// Store the blobs and images only.
    #[arg(long)]
    no_unpack: bool,
    /// Name images whose index entry has only a tag annotation `BASE:TAG`.
    #[arg(long)]
    base_name: Option<String>,
    archive: PathBuf,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

fn entry_path(entry: &tar::Entry<'_, std::fs::File>) -> anyhow::Result<String> {
    let path = entry.path().context("an archive entry with a bad path")?;
    Ok(path.to_string_lossy().trim_start_matches("./").to_owned())
}

/// What the first read of the archive found.
#[derive(Default)]
struct Scanned {
    /// Every regular file: path → (digest, size, gzip-compressed).
    files: HashMap<String, (String, u64, bool)>,
    /// The bytes of the small files that may be JSON documents, by path.
    small: HashMap<String, Vec<u8>>,
    /// Links (Docker saves a layer two images share once, linked from the other).
    links: HashMap<String, String>,
}

impl Scanned {
    /// `path` with the archive's links followed: the path of a regular file.
    fn resolve(&self, path: &str) -> Option<String> {
        let mut path = path.trim_start_matches("./").to_owned();
        for _ in 0..16 {
            if self.files.contains_key(&path) {
                return Some(path);
            }
            path = self.links.get(&path)?.clone();
        }
        None
    }
}

/// A symlink's target as an archive path: relative to the link's directory, `..` resolved.
fn link_target(link: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    if !target.starts_with('/') {
        parts.extend(link.split('/'));
        parts.pop();
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn scan(archive: &Path) -> anyhow::Result<Scanned> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut tar = tar::Archive::new(file);
    let mut scanned = Scanned::default();
    for entry in tar.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let path = entry_path(&entry)?;
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            // A hard link's name is from the archive's root, a symlink's from its directory.
            let target = if kind.is_hard_link() {
                Some(target.trim_start_matches("./").to_owned())
            } else {
                link_target(&path, &target)
            };
            if let Some(target) = target {
                scanned.links.insert(path, target);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let path = entry_path(&entry)?;
        let size = entry.size();
        let mut hasher = sha2::Sha256::new();
        let mut kept = Vec::new();
        // The first two bytes: gzip's magic number tells a compressed layer.
        let mut head = Vec::with_capacity(2);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = entry.read(&mut buf).context("reading the archive")?;
            if n == 0 {
                break;
            }
            let missing = 2 - head.len();
            head.extend_from_slice(&buf[..n.min(missing)]);
            hasher.update(&buf[..n]);
            if size <= SMALL {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        let digest = format!("sha256:{:x}", hasher.finalize());
        scanned
            .files
            .insert(path.clone(), (digest, size, head == [0x1f, 0x8b]));
        // Only what may be a JSON document is kept (layers are not).
        if size <= SMALL && matches!(kept.first(), Some(b'{' | b'[')) {
            scanned.small.insert(path, kept);
        }
    }
    Ok(scanned)
}

/// A blob to store: from the archive (by path) or made here.
struct Blob {
    digest: String,
    size: u64,
    labels: HashMap<String, String>,
    bytes: Option<Vec<u8>>,
}

/// What an import stores: image names with their targets, and blobs (by archive path; made
/// ones have an empty path and carry their bytes).
struct Plan {
    images: Vec<(String, Descriptor)>,
    blobs: Vec<(String, Blob)>,
}

/// containerd's `containerd.io/gc.ref.content.*` labels of an index's or manifest's children.
fn children_labels(doc: &serde_json::Value) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let digest = |d: &serde_json::Value| d["digest"].as_str().map(str::to_owned);
    for (i, m) in doc["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(d) = digest(m) {
            labels.insert(format!("containerd.io/gc.ref.content.m.{i}"), d);
        }
    }
    if let Some(d) = digest(&doc["config"]) {
        labels.insert("containerd.io/gc.ref.content.config".into(), d);
    }
    for (i, l) in doc["layers"].as_array().into_iter().flatten().enumerate() {
        if let Some(d) = digest(l) {
            labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), d);
        }
    }
    labels
}

fn normalize(name: &str) -> anyhow::Result<String> {
    Ok(crated_images::Reference::parse(name)?.to_string())
}

/// The images and blobs of an OCI layout.
fn plan_oci(scanned: &Scanned, index: &[u8], base_name: Option<&str>) -> anyhow::Result<Plan> {
    let index: serde_json::Value =
        serde_json::from_slice(index).context("index.json is not JSON")?;
    let mut blobs = Vec::new();
    for (path, (digest, size, _)) in &scanned.files {
        let Some(hex) = path.strip_prefix("blobs/sha256/") else {
            continue;
        };
        if digest.trim_start_matches("sha256:") != hex {
            bail!("blob {path} does not match its digest (its content hashes to {digest})");
        }
        let labels = scanned
            .small
            .get(path)
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .filter(|v| v.is_object())
            .map(|v| children_labels(&v))
            .unwrap_or_default();
        let blob = Blob {
            digest: digest.clone(),
            size: *size,
            labels,
            bytes: None,
        };
        blobs.push((path.clone(), blob));
    }
    let mut found = Vec::new();
    for entry in index["manifests"].as_array().into_iter().flatten() {
        let annotations = &entry["annotations"];
        let name = match (
            annotations[IMAGE_NAME].as_str(),
            annotations[REF_NAME].as_str(),
        ) {
            (Some(name), _) => normalize(name)?,
            (None, Some(tag)) => match base_name {
                Some(base) => normalize(&format!("{base}:{tag}"))?,
                None if tag.contains('/') || tag.contains(':') => normalize(tag)?,
                None => {
                    eprintln!(
                        "skipping the manifest {} tagged {tag:?}: give --base-name to name it",
                        entry["digest"]
                    );
                    continue;
                }
            },
            (None, None) => continue,
        };
        let desc = Descriptor {
            media_type: entry["mediaType"].as_str().unwrap_or_default().to_owned(),
            digest: entry["digest"].as_str().unwrap_or_default().to_owned(),
            size: entry["size"].as_i64().unwrap_or_default(),
            annotations: HashMap::new(),
        };
        found.push((name, desc));
    }
    Ok(Plan {
        images: found,
        blobs,
    })
}

/// The images and blobs of a Docker `save` archive: a schema 2 manifest made for each entry.
fn plan_docker(scanned: &Scanned, manifest: &[u8]) -> anyhow::Result<Plan> {
    let entries: Vec<serde_json::Value> =
        serde_json::from_slice(manifest).context("manifest.json is not a JSON list")?;
    let mut found = Vec::new();
    let mut blobs = Vec::new();
    // (resolved path, (digest, size, gzip)) of a file manifest.json names.
    let file = |path: &str| {
        scanned
            .resolve(path)
            .and_then(|p| scanned.files.get(&p).cloned().map(|f| (p, f)))
            .with_context(|| format!("manifest.json names {path}, which the archive lacks"))
    };
    for entry in entries {
        let config_path = entry["Config"]
            .as_str()
            .context("an entry without Config")?;
        let (config_path, (config_digest, config_size, _)) = file(config_path)?;
        blobs.push((
            config_path,
            Blob {
                digest: config_digest.clone(),
                size: config_size,
                labels: HashMap::new(),
                bytes: None,
            },
        ));
        let mut layers = Vec::new();
        for layer in entry["Layers"].as_array().into_iter().flatten() {
            let path = layer.as_str().context("a layer that is not a path")?;
            let (path, (digest, size, gzip)) = file(path)?;
            layers.push(serde_json::json!({
                "mediaType": if gzip { DOCKER_LAYER_GZIP } else { DOCKER_LAYER },
                "size": size,
                "digest": digest,
            }));
            blobs.push((
                path,
                Blob {
                    digest,
                    size,
                    labels: HashMap::new(),
                    bytes: None,
                },
            ));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": config_size, "digest": config_digest},
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest)?;
        let desc = Descriptor {
            media_type: DOCKER_MANIFEST.into(),
            digest: sha256(&bytes),
            size: bytes.len() as i64,
            annotations: HashMap::new(),
        };
        blobs.push((
            String::new(),
            Blob {
                digest: desc.digest.clone(),
                size: bytes.len() as u64,
                labels: children_labels(&manifest),
                bytes: Some(bytes),
            },
        ));
        for tag in entry["RepoTags"].as_array().into_iter().flatten() {
            if let Some(tag) = tag.as_str() {
                found.push((normalize(tag)?, desc.clone()));
            }
        }
    }
    Ok(Plan {
        images: found,
        blobs,
    })
}

pub async fn import(conn: &Connection, args: ImportArgs) -> anyhow::Result<()> {
    let archive = args.archive.clone();
    let scanned = tokio::task::spawn_blocking(move || scan(&archive)).await??;
    let plan = if let Some(index) = scanned.small.get("index.json") {
        plan_oci(&scanned, index, args.base_name.as_deref())?
    } else if let Some(manifest) = scanned.small.get("manifest.json") {
        plan_docker(&scanned, manifest)?
    } else {
        bail!(
            "{} is neither an OCI image layout (index.json) nor a Docker archive (manifest.json)",
            args.archive.display()
        );
    };
    let lease = crate::leases::temporary(conn, "import").await?;
    let leased = conn.with_lease(&lease)?;
    let result = import_under(&leased, &args, plan).await;
    // The image records hold what was imported now; the lease goes.
    crate::leases::release(conn, lease).await;
    result
}

async fn import_under(conn: &Connection, args: &ImportArgs, plan: Plan) -> anyhow::Result<()> {
    let Plan {
        images: found,
        blobs,
    } = plan;
    let reference = |digest: &str| format!("import-{digest}");
    let mut from_archive: HashMap<String, Blob> = HashMap::new();
    for (path, blob) in blobs {
        match blob.bytes {
            Some(ref bytes) => {
                let (tx, rx) = mpsc::channel(1);
                tx.send(bytes.clone()).await?;
                drop(tx);
                write_blob(
                    conn,
                    reference(&blob.digest),
                    blob.size as i64,
                    blob.digest.clone(),
                    blob.labels.clone(),
                    rx,
                )
                .await?;
            }
            None => {
                from_archive.insert(path, blob);
            }
        }
    }
    // The archive's blobs, read again and streamed to the store one by one.
    let (blob_tx, mut blob_rx) = mpsc::channel::<(Blob, mpsc::Receiver<Vec<u8>>)>(1);
    let archive = args.archive.clone();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let file = std::fs::File::open(&archive)?;
        let mut tar = tar::Archive::new(file);
        for entry in tar.entries()? {
            let mut entry = entry?;
            let path = entry_path(&entry)?;
            let Some(blob) = from_archive.remove(&path) else {
                continue;
            };
            let (tx, rx) = mpsc::channel(4);
            if blob_tx.blocking_send((blob, rx)).is_err() {
                return Ok(());
            }
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = entry.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                if tx.blocking_send(buf).is_err() {
                    break;
                }
            }
        }
        Ok(())
    });
    while let Some((blob, chunks)) = blob_rx.recv().await {
        write_blob(
            conn,
            reference(&blob.digest),
            blob.size as i64,
            blob.digest.clone(),
            blob.labels,
            chunks,
        )
        .await
        .with_context(|| format!("storing {}", blob.digest))?;
    }
    reader.await??;
    for (name, target) in found {
        let image = images::Image {
            name: name.clone(),
            target: Some(target.clone()),
            ..Default::default()
        };
        let created = conn
            .images()
            .create(conn.request(images::CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await;
        match created {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                conn.images()
                    .update(conn.request(images::UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".into()],
                        }),
                        source_date_epoch: None,
                    }))
                    .await?;
            }
            Err(s) => return Err(s.into()),
        }
        if args.no_unpack {
            println!("{name}");
            continue;
        }
        print!("unpacking {name} ({})...", target.digest);
        unpack(conn, &target, &args.snapshotter).await?;
        println!("done");
    }
    Ok(())
}

/// Unpacks the host's manifest of `target` into `snapshotter`, layer by layer, each snapshot
/// named by its chain ID (those already there are kept), as ctr's unpacker does.
async fn unpack(conn: &Connection, target: &Descriptor, snapshotter: &str) -> anyhow::Result<()> {
    let (_, manifest) = host_manifest(conn, target).await;
    let manifest = manifest?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .context("a manifest without config")?
        .to_owned();
    let config = read_json(conn, &config_digest).await?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    let layers: Vec<Descriptor> = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(descriptor)
        .collect();
    if layers.len() != diff_ids.len() {
        bail!(
            "mismatched image rootfs ({} diff IDs) and manifest layers ({})",
            diff_ids.len(),
            layers.len()
        );
    }
    let chains = crated_images::chain_ids(&diff_ids);
    let mut parent = String::new();
    for (i, layer) in layers.into_iter().enumerate() {
        let chain = chains[i].clone();
        let exists = conn
            .snapshots()
            .stat(conn.request(snapshots::StatSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: chain.clone(),
            }))
            .await
            .is_ok();
        if !exists {
            apply_layer(conn, snapshotter, &layer, &diff_ids[i], &parent, &chain).await?;
        }
        parent = chain;
    }
    conn.content()
        .update(conn.request(content::UpdateRequest {
            info: Some(content::Info {
                digest: config_digest,
                labels: HashMap::from([(
                    format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                    parent.clone(),
                )]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!(
                    "labels.containerd.io/gc.ref.snapshot.{snapshotter}"
                )],
            }),
        }))
        .await?;
    Ok(())
}

async fn apply_layer(
    conn: &Connection,
    snapshotter: &str,
    layer: &Descriptor,
    diff_id: &str,
    parent: &str,
    chain: &str,
) -> anyhow::Result<()> {
    // containerd's unpack key: the snapshotter may then treat it as one.
    let key = format!("extract-{} {chain}", crate::leases::now_nanos());
    let mounts = conn
        .snapshots()
        .prepare(conn.request(snapshots::PrepareSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.clone(),
            parent: parent.to_owned(),
            labels: HashMap::new(),
        }))
        .await?
        .into_inner()
        .mounts;
    let applied = async {
        let applied = conn
            .diff()
            .apply(conn.request(ApplyRequest {
                diff: Some(layer.clone()),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .await?
            .into_inner()
            .applied
            .unwrap_or_default();
        if applied.digest != diff_id {
            bail!(
                "wrong diff id {} calculated on extraction of {}, expected {diff_id}",
                applied.digest,
                layer.digest
            );
        }
        let committed = conn
            .snapshots()
            .commit(conn.request(snapshots::CommitSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                name: chain.to_owned(),
                key: key.clone(),
                labels: HashMap::new(),
                parent: String::new(),
            }))
            .await;
        committed.map(drop).map_err(anyhow::Error::from)
    }
    .await;
    if let Err(e) = applied {
        let _ = conn
            .snapshots()
            .remove(conn.request(snapshots::RemoveSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key,
            }))
            .await;
        // Unpacked meanwhile by someone else: theirs stands.
        if e.downcast_ref::<tonic::Status>()
            .is_some_and(|s| s.code() == tonic::Code::AlreadyExists)
        {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_in_a_docker_archive_lead_to_the_shared_layer() {
        assert_eq!(
            link_target("def/layer.tar", "../abc/layer.tar").as_deref(),
            Some("abc/layer.tar")
        );
        assert_eq!(link_target("a/b", "/x/y").as_deref(), Some("x/y"));
        assert_eq!(link_target("a", "../../x"), None);
        let mut scanned = Scanned::default();
        scanned
            .files
            .insert("abc/layer.tar".into(), ("sha256:1".into(), 3, false));
        scanned
            .links
            .insert("def/layer.tar".into(), "abc/layer.tar".into());
        scanned.links.insert("loop".into(), "loop".into());
        assert_eq!(
            scanned.resolve("./def/layer.tar").as_deref(),
            Some("abc/layer.tar")
        );
        assert_eq!(scanned.resolve("loop"), None);
        assert_eq!(scanned.resolve("missing"), None);
    }
}
