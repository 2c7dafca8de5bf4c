//! `cratectl snapshots prepare|view|commit|ls|rm|tree|usage|mounts|info|label`, printing what
//! `ctr snapshots` prints.

use std::collections::HashMap;
use std::io::Write;

use clap::{Args, Subcommand};
use crated_api::containerd::services::snapshots::v1 as api;
use crated_api::containerd::types::Mount;
use tabwriter::TabWriter;

use crate::client::Connection;

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// The snapshotter to use.
    #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
    snapshotter: String,
    #[command(subcommand)]
    command: SnapshotsCommand,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotsCommand {
    /// Prepare an active snapshot KEY on the committed PARENT (none: empty).
    Prepare {
        key: String,
        parent: Option<String>,
        /// Print the mount command for this target.
        #[arg(short, long)]
        target: Option<String>,
    },
    /// Create a read-only view KEY of the committed PARENT.
    View {
        key: String,
        parent: Option<String>,
        #[arg(short, long)]
        target: Option<String>,
    },
    /// Commit the active snapshot KEY as NAME.
    Commit { name: String, key: String },
    /// List snapshots (filters as containerd's: kind==active, labels.x==y, ...).
    #[command(alias = "list")]
    Ls { filters: Vec<String> },
    /// Remove snapshots.
    #[command(alias = "remove", alias = "delete", alias = "del")]
    Rm {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Show snapshots as a tree of parents and children.
    Tree,
    /// Show disk usage of snapshots (all, or those named).
    Usage {
        /// Sizes in bytes, not human units.
        #[arg(short, long)]
        bytes: bool,
        keys: Vec<String>,
    },
    /// Print the mount command of snapshot KEY at TARGET.
    Mounts { target: String, key: String },
    /// Print a snapshot's information as JSON.
    Info { key: String },
    /// Set (KEY=VALUE) or remove (KEY=) labels of a snapshot.
    Label { key: String, labels: Vec<String> },
}

/// ctr's size form: 4.0 KiB.
pub(crate) fn human(size: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = size as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn kind_text(kind: i32) -> &'static str {
    match api::Kind::try_from(kind) {
        Ok(api::Kind::View) => "View",
        Ok(api::Kind::Active) => "Active",
        Ok(api::Kind::Committed) => "Committed",
        _ => "Unknown",
    }
}

fn time_text(t: &Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else {
        return String::new();
    };
    let nanos = t.seconds as i128 * 1_000_000_000 + t.nanos as i128;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The `mount` command ctr prints for mounts at a target.
fn mount_commands(mounts: &[Mount], target: &str) -> String {
    mounts
        .iter()
        .map(|m| {
            format!(
                "mount -t {} {} {} -o {}\n",
                m.r#type,
                m.source,
                target,
                m.options.join(",")
            )
        })
        .collect()
}

/// With `--target`, the mount commands of a new snapshot.
fn print_mounts(mounts: &[Mount], target: Option<String>) {
    if let Some(t) = target {
        print!("{}", mount_commands(mounts, &t));
    }
}

/// A GC root label as ctr gives what it prepares and commits: these stay until removed.
fn root_label() -> HashMap<String, String> {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    HashMap::from([("containerd.io/gc.root".to_owned(), now)])
}

async fn list(
    conn: &Connection,
    snapshotter: &str,
    filters: Vec<String>,
) -> anyhow::Result<Vec<api::Info>> {
    let mut stream = conn
        .snapshots()
        .list(conn.request(api::ListSnapshotsRequest {
            snapshotter: snapshotter.to_owned(),
            filters,
        }))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await? {
        out.extend(batch.info);
    }
    Ok(out)
}

async fn stat(conn: &Connection, snapshotter: &str, key: &str) -> anyhow::Result<api::Info> {
    let r = conn
        .snapshots()
        .stat(conn.request(api::StatSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.to_owned(),
        }))
        .await?
        .into_inner();
    r.info
        .ok_or_else(|| anyhow::anyhow!("snapshot {key} has no info"))
}

fn print_tree(infos: &[api::Info], parent: &str, depth: usize, out: &mut String) {
    for i in infos.iter().filter(|i| i.parent == parent) {
        if depth == 0 {
            out.push_str(&format!(" {}\n", i.name));
        } else {
            out.push_str(&format!("{}\\_ {}\n", "  ".repeat(depth), i.name));
        }
        print_tree(infos, &i.name, depth + 1, out);
    }
}

pub async fn run(conn: &Connection, args: SnapshotsArgs) -> anyhow::Result<()> {
    let sn = args.snapshotter;
    let mut client = conn.snapshots();
    match args.command {
        SnapshotsCommand::Prepare {
            key,
            parent,
            target,
        } => {
            let req = api::PrepareSnapshotRequest {
                snapshotter: sn,
                key,
                parent: parent.unwrap_or_default(),
                labels: root_label(),
            };
            let mounts = client.prepare(conn.request(req)).await?.into_inner().mounts;
            print_mounts(&mounts, target);
        }
        SnapshotsCommand::View {
            key,
            parent,
            target,
        } => {
            let req = api::ViewSnapshotRequest {
                snapshotter: sn,
                key,
                parent: parent.unwrap_or_default(),
                labels: root_label(),
            };
            let mounts = client.view(conn.request(req)).await?.into_inner().mounts;
            print_mounts(&mounts, target);
        }
        SnapshotsCommand::Commit { name, key } => {
            client
                .commit(conn.request(api::CommitSnapshotRequest {
                    snapshotter: sn,
                    name,
                    key,
                    labels: root_label(),
                    parent: String::new(),
                }))
                .await?;
        }
        SnapshotsCommand::Ls { filters } => {
            let mut w = TabWriter::new(std::io::stdout());
            writeln!(w, "KEY\tPARENT\tKIND\t")?;
            for i in list(conn, &sn, filters).await? {
                writeln!(w, "{}\t{}\t{}\t", i.name, i.parent, kind_text(i.kind))?;
            }
            w.flush()?;
        }
        SnapshotsCommand::Rm { keys } => {
            let mut failed = None;
            for key in keys {
                let r = client
                    .remove(conn.request(api::RemoveSnapshotRequest {
                        snapshotter: sn.clone(),
                        key: key.clone(),
                    }))
                    .await;
                if let Err(e) = r {
                    eprintln!("cratectl: failed to remove {key:?}: {}", e.message());
                    failed = Some(e);
                }
            }
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        SnapshotsCommand::Tree => {
            let infos = list(conn, &sn, Vec::new()).await?;
            let mut out = String::new();
            print_tree(&infos, "", 0, &mut out);
            print!("{out}");
        }
        SnapshotsCommand::Usage { bytes, keys } => {
            let keys = if keys.is_empty() {
                list(conn, &sn, Vec::new())
                    .await?
                    .into_iter()
                    .map(|i| i.name)
                    .collect()
            } else {
                keys
            };
            let mut w = TabWriter::new(std::io::stdout());
            writeln!(w, "KEY\tSIZE\tINODES\t")?;
            for key in keys {
                let u = client
                    .usage(conn.request(api::UsageRequest {
                        snapshotter: sn.clone(),
                        key: key.clone(),
                    }))
                    .await?
                    .into_inner();
                let size = if bytes {
                    u.size.to_string()
                } else {
                    human(u.size)
                };
                writeln!(w, "{key}\t{size}\t{}\t", u.inodes)?;
            }
            w.flush()?;
        }
        SnapshotsCommand::Mounts { target, key } => {
            let r = client
                .mounts(conn.request(api::MountsRequest {
                    snapshotter: sn,
                    key,
                }))
                .await?
                .into_inner();
            print!("{}", mount_commands(&r.mounts, &target));
        }
        SnapshotsCommand::Info { key } => {
            let i = stat(conn, &sn, &key).await?;
            let mut v = serde_json::json!({
                "Kind": kind_text(i.kind),
                "Name": i.name,
            });
            if !i.parent.is_empty() {
                v["Parent"] = i.parent.clone().into();
            }
            if !i.labels.is_empty() {
                v["Labels"] = serde_json::to_value(&i.labels)?;
            }
            v["Created"] = time_text(&i.created_at).into();
            v["Updated"] = time_text(&i.updated_at).into();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        SnapshotsCommand::Label { key, labels } => {
            let mut info = stat(conn, &sn, &key).await?;
            let mut paths = Vec::new();
            info.labels.clear();
            for l in &labels {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                paths.push(format!("labels.{k}"));
                if !v.is_empty() {
                    info.labels.insert(k.to_owned(), v.to_owned());
                }
            }
            let r = client
                .update(conn.request(api::UpdateSnapshotRequest {
                    snapshotter: sn,
                    info: Some(info),
                    update_mask: Some(prost_types::FieldMask { paths }),
                }))
                .await?
                .into_inner();
            let mut shown: Vec<String> = r
                .info
                .map(|i| {
                    i.labels
                        .into_iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect()
                })
                .unwrap_or_default();
            shown.sort();
            println!("{}", shown.join(","));
        }
    }
    Ok(())
}
