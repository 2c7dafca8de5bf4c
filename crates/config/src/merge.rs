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
        let text = std::fs::read_to_string(&next).map_err(|source| ConfigError::Read {
            path: next.clone(),
            source,
        })?;
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

fn set_str(dst: &mut String, src: String) {
    if !src.is_empty() {
        *dst = src;
    }
}

fn set_num<T: Default + PartialEq>(dst: &mut T, src: T) {
    if src != T::default() {
        *dst = src;
    }
}

fn append(dst: &mut Vec<String>, src: Vec<String>) {
    for s in src {
        if !dst.contains(&s) {
            dst.push(s);
        }
    }
}

/// containerd's rule: a set value overrides, lists append, plugin and proxy sections are
/// replaced whole.
fn merge(dst: &mut Config, file: ParsedFile, first: bool) {
    let src = file.config;
    if first || file.version_given {
        dst.version = src.version;
    }
    let defaults = Config::default();
    // A file that does not set a key leaves the default in `src`: never let it override.
    let or_empty = |v: String, d: &str| if v == d { String::new() } else { v };
    set_str(&mut dst.root, or_empty(src.root, &defaults.root));
    set_str(&mut dst.state, or_empty(src.state, &defaults.state));
    set_str(&mut dst.temp, src.temp);
    set_str(&mut dst.plugin_dir, src.plugin_dir);

    let g = src.grpc;
    set_str(
        &mut dst.grpc.address,
        or_empty(g.address, &defaults.grpc.address),
    );
    set_str(&mut dst.grpc.tcp_address, g.tcp_address);
    set_str(&mut dst.grpc.tcp_tls_ca, g.tcp_tls_ca);
    set_str(&mut dst.grpc.tcp_tls_cert, g.tcp_tls_cert);
    set_str(&mut dst.grpc.tcp_tls_key, g.tcp_tls_key);
    set_num(&mut dst.grpc.uid, g.uid);
    set_num(&mut dst.grpc.gid, g.gid);
    if g.max_recv_message_size != defaults.grpc.max_recv_message_size {
        set_num(&mut dst.grpc.max_recv_message_size, g.max_recv_message_size);
    }
    if g.max_send_message_size != defaults.grpc.max_send_message_size {
        set_num(&mut dst.grpc.max_send_message_size, g.max_send_message_size);
    }

    set_str(&mut dst.ttrpc.address, src.ttrpc.address);
    set_num(&mut dst.ttrpc.uid, src.ttrpc.uid);
    set_num(&mut dst.ttrpc.gid, src.ttrpc.gid);

    set_str(&mut dst.debug.address, src.debug.address);
    set_num(&mut dst.debug.uid, src.debug.uid);
    set_num(&mut dst.debug.gid, src.debug.gid);
    set_str(&mut dst.debug.level, src.debug.level);
    set_str(&mut dst.debug.format, src.debug.format);

    set_str(&mut dst.metrics.address, src.metrics.address);
    set_num(&mut dst.metrics.grpc_histogram, src.metrics.grpc_histogram);

    append(&mut dst.disabled_plugins, src.disabled_plugins);
    append(&mut dst.required_plugins, src.required_plugins);
    set_num(&mut dst.oom_score, src.oom_score);
    set_str(&mut dst.cgroup.path, src.cgroup.path);
    dst.proxy_plugins.extend(src.proxy_plugins);
    dst.timeouts.extend(src.timeouts);
    dst.stream_processors.extend(src.stream_processors);
    dst.plugins.extend(src.plugins);
    dst.list_locations.extend(src.list_locations);
    if first {
        dst.imports = src.imports;
    }
}
