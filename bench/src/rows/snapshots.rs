//! The snapshot rows: prepare+commit+remove cycles through the snapshots API, with per-call
//! latencies and the floors a cycle is set beside.

use std::path::Path;

use anyhow::Context;
use crated_testsupport::Daemon;

use crate::floors::{durable_commit_floor, store_floor, DURABLE_COMMITS_PER_CYCLE};
use crate::table::{stats, Row};

/// What one run of snapshot cycles gave: cycles per second, and each call's latency (µs) by
/// call (prepare, commit, remove).
struct CycleRun {
    rate: f64,
    latencies: [Vec<f64>; 3],
}

impl CycleRun {
    /// Adds this run to a daemon's rates and per-call latencies.
    fn add_to(self, rates: &mut Vec<f64>, calls: &mut [Vec<f64>; 3]) {
        rates.push(self.rate);
        for (all, these) in calls.iter_mut().zip(self.latencies) {
            all.extend(these);
        }
    }
}

/// Prepare + commit + remove of one snapshot through the snapshots API, `cycles` times, from
/// one long-lived client.
async fn snapshot_cycles(
    socket: &Path,
    snapshotter: &str,
    cycles: usize,
) -> anyhow::Result<CycleRun> {
    use crated_api::containerd::services::snapshots::v1 as api;
    let channel = crated_testsupport::channel(socket).await?;
    let mut client = api::snapshots_client::SnapshotsClient::new(channel.clone());
    fn req<T>(m: T) -> tonic::Request<T> {
        crated_testsupport::in_namespace(m, "bench", Some("bench"))
    }
    // Under a lease, as containerd's clients work: otherwise the collector may take an
    // active snapshot before its commit.
    use crated_api::containerd::services::leases::v1 as leases;
    leases::leases_client::LeasesClient::new(channel)
        .create(req(leases::CreateRequest {
            id: "bench".into(),
            ..Default::default()
        }))
        .await?;
    let mut latencies: [Vec<f64>; 3] = Default::default();
    let micros = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e6;
    let started = std::time::Instant::now();
    for i in 0..cycles {
        let (key, name) = (format!("active-{i}"), format!("committed-{i}"));
        let t = std::time::Instant::now();
        client
            .prepare(req(api::PrepareSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: key.clone(),
                ..Default::default()
            }))
            .await?;
        latencies[0].push(micros(t));
        let t = std::time::Instant::now();
        client
            .commit(req(api::CommitSnapshotRequest {
                snapshotter: snapshotter.into(),
                name: name.clone(),
                key,
                ..Default::default()
            }))
            .await?;
        latencies[1].push(micros(t));
        let t = std::time::Instant::now();
        client
            .remove(req(api::RemoveSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: name,
            }))
            .await?;
        latencies[2].push(micros(t));
    }
    Ok(CycleRun {
        rate: cycles as f64 / started.elapsed().as_secs_f64(),
        latencies,
    })
}

/// p50 round trip, in µs, of `calls` no-op RPCs (`Version`) on one connection: what one call
/// of a cycle costs the client, the socket and both gRPC stacks before any work is done.
async fn noop_rpc_micros(socket: &Path, calls: usize) -> anyhow::Result<f64> {
    use crated_api::containerd::services::version::v1::version_client::VersionClient;
    let mut client = VersionClient::new(crated_testsupport::channel(socket).await?);
    let mut micros = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = std::time::Instant::now();
        client.version(()).await?;
        micros.push(t.elapsed().as_secs_f64() * 1e6);
    }
    stats(&micros)
        .map(|(m, ..)| m)
        .context("no Version calls were timed")
}

