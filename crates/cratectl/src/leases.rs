//! `cratectl leases create|ls|rm`.

use std::collections::HashMap;
use std::io::Write;

use clap::Subcommand;
use crated_api::containerd::services::leases::v1::{CreateRequest, DeleteRequest, ListRequest};
use tabwriter::TabWriter;

use crate::client::Connection;

#[derive(Subcommand, Debug)]
pub enum LeasesCommand {
    /// Create a lease (a random id unless --id), with labels KEY=VALUE.
    Create {
        #[arg(long)]
        id: Option<String>,
        /// Expire after this long (Go's form: 30s, 1h, 24h0m0s); 0 never expires.
        #[arg(short = 'x', long, default_value = "24h")]
        expires: String,
        labels: Vec<String>,
    },
    /// List leases.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Remove leases.
    #[command(alias = "remove", alias = "delete")]
    Rm {
        /// Run garbage collection before returning.
        #[arg(long)]
        sync: bool,
        ids: Vec<String>,
    },
}

pub async fn run(conn: &Connection, command: LeasesCommand) -> anyhow::Result<()> {
    let mut client = conn.leases();
    match command {
        LeasesCommand::Create {
            id,
            expires,
            labels,
        } => {
            let id =
                id.unwrap_or_else(|| format!("cratectl-{}-{}", std::process::id(), now_nanos()));
            let mut labels: HashMap<String, String> = labels
                .iter()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            labels.extend(crate::gc::expire_label(&expires)?);
            let lease = client
                .create(conn.request(CreateRequest { id, labels }))
                .await?
                .into_inner();
            println!("{}", lease.lease.unwrap_or_default().id);
        }
        LeasesCommand::Ls { quiet, filters } => {
            let leases = client
                .list(conn.request(ListRequest { filters }))
                .await?
                .into_inner()
                .leases;
            if quiet {
                for l in leases {
                    println!("{}", l.id);
                }
                return Ok(());
            }
            let mut w = TabWriter::new(std::io::stdout()).padding(1);
            writeln!(w, "ID\tCREATED AT\tLABELS")?;
            for l in leases {
                let mut labels: Vec<String> =
                    l.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                let created = l.created_at.map(|t| t.seconds).unwrap_or_default();
                writeln!(w, "{}\t{}\t{}", l.id, created, labels.join(","))?;
            }
            w.flush()?;
        }
        LeasesCommand::Rm { sync, ids } => {
            for id in ids {
                client
                    .delete(conn.request(DeleteRequest {
                        id: id.clone(),
                        sync,
                    }))
                    .await?;
                println!("{id}");
            }
        }
    }
    Ok(())
}

/// Nanoseconds since the epoch: what makes the names cratectl gives leases and keys unique.
/// A lease for one piece of client work (an import, a container's creation), as containerd's
/// client takes one: it keeps what the work makes from a collection until records hold it, and
/// expires in a day should the client die before [`release`].
pub(crate) async fn temporary(conn: &Connection, purpose: &str) -> anyhow::Result<String> {
    let id = format!("{purpose}-{}", now_nanos());
    conn.leases()
        .create(conn.request(CreateRequest {
            id: id.clone(),
            labels: crate::gc::expire_label("24h")?.into_iter().collect(),
        }))
        .await?;
    Ok(id)
}

/// Ends a [`temporary`] lease; a failure only leaves it to expire.
pub(crate) async fn release(conn: &Connection, id: String) {
    let _ = conn
        .leases()
        .delete(conn.request(DeleteRequest { id, sync: false }))
        .await;
}

pub(crate) fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
