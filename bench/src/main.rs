//! crated's benchmarks: each row runs crated and Debian's containerd alternately (A B A B ...),
//! each on a fresh private root, and prints median, min and max with the crated/containerd ratio.
//! Run with `bench/run.sh` (it builds the release binaries first).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use crated_testsupport::{peak_rss_kib, rss_kib, tool, Daemon};

#[derive(Parser)]
#[command(about = "crated vs containerd benchmarks")]
struct Args {
    /// Rows to run (default: all): startup, ingest, snapshots, pull, run; or `serve-image`,
    /// which only serves the pull bench's image from a local registry until stdin closes
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

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ").context("parsing /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// Streams `blob` into the daemon's content store through the Write stream as one client
/// does for both daemons: Stat, 1 MiB writes sent without waiting on each answer, Commit with
/// the expected digest. Returns seconds from opening the stream to the commit's answer.
async fn ingest_once(
    socket: &Path,
    blob: std::sync::Arc<Vec<u8>>,
    digest: &str,
) -> anyhow::Result<f64> {
    use crated_api::containerd::services::content::v1::content_client::ContentClient;
    use crated_api::containerd::services::content::v1::{WriteAction, WriteContentRequest};
    let channel = crated_testsupport::channel(socket).await?;
    let mut client = ContentClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let started = std::time::Instant::now();
    let request = crated_testsupport::in_namespace(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        "bench",
        None,
    );
    tx.send(WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: "bench-ingest".into(),
        total: blob.len() as i64,
        expected: digest.to_owned(),
        ..Default::default()
    })
    .await?;
    let mut responses = client.write(request).await?.into_inner();
    let total = blob.len();
    let expected = digest.to_owned();
    let sender = tokio::spawn(async move {
        const CHUNK: usize = 1 << 20;
        let mut offset = 0;
        while offset < total {
            let end = (offset + CHUNK).min(total);
            let last = end == total;
            let req = WriteContentRequest {
                action: if last {
                    WriteAction::Commit
                } else {
                    WriteAction::Write
                } as i32,
                offset: offset as i64,
                data: blob[offset..end].to_vec(),
                total: total as i64,
                expected: if last {
                    expected.clone()
                } else {
                    String::new()
                },
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                break;
            }
            offset = end;
        }
    });
    let mut last_digest = String::new();
    while let Some(m) = responses.message().await? {
        last_digest = m.digest;
    }
    sender.await?;
    let secs = started.elapsed().as_secs_f64();
    if last_digest != digest {
        bail!("ingest ended with digest {last_digest:?}, not {digest}");
    }
    Ok(secs)
}

/// What this disk gives for durable writes: `data` written to a file in `dir` with O_DIRECT in
/// 8 MiB blocks, then fsynced, as a content store at its best would; seconds.
fn durable_write_floor(data: &[u8], dir: &Path) -> anyhow::Result<f64> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const BLOCK: usize = 8 << 20;
    // O_DIRECT wants an aligned buffer: one block, copied into for each write.
    let layout = std::alloc::Layout::from_size_align(BLOCK, 4096)?;
    // SAFETY: the layout has a non-zero size; the buffer is freed below and only used as bytes.
    let ptr = unsafe { std::alloc::alloc(layout) };
    anyhow::ensure!(!ptr.is_null(), "allocating the floor's buffer");
    // SAFETY: `ptr` points at BLOCK writable bytes owned here until the dealloc.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, BLOCK) };
    let path = dir.join("durable-write-floor");
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        let started = std::time::Instant::now();
        for (i, chunk) in data.chunks(BLOCK).enumerate() {
            buf[..chunk.len()].copy_from_slice(chunk);
            file.write_all_at(&buf[..chunk.len()], (i * BLOCK) as u64)?;
        }
        file.sync_all()?;
        Ok(started.elapsed().as_secs_f64())
    })();
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    let _ = std::fs::remove_file(&path);
    result
}

