//! The floors the rows are set beside: what the disk and the tools allow for the same work
//! (durable writes, durable commits, crated's stores alone, `pigz | tar`).

use std::path::{Path, PathBuf};

use anyhow::bail;

/// What this disk gives for durable writes: `data` written to a file in `dir` with O_DIRECT in
/// 8 MiB blocks, then fsynced, as a content store at its best would; seconds.
pub fn durable_write_floor(data: &[u8], dir: &Path) -> anyhow::Result<f64> {
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

/// What the storage of a prepare+commit+remove cycle costs crated at least, alone: the five
/// small durable redb commits its design makes, through one journal shared as the daemon
/// shares it. A snapshotter's store appends its record and the metadata store's commit flushes
/// both: two commits and a flush for a prepare and for a commit, one of each for a remove. No
/// directory is made and no gRPC is served. Cycles per second.
pub fn store_floor(dir: &Path, cycles: usize) -> anyhow::Result<f64> {
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
pub const DURABLE_COMMITS_PER_CYCLE: usize = 3;

/// What this disk allows for snapshot cycles if each did nothing but its durable commits: a
/// 4 KiB write and fdatasync, `DURABLE_COMMITS_PER_CYCLE` times per cycle; cycles per second.
pub fn durable_commit_floor(dir: &Path, cycles: usize) -> anyhow::Result<f64> {
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

/// `pigz -dc | tar -x` of every layer, one after the other, each into a fresh directory of its
/// own (plain tar cannot apply a layer's type changes over the one below): seconds.
pub fn unpack_floor(layers: &[PathBuf], scratch: &Path, run: usize) -> anyhow::Result<f64> {
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
