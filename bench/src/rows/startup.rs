//! The startup rows: time from exec to a serving health check, and idle RSS after it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use crated_testsupport::{rss_kib, Daemon};

use crate::table::Row;

/// Exec until `grpc.health.v1.Health/Check` answers SERVING, then idle RSS one second later.
pub fn startup(runs: usize, crated: &Path, containerd: Option<&Path>) -> anyhow::Result<Vec<Row>> {
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