/// 1 GiB of random data through the content Write stream, each run on a fresh daemon; beside
/// it, the disk's durable write floor for the same bytes.
fn ingest(
    runs: usize,
    crated: &Path,
    containerd: Option<&Path>,
) -> anyhow::Result<(Vec<Row>, String)> {
    use sha2::Digest as _;
    let size = 1usize << 30;
    let mut blob = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in blob.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(&blob));
    let blob = std::sync::Arc::new(blob);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rate = Row {
        name: "ingest 1 GiB, Write stream".into(),
        unit: "MB/s",
        crated: vec![],
        containerd: vec![],
    };
    let mut cpu = Row {
        name: "ingest 1 GiB, daemon CPU".into(),
        unit: "s",
        crated: vec![],
        containerd: vec![],
    };
    let one = |daemon: Daemon, rate: &mut Vec<f64>, cpu: &mut Vec<f64>| -> anyhow::Result<()> {
        let before = cpu_seconds(daemon.pid())?;
        let secs = runtime.block_on(ingest_once(&daemon.socket, blob.clone(), &digest))?;
        cpu.push(cpu_seconds(daemon.pid())? - before);
        rate.push(size as f64 / secs / 1e6);
        drop(daemon);
        Ok(())
    };
    // The daemons' roots are temporary directories: the floor writes where they do.
    let scratch = tempfile::tempdir()?;
    let mut floor = Vec::new();
    for _ in 0..runs {
        let d = Daemon::crated(crated, None, &[]).map_err(anyhow::Error::msg)?;
        one(d, &mut rate.crated, &mut cpu.crated)?;
        if let Some(c) = containerd {
            let d = Daemon::containerd(c, Some("")).map_err(anyhow::Error::msg)?;
            one(d, &mut rate.containerd, &mut cpu.containerd)?;
        }
        floor.push(size as f64 / durable_write_floor(&blob, scratch.path())? / 1e6);
    }
    let floor = stats(&floor).map_or(0.0, |(m, ..)| m);
    let note = format!(
        "floor: durable write of the same 1 GiB (O_DIRECT in 8 MiB blocks, then fsync, no hashing) {floor:.1} MB/s (median); ingest / floor: crated {:.2}, containerd {:.2}",
        stats(&rate.crated).map_or(0.0, |(m, ..)| m) / floor.max(f64::EPSILON),
        stats(&rate.containerd).map_or(0.0, |(m, ..)| m) / floor.max(f64::EPSILON)
    );
    Ok((vec![rate, cpu], note))
}

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

