//! The plugins this daemon is built with: an explicit list, in registration order.

use crated_plugin::Registration;

pub fn registrations() -> Vec<Registration> {
    let mut regs = crated_snapshots::registrations();
    regs.extend(crated_services::registrations());
    regs
}

/// `(type, id)` of every plugin, for checking config names.
pub fn known(regs: &[Registration]) -> Vec<(String, String)> {
    regs.iter()
        .map(|r| (r.plugin_type.clone(), r.id.clone()))
        .collect()
}
