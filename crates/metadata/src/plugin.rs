//! The metadata plugin, `io.containerd.metadata.v1.bolt`: this store under containerd's id.

use std::sync::Arc;

use crated_plugin::{types, Instance, PluginError, Registration};
use serde::{Deserialize, Serialize};

use crate::MetadataStore;

/// Whether a blob present in one namespace can be committed in another without writing it
/// again (`shared`), or must be written again (`isolated`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SharingPolicy {
    #[default]
    Shared,
    Isolated,
}

/// containerd's keys for this plugin.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BoltConfig {
    pub content_sharing_policy: SharingPolicy,
}

pub fn registration() -> Registration {
    Registration::new(types::METADATA, "bolt", |mut ctx| async move {
        let config: BoltConfig = ctx.config()?;
        let path = ctx.root()?.join("meta.db");
        let journal = ctx.shared::<crated_wal::Journal>().cloned();
        let store =
            tokio::task::spawn_blocking(move || MetadataStore::open_in(&path, journal.as_ref()))
                .await
                .map_err(PluginError::failed)?
                .map_err(PluginError::failed)?;
        store.set_shared_content(config.content_sharing_policy == SharingPolicy::Shared);
        Ok(Instance::new(Arc::new(store)))
    })
    .requires(&[types::CONTENT, types::SNAPSHOTTER])
    .with_config::<BoltConfig>()
}
