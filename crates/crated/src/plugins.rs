//! The plugins this daemon is built with: an explicit list, in registration order.

use crated_plugin::Registration;

pub fn registrations() -> Vec<Registration> {
    let mut regs = crated_snapshots::registrations();
    // The stores before the services, in containerd's order.
    regs.push(crated_content::registration());
    regs.push(crated_metadata::registration());
    let mut services = crated_services::registrations();
    // transfer.v1.local right before the gRPC service that uses it.
    let grpc_transfer = services
        .iter()
        .position(|r| r.uri() == "io.containerd.grpc.v1.transfer")
        .unwrap_or(services.len());
    services.insert(grpc_transfer, crated_transfer::registration());
    regs.extend(services);
    regs
}

/// `(type, id)` of every plugin, for checking config names.
pub fn known(regs: &[Registration]) -> Vec<(String, String)> {
    regs.iter()
        .map(|r| (r.plugin_type.clone(), r.id.clone()))
        .collect()
}
