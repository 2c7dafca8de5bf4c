//! containerd's daemon configuration file: TOML version 2 (version 1 is migrated), `imports`
//! merged as containerd merges them, and strict checking that names file, line and key of every
//! mistake. Per-plugin sections stay undecoded here; each plugin decodes its own with
//! [`PluginSection::decode`], still with file and line in its errors.

pub mod duration;
mod error;
mod file;
mod merge;
mod resolve;
mod source;

pub use duration::GoDuration;
pub use error::{ConfigError, Location};
pub use file::{
    CgroupConfig, Config, DebugConfig, GrpcConfig, MetricsConfig, PluginSection, ProxyPlugin,
    StreamProcessor, TtrpcConfig,
};

use std::path::Path;

/// The newest config version this daemon understands.
pub const CURRENT_VERSION: i64 = 2;

/// Loads `path` and every file it imports (globs relative to the importing file, each file
/// once), merged as containerd does: later files override scalars, append to lists and replace
/// whole `[plugins."..."]` and `[proxy_plugins.x]` sections.
/// With `lenient`, unknown keys are logged as warnings instead of being errors.
pub fn load(path: &Path, lenient: bool) -> Result<Config, ConfigError> {
    merge::load_with_imports(path, lenient)
}

/// Parses one config text that has no imports to resolve (tests, `config default` round trips).
pub fn parse_str(name: &str, text: &str, lenient: bool) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    let file = file::parse_file(source::Source::new(name.into(), text.to_owned()), lenient)?;
    merge::merge_into(&mut config, file);
    Ok(config)
}

/// Splits a plugin URI (`io.containerd.snapshotter.v1.overlayfs`) into type and id, or None when
/// it does not have the `<type>.v<N>.<id>` shape.
pub fn split_uri(uri: &str) -> Option<(&str, &str)> {
    // The type is everything up to and including the last `.v<digits>` segment that is followed
    // by an id; ids may themselves contain dots.
    let bytes = uri.as_bytes();
    let mut split = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'.' && i + 2 < bytes.len() && bytes[i + 1] == b'v' {
            let start = i + 2;
            let mut j = start;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if j > start && j < bytes.len() && bytes[j] == b'.' && j + 1 < bytes.len() {
                split = Some(j);
            }
        }
        i += 1;
    }
    let at = split?;
    let (plugin_type, id) = (&uri[..at], &uri[at + 1..]);
    let type_ok = plugin_type.split('.').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    let id_ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (type_ok && id_ok).then_some((plugin_type, id))
}

#[cfg(test)]
mod tests;
