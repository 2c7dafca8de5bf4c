//! The plugin `io.containerd.differ.v1.walking`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crated_plugin::{types, Instance, Registration};
use crated_snapshots::Mount;

use crate::stream::ChunkReader;
use crate::{
    apply_to_mounts, compare, decompress, with_read_only, Applied, Compared, Compression, DiffError,
};

/// The walking differ: layers onto mounts and back, with temporary mount points under its
/// state directory.
pub struct WalkingDiffer {
    scratch: PathBuf,
}

impl WalkingDiffer {
    pub fn new(scratch: PathBuf) -> Self {
        WalkingDiffer { scratch }
    }

    /// Applies the layer `blob` (of `media_type`, compressed or not) onto `mounts`. The blob
    /// is read and decompressed on a thread of its own while this one writes the files.
    pub fn apply(
        &self,
        media_type: &str,
        mounts: &[Mount],
        blob: impl Read + Send,
    ) -> Result<Applied, DiffError> {
        Compression::of_media_type(media_type)?;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(PIPELINE_DEPTH);
            scope.spawn(move || decompress_into(blob, tx));
            apply_to_mounts(mounts, &self.scratch, ChunkReader::new(|| rx.recv().ok()))
        })
    }

    /// Writes the layer from `lower` to `upper`, compressed, into `out`.
    pub fn compare(
        &self,
        lower: &[Mount],
        upper: &[Mount],
        compression: Compression,
        out: impl Write + Send,
    ) -> Result<Compared, DiffError> {
        with_read_only(lower, &self.scratch, |lower| {
            with_read_only(upper, &self.scratch, |upper| {
                let upper = upper.ok_or_else(|| {
                    DiffError::InvalidArgument("no mounts for the upper tree".into())
                })?;
                let mut encoder = compression.encoder(out)?;
                let compared = compare(lower, upper, &mut encoder)?;
                let mut out = encoder
                    .finish()
                    .map_err(DiffError::io("finishing the layer"))?;
                out.flush().map_err(DiffError::io("finishing the layer"))?;
                Ok(compared)
            })
        })
    }
}

/// Decompressed chunks in flight between the two threads of an apply: enough to smooth the
/// two sides' pace, small enough that layers applied side by side stay light (2 MiB each).
const PIPELINE_DEPTH: usize = 8;
const PIPELINE_CHUNK: usize = 256 << 10;

type Chunk = std::io::Result<Vec<u8>>;

/// Sends the decompressed layer in chunks; stops at the end, at an error (sent on), or when
/// the extracting side hung up.
fn decompress_into(blob: impl Read + Send, tx: std::sync::mpsc::SyncSender<Chunk>) {
    let mut tar = match decompress(blob) {
        Ok(t) => t,
        Err(DiffError::Io { source, .. }) => {
            let _ = tx.send(Err(source));
            return;
        }
        Err(e) => {
            let _ = tx.send(Err(std::io::Error::other(e.to_string())));
            return;
        }
    };
    loop {
        let mut chunk = vec![0u8; PIPELINE_CHUNK];
        let mut filled = 0;
        while filled < chunk.len() {
            match tar.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        if filled == 0 {
            return;
        }
        chunk.truncate(filled);
        if tx.send(Ok(chunk)).is_err() {
            return;
        }
    }
}

pub fn registration() -> Registration {
    Registration::new(types::DIFF, "walking", |ctx| async move {
        let scratch = ctx.state()?.join("mounts");
        Ok(Instance::new(Arc::new(WalkingDiffer::new(scratch))))
    })
    .requires(&[types::METADATA])
}
