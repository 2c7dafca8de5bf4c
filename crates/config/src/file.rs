use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::error::ConfigError;
use crate::source::Source;

/// The daemon's configuration: containerd's keys, with crated's defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub version: i64,
    pub root: String,
    pub state: String,
    pub temp: String,
    pub plugin_dir: String,
    pub grpc: GrpcConfig,
    pub ttrpc: TtrpcConfig,
    pub debug: DebugConfig,
    pub metrics: MetricsConfig,
    pub disabled_plugins: Vec<String>,
    pub required_plugins: Vec<String>,
    pub oom_score: i64,
    pub cgroup: CgroupConfig,
    pub proxy_plugins: BTreeMap<String, ProxyPlugin>,
    pub timeouts: BTreeMap<String, String>,
    pub imports: Vec<String>,
    pub stream_processors: BTreeMap<String, StreamProcessor>,
    /// `[plugins."<type>.<id>"]` sections, decoded by their plugins.
    #[serde(skip)]
    pub plugins: BTreeMap<String, PluginSection>,
    /// Where each entry of `disabled_plugins` / `required_plugins` was written.
    #[serde(skip)]
    pub(crate) list_locations: BTreeMap<String, crate::Location>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: crate::CURRENT_VERSION,
            root: "/var/lib/crated".into(),
            state: "/run/crated".into(),
            temp: String::new(),
            plugin_dir: String::new(),
            grpc: GrpcConfig::default(),
            ttrpc: TtrpcConfig::default(),
            debug: DebugConfig::default(),
            metrics: MetricsConfig::default(),
            disabled_plugins: Vec::new(),
            required_plugins: Vec::new(),
            oom_score: 0,
            cgroup: CgroupConfig::default(),
            proxy_plugins: BTreeMap::new(),
            timeouts: BTreeMap::new(),
            imports: Vec::new(),
            stream_processors: BTreeMap::new(),
            plugins: BTreeMap::new(),
            list_locations: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub address: String,
    pub tcp_address: String,
    pub tcp_tls_ca: String,
    pub tcp_tls_cert: String,
    pub tcp_tls_key: String,
    pub uid: u32,
    pub gid: u32,
    pub max_recv_message_size: u64,
    pub max_send_message_size: u64,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            address: "/run/crated/crated.sock".into(),
            tcp_address: String::new(),
            tcp_tls_ca: String::new(),
            tcp_tls_cert: String::new(),
            tcp_tls_key: String::new(),
            uid: 0,
            gid: 0,
            // containerd's defaults: 16 MiB each way.
            max_recv_message_size: 16 << 20,
            max_send_message_size: 16 << 20,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TtrpcConfig {
    pub address: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    pub address: String,
    pub uid: u32,
    pub gid: u32,
    pub level: String,
    pub format: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub address: String,
    pub grpc_histogram: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupConfig {
    pub path: String,
}

/// `[proxy_plugins.NAME]`: a plugin served over gRPC on a unix socket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyPlugin {
    #[serde(rename = "type")]
    pub plugin_type: String,
    pub address: String,
    pub platform: String,
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamProcessor {
    pub accepts: Vec<String>,
    pub returns: String,
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
}

/// One `[plugins."<uri>"]` section as written, with its file so that decoding errors name the
/// line. The section is decoded from the file's text when its plugin asks for it.
#[derive(Debug, Clone)]
pub struct PluginSection {
    uri: String,
    span_start: usize,
    source: Arc<Source>,
    lenient: bool,
}

impl PluginSection {
    /// Decodes the section into a plugin's typed config. Keys the type does not know are errors
    /// when the type denies unknown fields (all of ours do).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let fail = |e: toml::de::Error| invalid(&self.source, &e, self.span_start);
        let root = DeTable::parse(&self.source.text).map_err(fail)?;
        let section = root
            .into_inner()
            .into_iter()
            .find(|(k, _)| k.get_ref() == "plugins")
            .and_then(|(_, plugins)| match plugins.into_inner() {
                DeValue::Table(t) => t
                    .into_iter()
                    .find(|(k, _)| k.get_ref().as_ref() == self.uri),
                _ => None,
            })
            .map(|(_, v)| v);
        match section {
            Some(value) => decode_value(value, &self.source, self.lenient, self.span_start),
            None => Err(ConfigError::File {
                file: self.source.path.clone(),
                message: format!("plugin section {:?} vanished from the file", self.uri),
            }),
        }
    }

    /// Where the section starts (for "unknown plugin" errors).
    pub fn location(&self) -> crate::Location {
        self.source.locate(self.span_start)
    }
}

