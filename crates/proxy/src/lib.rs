//! Proxy plugins (`[proxy_plugins.NAME]`): plugins served by another process over containerd's
//! gRPC API on a unix socket. A proxy plugin always starts (the socket may come later, as in
//! containerd); introspection shows it unavailable, with the reason, while its socket does not
//! answer; every call has a deadline; the connection is made again when the socket returns.

mod connection;
mod content;

use std::sync::Arc;

use crated_config::ProxyPlugin;
use crated_content::ContentStore;
use crated_plugin::{types, Instance, Registration};

pub use connection::Connection;
pub use content::ProxyContentStore;

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
            _ => unserved.push(name.clone()),
        }
    }
    (regs, unserved)
}

fn content_registration(name: &str, proxy: &ProxyPlugin) -> Registration {
    let (name, proxy) = (name.to_owned(), proxy.clone());
    Registration::new(types::CONTENT, &name.clone(), move |ctx| async move {
        {
            let mut meta = ctx.meta();
            if !proxy.platform.is_empty() {
                meta.platforms.push(proxy.platform.clone());
            }
            meta.exports.extend(proxy.exports.clone());
            meta.capabilities.extend(proxy.capabilities.clone());
        }
        let connection = Connection::new(&name, &proxy.address);
        let store = Arc::new(ProxyContentStore::new(connection.clone()));
        let as_store: Arc<dyn ContentStore> = store;
        Ok(Instance::new(Arc::new(as_store)).with_health(move || {
            let connection = connection.clone();
            async move { connection.check().await }
        }))
    })
}
