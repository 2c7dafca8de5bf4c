//! The walking differ (`io.containerd.differ.v1.walking`): applies OCI layers (tar, gzip, zstd)
//! onto snapshot mounts, whiteouts as overlay markers or as deletions, refusing any entry that
//! would land outside; and computes the layer between two mounts. It reads and writes streams:
//! where the bytes come from and go to (the content store) is the caller's business.

mod apply;
mod compare;
mod error;
pub mod media;
mod mounts;
mod plugin;
mod root;
mod sparse;
mod stream;

pub use apply::{apply, Applied, ApplyOptions, Whiteouts};
pub use compare::{compare, Compared};
pub use error::DiffError;
pub use media::{decompress, Compression};
pub use mounts::{apply_to_mounts, with_read_only};
pub use plugin::{registration, WalkingDiffer};
pub use stream::ChunkReader;

#[cfg(test)]
mod tests;
