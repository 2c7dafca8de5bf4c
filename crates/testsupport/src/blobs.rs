//! Blobs for content tests: deterministic data, digests, the blob files of a store.

use std::path::Path;

use sha2::{Digest, Sha256};

/// Deterministic incompressible bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The hex digests of the blob files under a content store root, sorted.
pub fn blob_files(content_root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(content_root.join("blobs/sha256"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
