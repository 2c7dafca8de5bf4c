//! The plugins this daemon is built with: an explicit list, in registration order.

use crated_plugin::Registration;

pub fn registrations() -> Vec<Registration> {
    let mut regs = crated_snapshots::registrations();
    // The stores before the services, in containerd's order.
    regs.push(crated_content::registration());
    regs.push(crated_metadata::registration());
    regs.extend(crated_services::registrations());
    regs
}

/// `(type, id)` of every plugin, for checking config names.
pub fn known(regs: &[Registration]) -> Vec<(String, String)> {
    regs.iter()
        .map(|r| (r.plugin_type.clone(), r.id.clone()))
        .collect()
}
