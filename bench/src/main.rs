//! crated's benchmarks: each row runs crated and Debian's containerd alternately (A B A B ...),
//! each on a fresh private root, and prints median, min and max with the crated/containerd ratio.
//! Run with `bench/run.sh` (it builds the release binaries first).

mod floors;
mod rows;
mod table;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use crated_testsupport::tool;

use rows::ingest::ingest;
use rows::pods::pods;
use rows::pull::{pull, serve_image};
use rows::run::run_latency;
use rows::snapshots::snapshots;
use rows::startup::startup;
use table::print;

#[derive(Parser)]
#[command(about = "crated vs containerd benchmarks")]
struct Args {
    /// Rows to run (default: all): startup, ingest, snapshots, pull, run, pods; or `serve-image`,
    /// which only serves the pull bench's image from a local registry until stdin closes
    rows: Vec<String>,
    /// Counted runs per daemon and row.
    #[arg(short, long, default_value_t = 7)]
    runs: usize,
}

/// The release binary `name` that `bench/run.sh` built beside this one.
pub fn release_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("bench directory")?.join(name);
    if !bin.is_file() {
        bail!(
            "{} missing: run bench/run.sh (it builds the release binaries)",
            bin.display()
        );
    }
    Ok(bin)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rows.iter().any(|r| r == "serve-image") {
        return serve_image();
    }
    let all = args.rows.is_empty();
    let crated = release_bin("crated")?;
    let containerd = tool("containerd", "containerd");
    if containerd.is_none() {
        eprintln!("containerd not found: only crated's figures are printed");
    }
    let mut rows = Vec::new();
    if all || args.rows.iter().any(|r| r == "startup") {
        rows.extend(startup(args.runs, &crated, containerd.as_deref())?);
    }
    let mut notes = Vec::new();
    if all || args.rows.iter().any(|r| r == "ingest") {
        let (ingest_rows, note) = ingest(args.runs.min(5), &crated, containerd.as_deref())?;
        rows.extend(ingest_rows);
        notes.push(note);
    }
    if all || args.rows.iter().any(|r| r == "snapshots") {
        let (snapshot_rows, note) = snapshots(args.runs.min(5), &crated, containerd.as_deref())?;
        rows.extend(snapshot_rows);
        notes.push(note);
    }
    if all || args.rows.iter().any(|r| r == "pull") {
        let (pull_rows, note) = pull(args.runs.min(3), &crated, containerd.as_deref())?;
        rows.extend(pull_rows);
        notes.push(note);
    }
    if all || args.rows.iter().any(|r| r == "run") {
        let (run_rows, note) = run_latency(args.runs * 3, &crated, containerd.as_deref())?;
        rows.extend(run_rows);
        notes.push(note);
    }
    if all || args.rows.iter().any(|r| r == "pods") {
        rows.extend(pods(args.runs, &crated, containerd.as_deref())?);
    }
    println!(
        "runs per daemon: {}; daemons alternate, each on a fresh private root",
        args.runs
    );
    print(&rows);
    for n in notes {
        println!("{n}");
    }
    Ok(())
}
