//! The local content store (plugin `io.containerd.content.v1.content`, [`registration`]), laid
//! out on disk as containerd's: committed blobs at `blobs/sha256/<hex>`, partial writes under
//! `ingest/<sha256 of ref>/`. A blob is committed only after its size and digest are checked and
//! its data is on disk (fsync of the file, atomic rename, fsync of the directory). Calls are
//! blocking; async callers run them on a blocking thread.

mod backend;
mod digest;
mod error;
mod plugin;
mod sink;
mod store;
mod writer;

pub use backend::{ChunkStream, ContentStore, ContentWriter, WholeBlobCheck, READ_CHUNK};
pub use digest::{validate as validate_digest, Digest};
pub use error::ContentError;
pub use plugin::registration;
pub use store::{Info, IngestStatus, LocalStore};
pub use writer::Writer;

#[cfg(test)]
mod tests;
