//! Blobs for content tests: data, digests, and running clients that read them from stdin.

use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

use crate::Daemon;

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

/// The stdout of a command that must have succeeded (else the test fails with its stderr).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stderr of a command that must have failed (else the test fails with its stdout).
pub fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed, printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a client of `daemon` with `input` on stdin, from a file (so ctr can seek when it
/// resumes).
pub fn with_stdin(client: &Path, daemon: &Daemon, args: &[&str], input: &[u8]) -> Output {
    let path = daemon.dir.path().join(format!("stdin-{}", digest(input)));
    std::fs::write(&path, input).expect("writing a test input file");
    let out = Command::new(client)
        .arg("--address")
        .arg(&daemon.socket)
        .args(args)
        .stdin(std::fs::File::open(&path).expect("opening a test input file"))
        .output()
        .expect("running a client");
    let _ = std::fs::remove_file(&path);
    out
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
