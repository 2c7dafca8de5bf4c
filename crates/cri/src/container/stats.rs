//! ContainerStats and ListContainerStats: CPU and memory from each running task's cgroup
//! (its shim's metrics, cgroup v1 or v2), the writable layer's usage from the snapshotter.
//! The whole list is served from a short cache so a kubelet relisting every second does not
//! call every shim each time (containerd #7246).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use containerd_shim_protos::protobuf::Message as _;
use crated_api::containerd::services::snapshots::v1 as snapshots_api;
use crated_api::containerd::services::snapshots::v1::snapshots_server::Snapshots;
use crated_api::containerd::services::tasks::v1 as tasks_api;
use crated_api::containerd::services::tasks::v1::tasks_server::Tasks;
use k8s_cri::v1 as cri;
use tonic::Status;

use super::edge;
use crate::sandbox::recover::nanos;
use crate::sandbox::Pods;
use crate::{in_namespace, CriError};

/// How long a ListContainerStats answer is served again.
const LIST_CACHE: Duration = Duration::from_secs(1);

/// The last CPU sample of each container, for its rate.
#[derive(Default)]
pub struct StatsCache {
    cpu: Mutex<HashMap<String, (i64, u64)>>,
    list: Mutex<Option<(Instant, Vec<cri::ContainerStats>)>>,
}

/// What a cgroup's metrics say, in CRI's terms.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Usage {
    pub cpu_nanos: u64,
    pub memory_usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub limit: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
}

const V1_METRICS: &str = "io.containerd.cgroups.v1.Metrics";
const V2_METRICS: &str = "io.containerd.cgroups.v2.Metrics";

/// Reads a shim's metrics (an Any of cgroups v1 or v2 `Metrics`).
pub fn usage_of(data: &prost_types::Any) -> Option<Usage> {
    let name = data.type_url.rsplit('/').next().unwrap_or_default();
    if name == V1_METRICS {
        let m = containerd_shim_protos::cgroups::metrics::Metrics::parse_from_bytes(&data.value)
            .ok()?;
        let cpu_nanos = m
            .cpu
            .as_ref()
            .and_then(|c| c.usage.as_ref())
            .map_or(0, |u| u.total);
        let memory = m.memory.as_ref();
        let usage = memory.and_then(|m| m.usage.as_ref()).map_or(0, |u| u.usage);
        let limit = memory.and_then(|m| m.usage.as_ref()).map_or(0, |u| u.limit);
        let inactive = memory.map_or(0, |m| m.total_inactive_file);
        return Some(Usage {
            cpu_nanos,
            memory_usage: usage,
            working_set: usage.saturating_sub(inactive),
            rss: memory.map_or(0, |m| m.total_rss),
            limit,
            page_faults: memory.map_or(0, |m| m.total_pg_fault),
            major_page_faults: memory.map_or(0, |m| m.total_pg_maj_fault),
        });
    }
    if name == V2_METRICS {
        let m = containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&data.value)
            .ok()?;
        let memory = m.memory.as_ref();
        let usage = memory.map_or(0, |m| m.usage);
        return Some(Usage {
            cpu_nanos: m
                .cpu
                .as_ref()
                .map_or(0, |c| c.usage_usec.saturating_mul(1000)),
            memory_usage: usage,
            working_set: usage.saturating_sub(memory.map_or(0, |m| m.inactive_file)),
            rss: memory.map_or(0, |m| m.anon),
            limit: memory.map_or(0, |m| m.usage_limit),
            page_faults: memory.map_or(0, |m| m.pgfault),
            major_page_faults: memory.map_or(0, |m| m.pgmajfault),
        });
    }
    None
}

