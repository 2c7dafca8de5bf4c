//! Garbage collection: the `io.containerd.gc.v1.scheduler` plugin, which decides when to
//! collect (containerd's keys, defaults and rules, see [`scheduler`]), and the [`Collector`]
//! that marks and sweeps the metadata store and then removes from the content backend what no
//! record keeps.

pub mod collector;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use crated_config::GoDuration;
use crated_content::ContentStore;
use crated_metadata::MetadataStore;
use crated_plugin::{types, Instance, Registration};
use crated_snapshots::Snapshotter;
use serde::{Deserialize, Serialize};

pub use collector::{Collector, GcError, Stats};

/// The response header of a synchronous lease Delete carrying what the collection did, as
/// JSON [`Stats`]; containerd's clients ignore it, `cratectl gc` prints it.
pub const STATS_HEADER: &str = "crated-gc-stats-bin";
pub use scheduler::Scheduler;

/// containerd's keys for the scheduler, with its defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// The largest share of time collections may take (0 to 0.5).
    pub pause_threshold: f64,
    /// Deletions that schedule a collection at once (0: deletions wait for the next tick).
    pub deletion_threshold: i64,
    /// Changes that make the next tick collect (0: changes alone never do).
    pub mutation_threshold: i64,
    /// How long a scheduled collection waits.
    pub schedule_delay: GoDuration,
    /// How long after start the first collection runs (0: none until something asks).
    pub startup_delay: GoDuration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            pause_threshold: 0.02,
            deletion_threshold: 0,
            mutation_threshold: 100,
            schedule_delay: GoDuration(Duration::ZERO),
            startup_delay: GoDuration(Duration::from_millis(100)),
        }
    }
}

pub fn registration() -> Registration {
    Registration::new(types::GC, "scheduler", |mut ctx| async move {
        let config: GcConfig = ctx.config()?;
        let db = ctx.get_single::<MetadataStore>(types::METADATA)?;
        let content = ctx.get_single::<Arc<dyn ContentStore>>(types::CONTENT)?;
        {
            let mut m = ctx.meta();
            m.exports.insert(
                "PauseThreshold".into(),
                config.pause_threshold.clamp(0.0, 0.5).to_string(),
            );
            m.exports.insert(
                "DeletionThreshold".into(),
                config.deletion_threshold.to_string(),
            );
            m.exports.insert(
                "MutationThreshold".into(),
                config.mutation_threshold.max(0).to_string(),
            );
            m.exports.insert(
                "ScheduleDelay".into(),
                crated_config::duration::format(config.schedule_delay.0),
            );
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let snapshotters = ctx
            .get_by_type::<Arc<dyn Snapshotter>>(types::SNAPSHOTTER)?
            .into_iter()
            .map(|(id, s)| (id, Arc::clone(&*s)))
            .collect();
        let collector = Collector::new(db, Arc::clone(&content), snapshotters);
        let scheduler = Scheduler::start(collector, &config, stop_rx);
        Ok(Instance::new(scheduler).with_close(move || async move {
            let _ = stop_tx.send(true);
        }))
    })
    .requires(&[types::METADATA, types::SNAPSHOTTER])
    .with_config::<GcConfig>()
}
