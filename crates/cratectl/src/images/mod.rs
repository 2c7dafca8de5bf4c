//! `cratectl images pull|ls|rm|tag|mount|unmount|check|usage|import|export` (the archives are
//! [`import`]'s and [`export`]'s, check and usage [`crate::inspect`]'s). A pull is the daemon's
//! (containerd's Transfer API, OCI registry to image store): this client opens a progress
//! stream and, with `--user`, a stream to answer the registry's credential requests on, then
//! shows progress per layer as the daemon reports it.

mod export;
mod import;

use std::collections::HashMap;
use std::io::Write;

use anyhow::{bail, Context};
use clap::Subcommand;
use crated_api::containerd::services::content::v1::ReadContentRequest;
use crated_api::containerd::services::images::v1 as images;
use crated_api::containerd::services::leases::v1 as leases;
use crated_api::containerd::services::snapshots::v1 as snapshots;
use crated_api::containerd::services::streaming::v1::StreamInit;
use crated_api::containerd::services::transfer::v1::{TransferOptions, TransferRequest};
use crated_api::containerd::types::transfer;
use crated_api::containerd::types::Platform;
use crated_api::prost::Message;
use crated_api::prost_types::Any;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tabwriter::TabWriter;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::client::Connection;
use crate::snapshots::human;