/// One parsed file, before merging.
pub(crate) struct ParsedFile {
    pub config: Config,
    /// Whether the file said `version` at all (containerd reads a file without it as version 1).
    pub version_given: bool,
    /// The keys the file sets: `root`, `grpc.address`, ... (a set key overrides when merged,
    /// whatever its value).
    pub present: std::collections::BTreeSet<String>,
}

fn is_unknown_field(err: &toml::de::Error) -> bool {
    err.message().starts_with("unknown field")
}

/// Decodes `value` as a `T`. With `lenient`, an unknown key is warned about, removed, and the
/// decoding tried again; every other mistake is an error with its location.
fn decode_value<T: DeserializeOwned>(
    mut value: Spanned<DeValue<'_>>,
    source: &Source,
    lenient: bool,
    fallback: usize,
) -> Result<T, ConfigError> {
    loop {
        let e = match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let err = invalid(source, &e, fallback);
        if !(lenient && is_unknown_field(&e)) {
            return Err(err);
        }
        tracing::warn!("{err} (ignored: --lenient)");
        if !e
            .span()
            .is_some_and(|at| remove_key_at(value.get_mut(), at.start))
        {
            return Err(err);
        }
    }
}

/// Removes the key whose name starts at byte `at`, wherever it is nested.
fn remove_key_at(value: &mut DeValue<'_>, at: usize) -> bool {
    match value {
        DeValue::Table(table) => {
            let hit = table.keys().find(|k| k.span().start == at).cloned();
            if let Some(key) = hit {
                table.remove(&key);
                return true;
            }
            table
                .iter_mut()
                .any(|(_, v)| remove_key_at(v.get_mut(), at))
        }
        DeValue::Array(items) => items.iter_mut().any(|v| remove_key_at(v.get_mut(), at)),
        _ => false,
    }
}

pub(crate) fn invalid(source: &Source, err: &toml::de::Error, fallback: usize) -> ConfigError {
    let offset = err.span().map_or(fallback, |s| s.start);
    ConfigError::Invalid {
        location: source.locate(offset),
        message: err.message().trim().to_owned(),
    }
}

pub(crate) fn parse_file(source: Arc<Source>, lenient: bool) -> Result<ParsedFile, ConfigError> {
    let text: &str = &source.text;
    let root = DeTable::parse(text).map_err(|e| invalid(&source, &e, 0))?;
    let root_span = root.span();
    let mut rest = DeValue::Table(DeTable::default());
    let mut plugins = None;
    let mut version_at = None;
    let mut list_locations = BTreeMap::new();
    let mut present = std::collections::BTreeSet::new();
    for (key, value) in root.into_inner() {
        present.insert(key.get_ref().to_string());
        if let DeValue::Table(t) = value.get_ref() {
            for sub in t.keys() {
                present.insert(format!("{}.{}", key.get_ref(), sub.get_ref()));
            }
        }
        match key.get_ref().as_ref() {
            "plugins" => {
                plugins = Some(value);
                continue;
            }
            "version" => version_at = Some(key.span().start),
            "disabled_plugins" | "required_plugins" => {
                if let DeValue::Array(items) = value.get_ref() {
                    for item in items.iter() {
                        if let DeValue::String(s) = item.get_ref() {
                            list_locations.insert(s.to_string(), source.locate(item.span().start));
                        }
                    }
                }
            }
            _ => {}
        }
        if let DeValue::Table(t) = &mut rest {
            t.insert(key, value);
        }
    }
    let mut config: Config = decode_value(Spanned::new(root_span, rest), &source, lenient, 0)?;
    let version_given = version_at.is_some();
    if !version_given {
        config.version = 1;
    }
    if config.version > crate::CURRENT_VERSION || config.version < 1 {
        return Err(ConfigError::Invalid {
            location: source.locate(version_at.unwrap_or(0)),
            message: format!(
                "unsupported config version {}: this daemon reads versions 1 and {}",
                config.version,
                crate::CURRENT_VERSION
            ),
        });
    }
    config.list_locations = list_locations;
    if let Some(plugins) = plugins {
        let span = plugins.span();
        let DeValue::Table(table) = plugins.into_inner() else {
            return Err(ConfigError::Invalid {
                location: source.locate(span.start),
                message: "`plugins` must be a table of plugin sections".into(),
            });
        };
        for (uri, section) in table {
            if !matches!(section.get_ref(), DeValue::Table(_)) {
                return Err(ConfigError::Invalid {
                    location: source.locate(uri.span().start),
                    message: format!("plugins.{:?} must be a table", uri.get_ref()),
                });
            }
            config.plugins.insert(
                uri.get_ref().to_string(),
                PluginSection {
                    uri: uri.get_ref().to_string(),
                    span_start: uri.span().start,
                    source: source.clone(),
                    lenient,
                },
            );
        }
    }
    Ok(ParsedFile {
        config,
        version_given,
        present,
    })
}
