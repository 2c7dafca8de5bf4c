//! The run row: `run --rm busybox true` end to end by ctr and by cratectl, beside `runc run`.

use std::path::Path;

use anyhow::{bail, Context};
use crated_testsupport::{tool, Daemon};

use crate::release_bin;
use crate::table::{stats, Row};

/// Wall time of one command, failing on a non-zero exit.
fn timed(cmd: &mut std::process::Command) -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    let out = cmd.output()?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(secs)
}

/// `ctr run --rm busybox true`, end to end, against each daemon with the same shim and
/// runc (overlayfs), and `runc run` of the same rootfs alone as the floor.
pub fn run_latency(
    runs: usize,
    crated: &Path,
    containerd: Option<&Path>,
) -> anyhow::Result<(Vec<Row>, String)> {
    const IMAGE: &str = "docker.io/library/busybox:bench";
    let ctr = tool("ctr", "containerd").context("ctr (Debian's containerd) is needed")?;
    let runc = tool("runc", "runc").context("runc is needed")?;
    let scratch = tempfile::tempdir()?;
    let prepare = |d: &Daemon| -> anyhow::Result<()> {
        crated_testsupport::oci::import_busybox(d, &ctr, IMAGE, "overlayfs", scratch.path())
            .map(drop)
            .map_err(anyhow::Error::msg)
    };
    let cratectl = release_bin("cratectl")?;
    let run_with = |client: &Path, d: &Daemon, id: &str| {
        timed(
            std::process::Command::new(client)
                .arg("--address")
                .arg(&d.socket)
                .args(["run", "--rm", "--snapshotter", "overlayfs", IMAGE, id])
                // The test image is busybox alone: `true` is its applet.
                .args(["/bin/busybox", "true"]),
        )
    };
    let run_once = |d: &Daemon, id: &str| run_with(&ctr, d, id);
    let mut row = Row {
        name: "ctr run --rm busybox true".into(),
        unit: "ms",
        crated: vec![],
        containerd: vec![],
    };
    // cratectl against crated; its containerd column is ctr against containerd.
    let mut ours_row = Row {
        name: "cratectl run --rm busybox true".into(),
        unit: "ms",
        crated: vec![],
        containerd: vec![],
    };
    let ours = Daemon::crated(crated, None, &[]).map_err(anyhow::Error::msg)?;
    prepare(&ours)?;
    let theirs = match containerd {
        Some(c) => {
            let d = Daemon::containerd(c, Some("")).map_err(anyhow::Error::msg)?;
            prepare(&d)?;
            Some(d)
        }
        None => None,
    };
    // One warm-up each (page cache for shim, runc and the image).
    run_once(&ours, "bench-warm-crated")?;
    run_with(&cratectl, &ours, "bench-warm-cratectl")?;
    if let Some(d) = &theirs {
        run_once(d, "bench-warm-containerd")?;
    }
    for i in 0..runs {
        row.crated
            .push(run_once(&ours, &format!("bench-crated-{i}"))? * 1000.0);
        ours_row
            .crated
            .push(run_with(&cratectl, &ours, &format!("bench-cratectl-{i}"))? * 1000.0);
        if let Some(d) = &theirs {
            row.containerd
                .push(run_once(d, &format!("bench-containerd-{i}"))? * 1000.0);
        }
    }
    ours_row.containerd = row.containerd.clone();
    // The floor: runc alone on a prepared bundle.
    let bundle = scratch.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    let out = std::process::Command::new(&runc)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .output()?;
    if !out.status.success() {
        bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr));
    }
    let config = std::fs::read_to_string(bundle.join("config.json"))?
        .replace("\"terminal\": true", "\"terminal\": false")
        .replace("\"sh\"", "\"/bin/busybox\", \"true\"");
    std::fs::write(bundle.join("config.json"), config)?;
    let mut floor = Vec::new();
    for i in 0..runs {
        let secs = timed(
            std::process::Command::new(&runc)
                .args(["--root"])
                .arg(scratch.path().join("runc-state"))
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(format!("bench-floor-{i}")),
        )?;
        floor.push(secs * 1000.0);
    }
    drop(ours);
    drop(theirs);
    let floor = stats(&floor).map_or(0.0, |(m, ..)| m);
    let median = |r: &Row| stats(&r.crated).map_or(0.0, |(m, ..)| m);
    let note = format!(
        "floor: `runc run` of the same rootfs alone {floor:.1} ms (median); against crated / floor: ctr run {:.2}, cratectl run {:.2}\n\
         the cratectl row's containerd column is ctr against containerd (the same as the row above)",
        median(&row) / floor.max(f64::EPSILON),
        median(&ours_row) / floor.max(f64::EPSILON)
    );
    Ok((vec![row, ours_row], note))
}
