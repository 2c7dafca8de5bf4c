//! The metadata plugin, `io.containerd.metadata.v1.bolt`: our redb store under containerd's id.

use std::sync::Arc;

use crated_metadata::MetadataStore;
use crated_plugin::{types, Instance, PluginError, Registration};
use serde::{Deserialize, Serialize};

/// containerd's keys for this plugin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BoltConfig {
    /// `shared`: a blob present in one namespace can be committed in another without writing it
    /// again; `isolated`: it must be written again.
    pub content_sharing_policy: String,
}

impl Default for BoltConfig {
    fn default() -> Self {
        BoltConfig {
            content_sharing_policy: "shared".into(),
        }
    }
}

pub fn registration() -> Registration {
    Registration::new(types::METADATA, "bolt", |mut ctx| async move {
        let config: BoltConfig = ctx.config()?;
        if !matches!(
            config.content_sharing_policy.as_str(),
            "shared" | "isolated"
        ) {
            return Err(PluginError::failed(format!(
                "content_sharing_policy {:?} is not \"shared\" or \"isolated\"",
                config.content_sharing_policy
            )));
        }
        let path = ctx.root()?.join("meta.db");
        let journal = ctx.shared::<crated_wal::Journal>().cloned();
        let store =
            tokio::task::spawn_blocking(move || MetadataStore::open_in(&path, journal.as_ref()))
                .await
                .map_err(PluginError::failed)?
                .map_err(PluginError::failed)?;
        store.set_shared_content(config.content_sharing_policy == "shared");
        Ok(Instance::new(Arc::new(store)))
    })
    .requires(&[types::CONTENT, types::SNAPSHOTTER])
    .with_config::<BoltConfig>()
}