/// Snapshot cycles per second for native and overlayfs, each run on a fresh daemon; beside
/// them, the disk's floor for the durable commits a cycle needs.
pub fn snapshots(
    runs: usize,
    crated: &Path,
    containerd: Option<&Path>,
) -> anyhow::Result<(Vec<Row>, String)> {
    const CYCLES: usize = 300;
    let scratch = tempfile::tempdir()?;
    let mut floor = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let mut latency_notes = Vec::new();
    // The least a cycle can cost crated, measured each run: its stores' commits alone, and
    // three no-op calls.
    let (mut noop_rpcs, mut store_floors) = (Vec::new(), Vec::new());
    for snapshotter in ["native", "overlayfs"] {
        let mut row = Row {
            name: format!("{snapshotter} prepare+commit+remove"),
            unit: "cycles/s",
            crated: vec![],
            containerd: vec![],
        };
        // Every call of every run, per daemon and call, for the latency note.
        let mut calls: [[Vec<f64>; 3]; 2] = Default::default();
        for _ in 0..runs {
            let d = Daemon::crated(crated, None, &[]).map_err(anyhow::Error::msg)?;
            runtime
                .block_on(snapshot_cycles(&d.socket, snapshotter, CYCLES))?
                .add_to(&mut row.crated, &mut calls[0]);
            let rpc = runtime.block_on(noop_rpc_micros(&d.socket, CYCLES))?;
            drop(d);
            let stores = store_floor(scratch.path(), CYCLES)?;
            noop_rpcs.push(rpc);
            store_floors.push(stores);
            if let Some(c) = containerd {
                let d = Daemon::containerd(c, Some("")).map_err(anyhow::Error::msg)?;
                runtime
                    .block_on(snapshot_cycles(&d.socket, snapshotter, CYCLES))?
                    .add_to(&mut row.containerd, &mut calls[1]);
                drop(d);
            }
            floor.push(durable_commit_floor(scratch.path(), CYCLES)?);
        }
        let p50s = |daemon: &[Vec<f64>; 3]| {
            daemon
                .iter()
                .map(|v| stats(v).map_or("-".into(), |(m, ..)| format!("{m:.0}")))
                .collect::<Vec<_>>()
                .join("/")
        };
        latency_notes.push(format!(
            "{snapshotter} prepare/commit/remove p50 µs: crated {}, containerd {}",
            p50s(&calls[0]),
            p50s(&calls[1])
        ));
        rows.push(row);
    }
    let floor = stats(&floor).map_or(0.0, |(m, ..)| m);
    let median = |v: &[f64]| stats(v).map_or(0.0, |(m, ..)| m);
    let note = format!(
        "floor: {DURABLE_COMMITS_PER_CYCLE} durable commits per cycle (4 KiB write + fdatasync each, nothing else) {floor:.0} cycles/s (median); cycles / floor: native crated {:.2}, containerd {:.2}; overlayfs crated {:.2}, containerd {:.2}",
        median(&rows[0].crated) / floor.max(f64::EPSILON),
        median(&rows[0].containerd) / floor.max(f64::EPSILON),
        median(&rows[1].crated) / floor.max(f64::EPSILON),
        median(&rows[1].containerd) / floor.max(f64::EPSILON),
    );
    let ceiling: Vec<f64> = store_floors
        .iter()
        .zip(&noop_rpcs)
        .map(|(stores, rpc)| 1.0 / (1.0 / stores + 3.0 * rpc / 1e6))
        .collect();
    let ceiling = stats(&ceiling).map_or(0.0, |(m, ..)| m);
    let stores = stats(&store_floors).map_or(0.0, |(m, ..)| m);
    let rpc = stats(&noop_rpcs).map_or(0.0, |(m, ..)| m);
    let note = format!(
        "{note}\nceiling of crated's design: its stores' 5 durable commits per cycle alone (2 per prepare and commit, 1 per remove, one shared journal flushed once per call) ({stores:.0} cycles/s) plus 3 no-op gRPC round trips (p50 {rpc:.0} µs each): {ceiling:.0} cycles/s (medians); crated reaches native {:.2}, overlayfs {:.2} of it; 3x containerd is native {:.2}, overlayfs {:.2} of it",
        median(&rows[0].crated) / ceiling.max(f64::EPSILON),
        median(&rows[1].crated) / ceiling.max(f64::EPSILON),
        3.0 * median(&rows[0].containerd) / ceiling.max(f64::EPSILON),
        3.0 * median(&rows[1].containerd) / ceiling.max(f64::EPSILON),
    );
    let note = format!("{note}\n{}", latency_notes.join("\n"));
    Ok((rows, note))
}
