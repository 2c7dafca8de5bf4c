//! Proxy plugins (`[proxy_plugins.NAME]`, types `content` and `snapshot`): plugins served by
//! another process over containerd's gRPC API on a unix socket. A proxy plugin always starts
//! (the socket may come later, as in containerd); introspection shows it unavailable, with the
//! reason, while its socket does not answer; every call has a deadline; the connection is made
//! again when the socket returns.

mod connection;
mod content;
mod snapshots;

use std::sync::Arc;

use crated_config::ProxyPlugin;
use crated_content::ContentStore;
use crated_plugin::{types, Instance, Registration};
use crated_snapshots::Snapshotter;

pub use connection::Connection;
pub use content::ProxyContentStore;
pub use snapshots::ProxySnapshotter;

/// The registrations for the configured proxy plugins of the types served so far, and the
/// names of the others (for the caller to report).
pub fn registrations(
    proxies: &std::collections::BTreeMap<String, ProxyPlugin>,
) -> (Vec<Registration>, Vec<String>) {
    let mut regs = Vec::new();
    let mut unserved = Vec::new();
    for (name, proxy) in proxies {
        match proxy.plugin_type.as_str() {
            "content" => regs.push(content_registration(name, proxy)),
            "snapshot" => regs.push(snapshot_registration(name, proxy)),
            _ => unserved.push(name.clone()),
        }
    }
    (regs, unserved)
}

/// What the config says of a proxy plugin, shown by introspection.
fn advertise(ctx: &crated_plugin::InitContext, proxy: &ProxyPlugin) {
    let mut meta = ctx.meta();
    if !proxy.platform.is_empty() {
        meta.platforms.push(proxy.platform.clone());
    }
    meta.exports.extend(proxy.exports.clone());
    meta.capabilities.extend(proxy.capabilities.clone());
}

/// The instance, unavailable in introspection while its socket does not answer.
fn healthy<T: std::any::Any + Send + Sync>(value: Arc<T>, connection: Connection) -> Instance {
    Instance::new(value).with_health(move || {
        let connection = connection.clone();
        async move { connection.check().await }
    })
}

fn snapshot_registration(name: &str, proxy: &ProxyPlugin) -> Registration {
    let (name, proxy) = (name.to_owned(), proxy.clone());
    Registration::new(types::SNAPSHOTTER, &name.clone(), move |ctx| async move {
        advertise(&ctx, &proxy);
        let connection = Connection::new(&name, &proxy.address);
        let snapshotter: Arc<dyn Snapshotter> = Arc::new(ProxySnapshotter::new(
            &name,
            connection.clone(),
            proxy.capabilities.iter().any(|c| c == "rebase"),
        ));
        Ok(healthy(Arc::new(snapshotter), connection))
    })
}

fn content_registration(name: &str, proxy: &ProxyPlugin) -> Registration {
    let (name, proxy) = (name.to_owned(), proxy.clone());
    Registration::new(types::CONTENT, &name.clone(), move |ctx| async move {
        advertise(&ctx, &proxy);
        let connection = Connection::new(&name, &proxy.address);
        let store = Arc::new(ProxyContentStore::new(connection.clone()));
        let as_store: Arc<dyn ContentStore> = store;
        Ok(healthy(Arc::new(as_store), connection))
    })
}