/// What the storage of a prepare+commit+remove cycle costs crated at least, alone: the five
/// small durable redb commits its design makes, through one journal shared as the daemon
/// shares it. A snapshotter's store appends its record and the metadata store's commit flushes
/// both: two commits and a flush for a prepare and for a commit, one of each for a remove. No
/// directory is made and no gRPC is served. Cycles per second.
fn store_floor(dir: &Path, cycles: usize) -> anyhow::Result<f64> {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
    const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
    let dir = tempfile::tempdir_in(dir)?;
    let journal = crated_wal::Journal::open(&dir.path().join("stores.wal"))?;
    let snapshots = journal.database(
        &dir.path().join("snapshots.db"),
        crated_wal::Commits::Deferred,
    )?;
    let metadata = journal.database(
        &dir.path().join("metadata.db"),
        crated_wal::Commits::Flushed,
    )?;
    // About the size of a snapshot's record in either store.
    let record = [b'r'; 200];
    let write =
        |db: &redb::Database, gone: Option<&str>, new: Option<&str>| -> anyhow::Result<()> {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(RECORDS)?;
                if let Some(k) = gone {
                    t.remove(k)?;
                }
                if let Some(k) = new {
                    t.insert(k, record.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        };
    let started = std::time::Instant::now();
    for i in 0..cycles {
        let (active, committed) = (format!("active-{i}"), format!("committed-{i}"));
        write(&snapshots, None, Some(&active))?;
        write(&metadata, None, Some(&active))?;
        write(&snapshots, Some(&active), Some(&committed))?;
        write(&metadata, Some(&active), Some(&committed))?;
        write(&metadata, Some(&committed), None)?;
    }
    let rate = cycles as f64 / started.elapsed().as_secs_f64();
    // Both stores hold what the cycles left: nothing was skipped.
    let left = metadata.begin_read()?.open_table(RECORDS)?.len()?;
    let kept = snapshots.begin_read()?.open_table(RECORDS)?.len()?;
    anyhow::ensure!(
        left == 0 && kept == cycles as u64,
        "store floor: {left} metadata and {kept} snapshot records left"
    );
    Ok(rate)
}

/// Durable commits a prepare+commit+remove cycle needs at least: one per call. (containerd
/// makes five, each flushed twice by bolt: the snapshotter's own store at prepare and commit,
/// the metadata store at all three; crated's stores share one log, flushed once per call.)
const DURABLE_COMMITS_PER_CYCLE: usize = 3;

/// What this disk allows for snapshot cycles if each did nothing but its durable commits: a
/// 4 KiB write and fdatasync, `DURABLE_COMMITS_PER_CYCLE` times per cycle; cycles per second.
fn durable_commit_floor(dir: &Path, cycles: usize) -> anyhow::Result<f64> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("durable-commit-floor"))?;
    let page = [0x5au8; 4096];
    let started = std::time::Instant::now();
    for i in 0..cycles * DURABLE_COMMITS_PER_CYCLE {
        file.write_all_at(&page, ((i % 64) * page.len()) as u64)?;
        file.sync_data()?;
    }
    Ok(cycles as f64 / started.elapsed().as_secs_f64())
}

/// Snapshot cycles per second for native and overlayfs, each run on a fresh daemon; beside
/// them, the disk's floor for the durable commits a cycle needs.
fn snapshots(
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

/// `pigz -dc | tar -x` of every layer, one after the other, each into a fresh directory of its
/// own (plain tar cannot apply a layer's type changes over the one below): seconds.
fn unpack_floor(layers: &[PathBuf], scratch: &Path, run: usize) -> anyhow::Result<f64> {
    let mut dirs = Vec::new();
    for i in 0..layers.len() {
        let dir = scratch.join(format!("floor-{run}-{i}"));
        std::fs::create_dir_all(&dir)?;
        dirs.push(dir);
    }
    let started = std::time::Instant::now();
    for (layer, into) in layers.iter().zip(&dirs) {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "pigz -dc '{}' | tar -x -C '{}'",
                layer.display(),
                into.display()
            ))
            .status()?;
        if !status.success() {
            bail!("pigz | tar failed on {}", layer.display());
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Cold pull and unpack of the bench image (five gzip layers, ~490 MB, 20k files) from a local
/// registry, for overlayfs and native: with Debian's ctr (its client-side pull through the
/// daemon's services, against crated and containerd) and with cratectl (crated's daemon-side
/// pull, set beside containerd's ctr pull: Debian's containerd 1.6 has no transfer service):
/// wall time, daemon CPU and peak RSS, and the `pigz -dc | tar -x` floor. Old roots are removed only at the end: deleting many
/// files slows the next creations on this machine's ext4.
fn pull(
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
fn run_latency(
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

/// Serves the bench image from a local registry until stdin closes, for profiling a pull by
/// hand (`crated-bench serve-image`).
fn serve_image() -> anyhow::Result<()> {
    use crated_testsupport::layered::{build, Shape};
    use crated_testsupport::registry::Registry;
    let image = build("bench", Shape::bench());
    let registry = Registry::start().context("docker-registry")?;
    registry.push(&image, "bench:latest");
    println!("{}/bench:latest", registry.addr);
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
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