/// The annotation of an index entry that names its image.
const IMAGE_NAME: &str = "io.containerd.image.name";
/// The annotation of an index entry that holds its tag.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Pull an image from a registry into the daemon, and unpack it.
    Pull {
        /// Talk http, not https, to the registry.
        #[arg(long)]
        plain_http: bool,
        /// containerd's registry hosts directory (`<dir>/<host:port>/hosts.toml`: mirrors tried
        /// in order, server, ca, client certificates, skip_verify), read by the daemon.
        #[arg(long)]
        hosts_dir: Option<std::path::PathBuf>,
        /// The platform(s) to pull (os/arch[/variant]); the host's by default.
        #[arg(long = "platform")]
        platforms: Vec<String>,
        /// Pull the manifests of every platform (layers are unpacked for the host's only).
        #[arg(long)]
        all_platforms: bool,
        /// The snapshotter to unpack into.
        #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
        snapshotter: String,
        /// Registry credentials, USER:PASSWORD (or :REFRESH_TOKEN).
        #[arg(short, long)]
        user: Option<String>,
        /// Fetch only, do not unpack.
        #[arg(long)]
        skip_unpack: bool,
        reference: String,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Remove images.
    #[command(alias = "remove", alias = "delete")]
    Rm {
        /// Collect garbage before returning.
        #[arg(long)]
        sync: bool,
        names: Vec<String>,
    },
    /// Give an image another name.
    Tag {
        /// Replace an image already called TARGET.
        #[arg(long)]
        force: bool,
        source: String,
        targets: Vec<String>,
    },
    /// Mount an image's unpacked filesystem at TARGET (read-only unless --rw).
    Mount {
        #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
        snapshotter: String,
        /// A writable snapshot of the image, as a container gets, instead of a view.
        #[arg(long)]
        rw: bool,
        target: String,
        reference: String,
    },
    /// Unmount TARGET and drop its snapshot.
    Unmount {
        #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
        snapshotter: String,
        target: String,
    },
    /// Say, per image, how many of its blobs the content store has and whether it is unpacked.
    Check {
        #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
        snapshotter: String,
        /// Print only the names of complete images.
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Disk usage of an image's layer snapshots.
    Usage {
        #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
        snapshotter: String,
        reference: String,
    },
    /// Import images from an OCI layout or Docker `save` archive, and unpack them.
    Import(import::ImportArgs),
    /// Export images to an OCI layout archive (with a Docker manifest.json).
    Export(export::ExportArgs),
}

pub async fn run(conn: &Connection, command: ImagesCommand) -> anyhow::Result<()> {
    match command {
        ImagesCommand::Check {
            snapshotter,
            quiet,
            filters,
        } => crate::inspect::check(conn, &snapshotter, quiet, filters).await,
        ImagesCommand::Usage {
            snapshotter,
            reference,
        } => crate::inspect::usage(conn, &snapshotter, &reference).await,
        ImagesCommand::Import(args) => import::import(conn, args).await,
        ImagesCommand::Export(args) => export::export(conn, args).await,
        ImagesCommand::Pull {
            plain_http,
            hosts_dir,
            platforms,
            all_platforms,
            snapshotter,
            user,
            skip_unpack,
            reference,
        } => {
            let platforms = if all_platforms {
                Vec::new()
            } else if platforms.is_empty() {
                vec![host_platform()]
            } else {
                platforms
                    .iter()
                    .map(|p| parse_platform(p))
                    .collect::<anyhow::Result<_>>()?
            };
            let unpacks = if skip_unpack {
                Vec::new()
            } else {
                vec![transfer::UnpackConfiguration {
                    platform: Some(platforms.first().cloned().unwrap_or_else(host_platform)),
                    snapshotter,
                }]
            };
            // The daemon reads the directory: it gets an absolute path.
            let hosts_dir = match hosts_dir {
                Some(d) => Some(
                    std::fs::canonicalize(&d)
                        .with_context(|| format!("hosts directory {}", d.display()))?
                        .display()
                        .to_string(),
                ),
                None => None,
            };
            pull(
                conn, &reference, plain_http, hosts_dir, platforms, unpacks, user,
            )
            .await
        }
        ImagesCommand::Ls { quiet, filters } => list(conn, quiet, filters).await,
        ImagesCommand::Rm { sync, names } => {
            let mut client = conn.images();
            let mut failed = false;
            for name in names {
                let req = images::DeleteImageRequest {
                    name: name.clone(),
                    sync,
                    target: None,
                };
                match client.delete(conn.request(req)).await {
                    Ok(_) => println!("{name}"),
                    Err(s) => {
                        eprintln!("cratectl: unable to delete {name}: {}", s.message());
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("not all images were removed");
            }
            Ok(())
        }
        ImagesCommand::Tag {
            force,
            source,
            targets,
        } => {
            let mut client = conn.images();
            let image = get(conn, &source).await?;
            for target in targets {
                let new = images::Image {
                    name: target.clone(),
                    created_at: None,
                    updated_at: None,
                    ..image.clone()
                };
                let created = client
                    .create(conn.request(images::CreateImageRequest {
                        image: Some(new.clone()),
                        source_date_epoch: None,
                    }))
                    .await;
                match created {
                    Ok(_) => {}
                    Err(s) if s.code() == tonic::Code::AlreadyExists && force => {
                        client
                            .update(conn.request(images::UpdateImageRequest {
                                image: Some(new),
                                update_mask: None,
                                source_date_epoch: None,
                            }))
                            .await?;
                    }
                    Err(s) => return Err(s.into()),
                }
                println!("{target}");
            }
            Ok(())
        }
        ImagesCommand::Mount {
            snapshotter,
            rw,
            target,
            reference,
        } => mount(conn, &snapshotter, rw, &target, &reference).await,
        ImagesCommand::Unmount {
            snapshotter,
            target,
        } => unmount(conn, &snapshotter, &target).await,
    }
}

fn host_platform() -> Platform {
    let host = crated_images::Platform::host();
    Platform {
        os: host.os,
        architecture: host.architecture,
        variant: host.variant,
        os_version: String::new(),
    }
}

fn parse_platform(spec: &str) -> anyhow::Result<Platform> {
    let parts: Vec<&str> = spec.split('/').collect();
    let (os, arch, variant) = match parts.as_slice() {
        [os, arch] => (*os, *arch, ""),
        [os, arch, variant] => (*os, *arch, *variant),
        _ => bail!("platform {spec:?}: expected os/arch[/variant]"),
    };
    Ok(Platform {
        os: os.into(),
        architecture: arch.into(),
        variant: variant.into(),
        os_version: String::new(),
    })
}

fn any(type_name: &str, message: &impl Message) -> Any {
    Any {
        type_url: type_name.into(),
        value: message.encode_to_vec(),
    }
}

/// Opens a stream on the daemon's streaming service: what it sends, and a sender for answers.
async fn open_stream(
    conn: &Connection,
    id: &str,
) -> anyhow::Result<(tonic::Streaming<Any>, mpsc::Sender<Any>)> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(any(
        "containerd.services.streaming.v1.StreamInit",
        &StreamInit { id: id.into() },
    ))
    .await?;
    let mut incoming = conn
        .streaming()
        .stream(conn.request(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await?
        .into_inner();
    // The daemon acknowledges the stream before it is used.
    incoming
        .message()
        .await?
        .context("the stream closed at once")?;
    Ok((incoming, tx))
}

fn stream_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{nanos}-{}", std::process::id())
}

async fn pull(
    conn: &Connection,
    reference: &str,
    plain_http: bool,
    hosts_dir: Option<String>,
    platforms: Vec<Platform>,
    unpacks: Vec<transfer::UnpackConfiguration>,
    user: Option<String>,
) -> anyhow::Result<()> {
    let progress_id = stream_id("progress");
    let (mut progress, _keep) = open_stream(conn, &progress_id).await?;
    let auth_stream = match user {
        Some(user) => {
            let (username, secret) = user.split_once(':').unwrap_or((user.as_str(), ""));
            let (username, secret) = (username.to_owned(), secret.to_owned());
            let id = stream_id("creds");
            let (mut requests, answers) = open_stream(conn, &id).await?;
            tokio::spawn(async move {
                while let Some(Ok(_request)) = requests.next().await {
                    let response = transfer::AuthResponse {
                        auth_type: if username.is_empty() {
                            transfer::AuthType::Refresh
                        } else {
                            transfer::AuthType::Credentials
                        } as i32,
                        secret: secret.clone(),
                        username: username.clone(),
                        expire_at: None,
                    };
                    let answer = any("containerd.types.transfer.AuthResponse", &response);
                    if answers.send(answer).await.is_err() {
                        break;
                    }
                }
            });
            id
        }
        None => String::new(),
    };
    let source = transfer::OciRegistry {
        reference: reference.to_owned(),
        resolver: Some(transfer::RegistryResolver {
            auth_stream,
            default_scheme: if plain_http {
                "http".into()
            } else {
                String::new()
            },
            host_dir: hosts_dir.unwrap_or_default(),
            ..Default::default()
        }),
    };
    let destination = transfer::ImageStore {
        name: reference.to_owned(),
        platforms,
        unpacks,
        ..Default::default()
    };
    let request = TransferRequest {
        source: Some(any("containerd.types.transfer.OCIRegistry", &source)),
        destination: Some(any("containerd.types.transfer.ImageStore", &destination)),
        options: Some(TransferOptions {
            progress_stream: progress_id,
        }),
    };
    let shown = tokio::spawn(async move {
        let mut display = Display::new();
        while let Some(Ok(message)) = progress.next().await {
            if let Ok(p) = transfer::Progress::decode(message.value.as_slice()) {
                display.show(p);
            }
        }
        display.finish();
    });
    let mut client = conn.transfer();
    let result = client.transfer(conn.request(request)).await;
    // The daemon closes the progress stream when the transfer ends.
    let _ = shown.await;
    result?;
    Ok(())
}

/// Progress as lines for notes and one bar per object.
struct Display {
    bars: MultiProgress,
    objects: HashMap<String, ProgressBar>,
    style: ProgressStyle,
}

impl Display {
    fn new() -> Display {
        let style = ProgressStyle::with_template(
            "{prefix:<24} {msg:<14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        Display {
            bars: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            objects: HashMap::new(),
            style,
        }
    }

    fn show(&mut self, p: transfer::Progress) {
        if p.name.is_empty() || p.event == "saved" {
            let line = if p.event == "saved" {
                format!("saved {}", p.name)
            } else {
                p.event
            };
            let _ = self.bars.println(&line);
            if self.bars.is_hidden() {
                println!("{line}");
            }
            return;
        }
        let bar = self.objects.entry(p.name.clone()).or_insert_with(|| {
            let bar = self.bars.add(ProgressBar::new(p.total.max(0) as u64));
            bar.set_style(self.style.clone());
            let short = p
                .name
                .split_once(':')
                .map_or(p.name.as_str(), |(_, hex)| hex);
            let kind = p.name.split('-').next().unwrap_or_default();
            bar.set_prefix(format!("{kind}-{}", &short[..short.len().min(12)]));
            bar
        });
        bar.set_length(p.total.max(0) as u64);
        bar.set_position(p.progress.max(0) as u64);
        bar.set_message(p.event);
    }

    fn finish(&self) {
        for bar in self.objects.values() {
            bar.abandon();
        }
    }
}

/// The image record `name`.
pub(crate) async fn get(conn: &Connection, name: &str) -> anyhow::Result<images::Image> {
    conn.images()
        .get(conn.request(images::GetImageRequest {
            name: name.to_owned(),
        }))
        .await
        .with_context(|| format!("image {name:?}"))?
        .into_inner()
        .image
        .context("the daemon answered no image")
}

pub(crate) async fn read_blob(conn: &Connection, digest: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = conn
        .content()
        .read(conn.request(ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        }))
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk?.data);
    }
    Ok(data)
}

