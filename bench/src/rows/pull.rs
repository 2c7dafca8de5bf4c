//! The pull rows: a cold pull and unpack of the bench image from a local registry, by ctr and
//! by cratectl, with wall time, daemon CPU and peak RSS.

use std::path::Path;

use anyhow::{bail, Context};
use crated_testsupport::{peak_rss_kib, tool, Daemon};

use super::cpu_seconds;
use crate::floors::unpack_floor;
use crate::release_bin;
use crate::table::{stats, Row};

/// Reads every file under `dir`, so what a run reads next comes from the page cache; then
/// writes back what earlier runs left dirty and lets the disk settle, so one run's writeback
/// does not land in the next one's time.
fn warm(dir: &Path) {
    read_all(dir);
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(std::time::Duration::from_secs(1));
}

fn read_all(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            read_all(&p);
        } else if let Ok(mut f) = std::fs::File::open(&p) {
            let _ = std::io::copy(&mut f, &mut std::io::sink());
        }
    }
}

/// What one pull by `client` cost: wall seconds, daemon CPU seconds, daemon peak RSS.
fn pull_once(
    d: &Daemon,
    client: &Path,
    reference: &str,
    snapshotter: &str,
) -> anyhow::Result<(f64, f64, f64)> {
    let cpu_before = cpu_seconds(d.pid())?;
    let started = std::time::Instant::now();
    let out = d.client(
        client,
        &[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            snapshotter,
            reference,
        ],
    );
    let wall = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("pull failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let cpu = cpu_seconds(d.pid())? - cpu_before;
    let rss = peak_rss_kib(d.pid()).context("reading VmHWM")? as f64 / 1024.0;
    Ok((wall, cpu, rss))
}

/// Cold pull and unpack of the bench image (five gzip layers, ~490 MB, 20k files) from a local
/// registry, for overlayfs and native: with Debian's ctr (its client-side pull through the
/// daemon's services, against crated and containerd) and with cratectl (crated's daemon-side
/// pull, set beside containerd's ctr pull: Debian's containerd 1.6 has no transfer service):
/// wall time, daemon CPU and peak RSS, and the `pigz -dc | tar -x` floor. Old roots are
/// removed only at the end: deleting many files slows the creations that follow.
pub fn pull(
    runs: usize,
    crated: &Path,
    containerd: Option<&Path>,
) -> anyhow::Result<(Vec<Row>, String)> {
    use crated_testsupport::layered::{build, Shape};
    use crated_testsupport::registry::Registry;
    let ctr = tool("ctr", "containerd").context("ctr (Debian's containerd) drives the pulls")?;
    let cratectl = release_bin("cratectl")?;
    tool("pigz", "pigz").context("pigz for the unpack floor")?;
    eprintln!("building the bench image ...");
    let image = build("bench", Shape::bench());
    let registry = Registry::start().context("docker-registry")?;
    registry.push(&image, "bench:latest");
    let reference = format!("{}/bench:latest", registry.addr);
    let scratch = tempfile::tempdir()?;
    let mut layers = Vec::new();
    for (digest, bytes) in &image.blobs {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let path = scratch.path().join(digest.trim_start_matches("sha256:"));
            std::fs::write(&path, bytes)?;
            layers.push(path);
        }
    }
    drop(image);
    let mut floors = Vec::new();
    let mut rows = Vec::new();
    let mut keep = Vec::new();
    for snapshotter in ["overlayfs", "native"] {
        let mut wall = Row {
            name: format!("pull+unpack {snapshotter}"),
            unit: "s",
            crated: vec![],
            containerd: vec![],
        };
        let mut cpu = Row {
            name: format!("  daemon CPU {snapshotter}"),
            unit: "s",
            crated: vec![],
            containerd: vec![],
        };
        let mut rss = Row {
            name: format!("  daemon peak RSS {snapshotter}"),
            unit: "MiB",
            crated: vec![],
            containerd: vec![],
        };
        let mut own = [
            Row {
                name: format!("cratectl pull+unpack {snapshotter}"),
                unit: "s",
                crated: vec![],
                containerd: vec![],
            },
            Row {
                name: format!("  daemon CPU {snapshotter}"),
                unit: "s",
                crated: vec![],
                containerd: vec![],
            },
            Row {
                name: format!("  daemon peak RSS {snapshotter}"),
                unit: "MiB",
                crated: vec![],
                containerd: vec![],
            },
        ];
        for run in 0..runs {
            warm(registry.storage());
            let d = Daemon::crated(crated, None, &[]).map_err(anyhow::Error::msg)?;
            let (w, c, r) = pull_once(&d, &ctr, &reference, snapshotter)?;
            wall.crated.push(w);
            cpu.crated.push(c);
            rss.crated.push(r);
            keep.push(d);
            warm(registry.storage());
            let d = Daemon::crated(crated, None, &[]).map_err(anyhow::Error::msg)?;
            let (w, c, r) = pull_once(&d, &cratectl, &reference, snapshotter)?;
            own[0].crated.push(w);
            own[1].crated.push(c);
            own[2].crated.push(r);
            keep.push(d);
            if let Some(bin) = containerd {
                warm(registry.storage());
                let d = Daemon::containerd(bin, Some("")).map_err(anyhow::Error::msg)?;
                let (w, c, r) = pull_once(&d, &ctr, &reference, snapshotter)?;
                wall.containerd.push(w);
                cpu.containerd.push(c);
                rss.containerd.push(r);
                for (row, v) in own.iter_mut().zip([w, c, r]) {
                    row.containerd.push(v);
                }
                keep.push(d);
            }
            if snapshotter == "overlayfs" {
                for l in &layers {
                    let _ = std::fs::read(l);
                }
                floors.push(unpack_floor(&layers, scratch.path(), run)?);
            }
        }
        rows.extend([wall, cpu, rss]);
        rows.extend(own);
    }
    for mut d in keep {
        d.stop();
    }
    let floor = stats(&floors).map_or(0.0, |(m, ..)| m);
    let median = |row: &Row| stats(&row.crated).map_or(0.0, |(m, ..)| m);
    let note = format!(
        "floor: `pigz -dc | tar -x` of the bench layers {floor:.2} s (median); overlayfs pull+unpack / floor: ctr against crated {:.2}, cratectl (daemon-side) {:.2}\n\
         the cratectl rows' containerd column is containerd's own ctr pull (Debian's containerd 1.6 has no daemon-side pull)",
        median(&rows[0]) / floor.max(f64::EPSILON),
        median(&rows[3]) / floor.max(f64::EPSILON)
    );
    Ok((rows, note))
}

/// Serves the bench image from a local registry until stdin closes, for profiling a pull by
/// hand (`crated-bench serve-image`).
pub fn serve_image() -> anyhow::Result<()> {
    use crated_testsupport::layered::{build, Shape};
    use crated_testsupport::registry::Registry;
    let image = build("bench", Shape::bench());
    let registry = Registry::start().context("docker-registry")?;
    registry.push(&image, "bench:latest");
    println!("{}/bench:latest", registry.addr);
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}