fn value(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

impl Pods {
    /// The stats of the containers `ids` (all of them listed, running or not).
    async fn stats_of(
        &self,
        containers: Vec<std::sync::Arc<super::CriContainer>>,
    ) -> Vec<cri::ContainerStats> {
        let running: Vec<String> = containers
            .iter()
            .filter(|c| c.status().state() == cri::ContainerState::ContainerRunning)
            .map(|c| c.id.clone())
            .collect();
        // One metrics call for all of them.
        let metrics = if running.is_empty() {
            Vec::new()
        } else {
            self.tasks
                .metrics(in_namespace(tasks_api::MetricsRequest {
                    filters: running.iter().map(|id| format!("id=={id}")).collect(),
                }))
                .await
                .map(|r| r.into_inner().metrics)
                .unwrap_or_else(|e| {
                    tracing::debug!("task metrics: {e}");
                    Vec::new()
                })
        };
        let by_id: HashMap<String, (i64, Usage)> = metrics
            .into_iter()
            .filter_map(|m| {
                let usage = usage_of(m.data.as_ref()?)?;
                Some((m.id, (nanos(&m.timestamp), usage)))
            })
            .collect();
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            let now = crate::container::now_nanos();
            let mut stats = cri::ContainerStats {
                attributes: Some(cri::ContainerAttributes {
                    id: c.id.clone(),
                    metadata: c.config.metadata.clone(),
                    labels: c.config.labels.clone(),
                    annotations: c.config.annotations.clone(),
                }),
                ..Default::default()
            };
            if let Some((at, usage)) = by_id.get(&c.id) {
                let at = if *at == 0 { now } else { *at };
                let rate = {
                    let mut cpu = self
                        .stats
                        .cpu
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let rate = cpu.get(&c.id).and_then(|(before, used)| {
                        let elapsed = at.checked_sub(*before).filter(|e| *e > 0)?;
                        let delta = usage.cpu_nanos.checked_sub(*used)?;
                        Some((delta as u128 * 1_000_000_000 / elapsed as u128) as u64)
                    });
                    cpu.insert(c.id.clone(), (at, usage.cpu_nanos));
                    rate
                };
                stats.cpu = Some(cri::CpuUsage {
                    timestamp: at,
                    usage_core_nano_seconds: value(usage.cpu_nanos),
                    usage_nano_cores: rate.and_then(value),
                });
                let available = (usage.limit > 0 && usage.limit < u64::MAX / 2)
                    .then(|| usage.limit.saturating_sub(usage.working_set));
                stats.memory = Some(cri::MemoryUsage {
                    timestamp: at,
                    working_set_bytes: value(usage.working_set),
                    available_bytes: available.and_then(value),
                    usage_bytes: value(usage.memory_usage),
                    rss_bytes: value(usage.rss),
                    page_faults: value(usage.page_faults),
                    major_page_faults: value(usage.major_page_faults),
                });
            }
            let layer = self
                .snapshots
                .usage(in_namespace(snapshots_api::UsageRequest {
                    snapshotter: self.config.containerd.snapshotter.clone(),
                    key: c.id.clone(),
                }))
                .await;
            if let Ok(layer) = layer {
                let layer = layer.into_inner();
                stats.writable_layer = Some(cri::FilesystemUsage {
                    timestamp: now,
                    fs_id: Some(cri::FilesystemIdentifier {
                        mountpoint: self.images.snapshotter_root().display().to_string(),
                    }),
                    used_bytes: value(layer.size.max(0) as u64),
                    inodes_used: value(layer.inodes.max(0) as u64),
                });
            }
            out.push(stats);
        }
        out
    }

    pub async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, Status> {
        let container = self.container(id).map_err(edge)?;
        self.stats_of(vec![container])
            .await
            .pop()
            .ok_or_else(|| edge(CriError::Internal("no stats".into())))
    }

    pub async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Vec<cri::ContainerStats> {
        let cached = self
            .stats
            .list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < LIST_CACHE)
            .map(|(_, all)| all.clone());
        let all = match cached {
            Some(all) => all,
            None => {
                let containers: Vec<_> = self
                    .containers
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .values()
                    .cloned()
                    .collect();
                let all = self.stats_of(containers).await;
                *self
                    .stats
                    .list
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((Instant::now(), all.clone()));
                all
            }
        };
        let sandbox_of: HashMap<String, String> = self
            .containers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|c| (c.id.clone(), c.sandbox_id.clone()))
            .collect();
        all.into_iter()
            .filter(|s| {
                let Some(f) = &filter else {
                    return true;
                };
                let Some(a) = &s.attributes else {
                    return false;
                };
                (f.id.is_empty() || a.id.starts_with(&f.id))
                    && (f.pod_sandbox_id.is_empty()
                        || sandbox_of
                            .get(&a.id)
                            .is_some_and(|p| p.starts_with(&f.pod_sandbox_id)))
                    && f.label_selector
                        .iter()
                        .all(|(k, v)| a.labels.get(k) == Some(v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::cgroups::metrics as v1;
    use containerd_shim_protos::cgroups_v2::metrics as v2;

    #[test]
    fn cgroup_metrics_read_as_containerds_cri_reads_them() {
        let mut m2 = v2::Metrics::new();
        m2.cpu.mut_or_insert_default().usage_usec = 5;
        let memory = m2.memory.mut_or_insert_default();
        (memory.usage, memory.inactive_file, memory.anon) = (100, 30, 40);
        let any = prost_types::Any {
            type_url: format!("types.containerd.io/{V2_METRICS}"),
            value: m2.write_to_bytes().unwrap(),
        };
        let usage = usage_of(&any).unwrap();
        assert_eq!(
            (
                usage.cpu_nanos,
                usage.working_set,
                usage.rss,
                usage.memory_usage
            ),
            (5000, 70, 40, 100)
        );

        let mut m1 = v1::Metrics::new();
        m1.cpu
            .mut_or_insert_default()
            .usage
            .mut_or_insert_default()
            .total = 9;
        let memory = m1.memory.mut_or_insert_default();
        memory.total_inactive_file = 10;
        memory.total_rss = 20;
        memory.usage.mut_or_insert_default().usage = 50;
        let any = prost_types::Any {
            type_url: V1_METRICS.into(),
            value: m1.write_to_bytes().unwrap(),
        };
        let usage = usage_of(&any).unwrap();
        assert_eq!((usage.cpu_nanos, usage.working_set, usage.rss), (9, 40, 20));
        assert_eq!(
            usage_of(&prost_types::Any {
                type_url: "other".into(),
                value: Vec::new()
            }),
            None
        );
    }
}
