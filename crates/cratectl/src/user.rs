//! The image config's `User` as containerd's `oci.WithUser` resolves it: `uid`, `uid:gid`,
//! `name`, `name:group`, `uid:group` or `name:gid`; names are looked up in the container's own
//! `/etc/passwd` and `/etc/group`. A uid alone takes the gid of its passwd entry (0 without).

use std::path::Path;

use anyhow::{bail, Context};

struct Entry {
    name: String,
    id: u32,
    /// The primary gid (passwd only).
    gid: u32,
}

/// `name:x:id:gid:...` lines (passwd) or `name:x:id:...` (group); malformed lines are skipped.
fn entries(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let id = f.get(2)?.parse().ok()?;
            let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0);
            Some(Entry {
                name: f.first()?.to_string(),
                id,
                gid,
            })
        })
        .collect()
}

/// The most of /etc/passwd or /etc/group read.
const MAX_FILE: u64 = 1 << 20;

/// `rel` under `root` with symbolic links followed inside `root` (an absolute target starts
/// again at `root`, `..` stops there), as containerd's `fs.RootPath` scopes it: an image's
/// links cannot lead to the host's files.
fn in_root(root: &Path, rel: &str) -> Option<std::path::PathBuf> {
    let mut pending: Vec<String> = rel.split('/').rev().map(str::to_owned).collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let path = resolved
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = std::fs::read_link(&path).ok()?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                pending.extend(target.split('/').rev().map(str::to_owned));
            }
            _ => resolved.push(part),
        }
    }
    Some(resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// A regular file's text under `root` (empty when absent or not a regular file).
fn read(root: Option<&Path>, file: &str) -> String {
    use std::io::Read;
    let Some(path) = root.and_then(|r| in_root(r, file)) else {
        return String::new();
    };
    let Ok(f) = std::fs::File::open(&path) else {
        return String::new();
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut text = String::new();
    let _ = f.take(MAX_FILE).read_to_string(&mut text);
    text
}

/// Resolves `user` against the files under `root` (None: an empty tree).
pub fn resolve(user: &str, root: Option<&Path>) -> anyhow::Result<(u32, u32)> {
    let passwd = || entries(&read(root, "etc/passwd"));
    let group = || entries(&read(root, "etc/group"));
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd().into_iter().find(|e| e.id == uid).map(|e| e.gid);
            (uid, gid.unwrap_or(0))
        }
        Err(_) => {
            let e = passwd()
                .into_iter()
                .find(|e| e.name == u)
                .with_context(|| format!("no users found: user {u:?} is not in /etc/passwd"))?;
            (e.id, e.gid)
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let Some(e) = group().into_iter().find(|e| e.name == g) else {
                    bail!("no groups found: group {g:?} is not in /etc/group");
                };
                e.id
            }
        },
    };
    Ok((uid, gid))
}

/// Whether resolving `user` needs the container's files.
pub fn needs_files(user: &str) -> bool {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    u.parse::<u32>().is_err() || (!g.is_empty() && g.parse::<u32>().is_err()) || g.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbad line\nwww:x:33:44:www:/var/www:/bin/false\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:www\n").unwrap();
        dir
    }

    #[test]
    fn users_resolve_as_containerd_resolves_them() {
        let dir = root();
        let r = Some(dir.path());
        assert_eq!(resolve("www", r).unwrap(), (33, 44));
        assert_eq!(resolve("33", r).unwrap(), (33, 44));
        assert_eq!(resolve("1000", r).unwrap(), (1000, 0));
        assert_eq!(resolve("7:8", None).unwrap(), (7, 8));
        assert_eq!(resolve("www:staff", r).unwrap(), (33, 50));
        assert_eq!(resolve("33:staff", r).unwrap(), (33, 50));
        assert_eq!(resolve("www:9", r).unwrap(), (33, 9));
        let err = resolve("nobody", r).unwrap_err().to_string();
        assert!(err.contains("\"nobody\" is not in /etc/passwd"), "{err}");
        let err = resolve("www:wheel", r).unwrap_err().to_string();
        assert!(err.contains("\"wheel\" is not in /etc/group"), "{err}");
        assert!(!needs_files("7:8"));
        assert!(needs_files("7") && needs_files("www") && needs_files("7:staff"));
    }

    #[test]
    fn links_in_the_image_stay_inside_it() {
        let dir = root();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("passwd"), "evil:x:99:99::/:/bin/sh\n").unwrap();
        let image = tempfile::tempdir().unwrap();
        std::fs::create_dir(image.path().join("etc")).unwrap();
        // An absolute link names a path inside the image, not the host's.
        let inside = dir.path().join("etc/passwd");
        std::os::unix::fs::symlink(&inside, image.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../../dev/zero", image.path().join("etc/group"))
            .unwrap();
        let err = resolve("www", Some(image.path())).unwrap_err().to_string();
        assert!(err.contains("not in /etc/passwd"), "{err}");
        // A relative link climbing out stops at the root: /dev/zero inside, absent.
        assert!(resolve("0:staff", Some(image.path())).is_err());
        // Links inside the image are followed.
        std::fs::rename(
            dir.path().join("etc/passwd"),
            image.path().join("etc/passwd.real"),
        )
        .unwrap();
        std::fs::remove_file(image.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd.real", image.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve("www", Some(image.path())).unwrap(), (33, 44));
    }
}
