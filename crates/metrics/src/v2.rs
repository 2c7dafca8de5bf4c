//! The cgroup v2 metrics containerd exports per task (`io.containerd.cgroups.v2.Metrics`, from
//! the shim's Stats): names, units and help texts as containerd 1.6 gives them.

use containerd_shim_protos::cgroups_v2::metrics::Metrics;

use super::family::{Family, Sample};

macro_rules! scalar {
    ($name:literal, $unit:literal, $help:expr, $part:ident . $field:ident) => {
        Family {
            name: $name,
            unit: $unit,
            help: $help,
            labels: &[],
            samples: |m: &Metrics| Sample::one(m.$part.as_ref().map(|x| x.$field)),
        }
    };
}

macro_rules! memory {
    ($name:literal, $field:ident) => {
        scalar!(
            $name,
            "bytes",
            concat!("The ", stringify!($field), " amount"),
            memory.$field
        )
    };
}

macro_rules! io {
    ($name:literal, $unit:literal, $help:literal, $field:ident) => {
        Family {
            name: $name,
            unit: $unit,
            help: $help,
            labels: &["major", "minor"],
            samples: |m: &Metrics| {
                m.io.as_ref()
                    .map(|io| {
                        io.usage
                            .iter()
                            .map(|e| {
                                Sample::new(
                                    e.$field as f64,
                                    vec![e.major.to_string(), e.minor.to_string()],
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            },
        }
    };
}

pub static FAMILIES: &[Family<Metrics>] = &[
    scalar!(
        "pids",
        "limit",
        "The limit to the number of pids allowed (cgroup v2)",
        pids.limit
    ),
    scalar!(
        "pids",
        "current",
        "The current number of pids (cgroup v2)",
        pids.current
    ),
    scalar!(
        "cpu_usage_usec",
        "microseconds",
        "Total cpu usage (cgroup v2)",
        cpu.usage_usec
    ),
    scalar!(
        "cpu_user_usec",
        "microseconds",
        "Current cpu usage in user space (cgroup v2)",
        cpu.user_usec
    ),
    scalar!(
        "cpu_system_usec",
        "microseconds",
        "Current cpu usage in kernel space (cgroup v2)",
        cpu.system_usec
    ),
    scalar!(
        "cpu_nr_periods",
        "total",
        "Current cpu number of periods (only if controller is enabled)",
        cpu.nr_periods
    ),
    scalar!(
        "cpu_nr_throttled",
        "total",
        "Total number of times tasks have been throttled (only if controller is enabled)",
        cpu.nr_throttled
    ),
    scalar!(
        "cpu_throttled_usec",
        "microseconds",
        "Total time duration for which tasks have been throttled. (only if controller is enabled)",
        cpu.throttled_usec
    ),
    scalar!(
        "memory_usage",
        "bytes",
        "Current memory usage (cgroup v2)",
        memory.usage
    ),
    scalar!(
        "memory_usage_limit",
        "bytes",
        "Current memory usage limit (cgroup v2)",
        memory.usage_limit
    ),
    scalar!(
        "memory_swap_usage",
        "bytes",
        "Current swap usage (cgroup v2)",
        memory.swap_usage
    ),
    scalar!(
        "memory_swap_limit",
        "bytes",
        "Current swap usage limit (cgroup v2)",
        memory.swap_limit
    ),
    memory!("memory_file_mapped", file_mapped),
    memory!("memory_file_dirty", file_dirty),
    memory!("memory_file_writeback", file_writeback),
    memory!("memory_pgactivate", pgactivate),
    memory!("memory_pgdeactivate", pgdeactivate),
    memory!("memory_pgfault", pgfault),
    memory!("memory_pgmajfault", pgmajfault),
    memory!("memory_pglazyfree", pglazyfree),
    memory!("memory_pgrefill", pgrefill),
    memory!("memory_pglazyfreed", pglazyfreed),
    memory!("memory_pgscan", pgscan),
    memory!("memory_pgsteal", pgsteal),
    memory!("memory_inactive_anon", inactive_anon),
    memory!("memory_active_anon", active_anon),
    memory!("memory_inactive_file", inactive_file),
    memory!("memory_active_file", active_file),
    memory!("memory_unevictable", unevictable),
    memory!("memory_anon", anon),
    memory!("memory_file", file),
    memory!("memory_kernel_stack", kernel_stack),
    memory!("memory_slab", slab),
    memory!("memory_sock", sock),
    memory!("memory_shmem", shmem),
    memory!("memory_anon_thp", anon_thp),
    memory!("memory_slab_reclaimable", slab_reclaimable),
    memory!("memory_slab_unreclaimable", slab_unreclaimable),
    memory!("memory_workingset_refault", workingset_refault),
    memory!("memory_workingset_activate", workingset_activate),
    memory!("memory_workingset_nodereclaim", workingset_nodereclaim),
    memory!("memory_thp_fault_alloc", thp_fault_alloc),
    memory!("memory_thp_collapse_alloc", thp_collapse_alloc),
    scalar!(
        "memory_oom",
        "total",
        "The number of times a container has received an oom event",
        memory_events.oom
    ),
    io!("io_rbytes", "bytes", "IO bytes read", rbytes),
    io!("io_wbytes", "bytes", "IO bytes written", wbytes),
    io!("io_rios", "total", "Number of read IOs", rios),
    io!("io_wios", "total", "Number of write IOs", wios),
];
