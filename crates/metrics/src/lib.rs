//! The cgroups monitor, plugin `io.containerd.monitor.v1.cgroups`: per-task cgroup metrics for
//! the Prometheus endpoint (`[metrics] address`), read at each scrape from every running
//! task's shim (its Stats call: cgroup v1 or v2 metrics, whichever the host gives the shim),
//! and the OOM count of each task from the `/tasks/oom` events its shim publishes.
//!
//! containerd's monitor with runtime v2 shims works the same way: the shim watches its
//! cgroup's OOM notifications and publishes the events, the monitor only counts them.

mod family;
mod v1;
mod v2;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::Message as _;
use crated_events::Exchange;
use crated_plugin::{types, Instance, Registration};
use prometheus::proto::MetricFamily;
use serde::{Deserialize, Serialize};

use crated_runtime::{shim, RuntimeConfig, TaskManager};
use family::Scrape;

/// `[plugins."io.containerd.monitor.v1.cgroups"]`, containerd's key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Export no task metrics.
    pub no_prometheus: bool,
}

pub struct CgroupsMonitor {
    tasks: Arc<TaskManager>,
    /// OOM events seen, by (namespace, container id).
    ooms: Arc<Mutex<HashMap<(String, String), u64>>>,
    prometheus: bool,
}

const V1_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
const V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

impl CgroupsMonitor {
    pub fn new(tasks: Arc<TaskManager>, exchange: &Exchange, prometheus: bool) -> Self {
        let ooms: Arc<Mutex<HashMap<(String, String), u64>>> = Arc::default();
        if !prometheus {
            return CgroupsMonitor {
                tasks,
                ooms,
                prometheus,
            };
        }
        let mut events = exchange.subscribe(crated_filters::Filter::always());
        let counts = ooms.clone();
        tokio::spawn(async move {
            while let Some(envelope) = events.next().await {
                if envelope.topic != "/tasks/oom" {
                    continue;
                }
                let Ok(oom) = <crated_api::containerd::events::TaskOom as prost::Message>::decode(
                    &envelope.event.value[..],
                ) else {
                    continue;
                };
                let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
                *counts
                    .entry((envelope.namespace.clone(), oom.container_id))
                    .or_default() += 1;
            }
        });
        CgroupsMonitor {
            tasks,
            ooms,
            prometheus,
        }
    }

