//! Test helpers: fake plugins as shell scripts in a temp bin dir, and a recorder of what each
//! invocation got (environment and stdin).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Writes an executable `/bin/sh` plugin `name` into `bin` with `body`.
pub(crate) fn fake_plugin(bin: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(bin).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(bin.join(name))
        .unwrap();
    writeln!(file, "#!/bin/sh\n{body}").unwrap();
}

/// Where fake plugins record their invocations: one directory per call, numbered in order.
pub(crate) struct Recorder {
    dir: PathBuf,
}

/// One recorded invocation.
#[derive(Debug)]
pub(crate) struct Call {
    pub plugin: String,
    pub env: HashMap<String, String>,
    pub stdin: Value,
}

impl Call {
    pub(crate) fn env(&self, key: &str) -> String {
        self.env.get(key).cloned().unwrap_or_default()
    }
}

impl Recorder {
    pub(crate) fn new(base: &Path) -> Recorder {
        let dir = base.join("calls");
        std::fs::create_dir_all(&dir).unwrap();
        Recorder { dir }
    }

    /// Shell lines that record the call (consuming stdin into `$d/stdin`) and leave `$d` set.
    pub(crate) fn script(&self) -> String {
        format!(
            r#"i=0
while ! mkdir "{dir}/$(printf %04d $i)" 2>/dev/null; do i=$((i+1)); done
d="{dir}/$(printf %04d $i)"
basename "$0" > "$d/plugin"
env -0 > "$d/env"
cat > "$d/stdin""#,
            dir = self.dir.display()
        )
    }

    /// The calls so far, in order.
    pub(crate) fn calls(&self) -> Vec<Call> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|d| {
                let env = std::fs::read(d.join("env")).unwrap();
                let env = env
                    .split(|b| *b == 0)
                    .filter_map(|kv| {
                        let kv = String::from_utf8_lossy(kv);
                        kv.split_once('=')
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    })
                    .collect();
                Call {
                    plugin: std::fs::read_to_string(d.join("plugin"))
                        .unwrap()
                        .trim()
                        .to_owned(),
                    env,
                    stdin: serde_json::from_slice(&std::fs::read(d.join("stdin")).unwrap())
                        .unwrap_or(Value::Null),
                }
            })
            .collect()
    }

    /// Forgets the calls so far.
    pub(crate) fn clear(&self) {
        std::fs::remove_dir_all(&self.dir).unwrap();
        std::fs::create_dir_all(&self.dir).unwrap();
    }
}
