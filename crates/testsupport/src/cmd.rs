//! Running clients in tests: assertions on a command's outcome, and a client fed from stdin.

use std::path::Path;
use std::process::{Command, Output};

use crate::blobs::digest;
use crate::Daemon;

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
