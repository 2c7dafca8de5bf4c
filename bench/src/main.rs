//! crated's benchmarks: each row runs crated and Debian's containerd alternately (A B A B ...),
//! each on a fresh private root, and prints median, min and max with the crated/containerd ratio.
//! Run with `bench/run.sh` (it builds the release binaries first).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use crated_testsupport::{rss_kib, tool, Daemon};

#[derive(Parser)]
#[command(about = "crated vs containerd benchmarks")]
struct Args {
    /// Rows to run (default: all): startup
    rows: Vec<String>,
    /// Counted runs per daemon and row.
    #[arg(short, long, default_value_t = 7)]
    runs: usize,
}

/// One measured figure for both daemons.
struct Row {
    name: String,
    unit: &'static str,
    crated: Vec<f64>,
    containerd: Vec<f64>,
}

fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some((s[s.len() / 2], s[0], s[s.len() - 1]))
}

fn cell(v: &[f64]) -> String {
    match stats(v) {
        Some((med, min, max)) => format!("{med:.1} ({min:.1}-{max:.1})"),
        None => "n/a".into(),
    }
}

fn print(rows: &[Row]) {
    println!(
        "{:<34} {:>24} {:>24} {:>16}",
        "benchmark", "crated median (min-max)", "containerd median (min-max)", "crated/containerd"
    );
    for r in rows {
        let ratio = match (stats(&r.crated), stats(&r.containerd)) {
            (Some((a, ..)), Some((b, ..))) if b > 0.0 => format!("{:.3}", a / b),
            _ => "n/a".into(),
        };
        println!(
            "{:<34} {:>24} {:>24} {:>16}",
            format!("{} [{}]", r.name, r.unit),
            cell(&r.crated),
            cell(&r.containerd),
            ratio
        );
    }
}

fn release_bin(name: &str) -> anyhow::Result<PathBuf> {
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

/// Exec until `grpc.health.v1.Health/Check` answers SERVING, then idle RSS one second later.
fn startup(runs: usize, crated: &Path, containerd: Option<&Path>) -> anyhow::Result<Vec<Row>> {
    let mut ready = Row {
        name: "start to ready".into(),
        unit: "ms",
        crated: vec![],
        containerd: vec![],
    };
    let mut rss = Row {
        name: "idle RSS after start".into(),
        unit: "MiB",
        crated: vec![],
        containerd: vec![],
    };
    let measure = |mut d: Daemon, ready: &mut Vec<f64>, rss: &mut Vec<f64>| -> anyhow::Result<()> {
        ready.push(d.ready_after.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_secs(1));
        let kib = rss_kib(d.pid()).context("reading VmRSS")?;
        rss.push(kib as f64 / 1024.0);
        d.stop();
        Ok(())
    };
    // One warm-up each, not counted (page cache for the binaries).
    drop(Daemon::crated(crated, None, &[]).map_err(anyhow::Error::msg)?);
    if let Some(c) = containerd {
        drop(Daemon::containerd(c, Some("")).map_err(anyhow::Error::msg)?);
    }
    for _ in 0..runs {
        let d = Daemon::crated(crated, None, &[]).map_err(anyhow::Error::msg)?;
        measure(d, &mut ready.crated, &mut rss.crated)?;
        if let Some(c) = containerd {
            // An empty config file: containerd's built-in defaults, not /etc/containerd's.
            let d = Daemon::containerd(c, Some("")).map_err(anyhow::Error::msg)?;
            measure(d, &mut ready.containerd, &mut rss.containerd)?;
        }
    }
    Ok(vec![ready, rss])
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    println!(
        "runs per daemon: {}; daemons alternate, each on a fresh private root",
        args.runs
    );
    print(&rows);
    Ok(())
}
