//! `cratectl containers create|ls|info|rm|label`, printed as ctr prints them.

use std::collections::HashMap;
use std::io::Write;

use clap::Subcommand;
use crated_api::containerd::services::containers::v1 as api;
use crated_api::containerd::services::snapshots::v1 as snapshots;
use tabwriter::TabWriter;

use crate::client::Connection;

#[derive(Subcommand, Debug)]
pub enum ContainersCommand {
    /// List containers.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Make a container (snapshot and record) from an unpacked image, without a task.
    Create(crate::run::ContainerArgs),
    /// Print a container's record as JSON (the spec decoded).
    Info { id: String },
    /// Remove containers and their snapshots.
    #[command(alias = "delete", alias = "del", alias = "remove")]
    Rm {
        /// Keep the container's snapshot.
        #[arg(long)]
        keep_snapshot: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Set (KEY=VALUE) or clear (KEY=) labels.
    Label { id: String, labels: Vec<String> },
}

pub async fn run(conn: &Connection, command: ContainersCommand) -> anyhow::Result<()> {
    match command {
        ContainersCommand::Create(args) => {
            crate::run::create_container(conn, &args).await?;
        }
        ContainersCommand::Ls { quiet, filters } => {
            let found = conn
                .containers()
                .list(conn.request(api::ListContainersRequest { filters }))
                .await?
                .into_inner()
                .containers;
            if quiet {
                for c in found {
                    println!("{}", c.id);
                }
                return Ok(());
            }
            let mut tw = TabWriter::new(std::io::stdout()).padding(4);
            writeln!(tw, "CONTAINER\tIMAGE\tRUNTIME")?;
            for c in found {
                let image = if c.image.is_empty() {
                    "-".into()
                } else {
                    c.image
                };
                let runtime = c.runtime.map(|r| r.name).unwrap_or_default();
                writeln!(tw, "{}\t{}\t{}", c.id, image, runtime)?;
            }
            tw.flush()?;
        }
        ContainersCommand::Info { id } => {
            let c = get(conn, &id).await?;
            let spec: serde_json::Value = c
                .spec
                .as_ref()
                .and_then(|s| serde_json::from_slice(&s.value).ok())
                .unwrap_or_default();
            let runtime = c.runtime.clone().unwrap_or_default();
            let info = serde_json::json!({
                "ID": c.id,
                "Labels": c.labels,
                "Image": c.image,
                "Runtime": { "Name": runtime.name },
                "SnapshotKey": c.snapshot_key,
                "Snapshotter": c.snapshotter,
                "Spec": spec,
            });
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        ContainersCommand::Rm { keep_snapshot, ids } => {
            for id in ids {
                let c = get(conn, &id).await?;
                if !keep_snapshot && !c.snapshot_key.is_empty() {
                    let removed = conn
                        .snapshots()
                        .remove(conn.request(snapshots::RemoveSnapshotRequest {
                            snapshotter: c.snapshotter.clone(),
                            key: c.snapshot_key.clone(),
                        }))
                        .await;
                    if let Err(e) = removed {
                        if e.code() != tonic::Code::NotFound {
                            return Err(e.into());
                        }
                    }
                }
                conn.containers()
                    .delete(conn.request(api::DeleteContainerRequest { id }))
                    .await?;
            }
        }
        ContainersCommand::Label { id, labels } => {
            let mut set = HashMap::new();
            let mut paths = Vec::new();
            for l in labels {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                paths.push(format!("labels.{k}"));
                set.insert(k.to_owned(), v.to_owned());
            }
            let updated = conn
                .containers()
                .update(conn.request(api::UpdateContainerRequest {
                    container: Some(api::Container {
                        id,
                        labels: set,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                }))
                .await?
                .into_inner()
                .container
                .unwrap_or_default();
            let mut shown: Vec<_> = updated.labels.into_iter().collect();
            shown.sort();
            for (k, v) in shown {
                println!("{k}={v}");
            }
        }
    }
    Ok(())
}

pub async fn get(conn: &Connection, id: &str) -> anyhow::Result<api::Container> {
    Ok(conn
        .containers()
        .get(conn.request(api::GetContainerRequest { id: id.to_owned() }))
        .await?
        .into_inner()
        .container
        .unwrap_or_default())
}