    /// The metric families of every running task, read now.
    pub async fn gather(&self) -> Vec<MetricFamily> {
        if !self.prometheus {
            return Vec::new();
        }
        let tasks = self.tasks.list_all();
        // Counts of tasks that are gone are dropped.
        self.ooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(ns, id), _| tasks.iter().any(|t| &t.namespace == ns && &t.id == id));
        let mut stats = tokio::task::JoinSet::new();
        for task in tasks {
            stats.spawn(async move {
                let req = api::StatsRequest {
                    id: task.id.clone(),
                    ..Default::default()
                };
                let resp = task
                    .call::<_, api::StatsResponse>("Stats", &req, Some(shim::CALL_TIMEOUT))
                    .await;
                (task, resp)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = stats.join_next().await {
            if let Ok(r) = joined {
                results.push(r);
            }
        }
        // A stable order of samples from scrape to scrape.
        results.sort_by(|(a, _), (b, _)| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
        let ooms = self.ooms.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut scrape = Scrape::default();
        for (task, resp) in results {
            let stats = match resp {
                Ok(r) => r.stats,
                Err(e) => {
                    tracing::debug!(id = %task.id, "stats of a task: {e}");
                    continue;
                }
            };
            let Some(any) = stats.as_ref() else { continue };
            let (id, ns) = (task.id.as_str(), task.namespace.as_str());
            match any.type_url.rsplit('/').next() {
                Some(V1_TYPE) => {
                    match containerd_shim_protos::cgroups::metrics::Metrics::parse_from_bytes(
                        &any.value,
                    ) {
                        Ok(m) => scrape.add(v1::FAMILIES, id, ns, &m),
                        Err(e) => tracing::warn!(%id, "cgroup v1 metrics: {e}"),
                    }
                    let count = ooms.get(&(ns.to_owned(), id.to_owned())).copied();
                    scrape.add_one(
                        "container_memory_oom_total",
                        "The number of times a container has received an oom event",
                        id,
                        ns,
                        count.unwrap_or(0) as f64,
                    );
                }
                Some(V2_TYPE) => {
                    match containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(
                        &any.value,
                    ) {
                        Ok(m) => scrape.add(v2::FAMILIES, id, ns, &m),
                        Err(e) => tracing::warn!(%id, "cgroup v2 metrics: {e}"),
                    }
                }
                other => tracing::debug!(%id, "stats of an unknown type {other:?}"),
            }
        }
        scrape.finish()
    }
}

pub fn registration() -> Registration {
    Registration::new(types::MONITOR, "cgroups", |mut ctx| async move {
        let config: MonitorConfig = ctx.config()?;
        let exchange = ctx.get_single::<Exchange>(types::EVENT)?;
        let tasks = ctx.get_by_id::<TaskManager>(types::RUNTIME_V2, "task")?;
        ctx.meta().platforms = RuntimeConfig::default().platforms;
        Ok(Instance::new(Arc::new(CgroupsMonitor::new(
            tasks,
            &exchange,
            !config.no_prometheus,
        ))))
    })
    .requires(&[types::EVENT, types::RUNTIME_V2])
    .with_config::<MonitorConfig>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::cgroups::metrics as m1;
    use containerd_shim_protos::cgroups_v2::metrics as m2;
    use prometheus::Encoder;

    fn text(families: Vec<MetricFamily>) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&families, &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn cgroup_v2_stats_become_containerds_v2_families() {
        let mut stats = m2::Metrics::new();
        stats.pids.mut_or_insert_default().current = 3;
        stats.memory.mut_or_insert_default().usage = 4096;
        stats.cpu.mut_or_insert_default().usage_usec = 10;
        stats.memory_events.mut_or_insert_default().oom = 2;
        let mut io = m2::IOEntry::new();
        (io.major, io.minor, io.rbytes) = (8, 0, 512);
        stats.io.mut_or_insert_default().usage.push(io);
        let mut scrape = Scrape::default();
        scrape.add(v2::FAMILIES, "c1", "ns", &stats);
        let text = text(scrape.finish());
        for line in [
            "container_pids_current{container_id=\"c1\",namespace=\"ns\"} 3",
            "container_memory_usage_bytes{container_id=\"c1\",namespace=\"ns\"} 4096",
            "container_memory_oom_total{container_id=\"c1\",namespace=\"ns\"} 2",
            "container_io_rbytes_bytes{container_id=\"c1\",major=\"8\",minor=\"0\",namespace=\"ns\"} 512",
            "# HELP container_cpu_usage_usec_microseconds Total cpu usage (cgroup v2)",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn cgroup_v1_blkio_and_hugetlb_entries_are_labelled() {
        let mut stats = m1::Metrics::new();
        let mut entry = m1::BlkIOEntry::new();
        (
            entry.op,
            entry.device,
            entry.major,
            entry.minor,
            entry.value,
        ) = ("Read".into(), "/dev/sda".into(), 8, 0, 7);
        stats
            .blkio
            .mut_or_insert_default()
            .io_serviced_recursive
            .push(entry);
        let mut huge = m1::HugetlbStat::new();
        (huge.pagesize, huge.usage) = ("2MB".into(), 4);
        stats.hugetlb.push(huge);
        let mut scrape = Scrape::default();
        scrape.add(v1::FAMILIES, "c1", "ns", &stats);
        let text = text(scrape.finish());
        for line in [
            "container_blkio_io_serviced_recursive_total{container_id=\"c1\",device=\"/dev/sda\",major=\"8\",minor=\"0\",namespace=\"ns\",op=\"Read\"} 7",
            "container_hugetlb_usage_bytes{container_id=\"c1\",namespace=\"ns\",page=\"2MB\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // No CPU or memory stats: no samples of those families.
        assert!(!text.contains("container_cpu_total"), "{text}");
    }
}
