//! Facts about the host that decide whether a snapshotter can work here.

use std::io;
use std::path::Path;

/// The OCI platform of this build, `os/arch`.
pub fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// The type of the filesystem mounted under `path` (the longest mount point that contains it),
/// from `/proc/self/mountinfo`.
pub fn filesystem_type(path: &Path) -> io::Result<String> {
    Ok(mount_of(path)?.0)
}

/// The source (the device, for a block filesystem) of the mount under `path`.
pub fn mount_source(path: &Path) -> io::Result<String> {
    Ok(mount_of(path)?.1)
}

/// The filesystem type and source of the longest mount point containing `path`.
fn mount_of(path: &Path) -> io::Result<(String, String)> {
    let path = path.canonicalize()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut best: Option<(usize, String, String)> = None;
    for line in info.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let mut fields = line.split(' ');
        let Some(mount_point) = fields.nth(4) else {
            continue;
        };
        let mut tail = line.split(" - ").nth(1).unwrap_or("").split(' ');
        let (Some(fstype), Some(source)) = (tail.next(), tail.next()) else {
            continue;
        };
        let mount_point = unescape(mount_point);
        if path.starts_with(&mount_point)
            && best
                .as_ref()
                .is_none_or(|(len, _, _)| mount_point.len() >= *len)
        {
            best = Some((mount_point.len(), fstype.to_owned(), unescape(source)));
        }
    }
    best.map(|(_, t, s)| (t, s))
        .ok_or_else(|| io::Error::other(format!("no mount found for {}", path.display())))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Runs a host tool (from the Debian package `package`): its standard output, or as the inner
/// error what it printed on failure (its exit status when it printed nothing). Only failing to
/// start it is the outer error.
pub(crate) fn run_tool(
    program: &str,
    package: &str,
    args: &[&str],
) -> io::Result<Result<String, String>> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running {program} (Debian package {package}): {e}"),
            )
        })?;
    if out.status.success() {
        return Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let printed = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Ok(Err(if printed.is_empty() {
        format!("exited with {}", out.status)
    } else {
        printed
    }))
}

/// Whether the running kernel knows a filesystem type.
pub fn kernel_has_filesystem(name: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.split_whitespace().last() == Some(name)))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_filesystem_has_a_type() {
        let t = filesystem_type(Path::new("/")).unwrap();
        assert!(!t.is_empty());
        // /proc is always procfs and is its own mount.
        assert_eq!(filesystem_type(Path::new("/proc/self")).unwrap(), "proc");
    }

    #[test]
    fn kernel_filesystems() {
        assert!(kernel_has_filesystem("proc"));
        assert!(!kernel_has_filesystem("no-such-fs"));
    }
}
