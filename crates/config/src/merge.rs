use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::file::{parse_file, Config, ParsedFile};
use crate::source::Source;

pub(crate) fn load_with_imports(path: &Path, lenient: bool) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    let mut pending = vec![path.to_path_buf()];
    let mut loaded: Vec<PathBuf> = Vec::new();
    let mut seen = BTreeSet::new();
    // Breadth-first as containerd does; each file once, so import cycles end.
    while !pending.is_empty() {
        let next = pending.remove(0);
        let canonical = next.canonicalize().unwrap_or_else(|_| next.clone());
        if !seen.insert(canonical) {
            continue;
        }
        let text = read_config_file(&next)?;
        let parsed = parse_file(Source::new(next.clone(), text), lenient)?;
        let imports = resolve_imports(&next, &parsed.config.imports)?;
        merge(&mut config, parsed, loaded.is_empty());
        loaded.push(next);
        pending.extend(imports);
    }
    config.imports = loaded
        .iter()
        .skip(1)
        .map(|p| p.display().to_string())
        .collect();
    Ok(config)
}

/// A config file is at most this large; a larger one is refused, not read.
const MAX_CONFIG_FILE: u64 = 4 << 20;

/// Reads a config file or import: a regular file only (a FIFO or a device such as `/dev/zero`
/// would hang or never end the read; opened without blocking, then refused), of at most
/// [`MAX_CONFIG_FILE`] bytes.
fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let refused = |message: String| ConfigError::File {
        file: path.to_path_buf(),
        message,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(refused("not a regular file".into()));
    }
    if meta.len() > MAX_CONFIG_FILE {
        return Err(refused(format!(
            "{} bytes, more than a config file may have ({MAX_CONFIG_FILE})",
            meta.len()
        )));
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_FILE + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(refused(format!(
            "more than a config file may have ({MAX_CONFIG_FILE} bytes)"
        )));
    }
    Ok(text)
}

fn resolve_imports(file: &Path, imports: &[String]) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for import in imports {
        let path = dir.join(import);
        let pattern = path.to_string_lossy();
        if pattern.contains(['*', '?', '[']) {
            let matches = glob::glob(&pattern).map_err(|e| ConfigError::File {
                file: file.to_path_buf(),
                message: format!("imports: bad glob {import:?}: {e}"),
            })?;
            let mut found: Vec<PathBuf> = matches.filter_map(Result::ok).collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

pub(crate) fn merge_into(dst: &mut Config, file: ParsedFile) {
    merge(dst, file, true)
}

fn append(dst: &mut Vec<String>, src: Vec<String>) {
    for s in src {
        if !dst.contains(&s) {
            dst.push(s);
        }
    }
}

/// containerd's rule: a key a file sets overrides, lists append, plugin and proxy sections are
/// replaced whole.
fn merge(dst: &mut Config, file: ParsedFile, first: bool) {
    let src = file.config;
    let set = |key: &str| file.present.contains(key);
    if first || file.version_given {
        dst.version = src.version;
    }
    macro_rules! take {
        ($($key:literal => $($field:ident).+;)*) => {$(
            if set($key) {
                dst.$($field).+ = src.$($field).+.clone();
            }
        )*};
    }
    take! {
        "root" => root;
        "state" => state;
        "temp" => temp;
        "plugin_dir" => plugin_dir;
        "oom_score" => oom_score;
        "grpc.address" => grpc.address;
        "grpc.tcp_address" => grpc.tcp_address;
        "grpc.tcp_tls_ca" => grpc.tcp_tls_ca;
        "grpc.tcp_tls_cert" => grpc.tcp_tls_cert;
        "grpc.tcp_tls_key" => grpc.tcp_tls_key;
        "grpc.uid" => grpc.uid;
        "grpc.gid" => grpc.gid;
        "grpc.max_recv_message_size" => grpc.max_recv_message_size;
        "grpc.max_send_message_size" => grpc.max_send_message_size;
        "ttrpc.address" => ttrpc.address;
        "ttrpc.uid" => ttrpc.uid;
        "ttrpc.gid" => ttrpc.gid;
        "debug.address" => debug.address;
        "debug.uid" => debug.uid;
        "debug.gid" => debug.gid;
        "debug.level" => debug.level;
        "debug.format" => debug.format;
        "metrics.address" => metrics.address;
        "metrics.grpc_histogram" => metrics.grpc_histogram;
        "cgroup.path" => cgroup.path;
    }
    append(&mut dst.disabled_plugins, src.disabled_plugins);
    append(&mut dst.required_plugins, src.required_plugins);
    dst.proxy_plugins.extend(src.proxy_plugins);
    dst.timeouts.extend(src.timeouts);
    dst.stream_processors.extend(src.stream_processors);
    dst.plugins.extend(src.plugins);
    dst.list_locations.extend(src.list_locations);
    if first {
        dst.imports = src.imports;
    }
}
