//! `cratectl namespaces create|ls|rm|label`.

use std::collections::HashMap;
use std::io::Write;

use anyhow::bail;
use clap::Subcommand;
use crated_api::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, ListNamespacesRequest, Namespace,
    UpdateNamespaceRequest,
};
use crated_api::prost_types::FieldMask;
use tabwriter::TabWriter;

use crate::client::Connection;

#[derive(Subcommand, Debug)]
pub enum NamespacesCommand {
    /// Create a namespace, optionally with labels KEY=VALUE.
    Create { name: String, labels: Vec<String> },
    /// List namespaces.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove namespaces (they must be empty).
    #[command(alias = "remove", alias = "delete")]
    Rm { names: Vec<String> },
    /// Set labels KEY=VALUE on a namespace (an empty value removes the label).
    Label { name: String, labels: Vec<String> },
}

fn parse_labels(args: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut labels = HashMap::new();
    for arg in args {
        let (k, v) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
        if k.is_empty() {
            bail!("invalid label {arg:?}: want KEY=VALUE");
        }
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok(labels)
}

pub async fn run(conn: &Connection, command: NamespacesCommand) -> anyhow::Result<()> {
    let mut client = conn.namespaces();
    match command {
        NamespacesCommand::Create { name, labels } => {
            let namespace = Namespace {
                name,
                labels: parse_labels(&labels)?,
            };
            client
                .create(conn.request(CreateNamespaceRequest {
                    namespace: Some(namespace),
                }))
                .await?;
        }
        NamespacesCommand::Ls { quiet } => {
            let resp = client
                .list(conn.request(ListNamespacesRequest::default()))
                .await?
                .into_inner();
            if quiet {
                for ns in resp.namespaces {
                    println!("{}", ns.name);
                }
                return Ok(());
            }
            let mut w = TabWriter::new(std::io::stdout()).minwidth(1).padding(8);
            writeln!(w, "NAME\tLABELS\t")?;
            for ns in resp.namespaces {
                let mut labels: Vec<String> =
                    ns.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                writeln!(w, "{}\t{}\t", ns.name, labels.join(","))?;
            }
            w.flush()?;
        }
        NamespacesCommand::Rm { names } => {
            let mut failed = false;
            for name in names {
                match client
                    .delete(conn.request(DeleteNamespaceRequest { name: name.clone() }))
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(status) => {
                        eprintln!("cratectl: unable to delete {name}: {}", status.message());
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("unable to delete some namespaces");
            }
        }
        NamespacesCommand::Label { name, labels } => {
            let labels = parse_labels(&labels)?;
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            client
                .update(conn.request(UpdateNamespaceRequest {
                    namespace: Some(Namespace { name, labels }),
                    update_mask: Some(FieldMask { paths }),
                }))
                .await?;
        }
    }
    Ok(())
}
