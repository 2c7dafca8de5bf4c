//! The plugins this daemon is built with, in registration order: `plugins ls` lists them in
//! this order, and start-up initialises them in it, each after what it requires. Adding or
//! disabling a built-in plugin is one line here; each crate registers only its own plugins.

use crated_plugin::Registration;
use crated_services as services;

pub fn registrations() -> Vec<Registration> {
    [
        crated_snapshots::registrations(), // io.containerd.snapshotter.v1.*
        vec![
            crated_content::registration(),  // io.containerd.content.v1.content
            crated_metadata::registration(), // io.containerd.metadata.v1.bolt
            crated_gc::registration(),       // io.containerd.gc.v1.scheduler
        ],
        services::content::registrations(),
        vec![crated_events::registration()], // io.containerd.event.v1.exchange
        services::events::registrations(),
        services::namespaces::registrations(),
        services::leases::registrations(),
        services::snapshots::registrations(),
        vec![crated_diff::registration()], // io.containerd.differ.v1.walking
        services::diff::registrations(),
        services::images::registrations(),
        services::containers::registrations(),
        vec![
            crated_runtime::opt::registration(), // io.containerd.internal.v1.opt
            crated_runtime::registration(),      // io.containerd.runtime.v2.task
            crated_runtime::v1_registration(),   // io.containerd.runtime.v1.linux
            crated_metrics::registration(),      // io.containerd.monitor.v1.cgroups
        ],
        services::tasks::registrations(),
        services::transfer::streams::registrations(), // io.containerd.streaming.v1.manager
        vec![crated_transfer::registration()],        // io.containerd.transfer.v1.local
        services::transfer::registrations(),
        vec![crated_restart::registration()], // io.containerd.internal.v1.restart
        services::introspection::registrations(),
        vec![
            services::version::registration(),
            services::healthcheck::registration(),
        ],
        vec![crated_cri::registration()], // io.containerd.grpc.v1.cri
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `(type, id)` of every plugin, for checking config names.
pub fn known(regs: &[Registration]) -> Vec<(String, String)> {
    regs.iter()
        .map(|r| (r.plugin_type.clone(), r.id.clone()))
        .collect()
}
