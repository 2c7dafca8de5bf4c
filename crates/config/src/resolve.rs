use std::collections::BTreeMap;

use crate::error::ConfigError;
use crate::file::Config;

impl Config {
    /// Checks every plugin name in the config against the plugins this daemon has (`known`, as
    /// `(type, id)` pairs), migrating version 1 names (plugin ids) to version 2 names
    /// (`<type>.<id>`). An unknown `[plugins."..."]` section or a malformed name in
    /// `disabled_plugins` / `required_plugins` is an error naming file, line and key; with
    /// `lenient` it is dropped and returned as a warning instead.
    pub fn resolve_plugins(
        &mut self,
        known: &[(String, String)],
        lenient: bool,
    ) -> Result<Vec<String>, ConfigError> {
        let v1 = self.version == 1;
        let uris: Vec<String> = known.iter().map(|(t, i)| format!("{t}.{i}")).collect();
        let by_id = |id: &str| -> Vec<String> {
            known
                .iter()
                .filter(|(_, i)| i == id)
                .map(|(t, i)| format!("{t}.{i}"))
                .collect()
        };
        let mut warnings = Vec::new();
        let mut fail = |err: ConfigError| -> Result<(), ConfigError> {
            if lenient {
                tracing::warn!("{err} (ignored: --lenient)");
                warnings.push(err.to_string());
                Ok(())
            } else {
                Err(err)
            }
        };

        let mut sections = BTreeMap::new();
        for (name, section) in std::mem::take(&mut self.plugins) {
            if uris.contains(&name) {
                sections.insert(name, section);
                continue;
            }
            let migrated = if v1 { by_id(&name) } else { Vec::new() };
            if migrated.is_empty() {
                let hint = if v1 {
                    "this version 1 config keys sections by plugin id"
                } else {
                    "sections are keyed by \"<type>.<id>\", e.g. \"io.containerd.snapshotter.v1.overlayfs\""
                };
                fail(ConfigError::Invalid {
                    location: section.location(),
                    message: format!("unknown plugin {name:?} in [plugins] ({hint})"),
                })?;
                continue;
            }
            for uri in migrated {
                sections.insert(uri, section.clone());
            }
        }
        self.plugins = sections;

        for list_name in ["disabled_plugins", "required_plugins"] {
            let list = if list_name == "disabled_plugins" {
                std::mem::take(&mut self.disabled_plugins)
            } else {
                std::mem::take(&mut self.required_plugins)
            };
            let mut resolved = Vec::new();
            for name in list {
                let migrated = if v1 && !uris.contains(&name) {
                    by_id(&name)
                } else {
                    Vec::new()
                };
                if !migrated.is_empty() {
                    resolved.extend(migrated);
                } else if v1 && !uris.contains(&name) && !name.contains('.') {
                    // containerd accepts any id in a version 1 list (Docker's stock config
                    // disables "cri"); one we do not have names nothing to do.
                    tracing::debug!("{list_name}: no plugin has id {name:?}; ignored");
                } else if crate::split_uri(&name).is_some() {
                    resolved.push(name);
                } else {
                    let message = format!(
                        "{list_name}: {name:?} is not a plugin URI of the form \"<type>.<id>\" \
                         (e.g. \"io.containerd.snapshotter.v1.btrfs\")"
                    );
                    let err = match self.list_locations.get(&name) {
                        Some(location) => ConfigError::Invalid {
                            location: location.clone(),
                            message,
                        },
                        None => ConfigError::File {
                            file: "config".into(),
                            message,
                        },
                    };
                    fail(err)?;
                }
            }
            if list_name == "disabled_plugins" {
                self.disabled_plugins = resolved;
            } else {
                self.required_plugins = resolved;
            }
        }
        self.version = crate::CURRENT_VERSION;
        Ok(warnings)
    }
}
