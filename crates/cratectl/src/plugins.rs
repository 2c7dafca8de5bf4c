//! `cratectl plugins ls`, with ctr's columns and `-d` layout.

use std::io::Write;

use clap::Subcommand;
use crated_api::containerd::services::introspection::v1::{Plugin, PluginsRequest};
use crated_api::containerd::types::Platform;
use tabwriter::TabWriter;

use crate::client::Connection;

#[derive(Subcommand, Debug)]
pub enum PluginsCommand {
    /// List plugins and their status (filters as ctr: `type==...`, `id==...`).
    #[command(alias = "list")]
    Ls {
        /// Print only the ids.
        #[arg(short, long)]
        quiet: bool,
        /// Print everything known about each plugin.
        #[arg(short, long)]
        detailed: bool,
        filters: Vec<String>,
    },
}

fn platforms(ps: &[Platform]) -> String {
    let mut out: Vec<String> = ps
        .iter()
        .map(|p| {
            let mut s = format!("{}/{}", p.os, p.architecture);
            if !p.variant.is_empty() {
                s.push('/');
                s.push_str(&p.variant);
            }
            s
        })
        .collect();
    out.sort();
    out.dedup();
    out.join(",")
}

/// ctr's rule: a plugin whose init error says `skip plugin` was skipped; any other error failed.
pub fn status(p: &Plugin) -> &'static str {
    match &p.init_err {
        None => "ok",
        Some(e) if e.message.contains("skip plugin") => "skip",
        Some(_) => "error",
    }
}

fn code_name(code: i32) -> String {
    format!("{:?}", tonic::Code::from_i32(code))
}

pub fn render(plugins: &[Plugin], quiet: bool, detailed: bool) -> String {
    if quiet {
        return plugins.iter().map(|p| format!("{}\n", p.id)).collect();
    }
    let mut w = TabWriter::new(Vec::new()).minwidth(4).padding(4);
    if detailed {
        for p in plugins {
            let _ = writeln!(w, "Type:\t {}", p.r#type);
            let _ = writeln!(w, "ID:\t {}", p.id);
            if !p.requires.is_empty() {
                let _ = writeln!(w, "Requires:\t");
                for r in &p.requires {
                    let _ = writeln!(w, "\t {r}");
                }
            }
            if !p.platforms.is_empty() {
                let _ = writeln!(w, "Platforms:\t {}", platforms(&p.platforms));
            }
            if !p.exports.is_empty() {
                let _ = writeln!(w, "Exports:\t");
                let mut exports: Vec<_> = p.exports.iter().collect();
                exports.sort();
                for (k, v) in exports {
                    let _ = writeln!(w, "\t {k} \t {v}");
                }
            }
            if !p.capabilities.is_empty() {
                let _ = writeln!(w, "Capabilities:\t {}", p.capabilities.join(","));
            }
            if let Some(err) = &p.init_err {
                let _ = writeln!(w, "Error:\t");
                let _ = writeln!(w, "\t Code:\t {}", code_name(err.code));
                let _ = writeln!(w, "\t Message:\t {}", err.message);
            }
            let _ = writeln!(w, "\t");
        }
    } else {
        let _ = writeln!(w, "TYPE\tID\tPLATFORMS\tSTATUS\t");
        for p in plugins {
            let platform = if p.platforms.is_empty() {
                "-".to_owned()
            } else {
                platforms(&p.platforms)
            };
            let _ = writeln!(w, "{}\t{}\t{}\t{}\t", p.r#type, p.id, platform, status(p));
        }
    }
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub async fn run(conn: &Connection, command: PluginsCommand) -> anyhow::Result<()> {
    match command {
        PluginsCommand::Ls {
            quiet,
            detailed,
            filters,
        } => {
            let resp = conn
                .introspection()
                .plugins(conn.request(PluginsRequest { filters }))
                .await?
                .into_inner();
            print!("{}", render(&resp.plugins, quiet, detailed));
            Ok(())
        }
    }
}
