//! The local content store plugin, `io.containerd.content.v1.content`.

use std::sync::Arc;

use crated_plugin::{types, Instance, PluginError, Registration};

use crate::{ContentStore, LocalStore};

/// The plugin's instance is an `Arc<dyn ContentStore>`, the type every content plugin has.
pub fn registration() -> Registration {
    Registration::new(types::CONTENT, "content", |ctx| async move {
        let root = ctx.root()?;
        let store = tokio::task::spawn_blocking(move || LocalStore::open(&root))
            .await
            .map_err(PluginError::failed)?
            .map_err(PluginError::failed)?;
        let store: Arc<dyn ContentStore> = Arc::new(store);
        Ok(Instance::new(Arc::new(store)))
    })
}