/// A blob parsed as JSON.
pub(crate) async fn read_json(
    conn: &Connection,
    digest: &str,
) -> anyhow::Result<serde_json::Value> {
    let raw = read_blob(conn, digest).await?;
    serde_json::from_slice(&raw).with_context(|| format!("{digest} is not JSON"))
}

/// A descriptor as an index or manifest gives it.
fn descriptor(v: &serde_json::Value) -> crated_api::containerd::types::Descriptor {
    crated_api::containerd::types::Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_owned(),
        digest: v["digest"].as_str().unwrap_or_default().to_owned(),
        size: v["size"].as_i64().unwrap_or_default(),
        annotations: HashMap::new(),
    }
}

/// Whether an index entry is for this host (one without a platform is for any).
pub(crate) fn is_host(entry: &serde_json::Value) -> bool {
    let host = crated_images::Platform::host();
    let p = &entry["platform"];
    let os = p["os"].as_str().unwrap_or_default();
    let arch = p["architecture"].as_str().unwrap_or_default();
    os.is_empty() || (os == host.os && arch == host.architecture)
}

/// The documents from `target` down to this host's manifest, as (digest, size) in order
/// (indexes may nest: the first entry for this host is followed), and that manifest, or why
/// it could not be reached.
pub(crate) async fn host_manifest(
    conn: &Connection,
    target: &crated_api::containerd::types::Descriptor,
) -> (Vec<(String, i64)>, anyhow::Result<serde_json::Value>) {
    let mut path = vec![(target.digest.clone(), target.size)];
    let mut digest = target.digest.clone();
    for _ in 0..8 {
        let doc = match read_json(conn, &digest).await {
            Ok(doc) => doc,
            Err(e) => return (path, Err(e)),
        };
        let Some(list) = doc["manifests"].as_array() else {
            return (path, Ok(doc));
        };
        let Some(entry) = list.iter().find(|e| is_host(e)) else {
            let e = anyhow::anyhow!("no manifest for this host's platform in {}", target.digest);
            return (path, Err(e));
        };
        digest = entry["digest"].as_str().unwrap_or_default().to_owned();
        path.push((digest.clone(), entry["size"].as_i64().unwrap_or_default()));
    }
    let e = anyhow::anyhow!("indexes nested too deep in {}", target.digest);
    (path, Err(e))
}

