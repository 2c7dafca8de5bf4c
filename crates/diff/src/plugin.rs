//! The plugin `io.containerd.differ.v1.walking`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crated_plugin::{types, Instance, Registration};
use crated_snapshots::Mount;

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

    /// Applies the layer `blob` (of `media_type`, compressed or not) onto `mounts`.
    pub fn apply(
        &self,
        media_type: &str,
        mounts: &[Mount],
        blob: impl Read + Send,
    ) -> Result<Applied, DiffError> {
        Compression::of_media_type(media_type)?;
        apply_to_mounts(mounts, &self.scratch, decompress(blob)?)
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

pub fn registration() -> Registration {
    Registration::new(types::DIFF, "walking", |ctx| async move {
        let scratch = ctx.state()?.join("mounts");
        Ok(Instance::new(Arc::new(WalkingDiffer::new(scratch))))
    })
    .requires(&[types::METADATA])
}