/// What `ls` and `mount` need of an image: its total size, platforms, and the layers' diff IDs
/// of the host's manifest.
pub(crate) struct Contents {
    pub size: i64,
    /// The image config of the host's manifest (Null when missing).
    pub config: serde_json::Value,
    pub platforms: Vec<String>,
    pub diff_ids: Vec<String>,
}

pub(crate) async fn contents(
    conn: &Connection,
    target: &crated_api::containerd::types::Descriptor,
) -> anyhow::Result<Contents> {
    let raw = read_blob(conn, &target.digest).await?;
    let doc: serde_json::Value = serde_json::from_slice(&raw).context("malformed manifest")?;
    let mut size = target.size;
    let mut platforms = Vec::new();
    let manifest = if let Some(list) = doc.get("manifests").and_then(|m| m.as_array()) {
        let mut chosen = None;
        for entry in list {
            let os = entry["platform"]["os"].as_str().unwrap_or_default();
            let arch = entry["platform"]["architecture"]
                .as_str()
                .unwrap_or_default();
            if !os.is_empty() {
                platforms.push(format!("{os}/{arch}"));
            }
            let digest = entry["digest"].as_str().unwrap_or_default();
            if chosen.is_none() && is_host(entry) {
                if let Ok(raw) = read_blob(conn, digest).await {
                    size += entry["size"].as_i64().unwrap_or_default();
                    chosen = serde_json::from_slice::<serde_json::Value>(&raw).ok();
                }
            }
        }
        chosen
    } else {
        Some(doc)
    };
    let mut diff_ids = Vec::new();
    let mut config = serde_json::Value::Null;
    if let Some(m) = manifest {
        size += m["config"]["size"].as_i64().unwrap_or_default();
        for layer in m["layers"].as_array().into_iter().flatten() {
            size += layer["size"].as_i64().unwrap_or_default();
        }
        if let Some(config_digest) = m["config"]["digest"].as_str() {
            if let Ok(raw) = read_blob(conn, config_digest).await {
                let c: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
                if platforms.is_empty() {
                    if let (Some(os), Some(arch)) = (c["os"].as_str(), c["architecture"].as_str()) {
                        platforms.push(format!("{os}/{arch}"));
                    }
                }
                diff_ids = c["rootfs"]["diff_ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect();
                config = c;
            }
        }
    }
    Ok(Contents {
        size,
        config,
        platforms,
        diff_ids,
    })
}

async fn list(conn: &Connection, quiet: bool, filters: Vec<String>) -> anyhow::Result<()> {
    let found = conn
        .images()
        .list(conn.request(images::ListImagesRequest { filters }))
        .await?
        .into_inner()
        .images;
    if quiet {
        for image in found {
            println!("{}", image.name);
        }
        return Ok(());
    }
    let mut tw = TabWriter::new(std::io::stdout()).padding(1);
    writeln!(tw, "REF\tTYPE\tDIGEST\tSIZE\tPLATFORMS\tLABELS")?;
    for image in found {
        let target = image.target.clone().unwrap_or_default();
        let (size, platforms) = match contents(conn, &target).await {
            Ok(c) => (human(c.size), c.platforms.join(",")),
            Err(_) => ("-".into(), "-".into()),
        };
        let mut labels: Vec<String> = image
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        writeln!(
            tw,
            "{}\t{}\t{}\t{}\t{}\t{}",
            image.name,
            target.media_type,
            target.digest,
            size,
            platforms,
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(",")
            }
        )?;
    }
    tw.flush()?;
    Ok(())
}

async fn mount(
    conn: &Connection,
    snapshotter: &str,
    rw: bool,
    target: &str,
    reference: &str,
) -> anyhow::Result<()> {
    let image = get(conn, reference).await?;
    let contents = contents(conn, &image.target.unwrap_or_default()).await?;
    let chain = crated_images::chain_ids(&contents.diff_ids)
        .pop()
        .context("the image has no layers")?;
    // The snapshot is held by a lease named after the target, as ctr does.
    conn.leases()
        .create(conn.request(leases::CreateRequest {
            id: target.to_owned(),
            labels: HashMap::new(),
        }))
        .await?;
    let leased = conn.with_lease(target)?;
    let mounts = if rw {
        let prepare = leased.request(snapshots::PrepareSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: target.to_owned(),
            parent: chain,
            labels: HashMap::new(),
        });
        leased
            .snapshots()
            .prepare(prepare)
            .await?
            .into_inner()
            .mounts
    } else {
        let view = leased.request(snapshots::ViewSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: target.to_owned(),
            parent: chain,
            labels: HashMap::new(),
        });
        leased.snapshots().view(view).await?.into_inner().mounts
    };
    for m in &mounts {
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                &m.r#type,
                &m.source,
                target,
                "-o",
                &m.options.join(","),
            ])
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mount of {} at {target} failed", m.r#type);
        }
    }
    println!("{target}");
    Ok(())
}

async fn unmount(conn: &Connection, snapshotter: &str, target: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("umount")
        .arg(target)
        .status()
        .context("running umount")?;
    if !status.success() {
        bail!("umount {target} failed");
    }
    conn.snapshots()
        .remove(conn.request(snapshots::RemoveSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: target.to_owned(),
        }))
        .await?;
    conn.leases()
        .delete(conn.request(leases::DeleteRequest {
            id: target.to_owned(),
            sync: false,
        }))
        .await?;
    println!("{target}");
    Ok(())
}
